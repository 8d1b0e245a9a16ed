"""Weighted F-measure (Margolin et al. 2014, as PySODMetrics computes it)."""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage

from cosal_cli.metrics.protocols import PYSOD_EPS

_GAUSS_RADIUS = 3  # MATLAB fspecial('gaussian', 7, 5)
_GAUSS_1D = np.exp(-(np.arange(-_GAUSS_RADIUS, _GAUSS_RADIUS + 1) ** 2) / (2 * 5.0**2))
_GAUSS_1D /= _GAUSS_1D.sum()  # the 7x7 kernel is the outer product of this with itself
_REACH = 2 * _GAUSS_RADIUS + 1
# A background pixel within the kernel's reach of the mask has a mask pixel at most 3 rows and 3
# columns away, so its nearest one is at most sqrt(18) away: it is among the offsets of its squared
# distance. Among equally near mask pixels scipy's distance_transform_edt (which PySODMetrics uses)
# returns the one in the smallest column, then the smallest row, so offsets are ordered that way.
_OFFSETS_BY_SQUARED_DISTANCE = {
    squared: np.array(sorted(
        ((dy, dx) for dy in range(-4, 5) for dx in range(-4, 5) if dy * dy + dx * dx == squared),
        key=lambda offset: (offset[1], offset[0]),
    ))
    for squared in range(1, 19)
    if any(dy * dy + dx * dx == squared for dy in range(-4, 5) for dx in range(-4, 5))
}  # fmt: skip


def _weighted_fmeasure(pred: np.ndarray, gt: np.ndarray, beta: float = 1.0) -> float:
    """Weighted F-measure; ``beta`` is beta^2, as in PySODMetrics (default 1).

    PySODMetrics gives every background pixel the error of its nearest mask pixel (a full feature
    transform) and smooths that; but the smoothed error is only read inside the mask, so only the
    background pixels within the kernel's reach of the mask need their nearest mask pixel, and those
    are found among the few offsets of their (known) distance, with scipy's tie-breaking.
    """
    fg_size = int(np.count_nonzero(gt))
    if fg_size == 0:
        return 0.0
    background = ~gt
    squared_distance = _SquaredDistances(background)
    box = _bounding_box(gt, margin=_GAUSS_RADIUS)
    crop = gt[box]
    error = np.abs(pred[box] - crop)
    spread = np.where(crop, error, 0.0)
    ring = (cv2.dilate(crop.view(np.uint8), np.ones((_REACH, _REACH), np.uint8)) > 0) & ~crop
    rows, cols = np.nonzero(ring)
    box_rows, box_cols = rows + box[0].start, cols + box[1].start
    ring_squared = squared_distance.at((box_rows, box_cols)).astype(np.int64)
    padded = np.pad(crop, 4)
    for squared, offsets in _OFFSETS_BY_SQUARED_DISTANCE.items():
        chosen = ring_squared == squared
        if not chosen.any():
            continue
        r, c = rows[chosen], cols[chosen]
        hits = padded[r[:, None] + offsets[:, 0] + 4, c[:, None] + offsets[:, 1] + 4]
        first = offsets[hits.argmax(axis=1)]  # the first offset, in tie-breaking order, on the mask
        spread[r, c] = error[r + first[:, 0], c + first[:, 1]]
    # Zero padding beyond the image, as MATLAB's imfilter; the kernel never reaches beyond the box.
    smoothed = cv2.sepFilter2D(spread, -1, _GAUSS_1D, _GAUSS_1D, borderType=cv2.BORDER_CONSTANT)[crop]
    inside = error[crop]
    inside = np.where(smoothed < inside, smoothed, inside)

    # Pixel importance grows with the distance to the mask; only non-zero errors contribute.
    wrong = background & (pred > 0)
    distance = np.sqrt(squared_distance.at(wrong))
    importance = 2 - np.exp(np.log(0.5) / 5 * distance)
    false_weight = float(pred[wrong] @ importance)
    true_weight = fg_size - inside.sum()
    recall = 1 - inside.mean()
    precision = true_weight / (true_weight + false_weight + PYSOD_EPS)
    return float((1 + beta) * recall * precision / (recall + beta * precision + PYSOD_EPS))


class _SquaredDistances:
    """Exact squared Euclidean distances (integers, as float64) to the nearest mask pixel.

    OpenCV's exact transform is several times faster than scipy's but returns float32 distances,
    whose last bits even vary with buffer alignment. Squared distances are integers, so rounding the
    square recovers them exactly while float32 carries them within 0.5 (distances below 1,500 px);
    their float64 square roots then equal scipy's bit for bit. Farther than that, scipy does the work.
    """

    def __init__(self, background: np.ndarray):
        self.distance = cv2.distanceTransform(background.view(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        self.exact = None
        if self.distance.size and self.distance.max() >= 1500:
            self.exact = ndimage.distance_transform_edt(background)

    def at(self, where) -> np.ndarray:
        """At the pixels ``where`` selects (a boolean mask or a tuple of index arrays)."""
        if self.exact is not None:
            return np.rint(self.exact[where] ** 2)
        return np.rint(self.distance[where].astype(np.float64) ** 2)


def _bounding_box(mask: np.ndarray, margin: int) -> tuple[slice, slice]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return (
        slice(max(rows[0] - margin, 0), rows[-1] + margin + 1),
        slice(max(cols[0] - margin, 0), cols[-1] + margin + 1),
    )
