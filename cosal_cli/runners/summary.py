"""What a run reports: per-group reports, the run's summary and its JSON, and the reporter protocol.

Every runner (the local one today, a cluster one later) fills the same :class:`Summary`, so the
command line prints and exits the same way whichever ran the groups.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from cosal_cli import __version__
from cosal_cli.errors import ExitCode
from cosal_cli.io import Problem


class Reporter(Protocol):
    """How a runner tells the command line what is going on (printing is the CLI's job)."""

    def notice(self, message: str) -> None: ...
    def problem(self, problem: Problem) -> None: ...
    def advance(self, images: float) -> None: ...
    def doing(self, text: str) -> None: ...  # what the run is doing now ("cat: computing 23 images")
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
    refiners: list[str] = field(default_factory=list)
    backend: str = "torch"  # or "onnxruntime" (--backend)
    precision: str = "fp32"  # or "bf16" (--precision)
    tta: str = "none"  # or "flip" (--tta)
    gpu_decode: bool = False  # JPEGs decoded on the GPU (--gpu-decode)
    threads: int = 0  # CPU threads of torch (and onnxruntime) in this run
    interrupted: bool = False
    terminated: bool = False  # the interruption was SIGTERM, not Ctrl-C
    internal_errors: int = 0  # groups in which cosal itself failed (a bug, not the input)
    runner: str = "local"  # or "ray" (--runner)
    workers: int = 1  # processes holding the method (Ray actors; 1 for the local runner)
    retries: int = 0  # groups sent again because their worker died or was restarting (Ray)

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
        # Decoding, computing and writing overlap: the rate is over the wall time from the first group's
        # decoding to the last group's files (weights loading and discovery excluded).
        computed = self.timings.get("run_s", 0.0)
        processed = sum(group.images - group.skipped for group in self.groups)
        return {
            "cosal_version": __version__,
            "method": self.method,
            "refiners": self.refiners,
            "device": self.device,
            "backend": self.backend,
            "precision": self.precision,
            "tta": self.tta,
            "gpu_decode": self.gpu_decode,
            "threads": self.threads,
            "runner": self.runner,
            "workers": self.workers,
            "retries": self.retries,
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
