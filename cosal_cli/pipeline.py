"""Moves image groups through a method: decode, batch, run on the device, resize back, write.

The pipeline owns everything a method should not care about: which outputs already exist, decoding
(in a background thread, one group ahead of the computation), device placement, grad mode, bringing
maps back to each image's original size and writing them atomically. Every problem with one input
is recorded and the batch goes on; the :class:`Summary` says what happened and which exit code
that means.
"""

from __future__ import annotations

import re
import time
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from cosal_cli import __version__, methods
from cosal_cli.errors import ExitCode, InputError, Terminated, UsageError, first_line
from cosal_cli.hub import ProgressCallback, WeightHub
from cosal_cli.io import Discovery, Group, ImageFile, Problem, load_rgb, write_map
from cosal_cli.methods.base import MethodOptions
from cosal_cli.sism import GroupImages

EXISTING_POLICIES = ("error", "skip", "overwrite")


class Reporter(Protocol):
    """How the pipeline tells the command line what is going on (printing is the CLI's job)."""

    def notice(self, message: str) -> None: ...
    def problem(self, problem: Problem) -> None: ...
    def advance(self, images: int) -> None: ...
    def group_done(self, report: GroupReport) -> None: ...


@dataclass
class GroupReport:
    name: str
    input: str
    output: str
    images: int = 0
    written: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0
    outputs: list[dict[str, str]] = field(default_factory=list)  # {"input", "output", "status"}


@dataclass
class Summary:
    method: str
    device: str
    output: str
    groups: list[GroupReport] = field(default_factory=list)
    failures: list[Problem] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    interrupted: bool = False
    terminated: bool = False  # the interruption was SIGTERM, not Ctrl-C
    internal_errors: int = 0  # groups in which cosal itself failed (a bug, not the input)

    @property
    def images(self) -> int:
        return sum(group.images for group in self.groups)

    @property
    def written(self) -> int:
        return sum(group.written for group in self.groups)

    @property
    def skipped(self) -> int:
        return sum(group.skipped for group in self.groups)

    @property
    def exit_code(self) -> ExitCode:
        if self.interrupted:
            return ExitCode.TERMINATED if self.terminated else ExitCode.INTERRUPTED
        if self.internal_errors:
            return ExitCode.INTERNAL_ERROR
        return ExitCode.INPUTS_FAILED if self.failures else ExitCode.OK

    def to_json(self) -> dict[str, Any]:
        computed = self.timings.get("decode_s", 0) + self.timings.get("compute_s", 0) + self.timings.get("write_s", 0)
        processed = sum(group.images - group.skipped for group in self.groups)
        return {
            "cosal_version": __version__,
            "method": self.method,
            "device": self.device,
            "output": self.output,
            "exit_code": int(self.exit_code),
            "interrupted": self.interrupted,
            "signal": ("SIGTERM" if self.terminated else "SIGINT") if self.interrupted else None,
            "counts": {
                "groups": len(self.groups),
                "images": self.images,
                "written": self.written,
                "skipped": self.skipped,
                "failed": len(self.failures),
            },
            "internal_errors": self.internal_errors,  # groups where cosal itself failed (exit 5)
            "timings": {key: round(value, 4) for key, value in self.timings.items()},
            "images_per_second": round(processed / computed, 3) if computed > 0 and processed else None,
            "groups": [asdict(group) for group in self.groups],
            "failures": [
                {"path": str(problem.path), "group": problem.group, "message": problem.message,
                 "internal": problem.traceback is not None}
                for problem in self.failures
            ],
            "notices": self.notices,
        }


# ----------------------------------------------------------------------------------------------
# Device and output planning
# ----------------------------------------------------------------------------------------------


def resolve_device(spec: str) -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` to a torch.device; a CUDA request without CUDA is a usage error."""
    spec = spec.strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", spec)
    if not match:
        raise UsageError(f"--device must be auto, cpu, cuda or cuda:N, not {spec!r}")
    if not torch.cuda.is_available():
        build = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise UsageError(
            f"--device {spec}: no CUDA device is available (torch {torch.__version__}, {build}); "
            "use --device cpu or --device auto"
        )
    index = int(match.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise UsageError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) present")
    return torch.device("cuda", index)


def output_path(output_dir: Path, group: Group, image: ImageFile) -> Path:
    return output_dir / group.name / image.output_name


def check_existing(discovery: Discovery, output_dir: Path, policy: str) -> None:
    """With the default policy, refuse to run over existing maps before any work is done."""
    if policy != "error":
        return
    existing = [
        output_path(output_dir, group, image)
        for group in discovery.groups
        for image in group.images
        if output_path(output_dir, group, image).exists()
    ]
    if existing:
        raise UsageError(
            f"{len(existing)} map(s) already exist in {output_dir} (first: {existing[0]}); "
            "pass --skip-existing to resume or --overwrite to replace them"
        )


def check_output_location(discovery: Discovery, output_dir: Path) -> None:
    """Refuse an output folder that would put maps among a group's photos (the next run would read them)."""
    output = _resolved(output_dir)
    for group in discovery.groups:
        folder = _resolved(group.folder)
        maps = _resolved(output_dir / group.name)
        if output == folder or folder in output.parents or maps == folder or folder in maps.parents:
            raise UsageError(
                f"--output {output_dir} would write the maps of group {group.name} into its input folder "
                f"{group.folder}, where the next run would read them as images; choose an output folder "
                "outside the input folders"
            )


def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # a link loop: compare it as written
        return path.absolute()


# ----------------------------------------------------------------------------------------------
# Running
# ----------------------------------------------------------------------------------------------


@dataclass
class DecodedGroup:
    """One group ready for the network: kept images and their network-size pixels."""

    images: list[ImageFile]
    sizes: list[tuple[int, int]]  # (width, height) of each original, after EXIF orientation
    pixels: np.ndarray | None  # (N, S, S, 3) uint8
    problems: list[Problem]
    notes: list[str]
    seconds: float


def run(
    discovery: Discovery,
    method_name: str,
    output_dir: Path,
    *,
    device_spec: str = "auto",
    existing: str = "error",
    batch_size: int = 8,
    offline: bool = False,
    options: MethodOptions | None = None,
    reporter: Reporter,
    download_progress: ProgressCallback | None = None,
) -> Summary:
    """Run ``method_name`` on every group of ``discovery`` and write ``<output>/<group>/<name>.png``.

    Raises UsageError / WeightsUnavailable / ChecksumMismatch for whole-run problems (before any map
    is written); per-image problems end up in ``Summary.failures``.
    """
    if existing not in EXISTING_POLICIES:
        raise UsageError(f"existing-output policy must be one of {EXISTING_POLICIES}")
    started = time.perf_counter()
    methods.card(method_name)  # an unknown name fails before any file is touched
    device = resolve_device(device_spec)
    check_output_location(discovery, output_dir)
    check_existing(discovery, output_dir, existing)
    summary = Summary(method=method_name, device=str(device), output=str(output_dir))
    for problem in discovery.problems:
        _record_problem(summary, reporter, problem)
    for message in discovery.notices:
        _record_notice(summary, reporter, message)

    summary.timings = {"weights_s": 0.0, "decode_s": 0.0, "compute_s": 0.0, "write_s": 0.0}
    pending = [group for group in discovery.groups if _pending(group, output_dir, existing)]
    method = None
    if pending:  # weights are only needed (and fetched) when there is work
        tick = time.perf_counter()
        method = load_method(method_name, device, batch_size, offline, download_progress, options)
        summary.timings["weights_s"] = time.perf_counter() - tick
        for message in method.notices:
            _record_notice(summary, reporter, message)
    try:
        _run_groups(discovery.groups, pending, method, output_dir, existing, summary, reporter)
    except KeyboardInterrupt as exc:  # the group being written is in the summary with what it wrote
        summary.interrupted, summary.terminated = True, isinstance(exc, Terminated)
    summary.timings["total_s"] = time.perf_counter() - started
    return summary


def load_method(
    name: str,
    device: torch.device,
    batch_size: int = 8,
    offline: bool = False,
    progress: ProgressCallback | None = None,
    options: MethodOptions | None = None,
) -> methods.base.Method:
    """A ready method with its verified weights; also how a method gets its SISM generator.

    Options the method does not understand are a usage error (``--sism`` for a method without SISMs).
    """
    method_class = methods.method_class(name)
    options = replace(options or MethodOptions(), offline=offline)
    unknown = [flag for flag in options.given() if flag not in method_class.accepts]
    if unknown:
        takers = [other for other in methods.CARDS if set(unknown) <= methods.method_class(other).accepts]
        verb = "does" if len(unknown) == 1 else "do"
        raise UsageError(
            f"{' and '.join(unknown)} {verb} not apply to method {name!r}"
            + (f"; methods that take {' and '.join(unknown)}: {', '.join(takers)}" if takers else "")
        )
    return method_class(_resolve_roles(name, offline, progress), device, batch_size=batch_size, options=options)


def _resolve_roles(method_name: str, offline: bool, progress: ProgressCallback | None) -> dict[str, Path]:
    """Verified weight files for each role of the method (fetched first if missing and allowed)."""
    hub = WeightHub()
    return {
        role: hub.resolve(component_id, offline=offline, progress=progress)
        for role, component_id in hub.manifest.roles(method_name).items()
    }


def _pending(group: Group, output_dir: Path, existing: str) -> bool:
    if not group.images:
        return False
    if existing != "skip":
        return True
    return not all(output_path(output_dir, group, image).exists() for image in group.images)


def _new_report(group: Group, output_dir: Path, summary: Summary, reporter: Reporter) -> GroupReport:
    """A group's report, with what discovery already knows: its notices and unusable files."""
    report = GroupReport(
        group.name, str(group.folder), str(output_dir / group.name), images=len(group.images) + len(group.problems)
    )
    for message in group.notices:
        _record_notice(summary, reporter, message)
    for problem in group.problems:
        _fail(report, problem, summary, reporter)
    return report


def _finish_group(report: GroupReport, started: float, summary: Summary, reporter: Reporter) -> None:
    report.seconds = time.perf_counter() - started if started else 0.0
    summary.groups.append(report)
    reporter.advance(report.images)
    reporter.group_done(report)


def _fail(report: GroupReport, problem: Problem, summary: Summary, reporter: Reporter, output: str = "") -> None:
    report.failed += 1
    report.outputs.append({"input": str(problem.path), "output": output, "status": "failed"})
    _record_problem(summary, reporter, problem)


def _skipped_group_report(group: Group, output_dir: Path, summary: Summary, reporter: Reporter) -> GroupReport:
    report = _new_report(group, output_dir, summary, reporter)
    for image in group.images:
        report.skipped += 1
        report.outputs.append(
            {"input": str(image.path), "output": str(output_path(output_dir, group, image)), "status": "skipped"}
        )
    return report


def _run_groups(groups, pending, method, output_dir, existing, summary, reporter) -> None:
    """Report every group in input order; decode the pending ones one group ahead of the network.

    Decoding runs in a worker thread (Pillow releases the GIL while decoding), so the next group is
    read while the current one is computed.
    """
    queue, pending_ids = iter(pending), {id(group) for group in pending}
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cosal-decode") as pool:

        def decode_next() -> Future | None:
            group = next(queue, None)
            return pool.submit(decode_group, group, method.input_size) if group is not None else None

        upcoming = decode_next() if pending else None
        try:
            for group in groups:
                if id(group) not in pending_ids:
                    _finish_group(_skipped_group_report(group, output_dir, summary, reporter), 0.0, summary, reporter)
                    continue
                decoding, upcoming = upcoming, decode_next()
                _run_group(group, decoding, method, output_dir, existing, summary, reporter)
        except BaseException:
            if upcoming is not None:
                upcoming.cancel()
            raise


def _run_group(group, decoding: Future, method, output_dir, existing, summary, reporter) -> None:
    """One group, isolated: whatever goes wrong in it is reported against it and the batch goes on.

    The report is finished even when Ctrl-C or SIGTERM arrives, so the summary counts the maps that
    group had already written.
    """
    started = time.perf_counter()
    report = _new_report(group, output_dir, summary, reporter)
    try:
        decoded = decoding.result()
        summary.timings["decode_s"] += decoded.seconds
        _process_group(group, decoded, method, output_dir, existing, report, summary, reporter)
    except Exception as exc:  # a bug in cosal or a library, never the input's fault: exit 5
        _internal_error(group, exc, report, summary, reporter)
    finally:
        _finish_group(report, started, summary, reporter)


def _internal_error(group: Group, exc: Exception, report: GroupReport, summary: Summary, reporter: Reporter) -> None:
    summary.internal_errors += 1
    details = "".join(traceback.format_exception(exc))
    message = (
        f"internal error in group {group.name} ({type(exc).__name__}: {first_line(exc)}); the other groups "
        "are processed: rerun with --debug for the traceback and report it"
    )
    handled = {entry["input"] for entry in report.outputs}
    unfinished = [image.path for image in group.images if str(image.path) not in handled] or [group.folder]
    for path in unfinished:
        _fail(report, Problem(path, message, group.name, traceback=details), summary, reporter)


def decode_group(group: Group, size: int) -> DecodedGroup:
    from PIL import Image

    tick = time.perf_counter()
    kept, sizes, pixels, problems, notes = [], [], [], [], []
    for image in group.images:
        try:
            decoded = load_rgb(image.path)
        except InputError as exc:
            problems.append(Problem(image.path, str(exc), group.name))
            continue
        notes += [f"{image.path}: {note}" for note in decoded.notes]
        kept.append(image)
        sizes.append(decoded.size)
        # Square resize with Pillow's bilinear filter, as the GICD / ICNet reference test scripts do.
        pixels.append(np.asarray(decoded.rgb.resize((size, size), Image.BILINEAR)))
    stacked = np.stack(pixels) if pixels else None
    return DecodedGroup(kept, sizes, stacked, problems, notes, time.perf_counter() - tick)


def _process_group(group, decoded: DecodedGroup, method, output_dir, existing, report, summary, reporter) -> None:
    for note in decoded.notes:
        _record_notice(summary, reporter, note)
    for problem in decoded.problems:
        _fail(report, problem, summary, reporter)
    if decoded.pixels is None:
        return
    try:
        sources = GroupImages(group.name, tuple(image.output_name.removesuffix(".png") for image in decoded.images))
        maps = _predict(method, decoded.pixels, sources, summary)
    except (InputError, torch.OutOfMemoryError) as exc:  # the group's inputs or its size, not a bug
        hint = "; lower --batch-size (or use --chunk where the method takes it)" if isinstance(
            exc, torch.OutOfMemoryError) else ""  # fmt: skip
        for image in decoded.images:
            message = f"{method.name} failed on group {group.name}: {first_line(exc)}{hint}"
            _fail(report, Problem(image.path, message, group.name), summary, reporter)
    else:
        _write_group(group, decoded, maps, method, output_dir, existing, report, summary, reporter)


def _predict(method, pixels: np.ndarray, sources: GroupImages, summary: Summary) -> torch.Tensor:
    tick = time.perf_counter()
    try:
        batch = torch.from_numpy(pixels).to(method.device).permute(0, 3, 1, 2).float().div_(255.0)
        with torch.inference_mode(method.inference_mode):
            maps = method.predict_group(batch, sources)
        maps = maps.detach().float().cpu()
    finally:
        summary.timings["compute_s"] += time.perf_counter() - tick
    if maps.ndim != 3 or maps.shape[0] != pixels.shape[0]:
        raise TypeError(f"{method.name} returned maps of shape {tuple(maps.shape)} for {pixels.shape[0]} images")
    return maps


def _write_group(group, decoded, maps, method, output_dir, existing, report, summary, reporter) -> None:
    tick = time.perf_counter()
    for image, (width, height), low_res in zip(decoded.images, decoded.sizes, maps):
        destination = output_path(output_dir, group, image)
        entry = {"input": str(image.path), "output": str(destination)}
        if existing == "skip" and destination.exists():
            report.skipped += 1
            report.outputs.append({**entry, "status": "skipped"})
            continue
        values = to_image_size(low_res, (width, height), method.output_interpolation)
        try:
            write_map(values, destination)
        except OSError as exc:
            problem = Problem(image.path, f"cannot write {destination}: {exc.strerror or exc}", group.name)
            _fail(report, problem, summary, reporter, output=str(destination))
            continue
        report.written += 1
        report.outputs.append({**entry, "status": "written"})
    summary.timings["write_s"] += time.perf_counter() - tick


def to_image_size(low_res: torch.Tensor, size: tuple[int, int], interpolation: str) -> np.ndarray:
    """A method's (h, w) map in [0, 1] as the (H, W) uint8 map of an image of ``size`` = (W, H)."""
    width, height = size
    if interpolation == "bilinear-official":  # GICD's test.py: align_corners=True, ToPILImage truncates
        full = F.interpolate(low_res[None, None], size=(height, width), mode="bilinear", align_corners=True)[0, 0]
        return full.clamp_(0.0, 1.0).mul_(255.0).floor_().to(torch.uint8).numpy()
    full = F.interpolate(low_res[None, None], size=(height, width), mode=interpolation, align_corners=False)[0, 0]
    return full.clamp_(0.0, 1.0).mul_(255.0).round_().to(torch.uint8).numpy()


def _record_problem(summary: Summary, reporter: Reporter, problem: Problem) -> None:
    summary.failures.append(problem)
    reporter.problem(problem)


def _record_notice(summary: Summary, reporter: Reporter, message: str) -> None:
    summary.notices.append(message)
    reporter.notice(message)

