"""What both protocols share: their names, the per-image metric names, constants and thresholds."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

PROTOCOLS = ("pysodmetrics", "eval-co-sod")
#: Per-image scalars; their dataset value is the mean over images (or over groups).
SCALARS = ("sm", "mae", "wfm", "adp_fm", "adp_em")
#: Per-image curves over thresholds (ascending); their dataset value is the mean curve.
CURVES = ("precision", "recall", "fm", "em", "tpr", "fpr")
BETA2 = 0.3  # the F-measure's beta^2, the same in every toolbox
PYSOD_EPS = np.spacing(1)  # numpy's eps, which PySODMetrics uses (MATLAB's eps)
EVAL_EPS = 1e-20  # the constant eval-co-sod adds to denominators


@dataclass
class ImageScores:
    """One prediction/mask pair's scalars and curves (curves over ascending thresholds)."""

    scalars: dict[str, float]
    curves: dict[str, np.ndarray] = field(repr=False)


def thresholds(protocol: str) -> np.ndarray:
    """The thresholds of the protocol's curves, ascending, as values in [0, 1]."""
    if protocol == "pysodmetrics":
        return np.arange(256) / 255
    return _eval_thresholds().astype(np.float64)


@functools.cache
def _eval_thresholds() -> np.ndarray:
    """eval-co-sod's ``torch.linspace(0, 1 - 1e-10, 255)`` (float32; 1 - 1e-10 rounds to 1.0).

    Taken from torch itself: numpy's float32 linspace differs from it by one ulp at 10 of the 255
    thresholds, which changes the binarisation of maps whose levels land exactly on one.
    """
    import torch

    return torch.linspace(0, 1 - 1e-10, 255).numpy()


def _check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
