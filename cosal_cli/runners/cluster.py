"""The Ray runner: groups processed by a pool of Ray actors, each holding one loaded method.

Ray Data's batch-inference pattern, with a group as the unit of work: ``--workers`` actors
(:class:`~cosal_cli.runners.worker.GroupWorker`) load the method once, then process whole groups with
the local runner's per-group functions and send back each image's files as bytes. This process, the
driver, discovers the inputs, applies the output-folder policy (``--skip-existing`` filters groups
before they are sent), writes the files atomically and reports groups in input order through the same
:class:`~cosal_cli.runners.recorder.Recorder`, so the summary, the JSON and the exit code are the
local runner's.

Faults: a worker process that dies (killed, out of memory) is restarted by Ray and its group is sent
again, to whichever worker is free next, up to :data:`MAX_SENDS` times; the summary counts the
retries. Only the driver writes (unless ``--write-on-workers``), and only whole results, so a map is
never lost, written twice or half-written. Ctrl-C kills the actors and reports the group at the head
of the line, as the local runner reports the group it was computing.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cosal_cli import errors, methods
from cosal_cli.errors import Terminated, UsageError
from cosal_cli.hub import ProgressCallback
from cosal_cli.inference import check_gpu_decode
from cosal_cli.io import Discovery, Group, Problem, SaveSpec
from cosal_cli.methods.loader import check_precision
from cosal_cli.methods.options import MethodOptions, tta_of
from cosal_cli.refine import check_refiners
from cosal_cli.runners.group import internal_error_problems
from cosal_cli.runners.outputs import (
    MAPS_ONLY,
    check_outputs,
    finished_images,
    pending_groups,
    write_image,
)
from cosal_cli.runners.recorder import Recorder
from cosal_cli.runners.summary import Reporter, Summary
from cosal_cli.runners.worker import GroupResult, GroupTask, GroupWorker, WorkerInfo, WorkerSpec

MAX_SENDS = 6  # a group whose worker died (or was restarting) this many times fails: it may be what kills them
RESTART_WAIT_S = 0.5  # how long a worker found restarting is left alone
IN_FLIGHT_PER_WORKER = 3  # groups sent, or done and waiting to be written, per worker: bounds memory here
QUEUED_PER_WORKER = 2  # groups an actor holds at once, in two threads: one computing, one decoding or encoding


@dataclass(frozen=True)
class ClusterOptions:
    address: str | None = None  # None: join the Ray cluster running on this machine, or start one
    workers: int = 2
    gpus_per_worker: float = 0.0
    write_on_workers: bool = False  # workers write into the output folder (a path every node sees)
    runtime_env: dict[str, Any] | None = None  # Ray's runtime environment for the workers (env_vars ...)


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UsageError("--runner ray needs Ray: pip install 'cosal-cli[ray]' (the ray extra)") from None
    return ray


def run(
    discovery: Discovery,
    method_name: str,
    output_dir: Path,
    *,
    cluster: ClusterOptions = ClusterOptions(),
    device_spec: str = "auto",
    existing: str = "error",
    batch_size: int = 8,
    offline: bool = False,
    options: MethodOptions | None = None,
    refine: Sequence[str] = (),
    reporter: Reporter,
    download_progress: ProgressCallback | None = None,  # workers fetch weights themselves, without progress
    save: SaveSpec = MAPS_ONLY,
    preview: bool = False,
    backend: str = "torch",
    threads: int | None = None,
    precision: str = "fp32",
    gpu_decode: bool = False,
) -> Summary:
    """:func:`cosal_cli.runners.local.run` on a Ray cluster: the same arguments, ``cluster`` added."""
    ray = import_ray()
    started = time.perf_counter()
    refiner_names = methods.refiners_for(method_name, refine)
    check_refiners(refiner_names)
    _check_cluster_options(cluster, device_spec, threads)
    check_precision(precision, backend)  # the workers' CPUs are theirs to judge (see their notices)
    if gpu_decode:
        check_gpu_decode(backend, device_spec)
    check_outputs(discovery, output_dir, existing, save)
    summary = Summary(method=method_name, device="", output=str(output_dir), refiners=refiner_names,
                      backend=backend, threads=threads or 1, runner="ray", workers=cluster.workers,
                      precision=precision, tta=tta_of(options), gpu_decode=gpu_decode)  # fmt: skip
    recorder = Recorder(summary, reporter, output_dir, save)
    recorder.start(discovery)
    pending = pending_groups(discovery, output_dir, existing, save)
    spec = WorkerSpec(method_name, device_spec, batch_size, offline, options, tuple(refiner_names), backend,
                      threads or 1, precision, gpu_decode)  # fmt: skip
    tick = time.perf_counter()
    connection = _Connection(ray, cluster)
    with connection if pending else contextlib.nullcontext():
        dispatcher = _Dispatcher(ray, cluster, spec, recorder, existing, preview) if pending else None
        summary.timings["weights_s"] = time.perf_counter() - tick
        tick = time.perf_counter()
        try:
            _run_groups(discovery.groups, pending, dispatcher, recorder)
        except KeyboardInterrupt as exc:
            summary.interrupted, summary.terminated = True, isinstance(exc, Terminated) or connection.terminated
        finally:
            if dispatcher is not None:
                dispatcher.stop()
    summary.timings["run_s"] = time.perf_counter() - tick
    summary.timings["total_s"] = time.perf_counter() - started
    return summary


def _check_cluster_options(cluster: ClusterOptions, device_spec: str, threads: int | None) -> None:
    if cluster.workers < 1:
        raise UsageError(f"--workers must be at least 1, not {cluster.workers}")
    if cluster.gpus_per_worker < 0:
        raise UsageError(f"--gpus-per-worker must be 0 or more, not {cluster.gpus_per_worker}")
    if threads is not None and threads < 1:
        raise UsageError(f"--threads must be at least 1, not {threads}")
    if device_spec.strip().lower().startswith("cuda") and cluster.gpus_per_worker <= 0:
        raise UsageError(f"--device {device_spec} with --runner ray needs --gpus-per-worker above 0: Ray shows "
                         "a worker only the GPUs it reserved for it")  # fmt: skip


def _run_groups(groups: list[Group], pending: list[Group], dispatcher: _Dispatcher | None, recorder: Recorder) -> None:
    """Every group reported in input order: skipped ones at once, the others as their results come."""
    pending_ids = {id(group) for group in pending}
    if dispatcher is not None:
        dispatcher.queue(pending)
    for group in groups:
        if id(group) not in pending_ids:
            recorder.skipped_group(group)
            continue
        started, report = time.perf_counter(), recorder.new_report(group)
        try:
            result = dispatcher.result_for(group)
        except KeyboardInterrupt:  # reported as the local runner reports the group it was computing
            recorder.open(report, group)
            recorder.finish(report, started)
            raise
        recorder.open(report, group)
        recorder.outcome(result, report)
        statuses, interrupted = _written(result, group, recorder)
        for image, status, error in statuses:
            recorder.written(report, group, image, status, error)
        recorder.finish(report, started)
        if interrupted is not None:
            raise interrupted


def _written(result: GroupResult, group: Group, recorder: Recorder) -> tuple[list, KeyboardInterrupt | None]:
    """Write a result's encoded files here (atomically), or take the statuses of those its worker wrote.

    A Ctrl-C meanwhile is held until the group is written (its maps are in memory: milliseconds), as
    the local runner finishes the group it is writing; it is returned to be raised then.
    """
    if not result.encoded:
        return result.written, None
    tick, statuses, interrupted = time.perf_counter(), [], None
    for encoded in result.encoded:
        while True:
            try:
                statuses.append((encoded.image, *write_image(encoded, recorder.output_dir, group, recorder.save)))
                break
            except KeyboardInterrupt as exc:  # that file may not be written (atomic): write it again
                interrupted = interrupted or exc
    timings = recorder.summary.timings
    timings["driver_write_s"] = timings.get("driver_write_s", 0.0) + time.perf_counter() - tick
    return statuses, interrupted


class _Connection:
    """Connected to Ray for the run: the given address, else a cluster running here, else a new one.
    A connection made here is closed after the run; one the caller made is left alone."""

    def __init__(self, ray: Any, cluster: ClusterOptions):
        self.ray, self.cluster, self.owned = ray, cluster, False
        self.terminated = False  # SIGTERM came (Ray's waits turn every interruption into a KeyboardInterrupt)
        self._handler: Any = None

    def __enter__(self) -> _Connection:
        if self.ray.is_initialized():
            return self
        settings = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR,
                    "runtime_env": self.cluster.runtime_env}  # fmt: skip
        # Ray's core worker installs its own SIGTERM handler (it logs and dies, exit 1): keep the caller's,
        # which turns SIGTERM into an interruption reported like Ctrl-C (exit 143, the JSON summary).
        handler = signal.getsignal(signal.SIGTERM)
        try:
            self.ray.init(address=self.cluster.address or "auto", **settings)
        except ConnectionError:
            if self.cluster.address:
                raise UsageError(f"cannot reach the Ray cluster at --ray-address {self.cluster.address}: start "
                                 "it with `ray start --head` or give the head node's address") from None  # fmt: skip
            self.ray.init(**settings)  # nothing running here: a local cluster for this run
        finally:
            if handler is not None and threading.current_thread() is threading.main_thread():
                self._handler = handler
                signal.signal(signal.SIGTERM, self._terminate if callable(handler) else handler)
        self.owned = True
        return self

    def _terminate(self, signum: int, frame: Any) -> None:
        self.terminated = True
        self._handler(signum, frame)

    def __exit__(self, *exc_info: object) -> None:
        if self.owned:
            self.ray.shutdown()
        if self._handler is not None:
            signal.signal(signal.SIGTERM, self._handler)


class _Dispatcher:
    """The actors, the groups not yet sent, and the results not yet recorded."""

    def __init__(self, ray: Any, cluster: ClusterOptions, spec: WorkerSpec, recorder: Recorder, existing: str,
                 preview: bool):  # fmt: skip
        self.ray, self.cluster, self.recorder, self.existing, self.preview = ray, cluster, recorder, existing, preview
        workers = self._fitting_workers(spec)
        actor = ray.remote(GroupWorker).options(num_cpus=spec.threads, num_gpus=cluster.gpus_per_worker,
                                                max_restarts=-1, max_task_retries=0,
                                                max_concurrency=QUEUED_PER_WORKER)  # fmt: skip
        self.actors = [actor.remote(spec) for _ in range(workers)]
        recorder.summary.workers = workers
        self.load = {id(actor): 0 for actor in self.actors}  # groups sent to each actor and not yet back
        self.waiting: deque[GroupTask] = deque()
        self.running: dict[Any, tuple[GroupTask, Any]] = {}  # object ref -> (task, actor)
        self.results: dict[int, GroupResult] = {}
        self.attempts: dict[int, int] = {}  # group -> times its worker died or was restarting
        self.resting: dict[int, float] = {}  # actor -> when it may take work again (it was restarting)
        self.position: dict[int, int] = {}  # group (by id) -> its index in the queue
        try:
            self._introduce(ray.get([actor.describe.remote() for actor in self.actors]))
        except BaseException:  # a loading error (or Ctrl-C) before any group: no actor left behind
            self.stop()
            raise

    def _fitting_workers(self, spec: WorkerSpec) -> int:
        """As many workers as asked for and the cluster can hold now (an actor that cannot be placed would
        wait forever); none fitting is a usage error naming what is missing."""
        available = self.ray.cluster_resources()
        fit = int(available.get("CPU", 0) // spec.threads)
        if self.cluster.gpus_per_worker > 0:
            fit = min(fit, int(available.get("GPU", 0) // self.cluster.gpus_per_worker))
        if fit < 1:
            raise UsageError(f"the Ray cluster has {available.get('CPU', 0):g} CPU(s) and {available.get('GPU', 0):g} "
                             f"GPU(s): not enough for one worker with {spec.threads} thread(s) and "
                             f"{self.cluster.gpus_per_worker:g} GPU(s); lower --threads or --gpus-per-worker")
        if fit < self.cluster.workers:
            gpus = f" and {self.cluster.gpus_per_worker:g} GPU(s)" if self.cluster.gpus_per_worker else ""
            self.recorder.notice(f"the Ray cluster holds {fit} worker(s) of {spec.threads} CPU(s){gpus} now, not "
                                 f"{self.cluster.workers}: running {fit}")  # fmt: skip
        return min(fit, self.cluster.workers)

    def _introduce(self, infos: list[WorkerInfo]) -> None:
        """Raise a worker's loading error here, as the local runner would; note what the workers run on."""
        for info in infos:
            if info.error is not None:
                kind, message = info.error
                raise getattr(errors, kind, errors.CosalError)(message)
        summary = self.recorder.summary
        summary.device = ", ".join(sorted({info.device for info in infos}))
        summary.threads = infos[0].threads
        for message in dict.fromkeys(note for info in infos for note in info.notices):
            self.recorder.notice(message)

    def queue(self, groups: list[Group]) -> None:
        recorder = self.recorder
        write_to = recorder.output_dir if self.cluster.write_on_workers else None
        for index, group in enumerate(groups):
            skip = frozenset(finished_images(group, recorder.output_dir, self.existing, recorder.save))
            self.waiting.append(GroupTask(index, group, recorder.save, skip, self.preview, write_to))
            self.position[id(group)] = index

    def result_for(self, group: Group) -> GroupResult:
        """Wait for ``group``'s result, keeping the workers busy meanwhile."""
        index = self.position[id(group)]
        while index not in self.results:
            self._send()
            if not self.running:  # every worker is restarting: give them a moment
                time.sleep(RESTART_WAIT_S)
                continue
            done, _ = self.ray.wait(list(self.running), num_returns=1, timeout=RESTART_WAIT_S)
            for ref in done:
                self._collect(ref)
        return self.results.pop(index)

    def _send(self) -> None:
        """Keep each actor's queue QUEUED_PER_WORKER deep (it starts its next group without waiting for this
        process), within the bound on results held here."""
        limit = IN_FLIGHT_PER_WORKER * len(self.actors)
        while self.waiting and len(self.running) + len(self.results) < limit:
            now = time.monotonic()
            ready = [actor for actor in self.actors if self.resting.get(id(actor), 0.0) <= now]
            actor = min(ready, key=lambda candidate: self.load[id(candidate)], default=None)
            if actor is None or self.load[id(actor)] >= QUEUED_PER_WORKER:
                return
            task = self.waiting.popleft()
            self.load[id(actor)] += 1
            self.running[actor.process.remote(task)] = (task, actor)

    def _collect(self, ref: Any) -> None:
        task, actor = self.running.pop(ref)
        self.load[id(actor)] -= 1  # a dead actor is restarted by Ray: it takes work again when it is back
        try:
            self.results[task.index] = self.ray.get(ref)
        except self.ray.exceptions.RayActorError as exc:  # the worker died with the group, or was restarting
            self.resting[id(actor)] = time.monotonic() + RESTART_WAIT_S
            self._retry(task, exc)
        except self.ray.exceptions.RayTaskError as exc:  # a bug the worker's own guard missed: exit 5
            failures = internal_error_problems(task.group, exc, [image.path for image in task.group.images])
            self.results[task.index] = GroupResult(task.index, "", failures=failures, internal_error=True)
        self._send()  # refill before the driver spends time writing this result

    def _retry(self, task: GroupTask, exc: Exception) -> None:
        """Send a group again after its worker died with it or was restarting (Ray cannot tell which:
        "the task may or may not have been executed"), up to MAX_SENDS times."""
        sends = self.attempts[task.index] = self.attempts.get(task.index, 0) + 1
        reason = errors.first_line(exc)
        if sends < MAX_SENDS:
            self.recorder.summary.retries += 1
            self.recorder.notice(f"{task.group.name}: its worker died or was restarting ({reason}); sent again")
            self.waiting.appendleft(task)
            return
        message = (f"a worker died or was restarting each of the {sends} times group {task.group.name} was sent "
                   f"(last: {reason}); it may be what kills them: lower --batch-size, or run the group alone")
        failures = [Problem(image.path, message, task.group.name) for image in task.group.images]
        self.results[task.index] = GroupResult(task.index, "", failures=failures)

    def stop(self) -> None:
        """The run is over (or interrupted): no work left in the cluster, no actor kept."""
        for actor in self.actors:
            self.ray.kill(actor, no_restart=True)
