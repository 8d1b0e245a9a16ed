"""Every method on the held-out split, its composites and its outsiders: S / max F / mean E / MAE, and
the outsider / in-group map ratio.

    python benchmarks/make_composites.py --data ../shared/data --split training/splits/shared-v2.yaml \
        --output eval/composites
    python benchmarks/make_outsiders.py --data ../shared/data --split training/splits/shared-v2.yaml \
        --output eval/outsiders
    python benchmarks/heldout_report.py --data ../shared/data --split training/splits/shared-v2.yaml \
        --composites eval/composites --outsiders eval/outsiders -m sod -m gicd -m icnet [--json report.json]

A method written ``gicd+crf`` is gicd with ``--refine crf`` (any refiners, joined by ``+``), and
``csmg,smoothing=off`` is csmg with ``--smoothing off``: the labels ``cosal bench`` gives them.

Maps come from the Python API (the maps `cosal detect` writes), rounded to 8 bits as a PNG would be,
scored with cosal's metrics (pysodmetrics protocol, averaged per image). The outsider ratio is the
mean map value on outsider images divided by the mean on the in-group images of the same groups: a
co-saliency method should drive it towards 0; a single-image method (``sod``) stays near 1.

The metrics above normalise every map to its own min / max, so they cannot see a map that is right
but dim. ``lost`` can: the share of images with an object (non-empty mask) whose map never reaches
128, i.e. whose object disappears at the 0.5 threshold a user would binarise with.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from make_composites import held_out_items
from PIL import Image

import cosal_cli
from cosal_cli import datasets, metrics, splits
from cosal_cli.io import load_grey

COLUMNS = ("sm", "max_fm", "mean_em", "mae")


def plain_groups(data: list[Path], split: Path) -> dict[str, list[tuple[Path, Path]]]:
    groups: dict[str, list[tuple[Path, Path]]] = defaultdict(list)
    for group, item in held_out_items(data, splits.load_split(split)):
        groups[group].append((item.image, item.mask))
    return dict(groups)


def folder_groups(root: Path) -> dict[str, list[tuple[Path, Path]]]:
    dataset = datasets.locate(str(root), None)
    groups: dict[str, list[tuple[Path, Path]]] = defaultdict(list)
    for item in dataset.items:
        groups[item.group].append((item.image, item.mask))
    return dict(groups)


def score(detector, groups: dict[str, list[tuple[Path, Path]]], outsiders: set[str]) -> dict[str, float]:
    """Metrics of one method on one set; with ``outsiders`` (``group/stem``), also the map ratio."""
    accumulator = metrics.MetricAccumulator("pysodmetrics")
    means: dict[bool, list[float]] = {True: [], False: []}
    lost = []
    for group, pairs in sorted(groups.items()):
        maps = detector.predict([image for image, _ in pairs], name=group)
        for (image, mask), values in zip(pairs, maps):
            prediction, target = np.rint(values * 255.0).astype(np.uint8), load_grey(mask)
            accumulator.add(group, metrics.evaluate_pair(prediction, target))
            means[f"{group}/{image.stem}" in outsiders].append(float(prediction.mean()))
            if target.max() > 127:
                lost.append(prediction.max() < 128)
    summary = accumulator.summary()
    result: dict = {key: round(float(summary[key]), 4) for key in COLUMNS}
    result["lost"] = round(float(np.mean(lost)), 4)
    result["group_sm"] = {group: round(float(values["sm"]), 4) for group, values in accumulator.per_group().items()}
    if outsiders:
        result["outsider_ratio"] = round(float(np.mean(means[True]) / max(np.mean(means[False]), 1e-9)), 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, action="append", required=True)
    parser.add_argument("--split", type=Path, required=True)
    parser.add_argument("--composites", type=Path)
    parser.add_argument("--outsiders", type=Path)
    parser.add_argument("-m", "--method", action="append", required=True)
    parser.add_argument("--sets", default="plain,composites,outsiders", help="which sets to score")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", default="fp32", help="fp32 or bf16 (cosal's --precision)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    wanted = args.sets.split(",")
    sets = {"plain": (lambda: plain_groups(args.data, args.split), set())}
    if args.composites and "composites" in wanted:
        sets["composites"] = (lambda: folder_groups(args.composites), set())
    if args.outsiders and "outsiders" in wanted:
        record = json.loads((args.outsiders / "outsiders.json").read_text())
        sets["outsiders"] = (lambda: folder_groups(args.outsiders),
                             {entry["image"] for entry in record["images"] if entry["outsider"]})  # fmt: skip
    report: dict[str, dict[str, dict[str, float]]] = {}
    for method in args.method:
        named, *refiners = method.split("+")  # "gicd+crf": gicd, then --refine crf
        base, *settings = named.split(",")  # "csmg,smoothing=off": csmg with --smoothing off
        options = {key.replace("-", "_"): value for key, value in (setting.split("=", 1) for setting in settings)}
        detector = cosal_cli.load(base, device="cpu", offline=True, refine=refiners, precision=args.precision,
                                  **options)  # fmt: skip
        for name, (groups, outsiders) in sets.items():
            if name not in wanted:
                continue
            started = time.perf_counter()
            report.setdefault(method, {})[name] = score(detector, groups(), outsiders)
            report[method][name]["seconds"] = round(time.perf_counter() - started, 1)
            print(method, name, report[method][name], flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    print_table(report)


def print_table(report: dict) -> None:
    print(f"| method | set | {' | '.join(COLUMNS)} | lost | outsider ratio |")
    print("|---|---|" + "---|" * (len(COLUMNS) + 2))
    for method, sets in report.items():
        for name, values in sets.items():
            cells = " | ".join(f"{values[key]:.3f}" for key in (*COLUMNS, "lost"))
            print(f"| {method} | {name} | {cells} | {values.get('outsider_ratio', '')} |")


if __name__ == "__main__":
    Image.init()
    main()
