"""The torch dense CRF against pydensecrf2 on real photos with real maps (the issue's agreement check).

    python benchmarks/crf_agreement.py --data ../shared/data --split training/splits/shared-v2.yaml \
        [--count 50] [--method sod]

Takes ``--count`` held-out images spread evenly over the held-out groups, maps them with ``--method``
(at their original size, as ``cosal detect`` writes them), runs the CRF of ``--refine crf`` with both
backends and prints, per image, the IoU of the two labellings (marginal > 0.5) and the mean absolute
difference of the foreground marginals, then the worst of each. The bound: IoU >= 0.99 and MAD <= 0.02
on every image. Needs the ``crf`` extra (pydensecrf2).
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from make_composites import held_out_items

import cosal_cli
from cosal_cli import splits
from cosal_cli.io import load_rgb
from cosal_cli.refine.crf import dense_crf, unary_from_map


def spread(data: list[Path], split: Path, count: int) -> dict[str, list[Path]]:
    """``count`` held-out images, taken round-robin over the groups, grouped again by group."""
    by_group: dict[str, list[Path]] = defaultdict(list)
    for group, item in held_out_items(data, splits.load_split(split)):
        by_group[group].append(item.image)
    chosen: dict[str, list[Path]] = defaultdict(list)
    for index in range(count):
        group = sorted(by_group)[index % len(by_group)]
        images = by_group[group]
        chosen[group].append(images[(index // len(by_group)) * 7 % len(images)])
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, action="append", required=True)
    parser.add_argument("--split", type=Path, required=True)
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--method", default="sod")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    detector = cosal_cli.load(args.method, device="cpu", offline=True)
    ious, differences = [], []
    for group, images in spread(args.data, args.split, args.count).items():
        for path, saliency in zip(images, detector.predict(images, name=group)):
            image = np.asarray(load_rgb(path).rgb)
            unary = unary_from_map(saliency)
            reference = dense_crf(unary, image, backend="pydensecrf")
            ours = dense_crf(unary, image, backend="torch")
            labels, their_labels = ours[1] > 0.5, reference[1] > 0.5
            union = (labels | their_labels).sum()
            ious.append(float((labels & their_labels).sum() / union) if union else 1.0)
            differences.append(float(np.abs(ours[1] - reference[1]).mean()))
            size = f"{image.shape[1]}x{image.shape[0]}"
            print(f"{group}/{path.name:40s} {size} IoU {ious[-1]:.4f} MAD {differences[-1]:.6f}")
    print(f"{len(ious)} images: worst IoU {min(ious):.4f}, mean {np.mean(ious):.4f}; "
          f"worst MAD {max(differences):.6f}, mean {np.mean(differences):.6f}")  # fmt: skip


if __name__ == "__main__":
    main()
