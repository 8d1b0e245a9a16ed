"""The ``cosal`` command line: parses arguments and prints; the work happens in pipeline and hub.

Heavy modules (torch, the pipeline, the hub) are imported inside the commands so that
``cosal --help`` and ``cosal --version`` answer at once.
"""

from __future__ import annotations

import functools
import json
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from cosal_cli import __version__
from cosal_cli.errors import CosalError, ExitCode, Terminated, UsageError, first_line

if TYPE_CHECKING:
    from rich.progress import Progress

    from cosal_cli.io import Problem
    from cosal_cli.pipeline import GroupReport, Summary

EXIT_CODES_HELP = (
    "Exit codes: 0 all done, 1 some inputs failed, 2 usage error, 3 weights unavailable "
    "(offline / not cached), 4 weights checksum mismatch, 5 internal error (in some group; the others "
    "were processed), 130 interrupted (Ctrl-C), 143 terminated (SIGTERM). With --json, every exit prints "
    "one JSON object with exit_code."
)


class _CosalGroup(TyperGroup):
    """Every exit of every command goes through here, so that even a parse error or a SIGTERM gives the
    documented exit code and, with ``--json``, one JSON object on stdout."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        arguments = list(sys.argv[1:] if args is None else args)
        _state.reset(json_wanted="--json" in arguments)
        with _sigterm_raises_terminated():
            try:
                code = super().main(arguments, prog_name, complete_var, standalone_mode=False, **extra)
            except typer.TyperException as exc:  # bad option or argument: the parser's message, exit 2
                _show_parse_error(exc)
                code = _emit_error_json(getattr(exc, "exit_code", ExitCode.USAGE), exc.format_message())
            except (typer.Abort, KeyboardInterrupt) as exc:
                code = _emit_error_json(_interrupt_code(exc), "interrupted")
        code = ExitCode.TERMINATED if _state.terminated else (code or 0)
        if not standalone_mode:
            return code
        sys.exit(int(code))


app = typer.Typer(
    cls=_CosalGroup,
    name="cosal",
    help=f"Co-saliency detection: image groups in, one map per image out. {EXIT_CODES_HELP}",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
weights_app = typer.Typer(help="List, fetch, verify and locate weight components.", no_args_is_help=True)
app.add_typer(weights_app, name="weights")

stdout = Console(highlight=False, soft_wrap=True)
stderr = Console(stderr=True, highlight=False, soft_wrap=True)


def main() -> None:
    app()


def _show_parse_error(exc: typer.TyperException) -> None:
    """The parse error as typer prints it on its own (a rich panel), or plainly without rich."""
    try:
        from typer.rich_utils import rich_format_error
    except ImportError:
        exc.show()
    else:
        rich_format_error(exc)


class _RunState:
    """What one invocation has done so far: whether it owes a JSON object, and whether SIGTERM came."""

    def reset(self, json_wanted: bool) -> None:
        self.json_wanted, self.json_printed, self.terminated = json_wanted, False, False


_state = _RunState()
_state.reset(json_wanted=False)


def _print_json(document: Any) -> None:
    _state.json_printed = True
    stdout.print_json(json.dumps(document))


def _emit_error_json(code: int, message: str | None) -> int:
    """With --json, the one JSON object of an exit that had no result to print; returns ``code``."""
    if _state.json_wanted and not _state.json_printed:
        _print_json({"cosal_version": __version__, "exit_code": int(code), "error": message})
    return code


def _interrupt_code(exc: BaseException) -> ExitCode:
    terminated = isinstance(exc, Terminated) or _state.terminated
    return ExitCode.TERMINATED if terminated else ExitCode.INTERRUPTED


@contextmanager
def _sigterm_raises_terminated() -> Iterator[None]:
    """SIGTERM raises Terminated (a KeyboardInterrupt) in the main thread, so a kill or a scheduler's
    time limit ends the run as Ctrl-C does: complete maps only, a summary, exit 143."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, frame):
        _state.terminated = True
        raise Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _handle_errors(command: Callable) -> Callable:
    """Turn every way a command can end into a one-line message, its documented exit code and, with
    --json, one JSON object: CosalError (2-4), Ctrl-C (130), SIGTERM (143), a bug (5)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise
        except CosalError as exc:
            stderr.print(f"[bold red]error:[/] {_escape(str(exc))}")
            raise typer.Exit(_emit_error_json(exc.exit_code, str(exc))) from None
        except KeyboardInterrupt as exc:
            code = _interrupt_code(exc)
            stderr.print("[yellow]terminated[/]" if code == ExitCode.TERMINATED else "[yellow]interrupted[/]")
            raise typer.Exit(_emit_error_json(code, "terminated" if code == ExitCode.TERMINATED else "interrupted"))
        except Exception as exc:
            message = f"internal error ({type(exc).__name__}: {first_line(exc)}); please report it"
            stderr.print(f"[bold red]error:[/] {_escape(message)}")
            if kwargs.get("debug"):
                stderr.print(_escape("".join(traceback.format_exception(exc))))
            else:
                stderr.print("[dim]rerun with --debug for the traceback[/]")
            raise typer.Exit(_emit_error_json(ExitCode.INTERNAL_ERROR, message)) from None

    return wrapper


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _version_callback(value: bool) -> None:
    if value:
        stdout.print(f"cosal {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    pass


# ----------------------------------------------------------------------------------------------
# detect
# ----------------------------------------------------------------------------------------------


# Options of the SISM-consuming methods (ICNet), shared by detect and bench.
SismOption = Annotated[
    Optional[str],
    typer.Option("--sism", help="ICNet: the single-image saliency generator, sod or gmr (default: the one the "
                 "weights were trained with). SISMs are cached per image."),
]
SismDirOption = Annotated[
    Optional[Path],
    typer.Option("--sism-dir", help="ICNet: precomputed SISMs, DIR/<group>/<stem>.png, from any detector."),
]
LayoutOption = Annotated[
    str,
    typer.Option("--layout", help="How to read each PATH folder: auto (images inside: one group; only "
                 "sub-folders: a folder of groups; both: an error asking you to choose), group (the folder is "
                 "one group, sub-folders ignored) or groups (each sub-folder is a group, loose images ignored)."),
]
DebugOption = Annotated[
    bool, typer.Option("--debug", help="Print the traceback of an internal error (exit 5) to report it.")
]
ChunkOption = Annotated[
    Optional[int],
    typer.Option("--chunk", min=1, help="ICNet: run each group in sub-groups of N images to bound memory. "
                 "CHANGES the maps (the consensus is per sub-group); default: the whole group at once."),
]


@app.command(epilog=EXIT_CODES_HELP)
@_handle_errors
def detect(
    paths: Annotated[
        list[str],
        typer.Argument(
            help="Group folders (images inside), folders of group folders, dataset roots (Image/<group>/), "
            "or - to read such paths from stdin, one per line.",
            show_default=False,
        ),
    ],
    method: Annotated[Optional[str], typer.Option("--method", "-m", help="Method name (see `cosal methods`).")] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Maps go to OUTPUT/<group>/<stem>.png.")] = Path(
        "cosal-maps"
    ),
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    skip_existing: Annotated[bool, typer.Option("--skip-existing", help="Keep maps that exist (resume a run).")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace maps that exist.")] = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass (memory, not results).")] = 8,
    sism: SismOption = None,
    sism_dir: SismDirOption = None,
    chunk: ChunkOption = None,
    layout: LayoutOption = "auto",
    offline: Annotated[bool, typer.Option("--offline", help="Never touch the network for weights.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON summary on stdout.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only errors (and --json).")] = False,
    debug: DebugOption = False,
) -> None:
    """Write a co-saliency map for every image of every group."""
    from cosal_cli import hub, io, methods, pipeline

    if skip_existing and overwrite:
        raise UsageError("--skip-existing and --overwrite exclude each other")
    method_name = method or methods.DEFAULT_METHOD
    methods.card(method_name)  # unknown names fail before any file is read
    discovery = io.discover(io.read_paths(paths), layout)
    existing = "skip" if skip_existing else "overwrite" if overwrite else "error"
    total = sum(len(group.images) + len(group.problems) for group in discovery.groups)

    with _progress(quiet, total) as progress:
        reporter = _ConsoleReporter(progress, quiet, debug)
        summary = pipeline.run(
            discovery,
            method_name,
            output,
            device_spec=device,
            existing=existing,
            batch_size=batch_size,
            offline=hub.offline_mode(offline),
            options=_method_options(sism, sism_dir, chunk),
            reporter=reporter,
            download_progress=_download_progress(progress) if progress else None,
        )
    if json_output:
        _print_json(summary.to_json())
    if not quiet:
        _print_detect_summary(summary)
    raise typer.Exit(int(summary.exit_code))


def _method_options(sism: str | None, sism_dir: Path | None, chunk: int | None, bench_methods: list[str] | None = None):
    """``--sism`` / ``--sism-dir`` / ``--chunk`` as MethodOptions; in bench, some method must take each of them."""
    from cosal_cli import methods
    from cosal_cli.methods.base import MethodOptions
    from cosal_cli.sism import SismChoice

    options = MethodOptions(SismChoice(sism, sism_dir), chunk)
    for flag in options.given() if bench_methods is not None else ():
        if not any(flag in methods.method_class(name).accepts for name in bench_methods):
            raise UsageError(f"{flag} applies to none of the methods benchmarked ({', '.join(bench_methods)})")
    return options


class _ConsoleReporter:
    """Progress bar on a terminal, one plain line per group otherwise; errors always on stderr."""

    def __init__(self, progress: Progress | None, quiet: bool, debug: bool = False):
        self.progress, self.quiet, self.debug = progress, quiet, debug
        self.console = progress.console if progress else stderr
        self.task = progress.tasks[0].id if progress and progress.tasks else None

    def notice(self, message: str) -> None:
        if not self.quiet:
            self.console.print(f"[dim]note:[/] {_escape(message)}")

    def problem(self, problem: Problem) -> None:
        self.console.print(f"[bold red]error:[/] {_escape(str(problem))}")
        if self.debug and problem.traceback and problem.traceback != self._last_traceback:
            self.console.print(_escape(problem.traceback))  # once per group, not once per image
        self._last_traceback = problem.traceback

    _last_traceback: str | None = None

    def advance(self, images: int) -> None:
        if self.progress is not None and self.task is not None:
            self.progress.advance(self.task, images)

    def group_done(self, report: GroupReport) -> None:
        if self.progress is None and not self.quiet:
            self.console.print(
                f"{_escape(report.name)}: {report.written} written, {report.skipped} skipped, "
                f"{report.failed} failed ({report.seconds:.1f} s) -> {_escape(report.output)}"
            )


@contextmanager
def _progress(quiet: bool, total: int | None, fields: tuple[str, ...] = ()) -> Iterator[Progress | None]:
    """A rich progress bar on stderr when it is a terminal (and not --quiet); None otherwise.

    ``total`` adds a first "images" task; ``fields`` are extra columns such as ``"loss {task.fields[loss]}"``.
    """
    if quiet or not stderr.is_terminal:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn, TimeRemainingColumn

    columns = ("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(), *fields,
               TimeElapsedColumn(), TimeRemainingColumn())  # fmt: skip
    with Progress(*columns, console=stderr) as progress:
        if total is not None:
            progress.add_task("images", total=total)
        yield progress


def _download_progress(progress: Progress) -> Callable[[str, int, int | None], None]:
    tasks: dict[str, Any] = {}

    def update(label: str, done: int, total: int | None) -> None:
        if label not in tasks:
            tasks[label] = progress.add_task(f"download {label}", total=total)
        progress.update(tasks[label], completed=done)

    return update


def _print_detect_summary(summary: Summary) -> None:
    counts = summary.to_json()
    rate = counts["images_per_second"]
    line = (
        f"{summary.written} map(s) written to {summary.output}/ for {len(summary.groups)} group(s)"
        f" ({summary.skipped} skipped, {len(summary.failures)} failed) with {summary.method} on {summary.device}"
        f" in {summary.timings.get('total_s', 0):.1f} s"
        + (f", {rate:.2f} images/s" if rate else "")
    )
    stderr.print(_escape(line))
    for group in summary.groups:
        if group.written:
            stderr.print(f"  {_escape(group.output)}/")
    if summary.internal_errors:
        stderr.print(f"[bold red]{summary.internal_errors} group(s) hit an internal error[/] (exit 5): "
                     "rerun with --debug for the traceback and report it")  # fmt: skip
    if summary.interrupted:
        how = "terminated (SIGTERM)" if summary.terminated else "interrupted"
        stderr.print(f"[yellow]{how}: rerun with --skip-existing to finish[/]")


# ----------------------------------------------------------------------------------------------
# bench
# ----------------------------------------------------------------------------------------------

BENCH_EPILOG = (
    "Exit codes: 0 every mask scored, 1 some predictions or masks missing or unreadable (named on stderr "
    "and in --json), 2 usage error or dataset not found, 3 weights unavailable, 4 weights checksum "
    "mismatch, 5 internal error while running a method on some group, 130 interrupted, 143 terminated "
    "(SIGTERM). With --json, every exit prints one JSON object with exit_code."
)


@app.command(epilog=BENCH_EPILOG)
@_handle_errors
def bench(
    dataset: Annotated[
        list[str],
        typer.Option("--dataset", "-d", help="icoseg, msrc, cosal2015, coca, cosod3k, any dataset folder name "
                     "under --data-root, or a dataset folder (repeat for several).", show_default=False),
    ],
    data_root: Annotated[Optional[Path], typer.Option("--data-root", help="Folder holding the datasets.")] = None,
    split: Annotated[
        Optional[Path], typer.Option("--split", help="Use only the held-out part of this split (training/splits/).")
    ] = None,
    method: Annotated[
        Optional[list[str]], typer.Option("--method", "-m", help="Run and score this method (repeatable).")
    ] = None,
    pred: Annotated[
        Optional[list[Path]],
        typer.Option("--pred", help="Score maps written by any tool: DIR/<group>/<stem>.png or "
                     "DIR/<Dataset>/<group>/<stem>.png (repeatable; named after the folder)."),
    ] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Methods' maps go to OUTPUT/<method>/<dataset>/.")] = Path(
        "cosal-bench"
    ),
    protocol: Annotated[
        str, typer.Option(help="Whose conventions: pysodmetrics or eval-co-sod (see the README).")
    ] = "pysodmetrics",
    group_average: Annotated[
        bool, typer.Option("--group-average", help="Average within groups, then over groups (CoSOD3k toolbox).")
    ] = False,
    skip_existing: Annotated[bool, typer.Option("--skip-existing", help="Reuse maps already in OUTPUT.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Recompute maps already in OUTPUT.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass.")] = 8,
    sism: SismOption = None,
    sism_dir: SismDirOption = None,
    chunk: ChunkOption = None,
    offline: Annotated[bool, typer.Option("--offline", help="Never touch the network for weights.")] = False,
    report: Annotated[
        Optional[Path], typer.Option("--report", help="Write metrics.json, metrics.csv, per_group.csv, curves.png here.")
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the results as JSON on stdout.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only errors (and --json).")] = False,
    debug: DebugOption = False,
) -> None:
    """Score methods, or maps from any tool, on co-saliency benchmarks."""
    from cosal_cli import bench as benchmark
    from cosal_cli import datasets, hub, methods, metrics

    if skip_existing and overwrite:
        raise UsageError("--skip-existing and --overwrite exclude each other")
    if protocol not in metrics.PROTOCOLS:
        raise UsageError(f"--protocol must be one of {', '.join(metrics.PROTOCOLS)}, not {protocol!r}")
    method_names = list(method or ([] if pred else [methods.DEFAULT_METHOD]))
    for name in method_names:
        methods.card(name)  # unknown names fail before any file is read
    for folder in pred or []:
        if not folder.is_dir():
            raise UsageError(f"--pred {folder}: no such folder")
    found = _unique_datasets([datasets.locate(name, data_root, require_images=bool(method_names)) for name in dataset])
    if split is not None:
        from cosal_cli.splits import held_out_part, load_split

        chosen = load_split(split)
        found = [held_out_part(found_dataset, chosen) for found_dataset in found]
    predictions = _prediction_names(pred or [], found, taken=method_names)

    with _progress(quiet, 0) as progress:
        result = benchmark.run(
            found,
            methods=method_names,
            predictions=predictions,
            output=output,
            protocol=protocol,
            group_average=group_average,
            reporter=_BenchConsoleReporter(progress, quiet, debug),
            existing="skip" if skip_existing else "overwrite" if overwrite else "error",
            device_spec=device,
            batch_size=batch_size,
            offline=hub.offline_mode(offline),
            options=_method_options(sism, sism_dir, chunk, method_names),
            download_progress=_download_progress(progress) if progress else None,
        )
    if report is not None:
        from cosal_cli.report import write_report

        for path in write_report(result, report):
            if not quiet:
                stderr.print(f"wrote {_escape(str(path))}")
    if json_output:
        _print_json(result.to_json())
    elif not quiet:
        _print_bench_tables(result)
    if not quiet:
        _print_bench_warnings(result)
    raise typer.Exit(int(result.exit_code))


def _unique_datasets(found: list) -> list:
    """Each dataset once, however often it was named (``-d coca -d CoCA``)."""
    unique: dict[Path, Any] = {}
    for dataset in found:
        unique.setdefault(dataset.mask_root.resolve(), dataset)
    return list(unique.values())


def _prediction_names(folders: list[Path], found: list, taken: list[str]) -> list[tuple[str, Path]]:
    """Name each --pred folder after itself (its parent when it is named after the dataset), uniquely."""
    dataset_names = {dataset.name.casefold() for dataset in found}
    used = set(taken)
    named: list[tuple[str, Path]] = []
    for folder in folders:
        resolved = folder.resolve()
        name = resolved.parent.name if resolved.name.casefold() in dataset_names else resolved.name
        unique, counter = name, 2
        while unique in used:
            unique, counter = f"{name}~{counter}", counter + 1
        used.add(unique)
        named.append((unique, folder))
    return named


class _BenchConsoleReporter(_ConsoleReporter):
    """The detect reporter, plus one progress stage per method run and per scoring pass."""

    def stage(self, description: str, total: int) -> None:
        if self.progress is not None and self.task is not None:
            self.progress.update(self.task, description=_escape(description), total=total, completed=0)
        elif not self.quiet:
            self.console.print(f"{_escape(description)} ({total} images)")

    def group_done(self, report: GroupReport) -> None:
        pass  # the stage line says enough in a benchmark


def _print_bench_tables(result: Any) -> None:
    from cosal_cli.report import TITLES

    document = result.to_json()
    averaging = "per group" if result.group_average else "per image"
    # Piped output has no terminal width; a wide one keeps the table whole rather than truncated.
    console = stdout if stdout.is_terminal else Console(highlight=False, width=200)
    for dataset in document["datasets"]:
        title = (f"{dataset['name']}: {_count(dataset['groups'], 'group')}, {_count(dataset['images'], 'mask')} "
                 f"({document['protocol']} protocol, averaged {averaging})")  # fmt: skip
        table = Table(title=_escape(title))
        table.add_column("method", no_wrap=True)
        table.add_column("scored", justify="right")
        for title_text in TITLES.values():
            table.add_column(title_text, justify="right")
        for row in dataset["methods"]:
            values = row["metrics"]
            scored = f"{row['evaluated']}/{row['expected']}"
            if row["evaluated"] < row["expected"]:
                scored = f"[yellow]{scored}[/]"
            cells = [f"{values[key]:.4f}" if key in values else "-" for key in TITLES]
            table.add_row(_escape(row["name"]), scored, *cells)
        console.print(table)


def _print_bench_warnings(result: Any) -> None:
    """After the tables (or the JSON): what makes the scores incomplete or not comparable."""
    for dataset in result.to_json()["datasets"]:
        check = dataset["validation"]
        if check["checked"] and not check["ok"]:
            stderr.print(f"[yellow]warning:[/] {_escape(check['message'])}")
        for row in dataset["methods"]:
            if row["missing"] or row["failed"]:
                stderr.print(
                    f"[yellow]warning:[/] {_escape(dataset['name'])} / {_escape(row['name'])}: "
                    f"{_count(row['missing'], 'mask')} without a prediction, {_count(row['failed'], 'unreadable file')}"
                    " (named above and in --json); the scores cover the rest"
                )


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


# ----------------------------------------------------------------------------------------------
# methods
# ----------------------------------------------------------------------------------------------


TRAIN_EPILOG = (
    "Exit codes: 0 trained, 2 usage error (bad data, split or options; a checkpoint from an earlier run "
    "without --resume), 3 weights unavailable, 4 weights checksum mismatch, 130 interrupted (the checkpoint "
    "is saved: rerun with --resume)."
)


TRAIN_COLUMNS = ("loss {task.fields[loss]:.4f}", "{task.fields[speed]:.1f} img/s")


@app.command(epilog=TRAIN_EPILOG)
@_handle_errors
def train(
    method: Annotated[str, typer.Option("--method", "-m", help="The method whose head to train.", show_default=False)],
    data: Annotated[
        list[Path],
        typer.Option("--data", help="A dataset folder in the Image/<group> + GroundTruth/<group> layout "
                     "(repeatable).", show_default=False),
    ],
    split: Annotated[
        Path, typer.Option("--split", help="Split file naming the held-out part (training/splits/).", show_default=False)
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="The head to write (.safetensors).", show_default=False)
    ],
    epochs: Annotated[int, typer.Option(min=1, help="Passes over the training images.")] = 4,
    lr: Annotated[float, typer.Option(min=0.0, help="Adam learning rate (cosine-decayed to 1 %).")] = 1e-3,
    size: Annotated[int, typer.Option(min=32, help="Side of the square training crops.")] = 192,
    min_group: Annotated[int, typer.Option(min=1, help="Fewest images of one group in a batch.")] = 2,
    max_group: Annotated[int, typer.Option(min=1, help="Most images of one group in a batch.")] = 6,
    composite_fraction: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Fraction of images given a pasted object of another group.")
    ] = 0.0,
    seed: Annotated[int, typer.Option(help="Seed of the head's initialisation and of every batch.")] = 0,
    sism: Annotated[
        Optional[str],
        typer.Option("--sism", help="ICNet: the SISM generator to train with (sod or gmr); use the same one at test "
                     "time. Default: sod."),
    ] = None,
    val_limit: Annotated[int, typer.Option(min=0, help="Held-out images per group validated each epoch (0: all).")] = 24,
    per_group: Annotated[
        int, typer.Option(min=0, help="Train on at most N images of each group, evenly spaced (0: all).")
    ] = 0,
    checkpoint_every: Annotated[int, typer.Option(min=1, help="Batches between checkpoints.")] = 50,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from OUTPUT's checkpoint.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N (CUDA trains in bf16 autocast).")] = "auto",
    threads: Annotated[Optional[int], typer.Option(min=1, help="CPU threads for torch.")] = None,
    offline: Annotated[bool, typer.Option("--offline", help="Never touch the network for weights.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print the kept head's metadata as JSON.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only errors (and --json).")] = False,
) -> None:
    """Train a method's head on datasets, validating on a split's held-out part after every epoch."""
    from cosal_cli import hub, methods
    from cosal_cli.splits import load_split
    from cosal_cli.training.sampler import SamplerSettings
    from cosal_cli.training.trainer import TrainSettings
    from cosal_cli.training.trainer import train as run_training

    methods.card(method)
    if output.suffix != ".safetensors":
        raise UsageError(f"--output {output}: heads are written as .safetensors files")
    try:
        sampler = SamplerSettings(size=size, min_group=min_group, max_group=max_group,
                                  composite_fraction=composite_fraction, seed=seed)  # fmt: skip
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    settings = TrainSettings(
        method=method, data=list(data), split=load_split(split), output=output, epochs=epochs, lr=lr,
        sampler=sampler, val_limit=val_limit, per_group=per_group, checkpoint_every=checkpoint_every, device=device,
        resume=resume, offline=hub.offline_mode(offline), config={"sism": sism} if sism is not None else {},
    )  # fmt: skip
    with _progress(quiet, None, TRAIN_COLUMNS) as progress:
        metadata = run_training(settings, _TrainConsoleReporter(progress, quiet))
    if json_output:
        _print_json(metadata)
    elif not quiet:
        kept = metadata["validation"]["kept"]
        stdout.print(
            f"wrote {_escape(str(output))}: epoch {kept['epoch']} of {metadata['training']['epochs_run']}, held-out "
            f"S {kept['sm']:.3f}, max F {kept['max_fm']:.3f}, mean E {kept['mean_em']:.3f}, MAE {kept['mae']:.3f}"
        )


class _TrainConsoleReporter(_ConsoleReporter):
    """A progress bar per epoch with the running loss and images/s; plain lines when not a terminal."""

    LOG_EVERY = 50  # batches between plain progress lines

    def __init__(self, progress: Progress | None, quiet: bool):
        import time

        super().__init__(progress, quiet)
        self.clock = time.perf_counter
        self.epoch = self.batch = self.batches = 0
        self.loss: float | None = None
        self.images, self.started = 0, self.clock()

    def epoch_start(self, epoch: int, epochs: int, batches: int, done: int) -> None:
        self.epoch, self.batch, self.batches = epoch, done, batches
        self.images, self.started = 0, self.clock()
        if self.progress is not None:
            self.task = self.progress.add_task(f"epoch {epoch}/{epochs}", total=batches, completed=done,
                                               loss=0.0, speed=0.0)  # fmt: skip

    def step(self, images: int, loss: float) -> None:
        self.batch += 1
        self.images += images
        self.loss = loss if self.loss is None else 0.95 * self.loss + 0.05 * loss  # smoothed for display
        speed = self.images / max(self.clock() - self.started, 1e-9)
        if self.progress is not None:
            self.progress.update(self.task, advance=1, loss=self.loss, speed=speed)
        elif not self.quiet and self.batch % self.LOG_EVERY == 0:
            self.console.print(f"epoch {self.epoch} batch {self.batch}/{self.batches}: loss {self.loss:.4f}, "
                               f"{speed:.1f} img/s")  # fmt: skip

    def validation_start(self, images: int) -> None:
        if not self.quiet:
            self.console.print(f"epoch {self.epoch}: validating on {images} held-out images")

    def validated(self, epoch: int, scores: dict[str, float], kept: bool) -> None:
        if not self.quiet:
            self.console.print(
                f"epoch {epoch}: held-out S {scores['sm']:.4f}, max F {scores['max_fm']:.4f}, "
                f"mean E {scores['mean_em']:.4f}, MAE {scores['mae']:.4f}" + (" [green](kept)[/]" if kept else "")
            )


@app.command("methods")
@_handle_errors
def list_methods(json_output: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False) -> None:
    """The available methods: paper, components, and whether their weights are cached."""
    from cosal_cli import methods
    from cosal_cli.hub import WeightHub

    hub = WeightHub()
    rows = []
    for card in methods.CARDS.values():
        roles = hub.manifest.methods.get(card.name, {})
        rows.append(
            {
                "name": card.name,
                "default": card.name == methods.DEFAULT_METHOD,
                "paper": card.paper,
                "summary": card.summary,
                "weights": {role: _method_weight(hub, hub.manifest.component(cid)) for role, cid in roles.items()},
                "sism": card.sism,
                "sism_generator": card.sism_generator,
                "refiners": list(card.refiners),
            }
        )
    if json_output:
        _print_json(rows)
        return
    table = Table(title="cosal methods", show_lines=True)
    for column in ("method", "paper", "weights (cached?)", "SISM", "refiners"):
        table.add_column(column, overflow="fold")
    for row in rows:
        weights = "\n".join(
            f"{role}: {item['component']} {_cached_cell(item['cached'], imported=item.get('source') == 'import')}"
            for role, item in row["weights"].items()
        )
        name = row["name"] + (" (default)" if row["default"] else "")
        sism = row["sism"] or ("generates SISMs" if row["sism_generator"] else "-")
        table.add_row(name, f"{row['paper']}\n[dim]{row['summary']}[/]", weights or "none (training-free)", sism,
                      ", ".join(row["refiners"]) or "-")  # fmt: skip
    stdout.print(table)


def _method_weight(hub: Any, component: Any) -> dict[str, Any]:
    item = {"component": component.id, "cached": hub.is_cached(component)}
    if component.imported:
        item["source"] = "import"
        if not item["cached"]:
            item["import"] = component.source.command()
    return item


def _cached_cell(cached: bool, imported: bool) -> str:
    """The cached cell: yes / no, or imported / not imported for an imported component."""
    if not imported:
        return "[green]yes[/]" if cached else "[red]no[/]"
    return "[green]imported[/]" if cached else "[red]not imported[/]"


# ----------------------------------------------------------------------------------------------
# weights
# ----------------------------------------------------------------------------------------------


@weights_app.command("list")
@_handle_errors
def weights_list(json_output: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False) -> None:
    """Every component of the manifest, where it comes from and whether it is cached."""
    from cosal_cli.hub import WeightHub

    hub = WeightHub()
    rows = []
    for component in hub.manifest.components.values():
        row = {
            "id": component.id,
            "description": component.description,
            "licence": component.licence,
            "source": component.source.describe(),
            "size": component.size,
            "sha256": component.sha256,
            "methods": hub.manifest.users(component.id),
            "cached": hub.is_cached(component),
            "path": str(hub.artifact_path(component)),
        }
        if component.imported:  # size and sha256 are the import record's (None until imported)
            record = hub.import_record(component)
            row.update(size=record and record.size, sha256=record and record.sha256)
            row["import_command"] = component.source.command()
        rows.append(row)
    if json_output:
        _print_json(rows)
        return
    table = Table(title=f"weight components ({hub.manifest.path})", show_lines=True)
    for column in ("component", "methods", "source", "size", "licence", "cached"):
        table.add_column(column, overflow="fold")
    for row in rows:
        size = f"{row['size'] / 1e6:.1f} MB" if row["size"] else "-"
        table.add_row(row["id"], ", ".join(row["methods"]) or "-", row["source"], size, row["licence"],
                      _cached_cell(row["cached"], imported="import_command" in row))  # fmt: skip
    stdout.print(table)
    stdout.print(f"cache: {hub.home}")


@weights_app.command("pull")
@_handle_errors
def weights_pull(
    names: Annotated[Optional[list[str]], typer.Argument(help="Component ids or method names.", show_default=False)] = None,
    all_components: Annotated[bool, typer.Option("--all", help="Every component in the manifest.")] = False,
    offline: Annotated[bool, typer.Option("--offline", help="Only use files already on this machine.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only errors.")] = False,
) -> None:
    """Fetch, convert and verify components into the cache (a corrupt cached file is replaced).

    Imported components (`cosal weights import`) are never fetched: --all skips those not imported yet,
    and naming one that is not imported fails with exit 3 and the import command.
    """
    from cosal_cli.hub import WeightHub, offline_mode

    hub = WeightHub()
    if all_components == bool(names):
        raise UsageError("name one or more components or methods, or pass --all")
    components = list(hub.manifest.components.values()) if all_components else hub.manifest.expand(names or [])
    worst = ExitCode.OK
    with _progress(quiet, 0) as progress:
        callback = _download_progress(progress) if progress else None
        for component in components:
            if all_components and component.imported and not hub.is_cached(component):
                if not quiet:
                    stderr.print(f"[dim]skipped[/] {component.id}: imported, not downloaded; "
                                 f"`{_escape(component.source.command())}`")  # fmt: skip
                continue
            try:
                path = hub.pull(component.id, offline=offline_mode(offline), progress=callback)
            except CosalError as exc:
                stderr.print(f"[bold red]error:[/] {_escape(str(exc))}")
                worst = max(worst, exc.exit_code)
                continue
            if not quiet:
                stderr.print(f"[green]ok[/] {component.id} -> {_escape(str(path))}")
    raise typer.Exit(int(worst))


@weights_app.command("verify")
@_handle_errors
def weights_verify(
    names: Annotated[Optional[list[str]], typer.Argument(help="Component ids or method names (default: all).")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Re-hash cached components. Exit 4 if one is corrupt, 3 if a named one is missing."""
    from cosal_cli.hub import WeightHub

    hub = WeightHub()
    components = hub.manifest.expand(names) if names else list(hub.manifest.components.values())
    statuses = [hub.verify(component) for component in components]
    worst = ExitCode.OK
    for status in statuses:
        if status.state == "corrupt":
            worst = max(worst, ExitCode.WEIGHTS_CHECKSUM)
        elif status.state == "missing" and names:
            worst = max(worst, ExitCode.WEIGHTS_UNAVAILABLE)
    if json_output:
        rows = [
            {"id": s.component.id, "state": s.state, "path": str(s.path), "detail": s.detail} for s in statuses
        ]
        _print_json(rows)
    else:
        colours = {"ok": "green", "missing": "yellow", "corrupt": "bold red"}
        for status in statuses:
            detail = f" ({status.detail})" if status.detail else ""
            stdout.print(
                f"[{colours[status.state]}]{status.state}[/] {status.component.id} {_escape(str(status.path))}{detail}"
            )
    raise typer.Exit(int(worst))


@weights_app.command("path")
@_handle_errors
def weights_path(name: Annotated[str, typer.Argument(help="Component id.", show_default=False)]) -> None:
    """Print the path of a cached, verified component (exit 3 if it is not cached)."""
    from cosal_cli.errors import ChecksumMismatch, WeightsUnavailable
    from cosal_cli.hub import WeightHub

    hub = WeightHub()
    component = hub.manifest.component(name)
    status = hub.verify(component)
    if status.state == "missing":
        state = "imported" if component.imported else "cached"
        raise WeightsUnavailable(f"{name} is not {state} ({status.path}); {hub.fix_hint(component)}")
    if status.state == "corrupt":
        raise ChecksumMismatch(f"{status.path} is corrupt ({status.detail}); {hub.fix_hint(component)}")
    print(status.path)


IMPORT_EPILOG = (
    "Each file is loaded with torch.load(weights_only=True), so nothing in it can run, checked strictly against "
    "the network's keys and shapes (and against its published sha256 where there is one), converted to "
    "$COSAL_HOME/imported/<component>.safetensors and recorded, with both sha256s, in <component>.json beside it. "
    "Exit codes: 0 imported (the last lines say whether the importer's methods are ready or what they still "
    "need), 2 usage error, a missing file or one that is not the expected checkpoint (the message names it and "
    "shows the key / shape diff), 4 a published file (the co-classifier) whose sha256 is not the pinned one. "
    "A file that fails leaves the cache unchanged; the other files are still imported."
)


@weights_app.command("import", epilog=IMPORT_EPILOG)
@_handle_errors
def weights_import(
    importer: Annotated[str, typer.Argument(help="Whose files: gicd or icnet.", show_default=False)],
    path: Annotated[
        Optional[Path],
        typer.Argument(help="The main file (gicd: the official gicd_ginet.pth; icnet: ICNet_vgg16.pth).",
                       show_default=False),
    ] = None,
    co_classifier: Annotated[
        Optional[Path],
        typer.Option("--co-classifier", help="gicd: torchvision's vgg16-397923af.pth (default: taken from torch's "
                     "hub cache, $TORCH_HOME/hub/checkpoints/, when it is there and not imported yet).",
                     show_default=False),
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")] = False,
) -> None:
    """Import weights that cannot be downloaded (the official GICD files): check, convert and record them."""
    from cosal_cli.hub import WeightHub

    hub = WeightHub()
    files = {option: file for option, file in (("PATH", path), ("--co-classifier", co_classifier)) if file is not None}
    outcomes = hub.import_files(importer, files)
    worst = max((outcome.error.exit_code for outcome in outcomes if outcome.error), default=ExitCode.OK)
    imported = [outcome.component.id for outcome in outcomes if outcome.record]
    users = [m for c in hub.manifest.importer(importer) for m in hub.manifest.users(c.id)]
    readiness = {method: hub.method_status(method, known_ok=imported) for method in dict.fromkeys(users)}
    if json_output:
        _print_json(_import_json(outcomes, readiness, worst))
    for outcome in outcomes:
        found = f" (found in {outcome.found_in})" if outcome.found_in else ""
        if outcome.error:
            stderr.print(f"[bold red]error:[/] {_escape(str(outcome.error))}")
            continue
        record = outcome.record
        stderr.print(f"[green]imported[/] {outcome.component.id} from {_escape(record.source_path)}{found}\n"
                     f"  source sha256 {record.source_sha256}\n  -> {_escape(record.path)}")  # fmt: skip
    for method, statuses in readiness.items():
        missing = [(role, status) for role, status in statuses.items() if status.state != "ok"]
        if not missing:
            stderr.print(f"[green]{method} is ready[/]: cosal detect PATH... --method {method}")
            continue
        needs = "; ".join(
            f"{role} ({status.component.id}) is {'not imported' if status.state == 'missing' else 'corrupt'}: "
            f"`{status.component.source.command()}`"
            for role, status in missing
        )
        stderr.print(f"[yellow]{method} is not ready yet[/]: {_escape(needs)}")
    raise typer.Exit(int(worst))


def _import_json(outcomes: list, readiness: dict, exit_code: int) -> dict[str, Any]:
    return {
        "imported": [
            {**outcome.record.to_json(), "found_in": outcome.found_in} for outcome in outcomes if outcome.record
        ],
        "errors": [
            {
                "component": outcome.component.id,
                "path": str(outcome.path),
                "found_in": outcome.found_in,
                "message": str(outcome.error),
                "exit_code": int(outcome.error.exit_code),
            }
            for outcome in outcomes
            if outcome.error
        ],
        "methods": {
            method: {
                "ready": all(status.state == "ok" for status in statuses.values()),
                "weights": {
                    role: {"component": status.component.id, "state": status.state, "path": str(status.path)}
                    for role, status in statuses.items()
                },
            }
            for method, statuses in readiness.items()
        },
        "exit_code": int(exit_code),
    }


if __name__ == "__main__":  # pragma: no cover
    main()
