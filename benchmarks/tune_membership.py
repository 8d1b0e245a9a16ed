"""Tune a method's outsider dimming (``models.membership.Membership``) on outsiders built from training images.

    python benchmarks/make_outsiders.py --data ../shared/data --split training/splits/shared-v2.yaml \
        --output eval/outsiders-train --part training --per-group 40
    python benchmarks/tune_membership.py eval/outsiders-train -m gicd --similarities 0 5 10 20 \
        [--report eval/outsiders] [--max-lost 0.01]

Dimming has a price: a dimmed in-group map may no longer reach 0.5, so its object is lost to a user
who thresholds there ("lost", as in ``heldout_report.py``), and groups *without* outsiders pay it too.
So for each temperature (``--temperatures``) and weight of the logit similarity (``--similarities``; the
shipped ones by default) the offset is the smallest (in steps of 0.25 nats) that loses at most
``--max-lost`` of the objects in the tuning set's groups with their outsiders taken out; the table
shows, for every offset, the outsider / in-group map ratio with outsiders and the lost share without
them. Of those choices the one with the lowest outsider ratio wins (measured for ``icnet``'s step-1 head:
temperatures 0.25 and 0.5 both tune to offset 4.0, and the sharper sigmoid gives no lower ratio, so 0.5
stays; ``--similarities 0 5 10 20`` chose 20, offset 9.5, for both methods). ``--report`` prints the same
tables for another set (the held-out outsiders), for the winner and the shipped choice, and one summary
line for every choice, with the AUC of its score (in-group images against outsiders): it is never tuned on.
"""

from __future__ import annotations

import argparse
import importlib
import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from heldout_report import folder_groups
from scipy.stats import rankdata

import cosal_cli
from cosal_cli.inference import prepare_images
from cosal_cli.io import load_grey, load_rgb
from cosal_cli.methods.loader import load_method
from cosal_cli.models.membership import Membership, consensus_of

OFFSETS = np.arange(2.0, 16.01, 0.25)


@dataclass
class Scored:
    """Per image of a set of groups: outsider?, map max and mean, object?; per group its ImageNet logits."""

    logits: list[torch.Tensor]
    outsider: np.ndarray
    peak: np.ndarray
    mean: np.ndarray
    has_object: np.ndarray

    def relative(self, membership: Membership) -> torch.Tensor:
        """Every image's score relative to its group's median image, computed group by group as the methods do."""
        return torch.cat([membership.relative(logits, consensus_of(logits)) for logits in self.logits])

    def weights(self, membership: Membership) -> np.ndarray:
        """Every image's dimming weight."""
        return membership.weights_of_relative(self.relative(membership)).numpy()

    def ratio(self, weights: np.ndarray) -> float:
        dimmed = weights * self.mean
        return float(dimmed[self.outsider].mean() / dimmed[~self.outsider].mean())

    def lost(self, weights: np.ndarray) -> float:
        return float(((weights * self.peak) < 127.5)[~self.outsider & self.has_object].mean())


def score(network, detector, groups: dict[str, list], outsiders: set[str]) -> Scored:
    columns: dict[str, list] = {name: [] for name in ("logits", "outsider", "peak", "mean", "has_object")}
    for group, pairs in sorted(groups.items()):
        pixels = prepare_images([load_rgb(image).rgb for image, _ in pairs], pairs, detector.input_size).pixels
        images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255.0  # the inference path's input
        with torch.no_grad():
            logits = torch.cat([network.logits(network.encode(part)[1]) for part in images.split(16)])
        columns["logits"].append(logits)
        for (image, mask), values in zip(pairs, detector.predict([image for image, _ in pairs], name=group)):
            rounded = np.rint(values * 255.0)
            columns["peak"].append(rounded.max())
            columns["mean"].append(rounded.mean())
            columns["has_object"].append(load_grey(mask).max() > 127)
            columns["outsider"].append(f"{group}/{image.stem}" in outsiders)
    arrays = {name: np.array(values) for name, values in columns.items() if name != "logits"}
    return Scored(logits=columns["logits"], **arrays)


def with_and_without_outsiders(network, detector, root: Path) -> tuple[Scored, Scored]:
    record = json.loads((root / "outsiders.json").read_text())["images"]
    outsiders = {entry["image"] for entry in record if entry["outsider"]}
    groups = folder_groups(root)
    plain = {group: [pair for pair in pairs if f"{group}/{pair[0].stem}" not in outsiders]
             for group, pairs in groups.items()}  # fmt: skip
    return score(network, detector, groups, outsiders), score(network, detector, plain, set())


def table(name: str, mixed: Scored, plain: Scored, shape: Membership) -> list[tuple[Membership, float, float]]:
    """For every offset, with ``shape``'s temperature and similarity: (membership, ratio, lost without)."""
    rows = []
    undimmed, plain_undimmed = np.ones_like(mixed.peak), np.ones_like(plain.peak)
    print(f"{name}: offset | outsider ratio | lost with outsiders | lost without")
    print(f"  none | {mixed.ratio(undimmed):.3f} | {mixed.lost(undimmed):.3f} | {plain.lost(plain_undimmed):.3f}")
    relative_mixed, relative_plain = mixed.relative(shape), plain.relative(shape)  # the offset does not move them
    for offset in OFFSETS:
        membership = replace(shape, offset=float(offset))
        weights_mixed = membership.weights_of_relative(relative_mixed).numpy()
        weights_plain = membership.weights_of_relative(relative_plain).numpy()
        rows.append((membership, mixed.ratio(weights_mixed), plain.lost(weights_plain)))
        print(f"  {offset:.2f} | {rows[-1][1]:.3f} | {mixed.lost(weights_mixed):.3f} | {rows[-1][2]:.3f}")
    return rows


def tune(tuning: tuple[Scored, Scored], shapes: list[Membership], max_lost: float) -> list[tuple[Membership, float]]:
    """Each shape's smallest offset that loses at most ``max_lost`` of the objects without outsiders, with
    its tuning ratio, lowest ratio first (a shape that never gets there is left out)."""
    choices = []
    for shape in shapes:
        label = f"temperature {shape.temperature}, similarity {shape.similarity}"
        rows = table(f"tuning, {label}", *tuning, shape)
        tuned = next(((membership, ratio) for membership, ratio, lost in rows if lost <= max_lost), None)
        print(f"{label}: tuned offset {tuned[0].offset if tuned else None}")
        if tuned:
            choices.append(tuned)
    return sorted(choices, key=lambda choice: choice[1])


def separation(scored: Scored, membership: Membership) -> float:
    """AUC of the score relative to each group's median: the chance that an in-group image scores above
    an outsider (ties count half), from the Mann-Whitney rank sum."""
    ranks = rankdata(scored.relative(membership).numpy())
    inside, outside = int((~scored.outsider).sum()), int(scored.outsider.sum())
    return float((ranks[~scored.outsider].sum() - inside * (inside + 1) / 2) / (inside * outside))


def summary(report: tuple[Scored, Scored], memberships: list[Membership]) -> None:
    """One line per membership on the report set: AUC, outsider ratio, lost with and without outsiders."""
    mixed, plain = report
    print("report: membership | AUC | outsider ratio | lost with outsiders | lost without")
    for membership in memberships:
        weights_mixed = mixed.weights(membership)
        ratio, lost, auc = mixed.ratio(weights_mixed), mixed.lost(weights_mixed), separation(mixed, membership)
        print(f"  {membership} | {auc:.3f} | {ratio:.3f} | {lost:.3f} | {plain.lost(plain.weights(membership)):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tuning", type=Path, help="outsider set built from training images")
    parser.add_argument("-m", "--method", default="gicd", help="gicd or icnet")
    parser.add_argument("--report", type=Path, help="outsider set to report on (never tuned on)")
    parser.add_argument("--max-lost", type=float, default=0.01, help="objects allowed lost without outsiders")
    parser.add_argument("--temperatures", type=float, nargs="+", help="temperatures to try (default: the shipped one)")
    parser.add_argument(
        "--similarities", type=float, nargs="+", help="logit similarity weights to try (default: the shipped one)"
    )
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shipped = importlib.import_module(f"cosal_cli.methods.{args.method}").MEMBERSHIP
    network = load_method("gicd", torch.device("cpu"), offline=True).network  # Lite0, the classifier of both
    detector = cosal_cli.load(args.method, device="cpu", offline=True, outsiders="keep")
    shapes = [replace(shipped, temperature=temperature, similarity=similarity)
              for temperature in args.temperatures or [shipped.temperature]
              for similarity in args.similarities or [shipped.similarity]]  # fmt: skip
    choices = tune(with_and_without_outsiders(network, detector, args.tuning), shapes, args.max_lost)
    chosen = f"{choices[0][0]} (tuning ratio {choices[0][1]:.3f})" if choices else "none"
    print(f"{args.method}: tuned {chosen}; shipped: {shipped}")
    if args.report:
        report = with_and_without_outsiders(network, detector, args.report)
        memberships = list(dict.fromkeys([membership for membership, _ in choices] + [shipped]))
        for membership in dict.fromkeys(memberships[:1] + [shipped]):  # once when the winner is the shipped choice
            table(f"report, {membership}", *report, membership)
        summary(report, memberships)


if __name__ == "__main__":
    main()
