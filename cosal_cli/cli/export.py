"""``cosal export``: a method's network as ONNX files (parses, calls :mod:`cosal_cli.export`, prints)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cosal_cli.cli.app import app, handle_errors
from cosal_cli.cli.console import escape, print_json, stdout
from cosal_cli.cli.options import MethodOption, OutsidersOption


@app.command("export")
@handle_errors
def export(
    method: MethodOption = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the .onnx files and export.json.")] = Path(
        "cosal-onnx"
    ),
    opset: Annotated[int, typer.Option(help="ONNX opset version.")] = 17,
    outsiders: OutsidersOption = None,
    offline: Annotated[bool, typer.Option("--offline", help="Never touch the network for weights.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print export.json on stdout.")] = False,
) -> None:
    """Write a method's network as ONNX graphs (one file per pass) and export.json describing them."""
    from cosal_cli import hub, methods
    from cosal_cli.export import export_method

    name = method or methods.DEFAULT_METHOD
    description = export_method(name, output, opset, hub.offline_mode(offline), {"outsiders": outsiders})
    if json_output:
        print_json(description)
        return
    for entry in description["files"]:
        stdout.print(f"wrote {escape(str(output / entry['file']))} ({entry['graph']}: "
                     f"{', '.join(entry['inputs'])} -> {', '.join(entry['outputs'])})")  # fmt: skip
    stdout.print(f"wrote {escape(str(output / 'export.json'))}")
