"""``cosal methods``: the available methods, their papers, weights and options."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from cosal_cli.cli.app import app, handle_errors
from cosal_cli.cli.console import cached_cell, print_json, stdout


@app.command("methods")
@handle_errors
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
                "builds_on": list(card.builds_on),
                "options": list(card.options.declared().values()),
            }
        )
    if json_output:
        print_json(rows)
        return
    table = Table(title="cosal methods", show_lines=True)
    for column in ("method", "paper", "weights (cached?)", "SISM", "options", "refiners"):
        table.add_column(column, overflow="fold")
    for row in rows:
        weights = "\n".join(
            f"{role}: {item['component']} {cached_cell(item['cached'], imported=item.get('source') == 'import')}"
            for role, item in row["weights"].items()
        )
        name = row["name"] + (" (default)" if row["default"] else "")
        sism = row["sism"] or ("generates SISMs" if row["sism_generator"] else "-")
        table.add_row(name, f"{row['paper']}\n[dim]{row['summary']}[/]", weights or "none (training-free)", sism,
                      ", ".join(row["options"]) or "-", ", ".join(row["refiners"]) or "-")  # fmt: skip
    stdout.print(table)


def _method_weight(hub: Any, component: Any) -> dict[str, Any]:
    item = {"component": component.id, "cached": hub.is_cached(component)}
    if component.imported:
        item["source"] = "import"
        if not item["cached"]:
            item["import"] = component.source.command()
    return item
