"""Build a co-saliency test set where every image carries an extraneous object (the CoCA situation).

    python benchmarks/make_composites.py --data ../shared/data --split training/splits/shared-v1.yaml \
        --output composites/shared-v1 [--seed 0]

Every held-out image of the split gets one object cut out (with its mask) from a held-out image of
*another* group, pasted at a random place with its longer side 30 to 60 % of the image's shorter
side. The ground truth is the image's own mask minus what the pasted object covers; placements that
would hide more than half of the own object are retried (12 tries, the least hiding one is kept).
The output is a dataset in the standard layout, one group per source group named
``<dataset>-<group>``, so `cosal bench --data OUTPUT` scores any method on it. Donors come only
from held-out images, so no pixel of the set was seen in training. Deterministic for a given seed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from cosal_cli import datasets, splits

PASTE_SIZE = (0.3, 0.6)
TRIES = 12


def held_out_items(data: list[Path], split: splits.Split) -> list[tuple[str, datasets.Item]]:
    items = []
    for folder in data:
        for name in sorted(path.name for path in folder.iterdir() if (path / "GroundTruth").is_dir()):
            rule = split.rule(name)
            if not rule.held_out_groups and not rule.held_out_fraction:
                continue  # a training-only dataset (duts_class in shared-v2)
            dataset = splits.held_out_part(datasets.locate(name, folder), split)
            items += [(f"{name}-{item.group}", item) for item in dataset.items]
    return items


def load(item: datasets.Item) -> tuple[Image.Image, np.ndarray]:
    image = Image.open(item.image).convert("RGB")
    mask = np.asarray(Image.open(item.mask).convert("L").resize(image.size, Image.NEAREST), dtype=np.float32) / 255
    return image, mask


def cut_object(donor: Image.Image, donor_mask: np.ndarray, longer_side: int) -> tuple[Image.Image, np.ndarray]:
    rows, cols = np.nonzero(donor_mask > 0.5)
    box = (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
    width, height = box[2] - box[0], box[3] - box[1]
    scale = longer_side / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    cut = donor.crop(box).resize(size, Image.BILINEAR)
    alpha = Image.fromarray((donor_mask[box[1] : box[3], box[0] : box[2]] * 255).astype(np.uint8))
    return cut, np.asarray(alpha.resize(size, Image.BILINEAR), dtype=np.float32) / 255


def composite(item, donor, rng: np.random.Generator) -> tuple[Image.Image, np.ndarray]:
    image, mask = load(item)
    donor_image, donor_mask = load(donor)
    width, height = image.size
    cut, alpha = cut_object(donor_image, donor_mask, round(rng.uniform(*PASTE_SIZE) * min(width, height)))
    cut_h, cut_w = alpha.shape
    own = max(mask.sum(), 1.0)
    best = None
    for _ in range(TRIES):
        y, x = int(rng.integers(0, height - cut_h + 1)), int(rng.integers(0, width - cut_w + 1))
        hidden = float((mask[y : y + cut_h, x : x + cut_w] * alpha).sum()) / own
        if best is None or hidden < best[0]:
            best = (hidden, y, x)
        if hidden <= 0.5:
            break
    _, y, x = best
    full_alpha = np.zeros_like(mask)
    full_alpha[y : y + cut_h, x : x + cut_w] = alpha
    pasted = np.asarray(image, dtype=np.float32).copy()
    pasted[y : y + cut_h, x : x + cut_w] = np.asarray(cut, dtype=np.float32)
    rgb = np.asarray(image, dtype=np.float32) * (1 - full_alpha[..., None]) + pasted * full_alpha[..., None]
    return Image.fromarray(np.round(rgb).astype(np.uint8)), mask * (1 - full_alpha)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, action="append", required=True, help="folder of dataset folders")
    parser.add_argument("--split", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    items = held_out_items(args.data, splits.load_split(args.split))
    rng = np.random.default_rng(args.seed)
    donors = [(group, item) for group, item in items if (np.asarray(Image.open(item.mask)) > 127).any()]
    record = []
    for group, item in items:
        candidates = [donor for donor_group, donor in donors if donor_group != group]
        donor = candidates[int(rng.integers(len(candidates)))]
        image, mask = composite(item, donor, rng)
        (args.output / "Image" / group).mkdir(parents=True, exist_ok=True)
        (args.output / "GroundTruth" / group).mkdir(parents=True, exist_ok=True)
        image.save(args.output / "Image" / group / f"{item.stem}.jpg", quality=95)
        mask_image = Image.fromarray(np.round(mask * 255).astype(np.uint8))
        mask_image.save(args.output / "GroundTruth" / group / f"{item.stem}.png")
        record.append({"image": f"{group}/{item.stem}", "donor": str(donor.image)})
    (args.output / "composites.json").write_text(json.dumps({"seed": args.seed, "images": record}, indent=1))
    groups = {r["image"].split("/")[0] for r in record}
    print(f"{len(record)} composite images in {len(groups)} groups -> {args.output}")


if __name__ == "__main__":
    main()
