"""Turning what happened to each group into its report, the run's summary and the reporter's events.

Runners differ in where groups are computed and written; they report alike through :class:`Recorder`,
in input order, so the summary, the JSON and the exit code do not depend on the runner.
"""

from __future__ import annotations

import time
from pathlib import Path

from cosal_cli.io import Discovery, Group, ImageFile, Problem, SaveSpec
from cosal_cli.runners.group import GroupOutcome, internal_error_problems
from cosal_cli.runners.outputs import output_path
from cosal_cli.runners.summary import GroupReport, Reporter, Summary


class Recorder:
    """The summary of one run and its reporter: each group opened, recorded and finished in turn."""

    def __init__(self, summary: Summary, reporter: Reporter, output_dir: Path, save: SaveSpec):
        self.summary, self.reporter, self.output_dir, self.save = summary, reporter, output_dir, save
        self._advanced: dict[int, float] = {}  # images of a group already counted on the progress bar

    def start(self, discovery: Discovery) -> None:
        """Discovery's problems and notices, and the timings every run reports (zero until measured)."""
        for problem in discovery.problems:
            self.fail_run(problem)
        for message in discovery.notices:
            self.notice(message)
        self.summary.timings = {"weights_s": 0.0, "decode_s": 0.0, "compute_s": 0.0, "write_s": 0.0}

    def new_report(self, group: Group) -> GroupReport:
        return GroupReport(group.name, str(group.folder), str(self.output_dir / group.name),
                           images=len(group.images) + len(group.problems))  # fmt: skip

    def open(self, report: GroupReport, group: Group) -> None:
        """Record what discovery already knows of a group: its notices and unusable files."""
        for message in group.notices:
            self.notice(message)
        for problem in group.problems:
            self.fail(report, problem)

    def outcome(self, outcome: GroupOutcome, report: GroupReport) -> None:
        """A computed group's timings, notices, failures and internal error (its files come after)."""
        for key, seconds in outcome.timings.items():
            self.summary.timings[key] = self.summary.timings.get(key, 0.0) + seconds
        for note in outcome.notices:
            self.notice(note)
        for problem in outcome.failures:
            self.fail(report, problem)
        self.summary.internal_errors += int(outcome.internal_error)

    def written(self, report: GroupReport, group: Group, image: ImageFile, status: str, error: str = "") -> None:
        """One image's files: ``written``, ``skipped`` (they existed) or ``failed`` (``error`` says why)."""
        paths = self.save.paths(output_path(self.output_dir, group, image))
        destination = str(next(iter(paths.values())))
        if status == "failed":
            problem = Problem(image.path, f"cannot write {destination}: {error}", group.name)
            self.fail(report, problem, output=destination)
            return
        report.written += status == "written"
        report.skipped += status == "skipped"
        files = {kind: str(path) for kind, path in paths.items()}
        report.outputs.append({"input": str(image.path), "output": destination, "files": files, "status": status})
        self.tick(report)

    def internal_error(self, report: GroupReport, group: Group, exc: BaseException) -> None:
        """A bug while handling the group: its images not yet accounted for fail (exit 5)."""
        handled = {entry["input"] for entry in report.outputs}
        paths = [image.path for image in group.images if str(image.path) not in handled]
        self.summary.internal_errors += 1
        for problem in internal_error_problems(group, exc, paths):
            self.fail(report, problem)

    def skipped_group(self, group: Group) -> None:
        """A group whose files all exist (``--skip-existing``): reported, not computed."""
        report = self.new_report(group)
        self.open(report, group)
        for image in group.images:
            self.written(report, group, image, "skipped")
        self.finish(report, 0.0)

    def tick(self, report: GroupReport, images: float = 0.5) -> None:
        """The progress bar moves per image as its map is computed (half) and written (half), not per group."""
        if images:
            self._advanced[id(report)] = self._advanced.get(id(report), 0.0) + images
            self.reporter.advance(images)

    def finish(self, report: GroupReport, started: float) -> None:
        report.seconds = time.perf_counter() - started if started else 0.0
        self.summary.groups.append(report)
        rest = report.images - self._advanced.pop(id(report), 0.0)  # failures, and skipped groups
        if rest > 1e-9:
            self.reporter.advance(rest)
        self.reporter.group_done(report)

    def fail(self, report: GroupReport, problem: Problem, output: str = "") -> None:
        report.failed += 1
        report.outputs.append({"input": str(problem.path), "output": output, "status": "failed"})
        self.fail_run(problem)

    def fail_run(self, problem: Problem) -> None:
        """A problem outside any group's report (a path discovery could not use)."""
        self.summary.failures.append(problem)
        self.reporter.problem(problem)

    def notice(self, message: str) -> None:
        self.summary.notices.append(message)
        self.reporter.notice(message)
