"""Co-category supervision (GS, section 2.4): the categories each training group has in common.

GS learns its group semantic vector by classifying the categories common to a group's images
(multi-label: a sigmoid per label and binary cross-entropy, weighted by ``weight``, the paper's λ).
The paper takes COCO-SEG's 78 categories; cosal has two sources (``cosal train --co-category``):

* ``table``: the group's categories in ``training/categories.yaml`` (DUTS_class groups by their
  ImageNet class, the others by the object classes of their masks), a multi-hot target over the
  categories of the training groups;
* ``imagenet``: the group's top ImageNet classes by EfficientNet-Lite0: the softmax of its training
  images' mean logits, the :data:`TOP_CLASSES` largest kept and divided by the largest, as soft
  targets over the 1000 classes (0 elsewhere). Broader: a held-out category can share classes with
  training groups (a boat group with speedboats and liners) where the table has no label for it.

``off`` trains without the co-category loss (the paper's λ = 0 ablation).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cosal_cli.io import atomic_output, load_rgb
from cosal_cli.training.categories import load_categories
from cosal_cli.training.sampler import TrainImage, by_group

SOURCES = ("table", "imagenet", "off")
DEFAULT_SOURCE = "table"
TOP_CLASSES = 5
CLASSIFY_SIZE = 224
CLASSIFY_BATCH = 32
CLASSIFIER = "efficientnet-lite0-imagenet"  # the manifest component of the ImageNet source


@dataclass
class CoCategoryTargets:
    source: str
    labels: list[str]
    targets: dict[str, torch.Tensor]  # group key -> (L,) in [0, 1]
    weight: float = 1.0

    def loss(self, network, cached: Mapping[str, torch.Tensor], group_key: str) -> torch.Tensor:
        """λ times the co-category BCE of one sub-group (eq. 8) against its group's targets."""
        logits = network.category_logits(cached).float()
        target = self.targets[group_key].to(logits.device)
        return self.weight * F.binary_cross_entropy_with_logits(logits, target)

    def describe(self) -> dict[str, Any]:
        """What the head's metadata records about its co-category supervision."""
        summary: dict[str, Any] = {"source": self.source, "weight": self.weight, "labels": len(self.labels)}
        if self.source == "table":
            summary["names"] = self.labels
        else:
            summary["top_classes"] = TOP_CLASSES
        return summary


def for_training(source: str | None, images: Sequence[TrainImage], hub, device: torch.device, folder: Path,
                 offline: bool) -> CoCategoryTargets | None:  # fmt: skip
    """The targets of ``source`` (None: :data:`DEFAULT_SOURCE`) for the training images; None for ``off``.

    The ImageNet classes are worked out once per data and classifier and kept in ``folder`` (the
    feature cache's), as ``co-category-imagenet.json``.
    """
    source = source or DEFAULT_SOURCE
    if source == "off":
        return None
    if source == "table":
        return table_targets(images)
    from cosal_cli.models.efficientnet_lite import EfficientNetLite0, lite_normalise

    component = hub.manifest.component(CLASSIFIER)
    classifier = EfficientNetLite0.from_file(hub.resolve(CLASSIFIER, offline=offline)).to(device).eval()
    return imagenet_targets(images, lambda batch: classifier(lite_normalise(batch.to(device))),
                            folder / "co-category-imagenet.json", component.sha256)  # fmt: skip


def table_targets(images: Sequence[TrainImage], table_path: Path | None = None) -> CoCategoryTargets:
    """Multi-hot targets over the training groups' categories in the category table."""
    table = load_categories() if table_path is None else load_categories(table_path)
    groups = by_group(images)
    categories = {key: table.of(items[0].dataset, items[0].group) for key, items in groups.items()}
    labels = sorted(set().union(*categories.values()))
    index = {label: position for position, label in enumerate(labels)}
    targets = {}
    for key, names in categories.items():
        target = torch.zeros(len(labels))
        target[[index[name] for name in names]] = 1.0
        targets[key] = target
    return CoCategoryTargets("table", labels, targets)


def imagenet_targets(images: Sequence[TrainImage], classify: Callable[[torch.Tensor], torch.Tensor],
                     stored: Path, classifier_sha256: str) -> CoCategoryTargets:  # fmt: skip
    """Soft targets from each group's top ImageNet classes; the classes are kept in ``stored`` (JSON)
    and reused while the images and the classifier are the same."""
    from torchvision.models import ResNet18_Weights  # the ImageNet class names, shipped in torchvision's code

    names = list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])
    identity = {"images_sha256": _listing_sha256(images), "classifier_sha256": classifier_sha256,
                "top_classes": TOP_CLASSES}  # fmt: skip
    saved = json.loads(stored.read_text()) if stored.exists() else {}
    if saved.get("identity") != identity:
        tops = {key: _top_classes(items, classify) for key, items in by_group(images).items()}
        stored.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(stored) as temporary:
            temporary.write_text(json.dumps({"identity": identity, "groups": tops}, indent=1))
        saved = {"groups": tops}
    targets = {}
    for key, top in saved["groups"].items():
        target = torch.zeros(len(names))
        target[top["classes"]] = torch.tensor(top["weights"])
        targets[key] = target
    return CoCategoryTargets("imagenet", names, targets)


def _top_classes(items: Sequence[TrainImage], classify: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, list]:
    """The group's TOP_CLASSES classes by the softmax of its images' mean logits, weights relative to the first."""
    logits = []
    for start in range(0, len(items), CLASSIFY_BATCH):
        batch = [_square(item.image) for item in items[start : start + CLASSIFY_BATCH]]
        with torch.no_grad():
            logits.append(classify(torch.stack(batch)).float().cpu())
    probabilities = torch.softmax(torch.cat(logits).mean(0), dim=0)
    weights, classes = probabilities.topk(TOP_CLASSES)
    return {"classes": classes.tolist(), "weights": (weights / weights[0]).tolist()}


def _square(path: Path) -> torch.Tensor:
    """An image squashed to CLASSIFY_SIZE x CLASSIFY_SIZE RGB in [0, 1], as the inference path feeds it."""
    from PIL import Image

    image = load_rgb(path).rgb.resize((CLASSIFY_SIZE, CLASSIFY_SIZE), Image.BILINEAR)
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255.0


def _listing_sha256(images: Sequence[TrainImage]) -> str:
    listing = "\n".join(f"{item.group_key}/{item.stem}\t{item.image}" for item in images)
    return hashlib.sha256(listing.encode()).hexdigest()
