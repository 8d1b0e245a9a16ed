"""The saliency metrics of the co-saliency literature, as two toolboxes compute them.

Two protocols, because the toolboxes papers use disagree in small, documented ways
(``../shared/reference/architectures.md`` section 6 lists them):

``pysodmetrics``
    lartpang/PySODMetrics (and the MATLAB CoSOD toolbox it mirrors): prediction ``/255`` then
    min-max normalised if not constant, ground truth ``> 128``, 256 thresholds on the map quantised
    to uint8, E-measure special cases for empty and full masks, 1-based S-measure centroid.
``eval-co-sod``
    zzhanghub/eval-co-sod (GICD, GCoNet, DCFM): float32 maps, min-max ``(p-min)/(max-min+1e-20)``,
    soft (un-binarised) ground truth, 255 thresholds ``linspace(0, 1-1e-10, 255)``, MAE on the raw
    map, no E-measure special cases, 0-based S-measure centroid.

Everything is computed from per-grey-level histograms: an 8-bit map has at most 256 distinct values,
so F, E, MAE, the adaptive scores and both parts of the S-measure (per quadrant) follow exactly from
one ``bincount`` instead of one pass over the image per threshold. Only the weighted F-measure needs
image-sized work (a distance transform and a Gaussian filter).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import cv2
import numpy as np
from PIL import Image
from scipy import ndimage

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


def match_size(pred: np.ndarray, shape: tuple[int, int], protocol: str) -> np.ndarray:
    """Resize an 8-bit prediction to the mask's (height, width) the way the protocol's tools do.

    PySODEvalToolkit resizes with ``cv2.resize`` (bilinear); eval-co-sod with PIL bilinear.
    """
    _check_protocol(protocol)
    if pred.shape == shape:
        return pred
    height, width = shape
    if protocol == "pysodmetrics":
        return cv2.resize(pred, (width, height), interpolation=cv2.INTER_LINEAR)
    return np.asarray(Image.fromarray(pred).resize((width, height), Image.BILINEAR))


def evaluate_pair(pred: np.ndarray, gt: np.ndarray, protocol: str = "pysodmetrics") -> ImageScores:
    """Every metric of one 8-bit grey prediction against its 8-bit grey mask of the same shape."""
    _check_protocol(protocol)
    if pred.dtype != np.uint8 or gt.dtype != np.uint8:
        raise TypeError(f"pred and gt must be uint8 grey images, got {pred.dtype} and {gt.dtype}")
    if pred.shape != gt.shape or pred.ndim != 2:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} must be 2-D and of the same shape")
    pysod = _pysod_scores(pred, gt)
    if protocol == "pysodmetrics":
        return pysod
    return _eval_co_sod_scores(pred, gt, pysod)


# ----------------------------------------------------------------------------------------------
# PySODMetrics protocol
# ----------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------
# S-measure (both protocols): object part from level histograms, region part per quadrant
# ----------------------------------------------------------------------------------------------


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
    for region, counts in zip(_quadrant_slices(split), hists):
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


# ----------------------------------------------------------------------------------------------
# Weighted F-measure (Margolin et al. 2014, as PySODMetrics computes it)
# ----------------------------------------------------------------------------------------------

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


# ----------------------------------------------------------------------------------------------
# eval-co-sod protocol
# ----------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------
# Dataset-level results
# ----------------------------------------------------------------------------------------------

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
    """
    order = np.lexsort((tpr, fpr))
    return float(np.trapezoid(tpr[order], fpr[order]))
