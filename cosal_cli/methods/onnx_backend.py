"""``--backend onnxruntime``: a method's graphs (:meth:`Method.export_graphs`) run by ONNX Runtime.

On first use the graphs are exported from the loaded torch method into
``$COSAL_HOME/onnx/<method>-<key>/``, where the key is a hash of the weight components' sha256, the
method's options that change its graphs, the cosal version and the opset; a later run finds them
there (each file is written atomically and checked with ``onnx.checker``). The method's own
:meth:`~Method.predict_with_graphs` then runs them, so the steps around the graphs (summing a
consensus, dimming outsiders) are the torch method's code.

Execution providers: ``--device cuda`` asks for CUDA (TensorRT first when it is there); without the
CUDA provider that is a usage error naming the package, never a silent fall-back to the CPU.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cosal_cli import __version__
from cosal_cli.errors import UsageError
from cosal_cli.io import atomic_output
from cosal_cli.methods.base import ExportGraph, GroupImages, Method, MethodOptions

BACKENDS = ("torch", "onnxruntime")
OPSET = 17


def write_graph(graph: ExportGraph, path: Path, opset: int = OPSET) -> Path:
    """Trace ``graph`` into the ONNX file ``path`` (atomically), checked with ``onnx.checker``."""
    import onnx

    with atomic_output(path) as temporary, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter's notice
        # Graphs with a fixed input size (gicd's 224 x 224) fold shape arithmetic into constants, as they should.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(graph.module.eval(), graph.inputs, str(temporary), dynamo=False, opset_version=opset,
                          input_names=list(graph.input_names), output_names=list(graph.output_names),
                          dynamic_axes=graph.dynamic_axes)  # fmt: skip
        onnx.checker.check_model(str(temporary), full_check=True)
    return path


def providers(device: torch.device) -> list[str]:
    """ONNX Runtime's execution providers for ``device``; CUDA without its provider is a usage error."""
    ort = _onnxruntime()
    if device.type != "cuda":
        return ["CPUExecutionProvider"]
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" not in available:
        raise UsageError("--device cuda --backend onnxruntime: this onnxruntime has no CUDA provider (it has "
                         f"{', '.join(available)}); pip install onnxruntime-gpu (cosal's onnx-gpu extra), or use "
                         "--device cpu")  # fmt: skip
    return [name for name in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if name in available]


class OnnxMethod(Method):
    """A loaded torch method whose graphs run in ONNX Runtime; everything else is the torch method's."""

    def __init__(self, method: Method, folder: Path, device: torch.device):
        self.torch_method = method
        self.name, self.input_size = method.name, method.input_size
        self.output_interpolation, self.roles = method.output_interpolation, method.roles
        self.device, self.batch_size, self.options, self.notices = torch.device("cpu"), method.batch_size, \
            method.options, method.notices  # fmt: skip
        self.inference_mode = True  # precision: Method's default fp32, what the graphs compute in
        self.sessions = _sessions(method, folder, providers(device))

    def run(self, graph: str, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.sessions[graph].run(None, inputs)

    def predict_group(self, images: torch.Tensor, sources: GroupImages | None = None) -> torch.Tensor:
        return self.torch_method.predict_with_graphs(self.run, images.cpu(), sources)

    def group_notices(self, count: int) -> list[str]:
        return self.torch_method.group_notices(count)


def load_onnx(method: Method, home: Path, weights: dict[str, str], device: torch.device) -> OnnxMethod:
    """``method`` on ONNX Runtime, its graphs exported into ``home/onnx/`` unless they are there already."""
    identity = {"method": method.name, "weights": weights, "options": _graph_options(method), "opset": OPSET,
                "cosal": __version__}  # fmt: skip
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return OnnxMethod(method, home / "onnx" / f"{method.name}-{key}", device)


def _graph_options(method: Method) -> dict[str, Any]:
    """The method's own options (they may change its graphs); those every method takes (``--tta``) act
    around the graphs, so one export serves them all."""
    common = MethodOptions.declared()
    return {flag: getattr(method.options, name) for name, flag in type(method.options).declared().items()
            if name not in common}  # fmt: skip


def _sessions(method: Method, folder: Path, chosen: Sequence[str]) -> dict[str, Any]:
    ort = _onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    if os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE":  # as torch's threads (see cosal_cli/__init__)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sessions = {}
    graphs = None
    for name in method.graph_names():
        path = folder / f"{method.name}.{name}.onnx"
        if not path.exists():
            graphs = graphs or {graph.name: graph for graph in method.export_graphs()}
            folder.mkdir(parents=True, exist_ok=True)
            write_graph(graphs[name], path)
        sessions[name] = ort.InferenceSession(str(path), options, providers=list(chosen))
    return sessions


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise UsageError("--backend onnxruntime needs onnxruntime: pip install 'cosal[onnx]' (CPU) or "
                         "'cosal[onnx-gpu]' (CUDA)") from None  # fmt: skip
    return onnxruntime
