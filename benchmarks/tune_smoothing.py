"""Stage 3 of ``csmg`` (multi-scale label smoothing) on *training* groups: the choices the paper leaves open.

    python benchmarks/tune_smoothing.py --data ../shared/data/cats --data ../shared/data/davis12 \\
        --data ../shared/data/persons --data ../shared/data/sysu5 --split training/splits/shared-v2.yaml \\
        [--per-group 12] [--threads 2]

Takes ``--per-group`` training images (evenly spaced) of every training group of those datasets
(never held-out images), runs the FCN once per group (the maps and relu5_3 features are kept), then
smooths the maps with each candidate setting and scores the results at 224 x 224 against the masks
(S-measure, max F, MAE; pysodmetrics protocol). The FCN alone is the first row.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cosal_cli import methods, metrics, splits
from cosal_cli.methods.loader import load_method
from cosal_cli.refine.label_smoothing import SmoothingSettings, smooth_group
from cosal_cli.training.trainer import collect_data

BASE = SmoothingSettings()
CANDIDATES = {
    "default": BASE,
    "output weight 0.9": replace(BASE, output_weight=0.9),
    "output weight 0.5": replace(BASE, output_weight=0.5),
    "output weight 0.3": replace(BASE, output_weight=0.3),
    "output weight 0": replace(BASE, output_weight=0.0),
    "1 round (no CRF)": replace(BASE, rounds=1),
    "3 rounds": replace(BASE, rounds=3),
    "single scale": replace(BASE, scales=(200,)),
    "no cross-image edges": replace(BASE, neighbours=0),
}


def fcn_network(head_path: Path | None):
    """The FCN of the shipped head, or of ``head_path``."""
    if head_path is None:
        options = methods.options_for("csmg", {"smoothing": "off"})
        return load_method("csmg", "cpu", offline=True, options=options).network
    from cosal_cli.hub import WeightHub
    from cosal_cli.methods.csmg import Method
    from cosal_cli.models.heads import load_head

    head = load_head(head_path, "csmg")
    network = Method.build_network(WeightHub().resolve("vgg16-imagenet", offline=True), head.config)
    network.head.load_state_dict(head.tensors, strict=True)
    return network.eval()


def training_groups(data: list[Path], split: Path, per_group: int) -> dict[str, list]:
    train = collect_data(data, splits.load_split(split), val_limit=0, per_group=per_group).train
    groups: dict[str, list] = {}
    for item in train:
        groups.setdefault(item.group_key, []).append(item)
    return groups


def load_group(items, size: int = 224) -> tuple[np.ndarray, np.ndarray]:
    images = np.stack([np.asarray(Image.open(item.image).convert("RGB").resize((size, size), Image.BILINEAR))
                       for item in items])  # fmt: skip
    masks = np.stack([np.asarray(Image.open(item.mask).convert("L").resize((size, size), Image.NEAREST))
                      for item in items])  # fmt: skip
    return images, masks


def score(maps: dict[str, np.ndarray], masks: dict[str, np.ndarray]) -> dict[str, float]:
    accumulator = metrics.MetricAccumulator("pysodmetrics")
    for group, group_maps in maps.items():
        for prediction, target in zip(group_maps, masks[group]):
            accumulator.add(group, metrics.evaluate_pair(np.rint(prediction * 255).astype(np.uint8), target))
    summary = accumulator.summary()
    return {key: float(summary[key]) for key in ("sm", "max_fm", "mae")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, action="append", required=True)
    parser.add_argument("--split", type=Path, required=True)
    parser.add_argument("--per-group", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--head", type=Path, help="a head file to use instead of the shipped csmg-head")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    network = fcn_network(args.head)
    fcn, features, pixels, masks = {}, {}, {}, {}
    for group, items in training_groups(args.data, args.split, args.per_group).items():
        pixels[group], masks[group] = load_group(items)
        batch = torch.from_numpy(pixels[group]).permute(0, 3, 1, 2).float() / 255.0
        maps, features[group] = network.predict_group(batch, chunk=8)
        fcn[group] = maps.numpy()
    print(f"{len(fcn)} training groups, {sum(len(m) for m in fcn.values())} images")
    print(f"{'setting':<24} {'S':>6} {'max F':>6} {'MAE':>6}")
    result = score(fcn, masks)
    print(f"{'FCN alone':<24} {result['sm']:>6.3f} {result['max_fm']:>6.3f} {result['mae']:>6.3f}")
    for name, settings in CANDIDATES.items():
        smoothed = {group: smooth_group(pixels[group], fcn[group], features[group], settings) for group in fcn}
        result = score(smoothed, masks)
        print(f"{name:<24} {result['sm']:>6.3f} {result['max_fm']:>6.3f} {result['mae']:>6.3f}", flush=True)


if __name__ == "__main__":
    main()
