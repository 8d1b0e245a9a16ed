"""``cosal export``: a method's network as ONNX graphs, one file per pass, described by ``export.json``.

Each graph is traced from the loaded method (its verified weights), written atomically, checked with
``onnx.checker``, and described in ``export.json``: the files and their sha256, each graph's inputs,
outputs and what the caller does around it, the input convention (RGB in [0, 1], NCHW, the method's
input size; the ImageNet normalisation is inside the graph), the weight components' sha256, the
opset and the cosal version. The exporter is torch's TorchScript-based one (``dynamo=False``): it
needs no extra package, and the graphs hold only standard operators.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from cosal_cli import __version__, methods
from cosal_cli.errors import UsageError
from cosal_cli.hub import WeightHub
from cosal_cli.io import atomic_output
from cosal_cli.methods.base import ExportGraph
from cosal_cli.methods.loader import load_method
from cosal_cli.methods.onnx_backend import OPSET, write_graph

EXPORT_FORMAT = "cosal-onnx-export/1"
DEFAULT_OPSET = OPSET  # the opset --backend onnxruntime exports with


def export_method(name: str, output: Path, opset: int = DEFAULT_OPSET, offline: bool = False,
                  options: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """Write ``name``'s graphs and ``export.json`` into ``output``; returns the description."""
    if not 7 <= opset <= 21:
        raise UsageError(f"--opset {opset}: choose an ONNX opset between 7 and 21 (default {DEFAULT_OPSET})")
    method = load_method(name, "cpu", 8, offline, None, methods.options_for(name, options or {}))
    graphs = method.export_graphs()
    output.mkdir(parents=True, exist_ok=True)
    files = [_write_graph(graph, output / f"{name}.{graph.name}.onnx", opset) for graph in graphs]
    description = {
        "format": EXPORT_FORMAT,
        "method": name,
        "options": {key: value for key, value in (options or {}).items() if value is not None},
        "cosal_version": __version__,
        "opset": opset,
        "input": {"size": [method.input_size, method.input_size], "layout": "NCHW", "dtype": "float32",
                  "range": "RGB in [0, 1]", "normalisation": "inside the graph (ImageNet mean and std)"},
        "files": files,
        "weights": {role: {"component": component, "sha256": sha256}
                    for role, (component, sha256) in WeightHub().method_weights(name).items()},
    }  # fmt: skip
    with atomic_output(output / "export.json") as temporary:
        temporary.write_text(json.dumps(description, indent=2) + "\n")
    return description


def _write_graph(graph: ExportGraph, path: Path, opset: int) -> dict[str, Any]:
    write_graph(graph, path, opset)
    return {"graph": graph.name, "file": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "inputs": list(graph.input_names), "outputs": list(graph.output_names),
            "dynamic_axes": {key: {str(axis): label for axis, label in axes.items()}
                             for key, axes in graph.dynamic_axes.items()},
            "note": graph.note}  # fmt: skip


__all__ = ["DEFAULT_OPSET", "EXPORT_FORMAT", "export_method"]
