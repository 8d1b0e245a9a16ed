"""The category table of the developer data, and the outsider set that must respect it."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from cosal_cli.training.categories import DEFAULT_TABLE, load_categories

REPO = Path(__file__).resolve().parents[1]


def test_every_group_a_split_names_has_categories():
    table = load_categories()
    for split in (REPO / "training" / "splits").glob("*.yaml"):
        for dataset, rule in yaml.safe_load(split.read_text())["datasets"].items():
            for group in [*(rule or {}).get("held_out_groups", []), *(rule or {}).get("held_out_fraction", {})]:
                assert table.of(dataset, group), (split.name, dataset, group)
    assert table.of("persons", "ccp") == {"person"}
    assert table.share(("persons", "humanseg"), ("davis12", "parkour"))
    assert not table.share(("cats", "feralcat"), ("davis12", "dog"))


def test_duts_class_groups_are_named_by_their_imagenet_class_and_unknown_groups_are_refused(tmp_path):
    table = load_categories(DEFAULT_TABLE)
    assert table.of("duts_class", "0285-egyptian-cat") == {"egyptian-cat"}
    with pytest.raises(KeyError, match="davis12/no-such-sequence is not in the category table"):
        table.of("davis12", "no-such-sequence")
    (tmp_path / "bad.yaml").write_text("groups: {}\n")
    with pytest.raises(ValueError, match="not a category table"):
        load_categories(tmp_path / "bad.yaml")


def test_outsiders_never_show_the_groups_own_kind_of_object_nor_repeat(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    sys.modules.pop("make_outsiders", None)
    from make_outsiders import outsider_plan

    groups = {
        "persons-ccp": [f"ccp{index}" for index in range(20)],
        "persons-humanseg": [f"humanseg{index}" for index in range(20)],
        "davis12-parkour": [f"parkour{index}" for index in range(20)],
        "davis12-dog": [f"dog{index}" for index in range(3)],
        "cats-feralcat": [f"cat{index}" for index in range(3)],
    }
    plan = outsider_plan(groups, 0.2, np.random.default_rng(0), load_categories())
    for group in ("persons-ccp", "persons-humanseg", "davis12-parkour"):
        outsiders = [(item, source) for item, source, outsider in plan[group] if outsider]
        assert len(outsiders) == 4 and len(set(outsiders)) == 4  # 20 % of 20, none twice
        assert {source for _, source in outsiders} <= {"davis12-dog", "cats-feralcat"}  # never persons
    assert all(len(members) == len(groups[group]) for group, members in plan.items())
