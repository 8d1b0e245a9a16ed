"""``cosal methods``: the available methods, their papers, weights and options."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from cosal_cli.cli.app import app, handle_errors
from cosal_cli.cli.console import cached_cell, escape, print_json, stdout


@app.command("methods")
@handle_errors
def list_methods(
    name: Annotated[Optional[str], typer.Argument(metavar="[NAME]", help="Show this method's card in full.")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Everything, machine-readable.")] = False,
) -> None:
    """The available methods, one line each; NAME for one method's paper, weights and options."""
    from cosal_cli import methods
    from cosal_cli.hub import WeightHub

    hub = WeightHub()
    cards = [methods.card(name)] if name else list(methods.CARDS.values())
    rows = [_describe(hub, card, methods.DEFAULT_METHOD) for card in cards]
    if json_output:
        print_json(rows[0] if name else rows)
    elif name:
        _print_card(rows[0], methods.card(name).options)
    else:
        _print_table(rows)


def _describe(hub: Any, card: Any, default: str) -> dict[str, Any]:
    roles = hub.manifest.methods.get(card.name, {})
    return {
        "name": card.name,
        "default": card.name == default,
        "paper": card.paper,
        "summary": card.summary,
        "weights": {role: _method_weight(hub, hub.manifest.component(cid)) for role, cid in roles.items()},
        "sism": card.sism,
        "sism_generator": card.sism_generator,
        "refiners": list(card.refiners),
        "builds_on": list(card.builds_on),
        "options": list(card.options.declared().values()),
    }


def _weights_state(row: dict[str, Any]) -> str:
    """One word for a method's weights: none needed, all cached, some to import or to fetch."""
    items = list(row["weights"].values())
    if not items:
        return "none"
    if all(item["cached"] for item in items):
        return "cached"
    return "import" if any(item.get("source") == "import" and not item["cached"] for item in items) else "fetch"


def _print_table(rows: list[dict[str, Any]]) -> None:
    """One line per method, whatever the terminal's width (the summary is cut, never wrapped)."""
    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("method", no_wrap=True, min_width=max(len(row["name"]) + 2 for row in rows))
    table.add_column("weights", no_wrap=True, min_width=7)
    table.add_column("what it does", no_wrap=True, overflow="ellipsis", ratio=1)
    for row in rows:
        table.add_row(row["name"] + (" *" if row["default"] else ""), _weights_state(row), row["summary"])
    stdout.print(table, soft_wrap=False)  # the table fits the terminal: its last column is cut, not wrapped
    stdout.print("* default. `cosal methods NAME`: one method in full; --json: everything.")


def _print_card(row: dict[str, Any], options: Any) -> None:
    stdout.print(f"[bold]{escape(row['name'])}[/]" + (" (default)" if row["default"] else ""))
    stdout.print(escape(row["paper"]))
    stdout.print(f"[dim]{escape(row['summary'])}[/]")
    for role, item in row["weights"].items():
        cached = cached_cell(item["cached"], imported=item.get("source") == "import")
        stdout.print(f"weights {role}: {escape(item['component'])} {cached}")
    if not row["weights"]:
        stdout.print("weights: none (training-free)")
    if row["sism"]:
        stdout.print(f"SISMs from: {row['sism']}")
    for field, flag in options.declared().items():
        stdout.print(f"option {flag}: {escape(options.help_of(field))}")
    for label in ("refiners", "builds_on"):
        if row[label]:
            stdout.print(f"{label.replace('_', ' ')}: {', '.join(row[label])}")


def _method_weight(hub: Any, component: Any) -> dict[str, Any]:
    item = {"component": component.id, "cached": hub.is_cached(component)}
    if component.imported:
        item["source"] = "import"
        if not item["cached"]:
            item["import"] = component.source.command()
    return item
