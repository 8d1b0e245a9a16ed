"""``cosal bench``: run methods on benchmarks and score them, or score maps from any tool."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from cosal_cli.cli.app import app, handle_errors
from cosal_cli.cli.console import (
    ConsoleReporter,
    count,
    download_callback,
    escape,
    print_json,
    progress_bar,
    stderr,
    stdout,
)
from cosal_cli.cli.options import (
    BackendOption,
    BranchesOption,
    ChunkOption,
    CoCategoryOption,
    DebugOption,
    GpusPerWorkerOption,
    OutsidersOption,
    PoolingOption,
    PrecisionOption,
    RayAddressOption,
    RayRuntimeEnvOption,
    RefineOption,
    RunnerOption,
    ScalesOption,
    SismDirOption,
    SismOption,
    SmoothingOption,
    SubgroupOption,
    ThreadsOption,
    TtaOption,
    WorkersOption,
    WriteOnWorkersOption,
    chosen_runner,
    method_choices,
    method_values,
)
from cosal_cli.errors import UsageError

BENCH_EPILOG = (
    "Exit codes: 0 every mask scored, 1 some predictions or masks missing or unreadable (named on stderr "
    "and in --json), 2 usage error or dataset not found, 3 weights unavailable, 4 weights checksum "
    "mismatch, 5 internal error while running a method on some group, 130 interrupted, 143 terminated "
    "(SIGTERM). With --json, every exit prints one JSON object with exit_code."
)

if TYPE_CHECKING:
    from cosal_cli.runners.summary import GroupReport



@app.command(epilog=BENCH_EPILOG)
@handle_errors
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
        Optional[list[str]],
        typer.Option("--method", "-m", metavar="METHOD", help=f"Run and score this method (repeatable): "
                     f"{method_choices()}."),
    ] = None,
    pred: Annotated[
        Optional[list[Path]],
        typer.Option("--pred", help="Score maps written by any tool: DIR/<group>/<stem>.png or "
                     "DIR/<Dataset>/<group>/<stem>.png (repeatable; named after the folder)."),
    ] = None,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Methods' maps go to OUTPUT/<method>/<dataset>/.")
    ] = Path("cosal-bench"),
    protocol: Annotated[
        str, typer.Option(help="Whose conventions: pysodmetrics or eval-co-sod (see the README).")
    ] = "pysodmetrics",
    group_average: Annotated[
        bool, typer.Option("--group-average", help="Average within groups, then over groups (CoSOD3k toolbox).")
    ] = False,
    skip_existing: Annotated[bool, typer.Option("--skip-existing", help="Reuse maps already in OUTPUT.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Recompute maps already in OUTPUT.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    backend: BackendOption = "torch",
    precision: PrecisionOption = "fp32",
    threads: ThreadsOption = None,
    runner: RunnerOption = "local",
    ray_address: RayAddressOption = None,
    workers: WorkersOption = None,
    gpus_per_worker: GpusPerWorkerOption = None,
    write_on_workers: WriteOnWorkersOption = False,
    ray_runtime_env: RayRuntimeEnvOption = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass.")] = 8,
    sism: SismOption = None,
    sism_dir: SismDirOption = None,
    subgroup: SubgroupOption = None,
    outsiders: OutsidersOption = None,
    smoothing: SmoothingOption = None,
    branches: BranchesOption = None,
    scales: ScalesOption = None,
    co_category: CoCategoryOption = None,
    pooling: PoolingOption = None,
    tta: TtaOption = None,
    chunk: ChunkOption = None,
    refine: RefineOption = None,
    offline: Annotated[bool, typer.Option("--offline", help="Never touch the network for weights.")] = False,
    report: Annotated[
        Optional[Path],
        typer.Option("--report", help="Write metrics.json, metrics.csv, per_group.csv, curves.png and index.html "
                     "(the table, the curves and each method's worst images per group) here."),
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
    run = chosen_runner(runner, ray_address, workers, gpus_per_worker, write_on_workers, ray_runtime_env)
    if protocol not in metrics.PROTOCOLS:
        raise UsageError(f"--protocol must be one of {', '.join(metrics.PROTOCOLS)}, not {protocol!r}")
    method_names = list(method or ([] if pred else [methods.DEFAULT_METHOD]))
    for name in method_names:
        methods.card(name)  # unknown names fail before any file is read
    notices: list[str] = []
    options = methods.split_options(method_names, method_values(sism, sism_dir, subgroup, chunk, notices, outsiders,
                                              smoothing=smoothing, branches=branches, scales=scales,
                                              co_category=co_category, pooling=pooling, tta=tta))
    for message in notices:
        stderr.print(f"[yellow]warning:[/] {escape(message)}")
    for folder in pred or []:
        if not folder.is_dir():
            raise UsageError(f"--pred {folder}: no such folder")
    located = [datasets.locate(name, data_root, require_images=bool(method_names)) for name in dataset]
    found = benchmark.unique_datasets(located)
    if split is not None:
        from cosal_cli.splits import held_out_part, load_split

        chosen = load_split(split)
        found = [held_out_part(found_dataset, chosen) for found_dataset in found]
    predictions = benchmark.prediction_names(pred or [], found, taken=[
        benchmark.method_label(name, refine or [], options.get(name), precision) for name in method_names])

    with progress_bar(quiet, 0) as progress:
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
            options=options,
            refine=refine or [],
            download_progress=download_callback(progress) if progress else None,
            backend=backend,
            precision=precision,
            threads=threads,
            runner=run,
        )
    if report is not None:
        from cosal_cli.report import write_report

        for path in write_report(result, report):
            if not quiet:
                stderr.print(f"wrote {escape(str(path))}")
    if json_output:
        print_json(result.to_json())
    elif not quiet:
        _print_bench_tables(result)
    if not quiet:
        _print_bench_warnings(result)
    raise typer.Exit(int(result.exit_code))


class _BenchConsoleReporter(ConsoleReporter):
    """The detect reporter, plus one progress stage per method run and per scoring pass."""

    def stage(self, description: str, total: int) -> None:
        if self.progress is not None and self.task is not None:
            self.progress.update(self.task, description=escape(description), total=total, completed=0)
        elif not self.quiet:
            self.console.print(f"{escape(description)} ({total} images)")

    def doing(self, text: str) -> None:
        pass  # the stage's description stays: which method on which dataset

    def group_done(self, report: GroupReport) -> None:
        pass  # the stage line says enough in a benchmark


def _print_bench_tables(result: Any) -> None:
    from cosal_cli.report import TITLES

    document = result.to_json()
    averaging = "per group" if result.group_average else "per image"
    # Piped output has no terminal width; a wide one keeps the table whole rather than truncated.
    console = stdout if stdout.is_terminal else Console(highlight=False, width=200)
    for dataset in document["datasets"]:
        title = (f"{dataset['name']}: {count(dataset['groups'], 'group')}, {count(dataset['images'], 'mask')} "
                 f"({document['protocol']} protocol, averaged {averaging})")  # fmt: skip
        table = Table(title=escape(title))
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
            table.add_row(escape(row["name"]), scored, *cells)
        console.print(table)


def _print_bench_warnings(result: Any) -> None:
    """After the tables (or the JSON): what makes the scores incomplete or not comparable."""
    for dataset in result.to_json()["datasets"]:
        check = dataset["validation"]
        if check["checked"] and not check["ok"]:
            stderr.print(f"[yellow]warning:[/] {escape(check['message'])}")
        for row in dataset["methods"]:
            if row["missing"] or row["failed"]:
                stderr.print(
                    f"[yellow]warning:[/] {escape(dataset['name'])} / {escape(row['name'])}: "
                    f"{count(row['missing'], 'mask')} without a prediction, {count(row['failed'], 'unreadable file')}"
                    " (named above and in --json); the scores cover the rest"
                )
