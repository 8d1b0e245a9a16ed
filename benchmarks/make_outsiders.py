"""Build a co-saliency test set where a fifth of every group are outsiders, whose maps should be black.

    python benchmarks/make_outsiders.py --data ../shared/data --split training/splits/shared-v1.yaml \
        --output outsiders/shared-v1 [--seed 0] [--fraction 0.2] [--part training --per-group 40]

Every held-out group of the split keeps its own held-out images, except that ``--fraction`` of them
(rounded, at least one) are replaced by held-out images of *other* groups that show none of its
object categories (``training/categories.yaml``: a person photo is no outsider in a group of
persons). An outsider's target is an all-zero mask: the group's common object is not in it, so a
co-saliency map should be nearly black there, while a single-image saliency map is not.
``--part training`` builds the same kind of set from the training images of the split's datasets
that have a held-out part (not from training-only datasets such as duts_class), at most
``--per-group`` images per group: the set to tune on, where the held-out one is only to report.
The output is a dataset in the standard layout, one
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

from cosal_cli import datasets, splits
from cosal_cli.training.categories import CategoryTable, load_categories


def training_items(data: list[Path], split: splits.Split, per_group: int) -> list[tuple[str, datasets.Item]]:
    """The training images of the datasets that have a held-out part, at most ``per_group`` per group."""
    items = []
    for folder in data:
        for name in sorted(path.name for path in folder.iterdir() if (path / "GroundTruth").is_dir()):
            rule = split.rule(name)
            if not rule.held_out_groups and not rule.held_out_fraction:
                continue
            for group in datasets.locate(name, folder).groups:
                kept = [item for item in group.items if split.part(name, group.name, item.stem) == "train"]
                items += [(f"{name}-{group.name}", item) for item in kept[:per_group]]
    return items


def related(categories: CategoryTable, first: str, second: str) -> bool:
    """Whether two ``<dataset>-<group>`` names show a common category (dataset folder names have no '-')."""
    return categories.share(tuple(first.split("-", 1)), tuple(second.split("-", 1)))


def outsider_plan(
    groups: dict[str, list], fraction: float, rng: np.random.Generator, categories: CategoryTable
) -> dict[str, list]:
    """Per group, its kept items and the outsiders replacing the others: ``[(item, own_group, outsider?)]``."""
    names = sorted(groups)
    plan = {}
    for name in names:
        items = groups[name]
        count = max(1, round(fraction * len(items))) if len(items) > 1 else 0
        replaced = set(rng.choice(len(items), size=count, replace=False).tolist()) if count else set()
        kept = [(item, name, False) for index, item in enumerate(items) if index not in replaced]
        others = [other for other in names if other != name and not related(categories, name, other)]
        outsiders: list = []
        count = min(count, sum(len(groups[other]) for other in others))
        while len(outsiders) < count:  # a group drawn uniformly, then one of its images not drawn yet
            donor_group = others[int(rng.integers(len(others)))]
            donor = groups[donor_group][int(rng.integers(len(groups[donor_group])))]
            if (donor, donor_group, True) not in outsiders:
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
    parser.add_argument("--part", choices=("held-out", "training"), default="held-out")
    parser.add_argument("--per-group", type=int, default=40, help="with --part training: images per group")
    parser.add_argument("--categories", type=Path, default=None, help="default: training/categories.yaml")
    args = parser.parse_args()
    split = splits.load_split(args.split)
    if args.part == "held-out":
        source = held_out_items(args.data, split)
    else:
        source = training_items(args.data, split, args.per_group)
    groups: dict[str, list] = defaultdict(list)
    for group, item in source:
        groups[group].append(item)
    categories = load_categories(args.categories) if args.categories else load_categories()
    plan = outsider_plan(dict(groups), args.fraction, np.random.default_rng(args.seed), categories)
    record = [entry for group, members in plan.items() for entry in write_group(args.output, group, members)]
    document = {"seed": args.seed, "fraction": args.fraction, "part": args.part, "images": record}
    (args.output / "outsiders.json").write_text(json.dumps(document, indent=1))
    count = sum(entry["outsider"] for entry in record)
    print(f"{len(record)} images ({count} outsiders) in {len(plan)} groups -> {args.output}")


if __name__ == "__main__":
    main()
