"""``cosal cache``: what ``$COSAL_HOME`` holds by kind, and clearing what cosal can make again."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from cosal_cli.cli.app import cache_app, handle_errors
from cosal_cli.cli.console import escape, print_json, stdout


def _size(count: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return ""


@cache_app.command("info")
@handle_errors
def cache_info(json_output: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False) -> None:
    """Files and size of each kind of cached data: weights, imports, downloads, SISMs, partial files."""
    from cosal_cli.hub.cache import cache_home, cache_usage

    home = cache_home()
    usage = cache_usage(home)
    if json_output:
        print_json({"home": str(home), "kinds": [entry.__dict__ for entry in usage]})
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column, justify in (("kind", "left"), ("files", "right"), ("size", "right")):
        table.add_column(column, justify=justify)
    for entry in usage:
        table.add_row(entry.kind, str(entry.files), _size(entry.bytes))
    stdout.print(table, soft_wrap=False)
    stdout.print(f"in {escape(str(home))} ($COSAL_HOME)", soft_wrap=True)


@cache_app.command("clear")
@handle_errors
def cache_clear(
    sism: Annotated[bool, typer.Option("--sism", help="The cached SISMs (the default when nothing is named).")] = False,
    weights: Annotated[
        bool, typer.Option("--weights", help="Fetched and converted weights too (fetched again when next needed; "
                           "imported weights are never cleared).")
    ] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Delete cached SISMs and partial files; with --weights, fetched weights too."""
    from cosal_cli.hub.cache import cache_home, clear_cache

    kinds = ("sism", "tmp") if sism or not weights else ("tmp",)
    kinds += ("weights",) if weights else ()
    freed = clear_cache(cache_home(), kinds)
    if json_output:
        print_json({"cleared": [entry.__dict__ for entry in freed]})
        return
    for entry in freed:
        stdout.print(f"cleared {entry.kind}: {entry.files} file(s), {_size(entry.bytes)}")
