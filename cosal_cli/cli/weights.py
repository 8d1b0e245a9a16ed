"""``cosal weights``: list, fetch, verify, locate and import weight components."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from cosal_cli.cli.app import handle_errors, weights_app
from cosal_cli.cli.console import (
    cached_cell,
    download_callback,
    escape,
    print_json,
    progress_bar,
    stderr,
    stdout,
)
from cosal_cli.errors import CosalError, ExitCode, UsageError


@weights_app.command("list")
@handle_errors
def weights_list(json_output: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False) -> None:
    """Every component of the manifest, where it comes from and whether it is cached."""
    from cosal_cli.hub import WeightHub

    hub = WeightHub()
    rows = [hub.describe(component) for component in hub.manifest.components.values()]
    if json_output:
        print_json(rows)
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("component", no_wrap=True, min_width=max(len(row["id"]) for row in rows))
    table.add_column("size", no_wrap=True, justify="right", min_width=8)
    table.add_column("source", no_wrap=True, min_width=7)
    table.add_column("cached", no_wrap=True, min_width=12)
    table.add_column("methods", no_wrap=True, overflow="ellipsis", ratio=1)
    for row in rows:
        size = f"{row['size'] / 1e6:.1f} MB" if row["size"] else "-"
        table.add_row(row["id"], size, row["source"].split(":", 1)[0],
                      cached_cell(row["cached"], imported="import_command" in row), ", ".join(row["methods"]) or "-")
    stdout.print(table, soft_wrap=False)  # the table fits the terminal: its last column is cut, not wrapped
    stdout.print("--json: sources, licences, checksums and paths")
    stdout.print(f"manifest: {hub.manifest.path}", soft_wrap=True)
    stdout.print(f"cache: {hub.home}", soft_wrap=True)


@weights_app.command("pull")
@handle_errors
def weights_pull(
    names: Annotated[
        Optional[list[str]], typer.Argument(help="Component ids or method names.", show_default=False)
    ] = None,
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
    with progress_bar(quiet, 0) as progress:
        callback = download_callback(progress) if progress else None
        for component in components:
            if all_components and component.imported and not hub.is_cached(component):
                if not quiet:
                    stderr.print(f"[dim]skipped[/] {component.id}: imported, not downloaded; "
                                 f"`{escape(component.source.command())}`")  # fmt: skip
                continue
            try:
                path = hub.pull(component.id, offline=offline_mode(offline), progress=callback)
            except CosalError as exc:
                stderr.print(f"[bold red]error:[/] {escape(str(exc))}")
                worst = max(worst, exc.exit_code)
                continue
            if not quiet:
                stderr.print(f"[green]ok[/] {component.id} -> {escape(str(path))}")
    raise typer.Exit(int(worst))


@weights_app.command("verify")
@handle_errors
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
        print_json(rows)
    else:
        colours = {"ok": "green", "missing": "yellow", "corrupt": "bold red"}
        for status in statuses:
            detail = f" ({status.detail})" if status.detail else ""
            stdout.print(
                f"[{colours[status.state]}]{status.state}[/] {status.component.id} {escape(str(status.path))}{detail}"
            )
    raise typer.Exit(int(worst))


@weights_app.command("path")
@handle_errors
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
@handle_errors
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
    """Import weights that cannot be downloaded (the official GICD and ICNet files): check, convert and record them."""
    from cosal_cli.hub import WeightHub

    hub = WeightHub()
    files = {option: file for option, file in (("PATH", path), ("--co-classifier", co_classifier)) if file is not None}
    summary = hub.import_summary(importer, files)
    if json_output:
        print_json(summary.to_json())
    for outcome in summary.outcomes:
        found = f" (found in {outcome.found_in})" if outcome.found_in else ""
        if outcome.error:
            stderr.print(f"[bold red]error:[/] {escape(str(outcome.error))}")
            continue
        record = outcome.record
        stderr.print(f"[green]imported[/] {outcome.component.id} from {escape(record.source_path)}{found}\n"
                     f"  source sha256 {record.source_sha256}\n  -> {escape(record.path)}")  # fmt: skip
    for method, statuses in summary.readiness.items():
        missing = [(role, status) for role, status in statuses.items() if status.state != "ok"]
        if not missing:
            stderr.print(f"[green]{method} is ready[/]: cosal detect PATH... --method {method}")
            continue
        needs = "; ".join(
            f"{role} ({status.component.id}) is {'not imported' if status.state == 'missing' else 'corrupt'}: "
            f"`{status.component.source.command()}`"
            for role, status in missing
        )
        stderr.print(f"[yellow]{method} is not ready yet[/]: {escape(needs)}")
    raise typer.Exit(summary.exit_code)
