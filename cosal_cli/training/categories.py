"""What each training or held-out group shows (``training/categories.yaml``): its object categories."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

DEFAULT_TABLE = Path(__file__).resolve().parents[2] / "training" / "categories.yaml"


@dataclass(frozen=True)
class CategoryTable:
    groups: dict[str, frozenset[str]]
    by_group_name: frozenset[str]

    def of(self, dataset: str, group: str) -> frozenset[str]:
        """The categories of ``dataset/group``; a group the table does not know is an error, not a guess."""
        if dataset in self.by_group_name:
            return frozenset({re.sub(r"^\d+-", "", group)})
        try:
            return self.groups[f"{dataset}/{group}"]
        except KeyError:
            message = f"{dataset}/{group} is not in the category table: add it to training/categories.yaml"
            raise KeyError(message) from None

    def share(self, first: tuple[str, str], second: tuple[str, str]) -> bool:
        """Whether two ``(dataset, group)`` show a common category."""
        return bool(self.of(*first) & self.of(*second))


def load_categories(path: Path = DEFAULT_TABLE) -> CategoryTable:
    data = yaml.safe_load(Path(path).read_text())
    if not isinstance(data, dict) or data.get("schema") != 1:
        raise ValueError(f"{path}: not a category table (expected schema: 1)")
    groups = {key: frozenset(values) for key, values in (data.get("groups") or {}).items()}
    return CategoryTable(groups, frozenset(data.get("by_group_name") or ()))
