"""The eval-co-sod protocol: float32 maps, soft masks, 255 thresholds (see the package docstring)."""

from __future__ import annotations

import numpy as np

from cosal_cli.metrics.protocols import BETA2, EVAL_EPS, ImageScores, _eval_thresholds
from cosal_cli.metrics.smeasure import _histograms, _quadrant_split, _smeasure


def _eval_co_sod_scores(pred_u8: np.ndarray, gt_u8: np.ndarray, pysod: ImageScores) -> ImageScores:
    """eval-co-sod's S, F, E, MAE, PR/ROC; adaptive F/E and weighted F (which it lacks) as PySODMetrics."""
    raw = np.arange(256, dtype=np.float32) / np.float32(255)  # torchvision ToTensor of each level
    low, high = raw[pred_u8.min()], raw[pred_u8.max()]
    levels32 = (raw - low) / (high - low + np.float32(EVAL_EPS))
    levels = levels32.astype(np.float64)
    gt_values = raw.astype(np.float64)
    size = pred_u8.size

    joint = np.bincount(((pred_u8.astype(np.uint32) << 8) | gt_u8).ravel(), minlength=65536).reshape(256, 256)
    present = np.flatnonzero(joint.sum(axis=0))  # mask grey levels that occur
    joint, mask_values = joint[:, present].astype(np.float64), gt_values[present]
    per_mask_level = joint.sum(axis=0)
    mask_sum = per_mask_level @ mask_values

    # Thresholds passed by each grey level (pred >= t), then counts above each threshold.
    passed = np.searchsorted(_eval_thresholds(), levels32, side="right")
    by_pass = np.zeros((257, len(present)))
    np.add.at(by_pass, passed, joint)
    above = np.cumsum(by_pass[::-1], axis=0)[::-1][1:256]  # (255 thresholds, mask level)
    tp = above @ mask_values
    predicted = above.sum(axis=1)

    with np.errstate(invalid="ignore", divide="ignore"):
        precision = tp / (predicted + EVAL_EPS)
        recall = tp / (mask_sum + EVAL_EPS)
        fm = (1 + BETA2) * precision * recall / (BETA2 * precision + recall)
    fm[np.isnan(fm)] = 0
    fpr = (predicted - tp) / (size - mask_sum + EVAL_EPS)
    em = _eval_emeasure(above, per_mask_level, mask_values, predicted, mask_sum, size)

    mae = float((joint * np.abs(raw.astype(np.float64)[:, None] - mask_values[None, :])).sum() / size)
    scalars = dict(pysod.scalars)
    scalars["mae"] = mae
    scalars["sm"] = _eval_smeasure(pred_u8, gt_u8, levels, mask_sum / size)
    curves = {"precision": precision, "recall": recall, "fm": fm, "em": em, "tpr": recall, "fpr": fpr}
    return ImageScores(scalars, curves)


def _eval_emeasure(above, per_mask_level, mask_values, predicted, mask_sum, size) -> np.ndarray:
    """eval-co-sod's per-pixel E-measure formula summed by (binarised value, mask level)."""
    gt_centred = (mask_values - mask_sum / size)[None, :]
    pred_mean = (predicted / size)[:, None]

    def enhanced(pred_centred: np.ndarray) -> np.ndarray:
        align = 2 * gt_centred * pred_centred / (gt_centred**2 + pred_centred**2 + EVAL_EPS)
        return (align + 1) ** 2 / 4

    total = (above * enhanced(1 - pred_mean) + (per_mask_level[None, :] - above) * enhanced(-pred_mean)).sum(axis=1)
    return total / (size - 1 + EVAL_EPS)


def _eval_smeasure(pred_u8: np.ndarray, gt_u8: np.ndarray, levels: np.ndarray, mask_mean: float) -> float:
    size = pred_u8.size
    if mask_mean == 0 or mask_mean == 1:
        mean = np.bincount(pred_u8.ravel(), minlength=256) @ levels / size
        return float(1 - mean if mask_mean == 0 else mean)
    gt = gt_u8 >= 128  # eval-co-sod binarises the soft mask at 0.5 for the S-measure only
    code = pred_u8.astype(np.uint16) | (gt.astype(np.uint16) << 8)
    split = _quadrant_split(gt, offset=0)
    hists = _histograms(code, split)
    return _smeasure(levels, hists.sum(axis=0), hists, split, levels[pred_u8], gt, EVAL_EPS)
