"""The local runner: discovered groups through one method on this machine, maps written to a folder.

Three stages overlap, so that the network never waits for files on a machine with few cores: a thread
decodes the next group, this thread computes the current one (:func:`~cosal_cli.runners.group.process_group`),
and a second thread encodes and writes the previous one's files (:func:`~cosal_cli.runners.group.encode_outputs`,
atomically). Groups are reported in input order. Every problem with one input is recorded and the batch
goes on; the :class:`Summary` says what happened and which exit code that means.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Collection, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from cosal_cli import methods
from cosal_cli.errors import Terminated
from cosal_cli.hub import ProgressCallback
from cosal_cli.inference import check_gpu_decode, decode_group
from cosal_cli.io import Discovery, Group, ImageFile, SaveSpec
from cosal_cli.methods.loader import check_precision, load_method, resolve_device, use_threads
from cosal_cli.methods.options import MethodOptions, tta_of
from cosal_cli.refine import check_refiners, load_refiner
from cosal_cli.runners.group import GroupOutcome, encode_outputs, keeps_photos, process_group
from cosal_cli.runners.outputs import (
    MAPS_ONLY,
    check_outputs,
    finished_images,
    pending_groups,
    write_image,
)
from cosal_cli.runners.recorder import Recorder
from cosal_cli.runners.summary import GroupReport, Reporter, Summary


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
    precision: str = "fp32",
    gpu_decode: bool = False,
) -> Summary:
    """Run ``method_name`` (then its card's refiners and ``refine``) on every group; write the maps.

    Raises UsageError / WeightsUnavailable / ChecksumMismatch for whole-run problems (before any map
    is written); per-image problems end up in ``Summary.failures``.
    """
    started = time.perf_counter()
    refiner_names = methods.refiners_for(method_name, refine)
    check_refiners(refiner_names)  # an unknown name fails before any file
    device = resolve_device(device_spec)
    check_precision(precision, backend, device)  # also when no group is left to compute (--skip-existing)
    if gpu_decode:
        check_gpu_decode(backend, str(device))
    threads_in_use = use_threads(threads)
    refiners = [load_refiner(name, str(device)) for name in refiner_names]
    check_outputs(discovery, output_dir, existing, save)
    summary = Summary(method=method_name, device=str(device), output=str(output_dir), refiners=refiner_names,
                      backend=backend, threads=threads_in_use, precision=precision, tta=tta_of(options),
                      gpu_decode=gpu_decode)  # fmt: skip
    recorder = Recorder(summary, reporter, output_dir, save)
    recorder.start(discovery)
    pending = pending_groups(discovery, output_dir, existing, save)
    method = None
    if pending:  # weights are only needed (and fetched) when there is work
        tick = time.perf_counter()
        method = load_method(method_name, device, batch_size, offline, download_progress, options, backend,
                             precision)  # fmt: skip
        summary.timings["weights_s"] = time.perf_counter() - tick
        for message in method.notices:
            recorder.notice(message)
    run_context = _Run(method, refiners, existing, recorder, preview, gpu_decode)
    tick = time.perf_counter()
    try:
        run_context.groups(discovery.groups, pending)
    except KeyboardInterrupt as exc:  # the group being written is in the summary with what it wrote
        summary.interrupted, summary.terminated = True, isinstance(exc, Terminated)
    summary.timings["run_s"] = time.perf_counter() - tick
    summary.timings["total_s"] = time.perf_counter() - started
    return summary


#: Threads decoding (and resizing) a group's images, ahead of the computation. Two keep the first group's
#: decoding short where nothing overlaps it yet; more would compete with the computation's threads.
DECODE_THREADS = 2
#: Threads bringing maps to size and encoding their files, behind the computation: the last
#: group's writing overlaps nothing, and on large photos it takes as long as a fast method's computation.
WRITE_THREADS = 2


@dataclass
class _Writing:
    """A computed group whose files the writer thread is encoding and writing."""

    group: Group
    report: GroupReport
    started: float
    future: Future  # -> _Written


@dataclass
class _Written:
    """What the writer thread did with a group: (image, status, error) per image it reached."""

    results: list[tuple[ImageFile, str, str]]
    error: Exception | None  # the bug that stopped it, if any
    seconds: float


class _Run:
    """One run's groups, in input order: decoded one ahead, computed here, written one behind."""

    def __init__(self, method, refiners, existing: str, recorder: Recorder, preview: bool = False,
                 gpu_decode: bool = False):  # fmt: skip
        self.method, self.refiners, self.existing, self.preview = method, refiners, existing, preview
        self.gpu_decode = gpu_decode
        self.recorder, self.summary = recorder, recorder.summary
        self.output_dir, self.save = recorder.output_dir, recorder.save
        self._writing: _Writing | None = None
        # Set by a second Ctrl-C / SIGTERM while a computed group is being written: the writer stops after
        # the image it is on. The first one lets it finish the group (its maps are computed already).
        # (Python runs signal handlers in the main thread, so only this thread sees them.)
        self._stop = threading.Event()
        for key in ("write_s", "decode_wait_s", "write_wait_s"):  # the waits: this thread's, for the other two
            self.summary.timings.setdefault(key, 0.0)

    def groups(self, groups: list[Group], pending: list[Group]) -> None:
        """Decoding and writing run in worker threads (Pillow, zlib and torch release the GIL)."""
        queue, pending_ids = iter(pending), {id(group) for group in pending}
        keep = keeps_photos(self.refiners, self.save, self.preview)
        with (
            ThreadPoolExecutor(1, "cosal-decode") as decoder,
            ThreadPoolExecutor(DECODE_THREADS, "cosal-decode-image") as images,
            ThreadPoolExecutor(1, "cosal-write") as writer,
            ThreadPoolExecutor(WRITE_THREADS, "cosal-write-image") as self._image_writers,
        ):

            def decode_next() -> Future | None:
                group = next(queue, None)
                size, device = self.method.input_size, self.method.device
                return None if group is None else decoder.submit(decode_group, group, size, keep, images, device,
                                                                 self.gpu_decode)  # fmt: skip

            upcoming = decode_next() if pending else None
            try:
                for group in groups:
                    if id(group) not in pending_ids:
                        self._drain()
                        self.recorder.skipped_group(group)
                        continue
                    decoding, upcoming = upcoming, decode_next()
                    self.group(group, decoding, writer)
                self._drain()
            except BaseException:
                if upcoming is not None:
                    upcoming.cancel()
                self._drain(interrupted=True)  # the group being written is finished and in the summary
                raise

    def group(self, group: Group, decoding: Future, writer: ThreadPoolExecutor) -> None:
        """One group, isolated: whatever goes wrong in it is reported against it and the batch goes on.

        The previous group is finished (its files written, its report done) before this one is recorded,
        so reports keep the input order; its writing overlaps this group's computation.
        """
        started, report, opened = time.perf_counter(), self.recorder.new_report(group), False
        try:
            outcome = self._compute(group, decoding, report)
            self._drain()
            self.recorder.open(report, group)
            opened = True
            self.recorder.outcome(outcome, report)
            if outcome.maps is not None:
                skip = finished_images(group, self.output_dir, self.existing, self.save)
                self.recorder.reporter.doing(f"{group.name}: writing")
                future = writer.submit(self._encode_and_write, outcome, skip)
                self._writing, report = _Writing(group, report, started, future), None
        except Exception as exc:  # decoding hit a bug: this group only, exit 5
            self._drain()
            if not opened:
                self.recorder.open(report, group)
            self.recorder.internal_error(report, group, exc)
        except BaseException:  # Ctrl-C or SIGTERM: the previous group first, then this one, as it stands
            self._drain(interrupted=True)
            if not opened:
                self.recorder.open(report, group)
            raise
        finally:
            if report is not None:
                self.recorder.finish(report, started)

    def _compute(self, group: Group, decoding: Future, report: GroupReport) -> GroupOutcome:
        self.recorder.reporter.doing(f"{group.name}: decoding")
        tick = time.perf_counter()
        decoded = decoding.result()
        self.summary.timings["decode_wait_s"] += time.perf_counter() - tick
        self.recorder.reporter.doing(f"{group.name}: computing {len(group.images)} image(s)")
        encoded = [0]  # images of this group through the encoder so far (several passes count once)

        def computed(count: int) -> None:  # half of an image's progress is its computation
            step = min(count, len(decoded.images) - encoded[0])
            encoded[0] += step
            self.recorder.tick(report, 0.5 * step)

        with self.method.counting_images(computed):
            outcome = process_group(self.method, self.refiners, group, decoded)
        self.recorder.tick(report, 0.5 * (len(decoded.images) - encoded[0]))  # methods that do not count
        return outcome

    def _encode_and_write(self, outcome: GroupOutcome, skip: Collection[str]) -> _Written:
        """In the writer thread: each image's files encoded (by the image writers, in order) and written,
        until done or told to stop. Touches no summary or reporter (those belong to the main thread)."""
        written = _Written([], None, 0.0)
        tick = time.perf_counter()
        try:
            for encoded in encode_outputs(outcome, self.save, self.preview, skip, self._image_writers,
                                          self._stop.is_set):  # fmt: skip
                written.results.append((encoded.image, *write_image(encoded, self.output_dir, outcome.group,
                                                                    self.save)))  # fmt: skip
        except Exception as exc:  # a bug while encoding (a refiner, say): the rest of the group fails
            written.error = exc
        written.seconds = time.perf_counter() - tick
        return written

    def _drain(self, interrupted: bool = False) -> None:
        """Wait for the group being written, then record its files and finish its report.

        Its maps are computed, so a Ctrl-C (or SIGTERM) lets it finish; another one (``interrupted``: the
        run is already stopping) makes the writer stop after the image it is on. The interruption is
        raised again once the group is reported.
        """
        writing = self._writing
        if writing is None:
            return
        tick, first = time.perf_counter(), None
        while True:
            try:
                written: _Written = writing.future.result()
                break
            except KeyboardInterrupt as exc:
                first = first or exc
                if interrupted:
                    self._stop.set()
                interrupted = True
        self._writing = None
        self.summary.timings["write_wait_s"] += time.perf_counter() - tick
        self.summary.timings["write_s"] += written.seconds
        for image, status, error in written.results:
            self.recorder.written(writing.report, writing.group, image, status, error)
        if written.error is not None:
            self.recorder.internal_error(writing.report, writing.group, written.error)
        self.recorder.finish(writing.report, writing.started)
        if first is not None:
            raise first
