"""cosal: co-saliency detection from the command line and from Python.

``cosal_cli.load(method, device=...)`` returns a :class:`~cosal_cli.api.Detector`; see
:mod:`cosal_cli.api`. They are imported on first use, so that ``cosal --help`` never imports torch.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

# OpenMP threads that spin at barriers stall when another process wants the cores: gicd fell from 32 to 7
# images/s beside one CPU-bound process with spinning threads, 21 with sleeping ones (idle: 32 either way;
# sod the same). It only takes effect if set before torch is first imported; a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
__all__ = ["BadInput", "Detector", "__version__", "load"]


def __getattr__(name: str) -> Any:
    if name in ("load", "Detector", "BadInput"):
        # By name: the package root is imported by every layer (for __version__), and must not pull
        # the API (the top layer) into the lower ones' import graph.
        return getattr(importlib.import_module("cosal_cli.api"), name)
    raise AttributeError(f"module 'cosal_cli' has no attribute {name!r}")
