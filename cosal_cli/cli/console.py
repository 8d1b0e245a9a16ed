"""What the commands share for printing: the consoles, --json, the reporters and progress bars.

Messages and progress go to stderr; stdout carries only results (tables, one JSON object).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from rich.console import Console

from cosal_cli import __version__

if TYPE_CHECKING:
    from rich.progress import Progress

    from cosal_cli.io import Problem
    from cosal_cli.runners.summary import GroupReport

stdout = Console(highlight=False, soft_wrap=True)
stderr = Console(stderr=True, highlight=False, soft_wrap=True)


class RunState:
    """What one invocation has done so far: whether it owes a JSON object, and whether SIGTERM came."""

    def reset(self, json_wanted: bool) -> None:
        self.json_wanted, self.json_printed, self.terminated = json_wanted, False, False


state = RunState()
state.reset(json_wanted=False)


def print_json(document: Any) -> None:
    state.json_printed = True
    stdout.print_json(json.dumps(document))


def emit_error_json(code: int, message: str | None) -> int:
    """With --json, the one JSON object of an exit that had no result to print; returns ``code``."""
    if state.json_wanted and not state.json_printed:
        print_json({"cosal_version": __version__, "exit_code": int(code), "error": message})
    return code


def escape(text: str) -> str:
    from rich.markup import escape as rich_escape

    return rich_escape(text)


def count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


# ----------------------------------------------------------------------------------------------
# methods


def cached_cell(cached: bool, imported: bool) -> str:
    """The cached cell: yes / no, or imported / not imported for an imported component."""
    if not imported:
        return "[green]yes[/]" if cached else "[red]no[/]"
    return "[green]imported[/]" if cached else "[red]not imported[/]"


# ----------------------------------------------------------------------------------------------


class ConsoleReporter:
    """Progress bar on a terminal, one plain line per group otherwise; errors always on stderr."""

    def __init__(self, progress: Progress | None, quiet: bool, debug: bool = False):
        self.progress, self.quiet, self.debug = progress, quiet, debug
        self.console = progress.console if progress else stderr
        self.task = progress.tasks[0].id if progress and progress.tasks else None

    def notice(self, message: str) -> None:
        if not self.quiet:
            self.console.print(f"[dim]note:[/] {escape(message)}")

    def problem(self, problem: Problem) -> None:
        self.console.print(f"[bold red]error:[/] {escape(str(problem))}")
        if self.debug and problem.traceback and problem.traceback != self._last_traceback:
            self.console.print(escape(problem.traceback))  # once per group, not once per image
        self._last_traceback = problem.traceback

    _last_traceback: str | None = None

    def advance(self, images: float) -> None:
        if self.progress is not None and self.task is not None:
            self.progress.advance(self.task, images)

    def doing(self, text: str) -> None:
        if self.progress is not None and self.task is not None:
            self.progress.update(self.task, description=escape(text))

    def group_done(self, report: GroupReport) -> None:
        if self.progress is None and not self.quiet:
            self.console.print(
                f"{escape(report.name)}: {report.written} written, {report.skipped} skipped, "
                f"{report.failed} failed ({report.seconds:.1f} s) -> {escape(report.output)}"
            )


@contextmanager
def progress_bar(quiet: bool, total: int | None, fields: tuple[str, ...] = ()) -> Iterator[Progress | None]:
    """A rich progress bar on stderr when it is a terminal (and not --quiet); None otherwise.

    ``total`` adds a first "images" task; ``fields`` are extra columns such as ``"loss {task.fields[loss]}"``.
    """
    if quiet or not stderr.is_terminal:
        yield None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = ("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
               *(fields or (_images_per_second_column(),)), TimeElapsedColumn(), TimeRemainingColumn())  # fmt: skip
    with Progress(*columns, console=stderr) as progress:
        if total is not None:
            progress.add_task("images", total=total)
        yield progress


def _images_per_second_column():
    from rich.progress import ProgressColumn
    from rich.text import Text

    class ImagesPerSecond(ProgressColumn):
        """Images/s of the first task (the images), blank until rich has a speed to show."""

        def render(self, task) -> Text:
            return Text(f"{task.speed:.1f} img/s" if task.speed else "", style="progress.data.speed")

    return ImagesPerSecond()


def download_callback(progress: Progress) -> Callable[[str, int, int | None], None]:
    tasks: dict[str, Any] = {}

    def update(label: str, done: int, total: int | None) -> None:
        if label not in tasks:
            tasks[label] = progress.add_task(f"download {label}", total=total)
        progress.update(tasks[label], completed=done)

    return update
