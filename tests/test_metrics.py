"""Tests for cosal_cli.metrics: both evaluation protocols against independent references.

* ``pysodmetrics``: compared with the installed PySODMetrics package (``py_sod_metrics``) on a few
  hundred seeded prediction/mask pairs, per image and over the dataset, to 1e-6.
* ``eval-co-sod``: zzhanghub/eval-co-sod is not pip-installable, so the test carries a reference
  written straight from its ``evaluator.py`` (torch, float32, one loop over the 255 thresholds).
* Hand-checkable cases for the metrics, the accumulator, AP/AUC, resizing and input validation.

Everything is built in memory from seeded ``np.random.default_rng`` generators; nothing needs the
network, ``../shared`` or a GPU.
"""

from __future__ import annotations

import warnings

import cv2
import numpy as np
import py_sod_metrics as psm
import pytest
import torch
from PIL import Image
from torchvision.transforms.functional import to_tensor

from cosal_cli import metrics
from cosal_cli.metrics import (
    CURVES,
    SCALARS,
    SUMMARY,
    ImageScores,
    MetricAccumulator,
    average_precision,
    evaluate_pair,
    match_size,
    roc_auc,
    thresholds,
)

TOL = 1e-6
EPS = np.spacing(1)  # PySODMetrics' (MATLAB's) eps

# ----------------------------------------------------------------------------------------------
# Pair generation
# ----------------------------------------------------------------------------------------------


def random_shape(rng, low=8, high=100) -> tuple[int, int]:
    """A (height, width) with an independent random aspect."""
    return int(rng.integers(low, high + 1)), int(rng.integers(low, high + 1))


def blob_mask(rng, shape) -> np.ndarray:
    """1..3 random filled ellipses as a boolean mask (never empty)."""
    h, w = shape
    mask = np.zeros(shape, np.uint8)
    for _ in range(int(rng.integers(1, 4))):
        center = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        axes = (int(rng.integers(1, max(2, w // 3))), int(rng.integers(1, max(2, h // 3))))
        cv2.ellipse(mask, center, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    mask[h // 2, w // 2] = 1
    return mask.astype(bool)


def soft_prediction(rng, mask: np.ndarray) -> np.ndarray:
    """A blurred, shifted, noisy 8-bit prediction of a boolean mask."""
    shifted = np.roll(mask, (int(rng.integers(-3, 4)), int(rng.integers(-3, 4))), axis=(0, 1))
    sigma = float(rng.uniform(0.5, 4))
    blurred = cv2.GaussianBlur(shifted.astype(np.float64) * 255, (0, 0), sigma)
    noisy = blurred * rng.uniform(0.3, 1) + rng.normal(0, rng.uniform(0, 40), mask.shape)
    return np.clip(np.round(noisy), 0, 255).astype(np.uint8)


def to_u8(mask: np.ndarray) -> np.ndarray:
    return mask.astype(np.uint8) * 255


def pysod_pair(rng, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """One (pred, gt) uint8 pair of the given kind."""
    shape = random_shape(rng)
    mask = blob_mask(rng, shape)
    if kind == "blob":
        return soft_prediction(rng, mask), to_u8(mask)
    if kind == "black_mask":
        pred = soft_prediction(rng, blob_mask(rng, shape)) if rng.random() < 0.8 else np.full(shape, 77, np.uint8)
        return pred, np.zeros(shape, np.uint8)
    if kind == "white_mask":
        pred = soft_prediction(rng, blob_mask(rng, shape)) if rng.random() < 0.8 else np.full(shape, 0, np.uint8)
        return pred, np.full(shape, 255, np.uint8)
    if kind == "tiny":
        tiny = np.zeros(shape, bool)
        count = int(rng.integers(1, 5))
        rows, cols = rng.integers(0, shape[0], count), rng.integers(0, shape[1], count)
        if rng.random() < 0.15:  # on the last row or column: PySODMetrics' NaN S-measure case
            if rng.random() < 0.5:
                rows = np.full(count, shape[0] - 1)
            else:
                cols = np.full(count, shape[1] - 1)
        tiny[rows, cols] = True
        pred = soft_prediction(rng, tiny) if rng.random() < 0.7 else rng.integers(0, 256, shape, dtype=np.uint8)
        return pred, to_u8(tiny)
    if kind == "constant_pred":
        value = int(rng.choice([0, 255, int(rng.integers(1, 255))]))
        return np.full(shape, value, np.uint8), to_u8(mask)
    if kind == "two_levels":
        low, high = sorted(rng.choice(256, 2, replace=False).tolist())
        guess = blob_mask(rng, shape) if rng.random() < 0.5 else np.roll(mask, int(rng.integers(-5, 6)), axis=1)
        return np.where(guess, high, low).astype(np.uint8), to_u8(mask)
    if kind == "binary":
        guess = np.roll(mask, (int(rng.integers(-4, 5)), int(rng.integers(-4, 5))), axis=(0, 1))
        guess ^= rng.random(shape) < 0.03
        return to_u8(guess), to_u8(mask)
    if kind == "inverted":
        return 255 - soft_prediction(rng, mask), to_u8(mask)
    if kind == "grey_mask":
        # Mask values 100..200, so the ``> 128`` binarisation decides what is foreground.
        gt = np.where(mask, rng.integers(120, 201, shape), rng.integers(100, 140, shape)).astype(np.uint8)
        return soft_prediction(rng, gt > 128), gt
    raise AssertionError(kind)


PYSOD_KINDS = ("blob", "black_mask", "white_mask", "tiny", "constant_pred", "two_levels", "binary", "inverted",
               "grey_mask")  # fmt: skip
PAIRS_PER_KIND = 34  # 306 pairs in all


def pysod_pairs(kind: str) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(1000 + PYSOD_KINDS.index(kind))
    return [pysod_pair(rng, kind) for _ in range(PAIRS_PER_KIND)]


# ----------------------------------------------------------------------------------------------
# PySODMetrics reference and an independent S-measure
# ----------------------------------------------------------------------------------------------


def _pysod_meters() -> dict:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="This class will be removed")  # Fmeasure's deprecation
        return {"sm": psm.Smeasure(), "mae": psm.MAE(), "wfm": psm.WeightedFmeasure(), "fm": psm.Fmeasure(),
                "em": psm.Emeasure()}  # fmt: skip


def _step(meters: dict, pred: np.ndarray, gt: np.ndarray) -> None:
    with warnings.catch_warnings(), np.errstate(invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # PySODMetrics' mean of an empty quadrant
        for meter in meters.values():
            meter.step(pred, gt)


def _pysod_results(meters: dict) -> dict:
    """Results of PySODMetrics meters, curves flipped to ascending thresholds."""
    f, e = meters["fm"].get_results(), meters["em"].get_results()
    return {
        "sm": float(meters["sm"].get_results()["sm"]),
        "mae": float(meters["mae"].get_results()["mae"]),
        "wfm": float(meters["wfm"].get_results()["wfm"]),
        "adp_fm": float(f["fm"]["adp"]),
        "adp_em": float(e["em"]["adp"]),
        "fm": f["fm"]["curve"][::-1],
        "em": e["em"]["curve"][::-1],
        "precision": f["pr"]["p"][::-1],
        "recall": f["pr"]["r"][::-1],
    }


def pysod_reference(pred: np.ndarray, gt: np.ndarray) -> dict:
    meters = _pysod_meters()
    _step(meters, pred, gt)
    return _pysod_results(meters)


def pysod_normalised(pred_u8: np.ndarray) -> np.ndarray:
    pred = pred_u8 / 255
    return (pred - pred.min()) / (pred.max() - pred.min()) if pred.max() != pred.min() else pred


def fpr_reference(pred_u8: np.ndarray, gt_u8: np.ndarray) -> np.ndarray:
    """FPR at each of the 256 levels of PySODMetrics' quantised map, straight from the definition."""
    quantised = (pysod_normalised(pred_u8) * 255).astype(np.uint8)
    background = gt_u8 <= 128
    return np.array([np.count_nonzero((quantised >= level) & background) for level in range(256)]) / max(
        np.count_nonzero(background), 1
    )


def smeasure_weight_zero_reference(pred_u8: np.ndarray, gt_u8: np.ndarray) -> float:
    """PySODMetrics-protocol S-measure (1-based centroid) in which an EMPTY quadrant has weight 0.

    Written from the definition (Fan et al. 2017 / the MATLAB code), not from either library.
    """
    pred, gt = pysod_normalised(pred_u8), gt_u8 > 128
    y = gt.mean()
    if y == 0:
        return float(1 - pred.mean())
    if y == 1:
        return float(pred.mean())

    def object_part(x):
        std = np.std(x, ddof=1) if x.size > 1 else 0.0
        return 2 * x.mean() / (x.mean() ** 2 + 1 + std + EPS)

    object_score = y * object_part(pred[gt]) + (1 - y) * object_part(1 - pred[~gt])
    h, w = gt.shape
    rows, cols = np.nonzero(gt)
    cy, cx = int(np.round(rows.mean())) + 1, int(np.round(cols.mean())) + 1
    region_score = 0.0
    for ys, xs in ((slice(0, cy), slice(0, cx)), (slice(0, cy), slice(cx, w)), (slice(cy, h), slice(0, cx)),
                   (slice(cy, h), slice(cx, w))):  # fmt: skip
        p, g = pred[ys, xs], gt[ys, xs].astype(np.float64)
        if p.size == 0:
            continue  # weight 0
        n = p.size
        mx, my = p.mean(), g.mean()
        sx = np.sum((p - mx) ** 2) / (n - 1 + EPS)
        sy = np.sum((g - my) ** 2) / (n - 1 + EPS)
        sxy = np.sum((p - mx) * (g - my)) / (n - 1 + EPS)
        alpha, beta = 4 * mx * my * sxy, (mx**2 + my**2) * (sx + sy)
        q = alpha / (beta + EPS) if alpha != 0 else (1.0 if beta == 0 else 0.0)
        region_score += n / (h * w) * q
    return max(0.0, 0.5 * object_score + 0.5 * region_score)


# ----------------------------------------------------------------------------------------------
# eval-co-sod reference (zzhanghub/eval-co-sod evaluator.py, torch float32, per threshold)
# ----------------------------------------------------------------------------------------------


def _eval_ssim(pred: torch.Tensor, gt: torch.Tensor) -> float:
    n = pred.numel()
    x, y = pred.mean(), gt.mean()
    sx = ((pred - x) * (pred - x)).sum() / (n - 1 + 1e-20)
    sy = ((gt - y) * (gt - y)).sum() / (n - 1 + 1e-20)
    sxy = ((pred - x) * (gt - y)).sum() / (n - 1 + 1e-20)
    alpha = 4 * x * y * sxy
    beta = (x * x + y * y) * (sx + sy)
    if alpha != 0:
        return float(alpha / (beta + 1e-20))
    return 1.0 if beta == 0 else 0.0


def _eval_object(x: torch.Tensor) -> torch.Tensor:
    mean = x.mean()
    return 2.0 * mean / (mean * mean + 1.0 + x.std() + 1e-20)  # unbiased std


def _eval_smeasure(p: torch.Tensor, gt: torch.Tensor) -> float:
    y = gt.mean()
    if y == 0:
        return float(1.0 - p.mean())
    if y == 1:
        return float(p.mean())
    g = (gt >= 0.5).float()
    u = g.mean()
    s_object = u * _eval_object(p[g == 1]) + (1 - u) * _eval_object((1 - p)[g == 0])
    h, w = g.shape
    area = h * w
    total = g.sum()
    x = int(torch.round((g.sum(dim=0) * torch.arange(w).float()).sum() / total + 1e-20))
    yy = int(torch.round((g.sum(dim=1) * torch.arange(h).float()).sum() / total + 1e-20))
    w1, w2, w3 = x * yy / area, (w - x) * yy / area, x * (h - yy) / area
    w4 = 1 - w1 - w2 - w3
    quadrants = ((slice(None, yy), slice(None, x)), (slice(None, yy), slice(x, None)),
                 (slice(yy, None), slice(None, x)), (slice(yy, None), slice(x, None)))  # fmt: skip
    s_region = sum(wq * _eval_ssim(p[q], g[q]) for wq, q in zip((w1, w2, w3, w4), quadrants, strict=True))
    score = float(0.5 * s_object + 0.5 * s_region)
    return 0.0 if score < 0 else score  # as the original's `if Q.item() < 0`: a NaN stays NaN


def eval_co_sod_reference(pred_u8: np.ndarray, gt_u8: np.ndarray) -> dict:
    """eval-co-sod's per-image MAE, S, and precision/recall/F/E/TPR/FPR over its 255 thresholds."""
    raw = to_tensor(Image.fromarray(pred_u8))[0]  # uint8 / 255, float32
    gt = to_tensor(Image.fromarray(gt_u8))[0]  # soft, not binarised
    mae = float(torch.abs(raw - gt).mean())
    p = (raw - raw.min()) / (raw.max() - raw.min() + 1e-20)
    th = torch.linspace(0, 1 - 1e-10, 255)
    curves = {name: torch.zeros(255) for name in ("precision", "recall", "fm", "em", "tpr", "fpr")}
    g = gt - gt.mean()
    for i in range(255):
        b = (p >= th[i]).float()
        tp = (b * gt).sum()
        precision, recall = tp / (b.sum() + 1e-20), tp / (gt.sum() + 1e-20)
        f = (1 + 0.3) * precision * recall / (0.3 * precision + recall)
        curves["precision"][i], curves["recall"][i] = precision, recall
        curves["fm"][i] = 0 if torch.isnan(f) else f  # the original: f_score[f_score != f_score] = 0
        fp, tn, fn = (b * (1 - gt)).sum(), ((1 - b) * (1 - gt)).sum(), ((1 - b) * gt).sum()
        curves["tpr"][i], curves["fpr"][i] = tp / (tp + fn + 1e-20), fp / (fp + tn + 1e-20)
        fm = b - b.mean()
        align = 2 * g * fm / (g * g + fm * fm + 1e-20)
        curves["em"][i] = ((align + 1) * (align + 1) / 4).sum() / (gt.numel() - 1 + 1e-20)
    return {"mae": mae, "sm": _eval_smeasure(p, gt), **{k: v.double().numpy() for k, v in curves.items()}}


def eval_pairs() -> list[tuple[str, np.ndarray, np.ndarray]]:
    """~40 small pairs for the eval-co-sod protocol, including SOFT masks.

    Excluded on purpose: soft masks that binarise (>= 0.5) to nothing or to everything while their soft
    mean is neither 0 nor 1, and binarised masks with a single foreground or background pixel: there
    the original gives NaN (mean/std of an empty or one-element tensor).
    """
    rng = np.random.default_rng(7)
    pairs = []
    for i in range(40):
        shape = random_shape(rng, 16, 40)
        mask = blob_mask(rng, shape)
        mask[shape[0] // 2 - 4 : shape[0] // 2 + 5, shape[1] // 2 - 4 : shape[1] // 2 + 5] = True  # a 9x9 core
        mask[0, 0] = False
        kind = ("hard", "soft", "soft", "black", "white", "constant_pred", "inverted", "hard")[i % 8]
        gt = to_u8(mask)
        if kind == "soft":
            gt = np.clip(np.round(cv2.GaussianBlur(gt.astype(np.float64), (0, 0), rng.uniform(0.7, 2.5))), 0, 255)
            gt = gt.astype(np.uint8)
        elif kind == "black":
            gt = np.zeros(shape, np.uint8)
        elif kind == "white":
            gt = np.full(shape, 255, np.uint8)
        pred = soft_prediction(rng, mask if rng.random() < 0.7 else blob_mask(rng, shape))
        if kind == "constant_pred":
            pred = np.full(shape, int(rng.choice([0, 255, 90])), np.uint8)
        elif kind == "inverted":
            pred = 255 - pred
        binarised = gt >= 128
        assert kind in ("black", "white") or 1 < binarised.sum() < binarised.size - 1
        pairs.append((kind, pred, gt))
    return pairs


# ----------------------------------------------------------------------------------------------
# Fixtures
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pysod_results() -> dict:
    """kind -> list of (pred, gt, PySODMetrics reference, cosal scores)."""
    return {
        kind: [(pred, gt, pysod_reference(pred, gt), evaluate_pair(pred, gt)) for pred, gt in pysod_pairs(kind)]
        for kind in PYSOD_KINDS
    }


# ----------------------------------------------------------------------------------------------
# 1. Agreement with PySODMetrics
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", PYSOD_KINDS)
def test_pysodmetrics_protocol_matches_pysodmetrics_per_image(pysod_results, kind):
    """Every scalar and curve of every pair agrees with PySODMetrics to 1e-6.

    Only the S-measure of pairs where PySODMetrics returns NaN is skipped (see the NaN tests).
    """
    for index, (pred, gt, ref, ours) in enumerate(pysod_results[kind]):
        where = f"{kind} pair {index} {pred.shape}"
        for name in ("mae", "wfm", "adp_fm", "adp_em"):
            assert ours.scalars[name] == pytest.approx(ref[name], abs=TOL, rel=0), f"{name} of {where}"
        if not np.isnan(ref["sm"]):
            assert ours.scalars["sm"] == pytest.approx(ref["sm"], abs=TOL, rel=0), f"sm of {where}"
        for name in ("fm", "em", "precision", "recall"):
            assert ours.curves[name].shape == (256,)
            np.testing.assert_allclose(ours.curves[name], ref[name], rtol=0, atol=TOL, err_msg=f"{name} of {where}")
        np.testing.assert_allclose(ours.curves["tpr"], ref["recall"], rtol=0, atol=TOL, err_msg=where)
        np.testing.assert_allclose(ours.curves["fpr"], fpr_reference(pred, gt), rtol=0, atol=TOL, err_msg=where)


def test_pysodmetrics_nan_smeasure_is_rare_and_cosal_stays_finite(pysod_results):
    """Count the pairs skipped for PySODMetrics' NaN S-measure; on them cosal gives the weight-0 value."""
    records = [record for kind in PYSOD_KINDS for record in pysod_results[kind]]
    nan_records = [(pred, gt, ours) for pred, gt, ref, ours in records if np.isnan(ref["sm"])]
    assert len(records) >= 300
    # The generator puts a few tiny objects on the last row/column, so the skip path is exercised.
    assert 0 < len(nan_records) <= 0.05 * len(records), f"{len(nan_records)} NaN S-measures in {len(records)} pairs"
    for pred, gt, ours in nan_records:
        assert np.isfinite(ours.scalars["sm"])
        assert ours.scalars["sm"] == pytest.approx(smeasure_weight_zero_reference(pred, gt), abs=1e-12)


def test_weight_zero_reference_agrees_with_pysodmetrics_where_it_is_finite(pysod_results):
    """The independent S-measure reference used for the NaN cases is itself right elsewhere."""
    for kind in PYSOD_KINDS:
        for pred, gt, ref, _ in pysod_results[kind][:10]:
            if not np.isnan(ref["sm"]):
                assert smeasure_weight_zero_reference(pred, gt) == pytest.approx(ref["sm"], abs=1e-12)


def _last_pixel_mask(shape):
    gt = np.zeros(shape, np.uint8)
    gt[-1, -1] = 255
    return gt


def _last_row_mask(shape):
    gt = np.zeros(shape, np.uint8)
    gt[-1, 2:-3] = 255
    return gt


def _last_column_mask(shape):
    gt = np.zeros(shape, np.uint8)
    gt[5:, -1] = 255
    return gt


@pytest.mark.parametrize("make_mask", [_last_pixel_mask, _last_row_mask, _last_column_mask])
def test_pysodmetrics_smeasure_is_nan_when_centroid_rounds_to_last_row_or_column(make_mask):
    """Known PySODMetrics defect: the 1-based split leaves an empty quadrant whose mean is NaN, and
    NaN * weight 0 stays NaN. cosal gives that quadrant weight 0 and returns a finite S in [0, 1]."""
    rng = np.random.default_rng(3)
    gt = make_mask((23, 31))
    pred = soft_prediction(rng, gt > 128)
    assert np.isnan(pysod_reference(pred, gt)["sm"])
    ours = evaluate_pair(pred, gt).scalars["sm"]
    assert np.isfinite(ours) and 0 <= ours <= 1
    assert ours == pytest.approx(smeasure_weight_zero_reference(pred, gt), abs=1e-12)


def test_pysodmetrics_protocol_matches_pysodmetrics_over_the_dataset(pysod_results):
    """Dataset values (means of scalars, max/mean of averaged F and E curves) agree to 1e-6."""
    meters, accumulator = _pysod_meters(), MetricAccumulator("pysodmetrics")
    for kind in PYSOD_KINDS:
        for pred, gt, ref, ours in pysod_results[kind]:
            if np.isnan(ref["sm"]):
                continue
            _step(meters, pred, gt)
            accumulator.add(kind, ours)
    ref = _pysod_results(meters)
    summary = accumulator.summary()
    assert accumulator.images > 280
    expected = {"sm": ref["sm"], "mae": ref["mae"], "wfm": ref["wfm"], "adp_fm": ref["adp_fm"], "adp_em": ref["adp_em"],
                "max_fm": ref["fm"].max(), "mean_fm": ref["fm"].mean(), "max_em": ref["em"].max(),
                "mean_em": ref["em"].mean()}  # fmt: skip
    for name, value in expected.items():
        assert summary[name] == pytest.approx(value, abs=TOL, rel=0), name


# ----------------------------------------------------------------------------------------------
# 2. eval-co-sod protocol against the reference
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def eval_results() -> list:
    return [(kind, pred, gt, eval_co_sod_reference(pred, gt), evaluate_pair(pred, gt, "eval-co-sod"))
            for kind, pred, gt in eval_pairs()]  # fmt: skip


def test_eval_co_sod_protocol_matches_reference_per_image(eval_results):
    kinds = {kind for kind, *_ in eval_results}
    assert kinds == {"hard", "soft", "black", "white", "constant_pred", "inverted"}
    assert any(((gt > 0) & (gt < 255)).any() for kind, _, gt, _, _ in eval_results if kind == "soft")
    for index, (kind, pred, _gt, ref, ours) in enumerate(eval_results):
        where = f"{kind} pair {index} {pred.shape}"
        assert ours.scalars["mae"] == pytest.approx(ref["mae"], abs=TOL, rel=0), f"mae of {where}"
        assert ours.scalars["sm"] == pytest.approx(ref["sm"], abs=TOL, rel=0), f"sm of {where}"
        for name in ("precision", "recall", "fm", "em", "tpr", "fpr"):
            assert ours.curves[name].shape == (255,)
            np.testing.assert_allclose(ours.curves[name], ref[name], rtol=0, atol=TOL, err_msg=f"{name} of {where}")


def test_eval_co_sod_protocol_matches_reference_over_the_dataset(eval_results):
    """Mean MAE/S, max/mean of averaged F and E, and AP/AUC of the averaged curves as eval-co-sod does."""
    accumulator = MetricAccumulator("eval-co-sod")
    for kind, _, _, _, ours in eval_results:
        accumulator.add(kind, ours)
    refs = [ref for *_, ref, _ in eval_results]
    mean = {name: np.mean([ref[name] for ref in refs], axis=0) for name in ("mae", "sm", "fm", "em", "precision",
                                                                           "recall", "tpr", "fpr")}  # fmt: skip
    # eval-co-sod's AP: VOC envelope loop; its AUC: trapezoid in ROC order (descending threshold,
    # along which FPR and TPR both grow, so ties in FPR are ordered the monotone way).
    ap_r = np.concatenate(([0.0], mean["recall"], [1.0]))
    ap_p = np.concatenate(([0.0], mean["precision"], [0.0]))
    order = np.argsort(ap_r, kind="stable")
    ap_r, ap_p = ap_r[order], ap_p[order]
    for i in range(len(ap_p) - 1, 0, -1):
        ap_p[i - 1] = max(ap_p[i], ap_p[i - 1])
    steps = np.where(ap_r[1:] != ap_r[:-1])[0]
    ap = np.sum((ap_r[steps + 1] - ap_r[steps]) * ap_p[steps + 1])
    auc = float(torch.trapz(torch.from_numpy(mean["tpr"][::-1].copy()), torch.from_numpy(mean["fpr"][::-1].copy())))
    expected = {"mae": mean["mae"], "sm": mean["sm"], "max_fm": mean["fm"].max(), "mean_fm": mean["fm"].mean(),
                "max_em": mean["em"].max(), "mean_em": mean["em"].mean(), "ap": ap, "auc": auc}  # fmt: skip
    summary = accumulator.summary()
    for name, value in expected.items():
        assert summary[name] == pytest.approx(value, abs=TOL, rel=0), name


def test_eval_co_sod_curves_match_reference_when_a_level_sits_on_a_threshold():
    """A prediction spanning exactly 127 grey levels puts normalised levels on torch's thresholds."""
    rng = np.random.default_rng(11)
    gt = to_u8(blob_mask(rng, (40, 40)))
    pred = (1 + np.arange(1600) % 128).reshape(40, 40).astype(np.uint8)  # levels 1..128
    ref, ours = eval_co_sod_reference(pred, gt), evaluate_pair(pred, gt, "eval-co-sod")
    for name in ("precision", "recall", "fm", "em", "fpr"):
        np.testing.assert_allclose(ours.curves[name], ref[name], rtol=0, atol=TOL, err_msg=name)


def test_eval_co_sod_takes_adaptive_scores_and_weighted_f_from_pysodmetrics(eval_results):
    """eval-co-sod has no adaptive F/E or weighted F; cosal reports PySODMetrics' for them."""
    for _, pred, gt, _, ours in eval_results:
        pysod = evaluate_pair(pred, gt, "pysodmetrics")
        assert ours.scalars["adp_fm"] == pysod.scalars["adp_fm"]
        assert ours.scalars["adp_em"] == pysod.scalars["adp_em"]
        assert ours.scalars["wfm"] == pysod.scalars["wfm"]


# ----------------------------------------------------------------------------------------------
# 3. Thresholds
# ----------------------------------------------------------------------------------------------


def test_eval_co_sod_thresholds_equal_torch_linspace():
    expected = torch.linspace(0, 1 - 1e-10, 255).numpy()
    got = thresholds("eval-co-sod")
    assert got.shape == (255,)
    np.testing.assert_array_equal(got, expected.astype(np.float64))


def test_pysodmetrics_thresholds_are_grey_levels():
    np.testing.assert_array_equal(thresholds("pysodmetrics"), np.arange(256) / 255)


# ----------------------------------------------------------------------------------------------
# 4. Sanity on hand-checkable cases
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def square_mask() -> np.ndarray:
    gt = np.zeros((40, 50), np.uint8)
    gt[10:25, 12:30] = 255
    return gt


@pytest.mark.parametrize("protocol", metrics.PROTOCOLS)
def test_perfect_prediction_scores_one(square_mask, protocol):
    scores = evaluate_pair(square_mask.copy(), square_mask, protocol)
    n = square_mask.size
    # 1 up to PySODMetrics' eps in the object score's denominator (2 / (2 + eps)); exactly 1 with 1e-20.
    assert scores.scalars["sm"] == pytest.approx(1.0, abs=1e-12)
    assert scores.scalars["mae"] == 0.0
    assert scores.curves["fm"].max() == pytest.approx(1.0, abs=1e-12)
    # Both toolboxes divide the E-measure's sum over N pixels by N - 1, so a perfect map scores
    # N / (N - 1), not 1.
    assert scores.curves["em"].max() == pytest.approx(n / (n - 1), abs=1e-12)
    assert scores.scalars["adp_em"] == pytest.approx(n / (n - 1), abs=1e-12)
    # wF's precision is TPw / (TPw + FPw + eps) with FPw = 0: 1 up to eps, not exactly 1.
    assert scores.scalars["wfm"] == pytest.approx(1.0, abs=1e-12)
    assert scores.scalars["adp_fm"] == pytest.approx(1.0, abs=1e-12)


def test_perfect_prediction_exact_values(square_mask):
    """F = 1 at every threshold above 0; at threshold 0 everything is predicted."""
    scores = evaluate_pair(square_mask.copy(), square_mask)
    assert np.all(scores.curves["fm"][1:] == pytest.approx(1.0, abs=1e-15))
    fg = np.count_nonzero(square_mask)
    assert scores.curves["precision"][0] == fg / square_mask.size  # threshold 0: everything predicted


@pytest.mark.parametrize("protocol", metrics.PROTOCOLS)
def test_inverted_prediction_scores_low(square_mask, protocol):
    scores = evaluate_pair(255 - square_mask, square_mask, protocol)
    fg_fraction = np.count_nonzero(square_mask) / square_mask.size
    assert scores.scalars["sm"] < 0.1
    assert scores.scalars["mae"] == 1.0
    assert scores.scalars["wfm"] < 0.1
    assert scores.scalars["adp_fm"] == 0.0
    # The best F is at threshold 0 (everything predicted): precision = fg fraction, recall 1.
    best = 1.3 * fg_fraction / (0.3 * fg_fraction + 1)
    assert scores.curves["fm"].max() == pytest.approx(best, abs=1e-7)
    assert scores.curves["em"].max() < 0.5


def test_auc_of_random_prediction_is_near_half_and_of_perfect_is_one():
    rng = np.random.default_rng(5)
    gt = to_u8(rng.random((200, 200)) < 0.3)
    pred = rng.integers(0, 256, gt.shape, dtype=np.uint8)
    for protocol in metrics.PROTOCOLS:
        random_scores = evaluate_pair(pred, gt, protocol)
        assert roc_auc(random_scores.curves["tpr"], random_scores.curves["fpr"]) == pytest.approx(0.5, abs=0.02)
        perfect = evaluate_pair(gt.copy(), gt, protocol)
        assert roc_auc(perfect.curves["tpr"], perfect.curves["fpr"]) == pytest.approx(1.0, abs=1e-12)


def test_average_precision_by_hand():
    # Points (r, p): (0.6, 0.5), (0.2, 0.9), (1.0, 0.7); envelope p = 0.9 on (0, 0.2], 0.7 on (0.2, 1].
    precision, recall = np.array([0.5, 0.9, 0.7]), np.array([0.6, 0.2, 1.0])
    assert average_precision(precision, recall) == pytest.approx(0.2 * 0.9 + 0.8 * 0.7, abs=1e-15)
    # A flat curve at 0.4 up to recall 0.5 and nothing beyond: area 0.5 * 0.4.
    assert average_precision(np.array([0.4, 0.4]), np.array([0.25, 0.5])) == pytest.approx(0.2, abs=1e-15)
    # Perfect precision at full recall.
    assert average_precision(np.array([1.0]), np.array([1.0])) == pytest.approx(1.0, abs=1e-15)


def test_roc_auc_by_hand():
    # Points given out of order: (0, 0), (0.5, 0.8), (1, 1) -> 0.5 * 0.4 + 0.5 * 0.9.
    assert roc_auc(np.array([0.8, 1.0, 0.0]), np.array([0.5, 1.0, 0.0])) == pytest.approx(0.65, abs=1e-15)
    # Equal FPR: ordered by TPR (monotone ROC), so (0, 0), (0, 0.5), (1, 1) -> 0.75, not 0.5.
    assert roc_auc(np.array([0.5, 0.0, 1.0]), np.array([0.0, 0.0, 1.0])) == pytest.approx(0.75, abs=1e-15)


def _ranked_pair() -> tuple[np.ndarray, np.ndarray]:
    """A 4x5 pair with grey levels far apart (no two merge into one threshold step in either protocol)
    and ties between foreground and background at every level but the brightest.

    The curves start at the brightest level, not at (0, 0); that level is all foreground, so the
    segment they leave out is vertical and adds no area, and the per-pixel AUC is the curves' AUC.
    """
    fg = [255, 255, 192, 192, 128, 128, 64, 0]
    bg = [192, 128, 128, 128, 64, 64, 64, 0, 0, 0, 0, 0]
    order = np.random.default_rng(5).permutation(20)
    pred = np.array(fg + bg, np.uint8)[order].reshape(4, 5)
    gt = np.array([255] * len(fg) + [0] * len(bg), np.uint8)[order].reshape(4, 5)
    return pred, gt


def _rank_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Mann-Whitney: (sum of the positives' mid-ranks - n_pos (n_pos + 1) / 2) / (n_pos n_neg)."""
    from scipy.stats import rankdata

    ranks = rankdata(scores, method="average")
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@pytest.mark.parametrize("protocol", metrics.PROTOCOLS)
def test_roc_auc_equals_the_rank_formula_on_per_pixel_scores(protocol):
    pred, gt = _ranked_pair()
    expected = _rank_auc(pred.ravel().astype(np.float64), gt.ravel() > 128)
    # By hand: 8 x 12 pairs, a tie counting 1/2: the foreground 255s score 12 each, 192s 11.5, 128s 9.5,
    # its 64 6.5 and its 0 2.5.
    assert expected == pytest.approx((2 * 12 + 2 * 11.5 + 2 * 9.5 + 6.5 + 2.5) / 96, abs=1e-15)
    scores = evaluate_pair(pred, gt, protocol)
    assert roc_auc(scores.curves["tpr"], scores.curves["fpr"]) == pytest.approx(expected, abs=1e-12)
    accumulator = MetricAccumulator(protocol)  # the AUC that `cosal bench` reports
    accumulator.add("group", scores)
    assert accumulator.summary()["auc"] == pytest.approx(expected, abs=1e-12)
    assert accumulator.per_group()["group"]["auc"] == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("protocol", metrics.PROTOCOLS)
def test_roc_auc_matches_sklearn_on_per_pixel_scores(protocol):
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    pred, gt = _ranked_pair()
    expected = sklearn_metrics.roc_auc_score(gt.ravel() > 128, pred.ravel())
    scores = evaluate_pair(pred, gt, protocol)
    assert roc_auc(scores.curves["tpr"], scores.curves["fpr"]) == pytest.approx(expected, abs=1e-12)


def test_roc_auc_works_without_np_trapezoid(monkeypatch):
    """NumPy 1.x has no ``np.trapezoid`` (only ``np.trapz``); ``pyproject.toml`` allows numpy>=1.24."""
    monkeypatch.delattr(np, "trapezoid", raising=False)
    assert not hasattr(np, "trapezoid")
    assert roc_auc(np.array([0.8, 1.0, 0.0]), np.array([0.5, 1.0, 0.0])) == pytest.approx(0.65, abs=1e-15)
    pred, gt = _ranked_pair()
    accumulator = MetricAccumulator("eval-co-sod")
    accumulator.add("group", evaluate_pair(pred, gt, "eval-co-sod"))
    expected = _rank_auc(pred.ravel().astype(np.float64), gt.ravel() > 128)
    assert accumulator.summary()["auc"] == pytest.approx(expected, abs=1e-12)


def test_roc_auc_is_numpys_trapezoid_to_the_last_bit():
    trapezoid = getattr(np, "trapezoid", None) or np.trapz
    rng = np.random.default_rng(8)
    for _ in range(20):
        tpr, fpr = rng.random(256), rng.random(256)
        order = np.lexsort((tpr, fpr))
        assert roc_auc(tpr, fpr) == float(trapezoid(tpr[order], fpr[order]))


# ----------------------------------------------------------------------------------------------
# 5. Accumulator
# ----------------------------------------------------------------------------------------------


def _scores_for_groups(protocol="pysodmetrics") -> dict[str, list[ImageScores]]:
    rng = np.random.default_rng(21)
    groups = {"small": 2, "large": 5}
    out = {}
    for name, count in groups.items():
        out[name] = []
        for _ in range(count):
            pred, gt = pysod_pair(rng, "blob")
            out[name].append(evaluate_pair(pred, gt, protocol))
    return out


@pytest.mark.parametrize("protocol", metrics.PROTOCOLS)
def test_accumulator_per_image_and_group_averages(protocol):
    groups = _scores_for_groups(protocol)
    accumulator = MetricAccumulator(protocol)
    for name, scores in groups.items():
        for score in scores:
            accumulator.add(name, score)
    everything = [s for scores in groups.values() for s in scores]
    assert accumulator.images == 7

    per_image = accumulator.summary()
    assert set(per_image) == set(SUMMARY)
    for name in SCALARS:
        assert per_image[name] == pytest.approx(np.mean([s.scalars[name] for s in everything]), abs=1e-12)
    fm = np.mean([s.curves["fm"] for s in everything], axis=0)
    em = np.mean([s.curves["em"] for s in everything], axis=0)
    assert per_image["max_fm"] == pytest.approx(fm.max(), abs=1e-12)
    assert per_image["mean_fm"] == pytest.approx(fm.mean(), abs=1e-12)
    assert per_image["max_em"] == pytest.approx(em.max(), abs=1e-12)
    assert per_image["mean_em"] == pytest.approx(em.mean(), abs=1e-12)

    by_group = accumulator.summary(group_average=True)
    for name in SCALARS:
        expected = np.mean([np.mean([s.scalars[name] for s in scores]) for scores in groups.values()])
        assert by_group[name] == pytest.approx(expected, abs=1e-12)
        assert by_group[name] != pytest.approx(per_image[name], abs=1e-9)  # groups of 2 and 5 differ
    group_fm = np.mean([np.mean([s.curves["fm"] for s in scores], axis=0) for scores in groups.values()], axis=0)
    assert by_group["max_fm"] == pytest.approx(group_fm.max(), abs=1e-12)
    _, curves = accumulator.averages(group_average=True)
    assert set(curves) == set(CURVES)
    np.testing.assert_allclose(curves["fm"], group_fm, rtol=0, atol=1e-12)


def test_accumulator_max_f_is_of_the_averaged_curve_not_the_mean_of_maxima():
    """Two images whose best thresholds differ: the mean of maxima is 1, the averaged curve's max is not."""
    gt = np.zeros((20, 20), np.uint8)
    gt[5:15, 5:15] = 255
    low = np.where(gt > 0, 60, 0).astype(np.uint8)
    low[10, 10] = 255  # object at a low level (one object pixel at the top): best threshold is low
    rng = np.random.default_rng(2)
    high = np.where(gt > 0, 255, rng.integers(0, 200, gt.shape)).astype(np.uint8)  # best threshold is high
    scores = [evaluate_pair(low, gt), evaluate_pair(high, gt)]
    mean_of_maxima = np.mean([s.curves["fm"].max() for s in scores])
    max_of_mean = np.mean([s.curves["fm"] for s in scores], axis=0).max()
    assert mean_of_maxima == pytest.approx(1.0, abs=1e-12)
    assert max_of_mean < mean_of_maxima - 0.05
    accumulator = MetricAccumulator()
    for s in scores:
        accumulator.add("g", s)
    assert accumulator.summary()["max_fm"] == pytest.approx(max_of_mean, abs=1e-12)


def test_accumulator_per_group_counts_and_values():
    groups = _scores_for_groups()
    accumulator = MetricAccumulator()
    for name, scores in groups.items():
        for score in scores:
            accumulator.add(name, score)
    table = accumulator.per_group()
    assert {name: row["images"] for name, row in table.items()} == {"small": 2, "large": 5}
    for name, scores in groups.items():
        assert table[name]["sm"] == pytest.approx(np.mean([s.scalars["sm"] for s in scores]), abs=1e-12)
        assert set(table[name]) == {"images", *SUMMARY}


def test_empty_accumulator_summary_is_empty():
    accumulator = MetricAccumulator("eval-co-sod")
    assert accumulator.images == 0
    assert accumulator.summary() == {}
    assert accumulator.summary(group_average=True) == {}
    assert accumulator.per_group() == {}


# ----------------------------------------------------------------------------------------------
# 6. match_size
# ----------------------------------------------------------------------------------------------


def _random_map(shape=(37, 53)) -> np.ndarray:
    return np.random.default_rng(9).integers(0, 256, shape, dtype=np.uint8)


@pytest.mark.parametrize("shape", [(20, 31), (90, 64)])
def test_match_size_pysodmetrics_is_cv2_bilinear(shape):
    pred = _random_map()
    expected = cv2.resize(pred, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    got = match_size(pred, shape, "pysodmetrics")
    assert got.shape == shape and got.dtype == np.uint8
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("shape", [(20, 31), (90, 64)])
def test_match_size_eval_co_sod_is_pil_bilinear(shape):
    pred = _random_map()
    expected = np.asarray(Image.fromarray(pred).resize((shape[1], shape[0]), Image.BILINEAR))
    got = match_size(pred, shape, "eval-co-sod")
    assert got.shape == shape and got.dtype == np.uint8
    np.testing.assert_array_equal(got, expected)


def test_match_size_protocols_differ_when_downscaling():
    pred = _random_map((90, 120))
    assert not np.array_equal(match_size(pred, (30, 41), "pysodmetrics"), match_size(pred, (30, 41), "eval-co-sod"))


@pytest.mark.parametrize("protocol", metrics.PROTOCOLS)
def test_match_size_same_shape_returns_same_object(protocol):
    pred = _random_map()
    assert match_size(pred, pred.shape, protocol) is pred


# ----------------------------------------------------------------------------------------------
# 7. Input validation
# ----------------------------------------------------------------------------------------------


def test_non_uint8_input_raises_type_error():
    gt = np.zeros((10, 10), np.uint8)
    with pytest.raises(TypeError):
        evaluate_pair(gt.astype(np.float32), gt)
    with pytest.raises(TypeError):
        evaluate_pair(gt, gt.astype(bool))
    with pytest.raises(TypeError):
        evaluate_pair(gt.astype(np.uint16), gt, "eval-co-sod")


def test_shape_mismatch_or_3d_raises_value_error():
    with pytest.raises(ValueError):
        evaluate_pair(np.zeros((10, 11), np.uint8), np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError):
        evaluate_pair(np.zeros((10, 10, 3), np.uint8), np.zeros((10, 10, 3), np.uint8))
    with pytest.raises(ValueError):
        evaluate_pair(np.zeros((10, 10, 1), np.uint8), np.zeros((10, 10), np.uint8), "eval-co-sod")


def test_unknown_protocol_raises_value_error_naming_the_valid_ones():
    pred = np.zeros((8, 8), np.uint8)
    for call in (lambda: evaluate_pair(pred, pred, "matlab"), lambda: match_size(pred, (4, 4), "matlab"),
                 lambda: MetricAccumulator("matlab")):  # fmt: skip
        with pytest.raises(ValueError, match="matlab") as info:
            call()
        assert "pysodmetrics" in str(info.value) and "eval-co-sod" in str(info.value)


# ----------------------------------------------------------------------------------------------
# 8. Where the protocols differ
# ----------------------------------------------------------------------------------------------


def test_soft_mask_mae_differs_between_protocols():
    """eval-co-sod: raw pred vs soft mask; pysodmetrics: normalised pred vs mask > 128."""
    rng = np.random.default_rng(4)
    mask = blob_mask(rng, (48, 64))
    gt = np.clip(np.round(cv2.GaussianBlur(to_u8(mask).astype(np.float64), (0, 0), 2.5)), 0, 255).astype(np.uint8)
    pred = (soft_prediction(rng, mask) // 2 + 40).astype(np.uint8)  # range well inside 0..255
    eval_mae = evaluate_pair(pred, gt, "eval-co-sod").scalars["mae"]
    pysod_mae = evaluate_pair(pred, gt, "pysodmetrics").scalars["mae"]
    assert eval_mae == pytest.approx(np.mean(np.abs(pred / 255 - gt / 255)), abs=TOL)
    assert pysod_mae == pytest.approx(np.mean(np.abs(pysod_normalised(pred) - (gt > 128))), abs=1e-12)
    assert abs(eval_mae - pysod_mae) > 0.01


def test_all_black_mask_e_curve_is_quarter_in_eval_co_sod_and_background_fraction_in_pysod():
    """eval-co-sod has no empty-mask special case: the aligned matrix is 0, so every pixel adds 1/4."""
    rng = np.random.default_rng(6)
    gt = np.zeros((30, 40), np.uint8)
    n = gt.size
    for pred in (soft_prediction(rng, blob_mask(rng, gt.shape)), rng.integers(0, 256, gt.shape, dtype=np.uint8)):
        eval_em = evaluate_pair(pred, gt, "eval-co-sod").curves["em"]
        np.testing.assert_allclose(eval_em, 0.25 * n / (n - 1), rtol=0, atol=1e-9)
        pysod = evaluate_pair(pred, gt, "pysodmetrics").curves
        quantised = (pysod_normalised(pred) * 255).astype(np.uint8)
        # PySODMetrics' special case: E = (pixels predicted background) / (N - 1) at each threshold.
        background = np.array([np.count_nonzero(quantised < level) for level in range(256)])
        np.testing.assert_allclose(pysod["em"], background / (n - 1), rtol=0, atol=1e-12)
        assert pysod["em"].max() > 0.9  # the highest threshold predicts (almost) nothing


def test_eval_co_sod_smeasure_is_nan_when_the_centroid_is_in_row_or_column_0_and_ours_is_finite():
    """eval-co-sod's 0-based split: a mask whose centroid rounds to row 0 (or column 0) leaves the two
    top (left) quadrants empty, and the original's mean of an empty tensor is NaN. cosal weighs them 0."""
    rng = np.random.default_rng(5)
    row, column = np.zeros((23, 31), np.uint8), np.zeros((23, 31), np.uint8)
    row[0, 3:20], column[4:18, 0] = 255, 255
    for gt in (row, column):
        pred = soft_prediction(rng, gt > 128)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert np.isnan(eval_co_sod_reference(pred, gt)["sm"])
        ours = evaluate_pair(pred, gt, "eval-co-sod").scalars["sm"]
        assert np.isfinite(ours) and 0 <= ours <= 1
