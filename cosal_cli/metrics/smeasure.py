"""S-measure (both protocols): object part from level histograms, region part per quadrant."""

from __future__ import annotations

import numpy as np


def _quadrant_split(gt: np.ndarray, offset: int) -> tuple[int, int]:
    """The (row, column) where the S-measure splits the maps: the rounded mask centroid.

    PySODMetrics (like MATLAB) uses 1-based coordinates (``offset=1``), eval-co-sod 0-based. Sums
    of integer indices are exact, so this equals both tools' float computations bit for bit.
    """
    rows, cols = np.count_nonzero(gt, axis=1), np.count_nonzero(gt, axis=0)
    total = int(rows.sum())
    if total == 0:  # eval-co-sod's fallback for a soft mask that binarises to nothing
        return round(gt.shape[0] / 2), round(gt.shape[1] / 2)
    cy = np.round(int(rows @ np.arange(len(rows))) / total)
    cx = np.round(int(cols @ np.arange(len(cols))) / total)
    return int(cy) + offset, int(cx) + offset


def _quadrant_slices(split: tuple[int, int]) -> list[tuple[slice, slice]]:
    """Top-left, top-right, bottom-left, bottom-right of a split at (row, column)."""
    cy, cx = split
    return [(slice(0, cy), slice(0, cx)), (slice(0, cy), slice(cx, None)),
            (slice(cy, None), slice(0, cx)), (slice(cy, None), slice(cx, None))]  # fmt: skip


def _histograms(code: np.ndarray, split: tuple[int, int] | None) -> np.ndarray:
    """Counts per (quadrant, mask class, grey level); one pseudo-quadrant when there is no split."""
    if split is None:
        return np.bincount(code.ravel(), minlength=512).reshape(1, 2, 256)
    return np.stack(
        [np.bincount(code[region].ravel(), minlength=512).reshape(2, 256) for region in _quadrant_slices(split)]
    )


def _smeasure(levels, hist, hists, split, pred, gt, eps: float) -> float:
    """S-measure (alpha 0.5) from the (mask class, level) counts, whole and per quadrant.

    ``pred`` and ``gt`` (the normalised map and the binary mask) are only read for quadrants where
    the prediction is constant, see :func:`_ssim`.
    """
    size = gt.size
    fg_mean = hist[1].sum() / size
    if fg_mean == 0:
        return float(1 - (hist.sum(axis=0) @ levels) / size)
    if fg_mean == 1:
        return float((hist.sum(axis=0) @ levels) / size)
    object_score = fg_mean * _object_score(levels, hist[1], eps) + (1 - fg_mean) * _object_score(
        1 - levels, hist[0], eps
    )
    region_score = 0.0
    height, width = gt.shape
    for region, counts in zip(_quadrant_slices(split), hists, strict=True):
        rows = range(height)[region[0]]
        cols = range(width)[region[1]]
        weight = len(rows) * len(cols) / size
        if weight:
            region_score += weight * _ssim(levels, counts, pred[region], gt[region], eps)
    return max(0.0, float(0.5 * object_score + 0.5 * region_score))


def _object_score(values: np.ndarray, counts: np.ndarray, eps: float) -> float:
    """``2 mean / (mean^2 + 1 + std + eps)`` of the values with these counts (sample std)."""
    n = counts.sum()
    mean = counts @ values / n
    std = np.sqrt(counts @ (values - mean) ** 2 / (n - 1)) if n > 1 else 0.0
    return 2 * mean / (mean**2 + 1 + std + eps)


def _ssim(levels, counts, pred_region, gt_region, eps: float) -> float:
    """The S-measure's SSIM-like score of one quadrant from its (mask class, level) counts."""
    if np.count_nonzero(counts.sum(axis=0)) == 1:
        # A constant prediction: whether the toolbox sees its variance as exactly 0 (score 1) or not
        # (score 0) depends on its summation order, so here compute it on the pixels, as it does.
        return _ssim_on_pixels(pred_region, gt_region, eps)
    n = counts.sum()
    per_level = counts.sum(axis=0)
    x = per_level @ levels / n
    y = counts[1].sum() / n
    dx = levels - x
    sigma_x = per_level @ dx**2 / (n - 1 + eps)
    sigma_y = (counts[0].sum() * y**2 + counts[1].sum() * (1 - y) ** 2) / (n - 1 + eps)
    sigma_xy = (counts[1] @ dx * (1 - y) - counts[0] @ dx * y) / (n - 1 + eps)
    return _ssim_score(x, y, sigma_x, sigma_y, sigma_xy, eps)


def _ssim_on_pixels(pred: np.ndarray, gt: np.ndarray, eps: float) -> float:
    n = pred.size
    x, y = np.mean(pred), np.mean(gt)
    sigma_x = np.sum((pred - x) ** 2) / (n - 1 + eps)
    sigma_y = np.sum((gt - y) ** 2) / (n - 1 + eps)
    sigma_xy = np.sum((pred - x) * (gt - y)) / (n - 1 + eps)
    return _ssim_score(x, y, sigma_x, sigma_y, sigma_xy, eps)


def _ssim_score(x, y, sigma_x, sigma_y, sigma_xy, eps: float) -> float:
    alpha = 4 * x * y * sigma_xy
    beta = (x**2 + y**2) * (sigma_x + sigma_y)
    if alpha != 0:
        return float(alpha / (beta + eps))
    return 1.0 if beta == 0 else 0.0
