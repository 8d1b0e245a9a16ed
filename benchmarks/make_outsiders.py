"""Build a co-saliency test set where a fifth of every group are outsiders, whose maps should be black.

    python benchmarks/make_outsiders.py --data ../shared/data --split training/splits/shared-v1.yaml \
        --output outsiders/shared-v1 [--seed 0] [--fraction 0.2]

Every held-out group of the split keeps its own held-out images, except that ``--fraction`` of them
(rounded, at least one) are replaced by held-out images of *other* groups. An outsider's target is an
all-zero mask: the group's common object is not in it, so a co-saliency map should be nearly black
there, while a single-image saliency map is not. The output is a dataset in the standard layout, one
group per source group named ``<dataset>-<group>``, outsiders named ``outsider-<their group>-<stem>``,
and ``outsiders.json`` listing them, so `cosal bench --data OUTPUT` scores any method on it and
``benchmarks/heldout_report.py`` computes the outsider / in-group map ratio. Deterministic for a seed.
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
from make_composites import held_out_items  # the same held-out images as the composite set
from PIL import Image

from cosal_cli import splits


def outsider_plan(groups: dict[str, list], fraction: float, rng: np.random.Generator) -> dict[str, list]:
    """Per group, its kept items and the outsiders replacing the others: ``[(item, own_group, outsider?)]``."""
    names = sorted(groups)
    plan = {}
    for name in names:
        items = groups[name]
        count = max(1, round(fraction * len(items))) if len(items) > 1 else 0
        replaced = set(rng.choice(len(items), size=count, replace=False).tolist()) if count else set()
        kept = [(item, name, False) for index, item in enumerate(items) if index not in replaced]
        others = [other for other in names if other != name]
        outsiders = []
        for _ in range(count):
            donor_group = others[int(rng.integers(len(others)))]
            donor = groups[donor_group][int(rng.integers(len(groups[donor_group])))]
            outsiders.append((donor, donor_group, True))
        plan[name] = kept + outsiders
    return plan


def write_group(output: Path, group: str, members: list) -> list[dict]:
    (output / "Image" / group).mkdir(parents=True, exist_ok=True)
    (output / "GroundTruth" / group).mkdir(parents=True, exist_ok=True)
    record = []
    for item, own_group, outsider in members:
        stem = f"outsider-{own_group}-{item.stem}" if outsider else item.stem
        shutil.copyfile(item.image, output / "Image" / group / f"{stem}{item.image.suffix.lower()}")
        if outsider:
            with Image.open(item.image) as image:
                width, height = image.size
            Image.new("L", (width, height), 0).save(output / "GroundTruth" / group / f"{stem}.png")
        else:
            shutil.copyfile(item.mask, output / "GroundTruth" / group / f"{stem}.png")
        record.append({"image": f"{group}/{stem}", "outsider": outsider, "source": str(item.image)})
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, action="append", required=True, help="folder of dataset folders")
    parser.add_argument("--split", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    groups: dict[str, list] = defaultdict(list)
    for group, item in held_out_items(args.data, splits.load_split(args.split)):
        groups[group].append(item)
    plan = outsider_plan(dict(groups), args.fraction, np.random.default_rng(args.seed))
    record = [entry for group, members in plan.items() for entry in write_group(args.output, group, members)]
    document = {"seed": args.seed, "fraction": args.fraction, "images": record}
    (args.output / "outsiders.json").write_text(json.dumps(document, indent=1))
    count = sum(entry["outsider"] for entry in record)
    print(f"{len(record)} images ({count} outsiders) in {len(plan)} groups -> {args.output}")


if __name__ == "__main__":
    main()
