"""One loader: a method's name, a device and options to a ready :class:`Method` with verified weights.

Everything that runs a method goes through :func:`load_method`: the command line (through the
runners), ``bench``, ``train``'s validation, the SISM sources, the benchmarks and the Python API.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import torch

from cosal_cli import methods
from cosal_cli.errors import UsageError
from cosal_cli.hub import ProgressCallback, WeightHub
from cosal_cli.methods.base import Method
from cosal_cli.methods.options import MethodOptions

#: How a method's network computes: float32, or under bfloat16 autocast (``--precision``).
PRECISIONS = ("fp32", "bf16")


def use_threads(threads: int | None) -> int:
    """Set torch's CPU threads (onnxruntime's follow them) when ``threads`` is given; the count in use.

    The default, torch's (one per core), measured best on a 2-core machine both idle and beside a
    CPU-bound process, once OpenMP's threads sleep instead of spinning at barriers (``OMP_WAIT_POLICY``,
    set by :mod:`cosal_cli`): gicd 31-35 images/s idle and 20-22 busy, against 23-24 and 22 with one
    thread, and 7 busy with spinning threads.
    """
    if threads is not None:
        if threads < 1:
            raise UsageError(f"--threads must be at least 1, not {threads}")
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def resolve_device(spec: str | torch.device) -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` to a torch.device; a CUDA request without CUDA is a usage error."""
    if isinstance(spec, torch.device):
        return spec
    spec = spec.strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", spec)
    if not match:
        raise UsageError(f"--device must be auto, cpu, cuda or cuda:N, not {spec!r}")
    if not torch.cuda.is_available():
        build = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise UsageError(
            f"--device {spec}: no CUDA device is available (torch {torch.__version__}, {build}); "
            "use --device cpu or --device auto"
        )
    index = int(match.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise UsageError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) present")
    return torch.device("cuda", index)


def load_method(
    name: str,
    device: str | torch.device = "auto",
    batch_size: int = 8,
    offline: bool = False,
    progress: ProgressCallback | None = None,
    options: MethodOptions | None = None,
    backend: str = "torch",
    precision: str = "fp32",
) -> Method:
    """A ready method with its verified weights (fetched first when missing and allowed).

    ``options`` the method does not take are a usage error (``--sism`` for a method without SISMs).
    ``backend="onnxruntime"`` runs the method's graphs in ONNX Runtime (:mod:`.onnx_backend`).
    ``precision="bf16"`` runs its network under bfloat16 autocast (:func:`check_precision`).
    """
    from cosal_cli.methods.onnx_backend import BACKENDS, load_onnx, providers

    if backend not in BACKENDS:
        raise UsageError(f"--backend must be torch or onnxruntime, not {backend!r}")
    options = methods.check_options(name, options or methods.card(name).options())
    chosen = resolve_device(device)
    notice = check_precision(precision, backend, chosen)
    if backend == "onnxruntime":
        providers(chosen)  # a missing CUDA provider or onnxruntime fails before any weights are read
    method = methods.method_class(name)(
        resolve_roles(name, offline, progress), chosen if backend == "torch" else torch.device("cpu"),
        batch_size=batch_size, options=replace(options, offline=offline),
    )  # fmt: skip
    method.precision = precision
    method.notices += [notice] if notice else []
    if backend == "torch":
        return method
    method.graph_names()  # a method without graphs is a usage error before anything is exported
    hub = WeightHub()
    weights = {role: sha256 for role, (_, sha256) in hub.method_weights(name).items()}
    return load_onnx(method, hub.home, weights, chosen)


def check_precision(precision: str, backend: str, device: torch.device | None = None) -> str | None:
    """Refuse a precision the run cannot use; a remark for the user when bf16 will be slow on ``device``.

    bf16 halves the bytes every convolution moves and runs on the CPU's AMX / AVX512-BF16 units or the
    GPU's tensor cores. A CPU without them emulates it, slower than float32.
    """
    if precision not in PRECISIONS:
        raise UsageError(f"--precision must be {' or '.join(PRECISIONS)}, not {precision!r}")
    if precision == "fp32":
        return None
    if backend != "torch":
        raise UsageError(f"--precision {precision} runs in torch only: drop it, or use --backend torch")
    if device is not None and device.type == "cpu" and not _cpu_has_bf16():
        return ("--precision bf16: this CPU has no AVX512-BF16 or AMX unit, so bfloat16 is emulated and usually "
                "slower than the default fp32")  # fmt: skip
    return None


def _cpu_has_bf16() -> bool:
    """Whether the CPU computes bfloat16 natively (the checks are torch's own, private, so looked up with care)."""
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check() for check in checks if check is not None)


def resolve_roles(method_name: str, offline: bool = False, progress: ProgressCallback | None = None) -> dict[str, Path]:
    """Verified weight files for each role of the method (fetched first if missing and allowed)."""
    hub = WeightHub()
    return {
        role: hub.resolve(component_id, offline=offline, progress=progress)
        for role, component_id in hub.manifest.roles(method_name).items()
    }
