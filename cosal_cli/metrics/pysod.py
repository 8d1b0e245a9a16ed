"""The PySODMetrics protocol: per-image scores and F/E/PR/ROC curves from grey-level histograms."""

from __future__ import annotations

import numpy as np

from cosal_cli.metrics.protocols import BETA2, PYSOD_EPS, ImageScores
from cosal_cli.metrics.smeasure import _histograms, _quadrant_split, _smeasure
from cosal_cli.metrics.weighted_f import _weighted_fmeasure


def _pysod_levels(pred: np.ndarray) -> np.ndarray:
    """The float value of each grey level after PySODMetrics' ``pred/255`` and min-max step.

    The same elementwise float64 operations as on the image, so the values are bit-identical.
    """
    levels = np.arange(256) / 255
    low, high = levels[pred.min()], levels[pred.max()]
    if high != low:
        levels = (levels - low) / (high - low)
    return levels


def _pysod_scores(pred_u8: np.ndarray, gt_u8: np.ndarray) -> ImageScores:
    gt = gt_u8 > 128
    levels = _pysod_levels(pred_u8)
    size, fg_size = gt.size, int(np.count_nonzero(gt))
    code = pred_u8.astype(np.uint16) | (gt.astype(np.uint16) << 8)  # grey level + 256 * mask
    quadrants = _quadrant_split(gt, offset=1) if 0 < fg_size < size else None
    hists = _histograms(code, quadrants)  # (quadrant, mask class, level)
    hist = hists.sum(axis=0)

    pred = levels[pred_u8]
    curves = _pysod_curves(levels, hist, size, fg_size)
    threshold = min(2 * pred.mean(), 1)  # PySODMetrics' adaptive threshold, computed as it does
    adaptive = levels >= threshold
    tp = int(hist[1][adaptive].sum())
    predicted = int(hist[:, adaptive].sum())
    scalars = {
        "sm": _smeasure(levels, hist, hists, quadrants, pred, gt, PYSOD_EPS),
        "mae": float((hist[0] @ levels + hist[1] @ (1 - levels)) / size),
        "wfm": _weighted_fmeasure(pred, gt),
        "adp_fm": _adaptive_fmeasure(tp, predicted, fg_size),
        "adp_em": float(_pysod_emeasure(np.array([tp]), np.array([predicted]), size, fg_size)[0]),
    }
    return ImageScores(scalars, curves)


def _pysod_curves(levels: np.ndarray, hist: np.ndarray, size: int, fg_size: int) -> dict[str, np.ndarray]:
    """F, E, PR and ROC curves over the 256 uint8 levels of the quantised map (ascending)."""
    quantised = (levels * 255).astype(np.uint8)  # PySODMetrics' truncation of the normalised map
    fg = np.bincount(quantised, weights=hist[1], minlength=256)
    bg = np.bincount(quantised, weights=hist[0], minlength=256)
    tp = np.cumsum(fg[::-1])[::-1]  # pixels >= each level
    predicted = tp + np.cumsum(bg[::-1])[::-1]
    precision = tp / np.where(predicted == 0, 1, predicted)
    recall = tp / max(fg_size, 1)
    numerator = (1 + BETA2) * precision * recall
    fm = numerator / np.where(numerator == 0, 1, BETA2 * precision + recall)
    fpr = (predicted - tp) / max(size - fg_size, 1)
    em = _pysod_emeasure(tp, predicted, size, fg_size)
    return {"precision": precision, "recall": recall, "fm": fm, "em": em, "tpr": recall, "fpr": fpr}


def _pysod_emeasure(tp: np.ndarray, predicted: np.ndarray, size: int, fg_size: int) -> np.ndarray:
    """E-measure from the counts of a binarised map, PySODMetrics' closed form and special cases."""
    tp, predicted = np.asarray(tp, dtype=np.float64), np.asarray(predicted, dtype=np.float64)
    if fg_size == 0:
        total = size - predicted
    elif fg_size == size:
        total = predicted
    else:
        fp = predicted - tp
        fn = fg_size - tp
        tn = (size - predicted) - fn
        pred_mean, gt_mean = predicted / size, fg_size / size
        parts = ((tp, 1 - pred_mean, 1 - gt_mean), (fp, 1 - pred_mean, -gt_mean),
                 (fn, -pred_mean, 1 - gt_mean), (tn, -pred_mean, -gt_mean))  # fmt: skip
        total = 0
        for count, pred_value, gt_value in parts:
            align = 2 * (pred_value * gt_value) / (pred_value**2 + gt_value**2 + PYSOD_EPS)
            total = total + (align + 1) ** 2 / 4 * count
    return total / (size - 1 + PYSOD_EPS)


def _adaptive_fmeasure(tp: int, predicted: int, fg_size: int) -> float:
    if tp == 0:
        return 0.0
    precision, recall = tp / predicted, tp / fg_size
    return (1 + BETA2) * precision * recall / (BETA2 * precision + recall)
