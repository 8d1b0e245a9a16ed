"""cosal's metrics against PySODMetrics on the same map/mask pairs, in one run.

    python benchmarks/metrics_speed.py [--pairs 500] [--size 300 400] [--repeats 3]

Makes seeded 8-bit map/mask pairs (one to three elliptic objects per mask, 2 % of masks empty and 2 %
full; predictions are blurred, shifted, noisy versions of the mask, some constant), then times

* PySODMetrics 1.x: Smeasure, MAE, WeightedFmeasure, Fmeasure and Emeasure stepped on every pair,
* cosal: ``metrics.evaluate_pair`` (the same metrics plus the PR and ROC curves) on every pair,

both on one thread, median of ``--repeats`` runs, and prints the time per pair, the ratio, and the
largest difference between the two over every metric (they must agree to 1e-6).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cosal_cli import metrics


def make_pairs(count: int, height: int, width: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:height, :width]
    pairs = []
    for index in range(count):
        mask = np.zeros((height, width), bool)
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.uniform(0, height), rng.uniform(0, width)
            ry, rx = rng.uniform(3, height / 2), rng.uniform(3, width / 2)
            mask |= ((rows - cy) / ry) ** 2 + ((cols - cx) / rx) ** 2 < 1
        if index % 50 == 0:
            mask[:] = False
        elif index % 50 == 1:
            mask[:] = True
        shifted = np.roll(mask, (rng.integers(-20, 21), rng.integers(-20, 21)), axis=(0, 1))
        soft = ndimage.gaussian_filter(shifted * 255.0, rng.uniform(0.5, 12))
        soft += rng.normal(0, rng.uniform(0, 40), soft.shape) + rng.uniform(-40, 40)
        pred = np.clip(soft, 0, 255).astype(np.uint8)
        if index % 25 == 3:
            pred[:] = rng.integers(0, 256)
        pairs.append((pred, mask.astype(np.uint8) * 255))
    return pairs


def run_pysodmetrics(pairs) -> dict[str, float]:
    import py_sod_metrics as sod

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Fmeasure's deprecation notice
        meters = {"sm": sod.Smeasure(), "mae": sod.MAE(), "wfm": sod.WeightedFmeasure(),
                  "fm": sod.Fmeasure(), "em": sod.Emeasure()}  # fmt: skip
        for pred, gt in pairs:
            for meter in meters.values():
                meter.step(pred, gt)
    fm, em = meters["fm"].get_results(), meters["em"].get_results()
    return {
        "sm": meters["sm"].get_results()["sm"],
        "mae": meters["mae"].get_results()["mae"],
        "wfm": meters["wfm"].get_results()["wfm"],
        "adp_fm": fm["fm"]["adp"],
        "adp_em": em["em"]["adp"],
        "max_fm": fm["fm"]["curve"].max(),
        "mean_fm": fm["fm"]["curve"].mean(),
        "max_em": em["em"]["curve"].max(),
        "mean_em": em["em"]["curve"].mean(),
    }


def run_cosal(pairs) -> dict[str, float]:
    scores = [metrics.evaluate_pair(pred, gt) for pred, gt in pairs]
    result = {name: float(np.mean([s.scalars[name] for s in scores])) for name in metrics.SCALARS}
    fm = np.mean([s.curves["fm"] for s in scores], axis=0)
    em = np.mean([s.curves["em"] for s in scores], axis=0)
    result.update(max_fm=fm.max(), mean_fm=fm.mean(), max_em=em.max(), mean_em=em.mean())
    return result


def median_time(function, repeats: int) -> tuple[float, dict]:
    times, result = [], {}
    for _ in range(repeats):
        tick = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - tick)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=500)
    parser.add_argument("--size", type=int, nargs=2, default=(300, 400), metavar=("HEIGHT", "WIDTH"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import cv2
    import threadpoolctl

    cv2.setNumThreads(1)  # one thread for both, so the ratio compares the algorithms
    with threadpoolctl.threadpool_limits(1):
        pairs = make_pairs(args.pairs, *args.size)
        print(f"{args.pairs} pairs of {args.size[0]}x{args.size[1]}, one thread, median of {args.repeats}")
        reference_time, reference = median_time(lambda: run_pysodmetrics(pairs), args.repeats)
        ours_time, ours = median_time(lambda: run_cosal(pairs), args.repeats)
    per_pair = 1000 / args.pairs
    print(f"pysodmetrics: {reference_time * per_pair:7.2f} ms/pair")
    print(f"cosal       : {ours_time * per_pair:7.2f} ms/pair")
    print(f"speed-up    : {reference_time / ours_time:7.2f}x")
    worst = max(abs(ours[name] - reference[name]) for name in reference)
    for name in reference:
        print(f"  {name:8s} pysodmetrics {reference[name]:.6f}  cosal {ours[name]:.6f}")
    print(f"largest difference over all metrics: {worst:.2e} ({'identical to 1e-6' if worst < 1e-6 else 'DIFFERENT'})")


if __name__ == "__main__":
    main()
