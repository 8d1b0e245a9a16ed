"""``cosal detect``: co-saliency maps for image groups, written as PNGs (parses, runs the local runner, prints)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from cosal_cli.cli.app import EXIT_CODES_HELP, app, handle_errors
from cosal_cli.cli.console import (
    ConsoleReporter,
    download_callback,
    escape,
    print_json,
    progress_bar,
    stderr,
)
from cosal_cli.cli.options import (
    BackendOption,
    BranchesOption,
    ChunkOption,
    CoCategoryOption,
    DebugOption,
    GpuDecodeOption,
    GpusPerWorkerOption,
    LayoutOption,
    MethodOption,
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
    method_values,
)
from cosal_cli.errors import UsageError

if TYPE_CHECKING:
    from cosal_cli.runners.summary import Summary


@app.command(epilog=EXIT_CODES_HELP)
@handle_errors
def detect(
    paths: Annotated[
        list[str],
        typer.Argument(
            help="Group folders (images inside), folders of group folders, dataset roots (Image/<group>/), "
            "image files (those given together form one group; see --group), or - to read such paths from "
            "stdin, one per line.",
            show_default=False,
        ),
    ],
    method: MethodOption = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Maps go to OUTPUT/<group>/<stem>.png.")] = Path(
        "cosal-maps"
    ),
    save: Annotated[
        str, typer.Option("--save", metavar="KINDS", help="What to write per image, any of map (<stem>.png), mask "
                          "(<stem>.mask.png), cutout (<stem>.cutout.png, RGBA) and overlay (<stem>.overlay.jpg), "
                          "comma-separated.")
    ] = "map",
    threshold: Annotated[
        Optional[str], typer.Option("--threshold", metavar="T|otsu|adaptive", help="Where masks are cut: a number "
                                    "in [0, 1], otsu, or adaptive (twice the map's mean) [default: adaptive]. "
                                    "Given, cut-outs get a hard alpha from the mask.", show_default=False)
    ] = None,
    preview: Annotated[
        bool, typer.Option("--preview", help="Also write OUTPUT/index.html: each group's photos, maps and "
                           "overlays as thumbnails, with its notes and failures (static, relative links).")
    ] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    backend: BackendOption = "torch",
    precision: PrecisionOption = "fp32",
    gpu_decode: GpuDecodeOption = False,
    threads: ThreadsOption = None,
    runner: RunnerOption = "local",
    ray_address: RayAddressOption = None,
    workers: WorkersOption = None,
    gpus_per_worker: GpusPerWorkerOption = None,
    write_on_workers: WriteOnWorkersOption = False,
    ray_runtime_env: RayRuntimeEnvOption = None,
    skip_existing: Annotated[
        bool, typer.Option("--skip-existing", help="Keep maps that exist (resume a run).")
    ] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace maps that exist.")] = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass (memory, not results).")] = 8,
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
    layout: LayoutOption = "auto",
    group: Annotated[
        Optional[str], typer.Option("--group", metavar="NAME", help="Name of the group the image files given one "
                                    "by one form (default: their folder's name); its maps go to OUTPUT/NAME/.")
    ] = None,
    offline: Annotated[bool, typer.Option("--offline", help="Never touch the network for weights.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON summary on stdout.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only errors (and --json).")] = False,
    debug: DebugOption = False,
) -> None:
    """Write a co-saliency map for every image of every group."""
    from cosal_cli import hub, io, methods

    run = chosen_runner(runner, ray_address, workers, gpus_per_worker, write_on_workers, ray_runtime_env)
    if skip_existing and overwrite:
        raise UsageError("--skip-existing and --overwrite exclude each other")
    method_name = method or methods.DEFAULT_METHOD
    notices: list[str] = []
    options = methods.options_for(method_name, method_values(sism, sism_dir, subgroup, chunk, notices, outsiders,
                                              smoothing=smoothing, branches=branches, scales=scales,
                                              co_category=co_category, pooling=pooling, tta=tta))
    for message in notices:
        stderr.print(f"[yellow]warning:[/] {escape(message)}")
    if group is not None and (not group.strip() or group in (".", "..") or "/" in group or "\\" in group):
        raise UsageError(f"--group {group!r}: a group name is one folder name (no slashes, not . or ..)")
    outputs = io.SaveSpec.parse(save, threshold)
    discovery = io.discover(io.read_paths(paths), layout, group)
    if preview and any(found.name.casefold() == "index_files" for found in discovery.groups):
        raise UsageError("--preview keeps its thumbnails in OUTPUT/index_files/, and a group has that name; "
                         "rename the group (--group, or its folder) or drop --preview")  # fmt: skip
    existing = "skip" if skip_existing else "overwrite" if overwrite else "error"
    total = sum(len(group.images) + len(group.problems) for group in discovery.groups)

    with progress_bar(quiet, total) as progress:
        reporter = ConsoleReporter(progress, quiet, debug)
        summary = run(
            discovery,
            method_name,
            output,
            device_spec=device,
            existing=existing,
            batch_size=batch_size,
            offline=hub.offline_mode(offline),
            options=options,
            refine=refine or [],
            reporter=reporter,
            download_progress=download_callback(progress) if progress else None,
            save=outputs,
            preview=preview,
            backend=backend,
            precision=precision,
            gpu_decode=gpu_decode,
            threads=threads,
        )
    summary.notices[:0] = notices
    if preview:
        from cosal_cli.io.preview import write_page

        page = write_page(output, summary.to_json())
        if not quiet:
            stderr.print(f"preview: {escape(str(page))}")
    if json_output:
        print_json(summary.to_json())
    if not quiet:
        print_detect_summary(summary)
    raise typer.Exit(int(summary.exit_code))


def print_detect_summary(summary: Summary) -> None:
    counts = summary.to_json()
    rate = counts["images_per_second"]
    line = (
        f"{summary.written} map(s) written to {summary.output}/ for {len(summary.groups)} group(s)"
        f" ({summary.skipped} skipped, {len(summary.failures)} failed) with {summary.method} on {summary.device}"
        f" in {summary.timings.get('total_s', 0):.1f} s"
        + (f", {rate:.2f} images/s" if rate else "")
    )
    stderr.print(escape(line))
    for group in summary.groups:
        if group.written:
            stderr.print(f"  {escape(group.output)}/")
    if summary.internal_errors:
        stderr.print(f"[bold red]{summary.internal_errors} group(s) hit an internal error[/] (exit 5): "
                     "rerun with --debug for the traceback and report it")  # fmt: skip
    if summary.interrupted:
        how = "terminated (SIGTERM)" if summary.terminated else "interrupted"
        stderr.print(f"[yellow]{how}: rerun with --skip-existing to finish[/]")


# ----------------------------------------------------------------------------------------------
