"""Dataset-level results: running sums per group, the reported numbers, AP and AUC."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cosal_cli.metrics.protocols import CURVES, SCALARS, ImageScores, _check_protocol

#: Dataset-level metrics in report order (the columns of ``cosal bench``'s table).
SUMMARY = ("sm", "max_fm", "mean_fm", "adp_fm", "max_em", "mean_em", "adp_em", "mae", "wfm", "auc", "ap")


@dataclass
class _Sums:
    count: int = 0
    scalars: dict[str, float] = field(default_factory=lambda: dict.fromkeys(SCALARS, 0.0))
    curves: dict[str, np.ndarray] = field(default_factory=dict)

    def add(self, scores: ImageScores) -> None:
        self._accumulate(1, scores.scalars, scores.curves)

    def merge(self, other: _Sums) -> None:
        self._accumulate(other.count, other.scalars, other.curves)

    def _accumulate(self, count: int, scalars: dict[str, float], curves: dict[str, np.ndarray]) -> None:
        self.count += count
        for name in SCALARS:
            self.scalars[name] += scalars[name]
        for name in CURVES:
            curve = curves[name]
            self.curves[name] = self.curves[name] + curve if name in self.curves else curve.astype(np.float64)

    def means(self) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        return (
            {name: value / self.count for name, value in self.scalars.items()},
            {name: value / self.count for name, value in self.curves.items()},
        )


class MetricAccumulator:
    """Running sums per group of every metric; holds no maps, so memory does not grow with images.

    ``summary()`` averages per image over the whole dataset (PySODMetrics, eval-co-sod) or, with
    ``group_average=True``, within each group first and then over groups (the CoSOD3k MATLAB
    toolbox). Max and mean F/E are taken on the averaged curve, never per image.
    """

    def __init__(self, protocol: str = "pysodmetrics"):
        _check_protocol(protocol)
        self.protocol = protocol
        self._groups: dict[str, _Sums] = {}

    @property
    def images(self) -> int:
        return sum(sums.count for sums in self._groups.values())

    def add(self, group: str, scores: ImageScores) -> None:
        self._groups.setdefault(group, _Sums()).add(scores)

    def summary(self, group_average: bool = False) -> dict[str, float]:
        scalars, curves = self.averages(group_average)
        return derive(scalars, curves) if scalars else {}

    def averages(self, group_average: bool = False) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        """Averaged scalars and curves (empty dicts when nothing was added)."""
        groups = [sums for sums in self._groups.values() if sums.count]
        if not groups:
            return {}, {}
        if not group_average:
            total = _Sums()
            for sums in groups:
                total.merge(sums)
            return total.means()
        means = [sums.means() for sums in groups]
        scalars = {name: float(np.mean([m[0][name] for m in means])) for name in SCALARS}
        curves = {name: np.mean([m[1][name] for m in means], axis=0) for name in CURVES}
        return scalars, curves

    def per_group(self) -> dict[str, dict[str, float]]:
        """Each group's metrics (averaged over its images) and its image count."""
        table = {}
        for name, sums in self._groups.items():
            if sums.count:
                table[name] = {"images": sums.count, **derive(*sums.means())}
        return table


def derive(scalars: dict[str, float], curves: dict[str, np.ndarray]) -> dict[str, float]:
    """The reported numbers from averaged scalars and curves."""
    return {
        "sm": scalars["sm"],
        "max_fm": float(curves["fm"].max()),
        "mean_fm": float(curves["fm"].mean()),
        "adp_fm": scalars["adp_fm"],
        "max_em": float(curves["em"].max()),
        "mean_em": float(curves["em"].mean()),
        "adp_em": scalars["adp_em"],
        "mae": scalars["mae"],
        "wfm": scalars["wfm"],
        "auc": roc_auc(curves["tpr"], curves["fpr"]),
        "ap": average_precision(curves["precision"], curves["recall"]),
    }


def average_precision(precision: np.ndarray, recall: np.ndarray) -> float:
    """Area under the precision envelope of the averaged PR curve (eval-co-sod's VOC-style AP)."""
    r = np.concatenate(([0.0], recall, [1.0]))
    p = np.concatenate(([0.0], precision, [0.0]))
    order = np.argsort(r, kind="stable")
    r, p = r[order], np.maximum.accumulate(p[order][::-1])[::-1]
    steps = np.flatnonzero(r[1:] != r[:-1])
    return float(np.sum((r[steps + 1] - r[steps]) * p[steps + 1]))


def roc_auc(tpr: np.ndarray, fpr: np.ndarray) -> float:
    """Trapezoidal area under the averaged ROC points sorted by FPR (eval-co-sod's AUC).

    Points with equal FPR are ordered by TPR, the order of a monotone ROC curve (eval-co-sod's
    unstable argsort leaves it unspecified).

    The trapezoid sum is written out rather than taken from ``np.trapezoid``, which only NumPy 2
    has (NumPy 1 calls it ``np.trapz``, deprecated in 2) while cosal supports ``numpy>=1.24``; it
    is the same expression NumPy evaluates, so the result is identical to the last bit.
    """
    order = np.lexsort((tpr, fpr))
    y, x = np.asarray(tpr, dtype=np.float64)[order], np.asarray(fpr, dtype=np.float64)[order]
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))
