"""Training / held-out splits of datasets, read from a small YAML file (``training/splits/``).

A split names, per dataset folder, the groups held out whole and the groups held out in part (a
fraction of their images, chosen by a hash of ``<group>/<stem>`` so the choice never depends on
which other images exist). ``cosal train`` learns on the training part and validates on the
held-out part; ``cosal bench --split`` scores the held-out part only.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml

from cosal_cli.errors import UsageError
from cosal_cli.io import abbreviate

if TYPE_CHECKING:
    from cosal_cli.datasets import Dataset

Part = Literal["train", "held-out"]
PARTS: tuple[Part, ...] = ("train", "held-out")


@dataclass(frozen=True)
class DatasetSplit:
    held_out_groups: frozenset[str] = frozenset()  # casefolded group names
    held_out_fraction: dict[str, float] = field(default_factory=dict)  # casefolded group -> fraction


@dataclass(frozen=True)
class Split:
    name: str
    path: Path
    sha256: str
    datasets: dict[str, DatasetSplit]  # casefolded dataset folder name -> its rule

    def rule(self, dataset: str) -> DatasetSplit:
        try:
            return self.datasets[dataset.casefold()]
        except KeyError:
            raise UsageError(
                f"{self.path}: split {self.name!r} says nothing about dataset {dataset!r} "
                f"(it covers {', '.join(sorted(self.datasets))}); add it to the split or leave it out"
            ) from None

    def part(self, dataset: str, group: str, stem: str) -> Part:
        rule = self.rule(dataset)
        group_key = group.casefold()
        if group_key in rule.held_out_groups:
            return "held-out"
        fraction = rule.held_out_fraction.get(group_key, 0.0)
        return "held-out" if fraction > 0 and hash_fraction(f"{group}/{stem}") < fraction else "train"

    def check_groups(self, dataset: str, groups: list[str]) -> None:
        """Refuse a split naming groups the dataset does not have (a typo would silently train on them)."""
        rule = self.rule(dataset)
        present = {group.casefold() for group in groups}
        unknown = sorted((set(rule.held_out_groups) | set(rule.held_out_fraction)) - present)
        if unknown:
            raise UsageError(
                f"{self.path}: dataset {dataset!r} has no group(s) {abbreviate(unknown)} named by split "
                f"{self.name!r}; its groups are {abbreviate(sorted(present), 12)}"
            )


def held_out_part(dataset: Dataset, split: Split) -> Dataset:
    """The dataset reduced to the split's held-out images, renamed ``<name>@<split>``.

    The new name keeps its maps apart from full-dataset runs: a co-saliency map depends on the
    other images of its group, so a map computed on a held-out part is not the full group's map.
    """
    split.check_groups(dataset.name, [group.name for group in dataset.groups])
    groups = []
    for group in dataset.groups:
        items = [item for item in group.items if split.part(dataset.name, group.name, item.stem) == "held-out"]
        if items:
            groups.append(replace(group, items=items))
    if not groups:
        raise UsageError(f"split {split.name!r} holds out no image of {dataset.name} ({split.path})")
    return replace(
        dataset, name=f"{dataset.name}@{split.name}", groups=groups, info=None,
        subset=f"held-out part of split {split.name} ({split.path})",
    )  # fmt: skip


def hash_fraction(key: str) -> float:
    """A stable number in [0, 1) for a name: the first 32 bits of its sha256."""
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:8], 16) / 2**32


def load_split(path: Path) -> Split:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read split file {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    return parse_split(data, path, hashlib.sha256(raw).hexdigest())


def parse_split(data: Any, path: Path, sha256: str = "") -> Split:
    if not isinstance(data, dict) or data.get("schema") != 1:
        raise UsageError(f"{path}: a split file is a mapping with 'schema: 1', 'name' and 'datasets'")
    name = data.get("name")
    datasets = data.get("datasets")
    if not isinstance(name, str) or not name or not isinstance(datasets, dict) or not datasets:
        raise UsageError(f"{path}: 'name' must be a non-empty string and 'datasets' a non-empty mapping")
    rules = {str(key).casefold(): _parse_rule(value, f"{path}: datasets.{key}") for key, value in datasets.items()}
    return Split(name=name, path=path, sha256=sha256, datasets=rules)


def _parse_rule(entry: Any, where: str) -> DatasetSplit:
    entry = entry or {}
    if not isinstance(entry, dict) or set(entry) - {"held_out_groups", "held_out_fraction"}:
        raise UsageError(f"{where}: only 'held_out_groups' (a list) and 'held_out_fraction' (group: number) go here")
    groups = entry.get("held_out_groups", [])
    fractions = entry.get("held_out_fraction", {})
    if not isinstance(groups, list) or not all(isinstance(group, str) for group in groups):
        raise UsageError(f"{where}.held_out_groups: a list of group names")
    if not isinstance(fractions, dict) or not all(
        isinstance(value, (int, float)) and 0 < value < 1 for value in fractions.values()
    ):
        raise UsageError(f"{where}.held_out_fraction: a mapping of group name to a number between 0 and 1")
    return DatasetSplit(
        held_out_groups=frozenset(group.casefold() for group in groups),
        held_out_fraction={str(group).casefold(): float(value) for group, value in fractions.items()},
    )
