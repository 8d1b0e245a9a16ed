"""A cluster worker: one loaded method in a long-lived process, turning whole groups into encoded files.

:class:`GroupWorker` is what the Ray runner makes an actor of (it does not import Ray itself). It
loads the method once, with the loaders the Python API uses, then for each :class:`GroupTask` runs the
same pure per-group functions as the local runner: :func:`~cosal_cli.inference.decode_group`,
:func:`~cosal_cli.runners.group.process_group` and :func:`~cosal_cli.runners.group.encode_outputs`.
The files come back to the driver as bytes in the :class:`GroupResult` (no shared filesystem needed
for outputs), or, with ``write_to``, are written here into a folder every node sees.

A worker never raises for a group: a bad image is a failure in the result, a bug an internal error.
Inputs are read here, so they must be on a path every node sees; a group this node cannot see fails
with a message saying so.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from cosal_cli.errors import CosalError
from cosal_cli.inference import decode_group
from cosal_cli.io import Group, ImageFile, Problem, SaveSpec
from cosal_cli.methods.loader import load_method, resolve_device, use_threads
from cosal_cli.methods.options import MethodOptions
from cosal_cli.refine import load_refiner
from cosal_cli.runners.group import (
    EncodedImage,
    encode_outputs,
    internal_error_problems,
    keeps_photos,
    process_group,
)
from cosal_cli.runners.outputs import write_image

DECODE_THREADS = 2  # as the local runner: Pillow and zlib release the GIL
ENCODE_THREADS = 2


@dataclass(frozen=True)
class WorkerSpec:
    """What every worker loads: the method and its settings, as the command line gave them."""

    method: str
    device: str = "auto"
    batch_size: int = 8
    offline: bool = False
    options: MethodOptions | None = None
    refiners: tuple[str, ...] = ()
    backend: str = "torch"
    threads: int = 1
    precision: str = "fp32"
    gpu_decode: bool = False


@dataclass(frozen=True)
class GroupTask:
    """One group to process: its position in the run, what to skip, what to encode, where to write."""

    index: int
    group: Group
    save: SaveSpec
    skip: frozenset[str] = frozenset()  # output names whose files all exist (--skip-existing)
    preview: bool = False
    write_to: Path | None = None  # --write-on-workers: the output folder, seen by every node


@dataclass
class GroupResult:
    """What happened to a group, for the driver to record (and, unless written here, to write)."""

    index: int
    worker: str  # "pid@host" of the process that did it
    failures: list[Problem] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    internal_error: bool = False
    encoded: list[EncodedImage] = field(default_factory=list)  # files to write (empty with write_to)
    written: list[tuple[ImageFile, str, str]] = field(default_factory=list)  # with write_to: (image, status, error)


@dataclass(frozen=True)
class WorkerInfo:
    worker: str
    device: str
    threads: int
    notices: tuple[str, ...]
    error: tuple[str, str] | None  # (CosalError subclass name, message) when loading failed


class GroupWorker:
    """A loaded method; :meth:`process` takes a group (a Ray actor in the cluster runner, which calls it
    from two threads: decoding and encoding overlap the other group's computation)."""

    def __init__(self, spec: WorkerSpec):
        self.name = f"{os.getpid()}@{socket.gethostname()}"
        # Two groups at once (a threaded actor): one is decoded or encoded while the other is computed,
        # as the local runner overlaps them; the computation itself runs one group at a time.
        self._computing = threading.Lock()
        self.error: tuple[str, str] | None = None
        self.method, self.threads, self.gpu_decode = None, 0, spec.gpu_decode
        try:  # a whole-run problem (weights missing, a bad option) goes back to the driver, which raises it
            self.threads = use_threads(spec.threads)
            device = resolve_device(spec.device)
            self.refiners = [load_refiner(name, str(device)) for name in spec.refiners]
            self.method = load_method(spec.method, device, spec.batch_size, spec.offline, None, spec.options,
                                      spec.backend, spec.precision)  # fmt: skip
        except CosalError as exc:
            self.error = (type(exc).__name__, str(exc))

    def describe(self) -> WorkerInfo:
        method = self.method
        device = str(method.device) if method is not None else ""
        notices = tuple(method.notices) if method is not None else ()
        return WorkerInfo(self.name, device, self.threads, notices, self.error)

    def process(self, task: GroupTask) -> GroupResult:
        result = GroupResult(task.index, self.name)
        unseen = unseen_inputs(task.group)
        if unseen:
            message = (f"cannot read {unseen} on cluster node {socket.gethostname()}: workers read the inputs "
                       "themselves, so they must be on a path every node sees (a shared filesystem mounted at "
                       "the same path)")  # fmt: skip
            result.failures = [Problem(image.path, message, task.group.name) for image in task.group.images]
            return result
        try:
            self._process(task, result)
        except Exception as exc:  # a bug outside process_group's own guard: this group only, exit 5
            handled = {str(entry.image.path) for entry in result.encoded} | {str(i.path) for i, *_ in result.written}
            paths = [image.path for image in task.group.images if str(image.path) not in handled]
            result.failures += internal_error_problems(task.group, exc, paths)
            result.internal_error = True
        return result

    def _process(self, task: GroupTask, result: GroupResult) -> None:
        keep = keeps_photos(self.refiners, task.save, task.preview)
        with ThreadPoolExecutor(DECODE_THREADS, "cosal-decode-image") as pool:
            decoded = decode_group(task.group, self.method.input_size, keep, pool, self.method.device,
                                   self.gpu_decode)  # fmt: skip
        with self._computing:
            outcome = process_group(self.method, self.refiners, task.group, decoded)
        result.failures, result.notices, result.timings = outcome.failures, outcome.notices, outcome.timings
        result.internal_error = outcome.internal_error
        if outcome.maps is None:
            return
        tick = time.perf_counter()
        with ThreadPoolExecutor(ENCODE_THREADS, "cosal-encode-image") as pool:  # as the local runner's writers
            for encoded in encode_outputs(outcome, task.save, task.preview, task.skip, pool):
                if task.write_to is None:
                    result.encoded.append(encoded)
                else:
                    written = write_image(encoded, task.write_to, task.group, task.save)
                    result.written.append((encoded.image, *written))
        result.timings["write_s"] = time.perf_counter() - tick


def unseen_inputs(group: Group) -> Path | None:
    """The first input of ``group`` this process cannot see (its folder, or a file given by itself)."""
    if not group.from_files and not group.folder.is_dir():
        return group.folder
    return next((image.path for image in group.images if not image.path.exists()), None)
