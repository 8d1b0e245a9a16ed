"""The local runner: discovered groups through one method on this machine, maps written to a folder.

It owns what only a folder run needs: the existing-output policy, decoding one group ahead of the
network (in a background thread), writing each map atomically, and reporting. Each group goes
through :func:`cosal_cli.runners.group.process_group`, the pure per-group function a cluster runner
will share. Every problem with one input is recorded and the batch goes on; the :class:`Summary`
says what happened and which exit code that means.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from cosal_cli import methods
from cosal_cli.errors import Terminated, UsageError
from cosal_cli.hub import ProgressCallback
from cosal_cli.inference import decode_group
from cosal_cli.io import Discovery, Group, ImageFile, Problem, SaveSpec
from cosal_cli.io.preview import write_thumbnails
from cosal_cli.methods.loader import load_method, resolve_device, use_threads
from cosal_cli.methods.options import MethodOptions
from cosal_cli.refine import check_refiners, load_refiner
from cosal_cli.runners.group import GroupOutcome, internal_error_problems, process_group
from cosal_cli.runners.summary import GroupReport, Reporter, Summary

EXISTING_POLICIES = ("error", "skip", "overwrite")
MAPS_ONLY = SaveSpec()  # what a run writes unless told otherwise (--save map)


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
    refine: Sequence[str] = (),
    reporter: Reporter,
    download_progress: ProgressCallback | None = None,
    save: SaveSpec = MAPS_ONLY,
    preview: bool = False,
    backend: str = "torch",
    threads: int | None = None,
) -> Summary:
    """Run ``method_name`` (then its card's refiners and ``refine``) on every group; write the maps.

    Raises UsageError / WeightsUnavailable / ChecksumMismatch for whole-run problems (before any map
    is written); per-image problems end up in ``Summary.failures``.
    """
    if existing not in EXISTING_POLICIES:
        raise UsageError(f"existing-output policy must be one of {EXISTING_POLICIES}")
    started = time.perf_counter()
    refiner_names = methods.refiners_for(method_name, refine)
    check_refiners(refiner_names)  # an unknown name fails before any file
    device = resolve_device(device_spec)
    threads_in_use = use_threads(threads)
    refiners = [load_refiner(name, str(device)) for name in refiner_names]
    check_output_location(discovery, output_dir)
    check_existing(discovery, output_dir, existing, save)
    summary = Summary(method=method_name, device=str(device), output=str(output_dir), refiners=refiner_names,
                      backend=backend, threads=threads_in_use)  # fmt: skip
    for problem in discovery.problems:
        _record_problem(summary, reporter, problem)
    for message in discovery.notices:
        _record_notice(summary, reporter, message)
    summary.timings = {"weights_s": 0.0, "decode_s": 0.0, "compute_s": 0.0, "write_s": 0.0}
    pending = [group for group in discovery.groups if _pending(group, output_dir, existing, save)]
    method = None
    if pending:  # weights are only needed (and fetched) when there is work
        tick = time.perf_counter()
        method = load_method(method_name, device, batch_size, offline, download_progress, options, backend)
        summary.timings["weights_s"] = time.perf_counter() - tick
        for message in method.notices:
            _record_notice(summary, reporter, message)
    run_context = _Run(method, refiners, output_dir, existing, summary, reporter, save, preview)
    try:
        run_context.groups(discovery.groups, pending)
    except KeyboardInterrupt as exc:  # the group being written is in the summary with what it wrote
        summary.interrupted, summary.terminated = True, isinstance(exc, Terminated)
    summary.timings["total_s"] = time.perf_counter() - started
    return summary


def output_path(output_dir: Path, group: Group, image: ImageFile) -> Path:
    """Where an image's map goes; the other kinds of ``--save`` go beside it (:mod:`cosal_cli.io.outputs`)."""
    return output_dir / group.name / image.output_name


def check_existing(discovery: Discovery, output_dir: Path, policy: str, save: SaveSpec = MAPS_ONLY) -> None:
    """With the default policy, refuse to run over existing outputs before any work is done."""
    if policy != "error":
        return
    existing = [
        path
        for group in discovery.groups
        for image in group.images
        for path in save.paths(output_path(output_dir, group, image)).values()
        if path.exists()
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
        inside = output == folder or folder in output.parents or folder in maps.parents
        # Files given one by one are not listed again by the next run; only maps beside them could clash.
        if maps == folder or (inside and not group.from_files):
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


def _pending(group: Group, output_dir: Path, existing: str, save: SaveSpec) -> bool:
    if not group.images:
        return False
    if existing != "skip":
        return True
    return not all(_finished(save.paths(output_path(output_dir, group, image))) for image in group.images)


def _finished(paths: dict[str, Path]) -> bool:
    """An image is done when every kind asked for exists (each was written atomically)."""
    return all(path.exists() for path in paths.values())


class _Run:
    """One run's groups: decoded one ahead, processed, written and reported in input order."""

    def __init__(self, method, refiners, output_dir: Path, existing: str, summary: Summary, reporter: Reporter,
                 save: SaveSpec, preview: bool = False):  # fmt: skip
        self.method, self.refiners, self.output_dir, self.existing = method, refiners, output_dir, existing
        self.summary, self.reporter, self.save, self.preview = summary, reporter, save, preview
        self._advanced: dict[int, float] = {}  # images of a group already counted on the progress bar

    def groups(self, groups: list[Group], pending: list[Group]) -> None:
        """Decoding runs in a worker thread (Pillow releases the GIL), so the next group is read while
        the current one is computed."""
        queue, pending_ids = iter(pending), {id(group) for group in pending}
        # full-size pixels for refiners, cut-outs, overlays and the preview's thumbnails
        keep = bool(self.refiners) or self.save.needs_photo or self.preview
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cosal-decode") as pool:

            def decode_next() -> Future | None:
                group = next(queue, None)
                return None if group is None else pool.submit(decode_group, group, self.method.input_size, keep)

            upcoming = decode_next() if pending else None
            try:
                for group in groups:
                    if id(group) not in pending_ids:
                        self._finish(self._skipped_report(group), 0.0)
                        continue
                    decoding, upcoming = upcoming, decode_next()
                    self.group(group, decoding)
            except BaseException:
                if upcoming is not None:
                    upcoming.cancel()
                raise

    def group(self, group: Group, decoding: Future) -> None:
        """One group, isolated: whatever goes wrong in it is reported against it and the batch goes on.

        The report is finished even when Ctrl-C or SIGTERM arrives, so the summary counts the maps that
        group had already written.
        """
        started = time.perf_counter()
        report = self._new_report(group)
        try:
            self.reporter.doing(f"{group.name}: decoding")
            decoded = decoding.result()
            self.reporter.doing(f"{group.name}: computing {len(group.images)} image(s)")
            encoded = [0]  # images of this group through the encoder so far (several passes count once)

            def computed(count: int) -> None:  # half of an image's progress is its computation
                step = min(count, len(decoded.images) - encoded[0])
                encoded[0] += step
                self._tick(report, 0.5 * step)

            with self.method.counting_images(computed):
                outcome = process_group(self.method, self.refiners, group, decoded)
            self._tick(report, 0.5 * (len(decoded.images) - encoded[0]))  # methods that do not count
            self.reporter.doing(f"{group.name}: writing")
            self._record(outcome, report)
            if outcome.maps is not None:
                self._write(outcome, report)
        except Exception as exc:  # decoding or writing hit a bug: this group only, exit 5
            handled = {entry["input"] for entry in report.outputs}
            paths = [image.path for image in group.images if str(image.path) not in handled]
            self.summary.internal_errors += 1
            for problem in internal_error_problems(group, exc, paths):
                self._fail(report, problem)
        finally:
            self._finish(report, started)

    def _record(self, outcome: GroupOutcome, report: GroupReport) -> None:
        for key, seconds in outcome.timings.items():
            self.summary.timings[key] = self.summary.timings.get(key, 0.0) + seconds
        for note in outcome.notices:
            _record_notice(self.summary, self.reporter, note)
        for problem in outcome.failures:
            self._fail(report, problem)
        self.summary.internal_errors += int(outcome.internal_error)

    def _write(self, outcome: GroupOutcome, report: GroupReport) -> None:
        tick = time.perf_counter()
        group = outcome.group
        for index, image in enumerate(outcome.decoded.images):
            paths = self.save.paths(output_path(self.output_dir, group, image))
            destination = next(iter(paths.values()))
            entry = {"input": str(image.path), "output": str(destination), "files": _as_strings(paths)}
            if self.existing == "skip" and _finished(paths):
                report.skipped += 1
                report.outputs.append({**entry, "status": "skipped"})
                self._tick(report)
                continue
            try:
                photo = outcome.decoded.originals[index] if self.save.needs_photo or self.preview else None
                values = outcome.maps.eight_bit(index)
                self.save.write(values, photo, output_path(self.output_dir, group, image))
                if self.preview:
                    write_thumbnails(self.output_dir, group.name, image.output_name, photo, values)
            except OSError as exc:
                problem = Problem(image.path, f"cannot write {destination}: {exc.strerror or exc}", group.name)
                self._fail(report, problem, output=str(destination))
                continue
            report.written += 1
            report.outputs.append({**entry, "status": "written"})
            self._tick(report)
        self.summary.timings["write_s"] += time.perf_counter() - tick

    def _new_report(self, group: Group) -> GroupReport:
        """A group's report, with what discovery already knows: its notices and unusable files."""
        report = GroupReport(group.name, str(group.folder), str(self.output_dir / group.name),
                             images=len(group.images) + len(group.problems))  # fmt: skip
        for message in group.notices:
            _record_notice(self.summary, self.reporter, message)
        for problem in group.problems:
            self._fail(report, problem)
        return report

    def _skipped_report(self, group: Group) -> GroupReport:
        report = self._new_report(group)
        for image in group.images:
            report.skipped += 1
            paths = self.save.paths(output_path(self.output_dir, group, image))
            report.outputs.append({"input": str(image.path), "output": str(next(iter(paths.values()))),
                                   "files": _as_strings(paths), "status": "skipped"})  # fmt: skip
        return report

    def _tick(self, report: GroupReport, images: float = 0.5) -> None:
        """The progress bar moves per image as its map is computed (half) and written (half), not per group."""
        if images:
            self._advanced[id(report)] = self._advanced.get(id(report), 0.0) + images
            self.reporter.advance(images)

    def _finish(self, report: GroupReport, started: float) -> None:
        report.seconds = time.perf_counter() - started if started else 0.0
        self.summary.groups.append(report)
        rest = report.images - self._advanced.pop(id(report), 0.0)  # failures, and skipped groups
        if rest > 1e-9:
            self.reporter.advance(rest)
        self.reporter.group_done(report)

    def _fail(self, report: GroupReport, problem: Problem, output: str = "") -> None:
        report.failed += 1
        report.outputs.append({"input": str(problem.path), "output": output, "status": "failed"})
        _record_problem(self.summary, self.reporter, problem)


def _as_strings(paths: dict[str, Path]) -> dict[str, str]:
    return {kind: str(path) for kind, path in paths.items()}


def _record_problem(summary: Summary, reporter: Reporter, problem: Problem) -> None:
    summary.failures.append(problem)
    reporter.problem(problem)


def _record_notice(summary: Summary, reporter: Reporter, message: str) -> None:
    summary.notices.append(message)
    reporter.notice(message)
