"""Group-aware batches for co-saliency training, with augmentation and jigsaw composites.

A batch is a *sub-group*: 2 to ``max_group`` images of one group (the co-saliency setting; a
single-image method simply sees them independently). An epoch visits every training image once:
each group's images are shuffled and cut into sub-groups, and the sub-groups of all groups are
shuffled together. Every random choice comes from a generator seeded by (seed, epoch, batch), so a
run resumed at any batch continues exactly as an uninterrupted one.

Augmentation, the same for an image and its mask: a random crop (area and aspect jitter) resized to
``size`` x ``size`` (test images are squashed to a square too) and a random horizontal flip.

Jigsaw composites (GICD, ECCV 2020, section 3.4): with probability ``composite_fraction`` an image
gets an object cut, with its mask, from an image of *another* group pasted onto it, so it holds an
extraneous foreground; its target is its own mask minus whatever the paste covers.

Outsiders: with probability ``outsider_fraction`` an image of a sub-group (never the first, so the
group's object is always there) is replaced by an image of *another* group with an all-zero target:
the group's common object is absent, so a co-saliency map must be black there however salient the
image's own object is (GCoNet's group collaborative learning teaches the same with whole groups:
``collaborative_fraction``, which :mod:`cosal_cli.training.cache` implements).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from cosal_cli.io import load_grey, load_rgb


@dataclass(frozen=True)
class TrainImage:
    dataset: str
    group: str
    stem: str
    image: Path
    mask: Path

    @property
    def group_key(self) -> str:
        """Groups are told apart across datasets too (two datasets may both have a 'car' group)."""
        return f"{self.dataset}/{self.group}"


@dataclass(frozen=True)
class SamplerSettings:
    size: int = 192
    min_group: int = 2
    max_group: int = 6
    composite_fraction: float = 0.0
    outsider_fraction: float = 0.0
    collaborative_fraction: float = 0.0  # batches also trained with another group's consensus (cached training)
    crop_area: tuple[float, float] = (0.6, 1.0)  # fraction of the image a crop keeps
    crop_aspect: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True
    paste_size: tuple[float, float] = (0.3, 0.6)  # longer side of a pasted object, fraction of ``size``
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.min_group <= self.max_group:
            raise ValueError(f"sub-group sizes must satisfy 1 <= min ({self.min_group}) <= max ({self.max_group})")
        for name in ("composite_fraction", "outsider_fraction", "collaborative_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name.replace('_', ' ')} {getattr(self, name)} is not between 0 and 1")


class ImageStore:
    """Decoded images and masks, kept in memory after the first use (the data sets are small).

    With ``short_side``, larger images are first shrunk (antialiased) so that their shorter side is
    that long: a training crop keeps at least 60 % of the area and is resized to ``size`` anyway, so
    twice ``size`` loses nothing visible, and a 1080p video frame no longer costs a full-resolution
    crop and resize at every view.
    """

    def __init__(self, short_side: int | None = None) -> None:
        self.short_side = short_side
        self._cache: dict[Path, tuple[np.ndarray, np.ndarray]] = {}

    def get(self, item: TrainImage) -> tuple[np.ndarray, np.ndarray]:
        """(H, W, 3) uint8 RGB and (H, W) float32 mask in [0, 1], the mask at the image's size."""
        if item.image not in self._cache:
            picture = load_rgb(item.image).rgb
            mask = Image.fromarray(load_grey(item.mask).astype(np.float32) / 255.0)
            if mask.size != picture.size:
                raise ValueError(f"{item.mask}: mask is {mask.size} but {item.image} is {picture.size}")
            if self.short_side and min(picture.size) > self.short_side:
                scale = self.short_side / min(picture.size)
                shrunk = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
                picture, mask = picture.resize(shrunk, Image.BILINEAR), mask.resize(shrunk, Image.BILINEAR)
            self._cache[item.image] = (np.array(picture), np.array(mask))  # writable copies for torch
        return self._cache[item.image]


def by_group(images: Sequence[TrainImage]) -> dict[str, list[TrainImage]]:
    groups: dict[str, list[TrainImage]] = {}
    for item in images:
        groups.setdefault(item.group_key, []).append(item)
    return {key: sorted(items, key=lambda item: item.stem) for key, items in sorted(groups.items())}


def epoch_batches(
    groups: Mapping[str, list[TrainImage]], settings: SamplerSettings, epoch: int
) -> list[list[TrainImage]]:
    """The sub-groups of one epoch, in order; every image exactly once, groups never mixed."""
    rng = np.random.default_rng([settings.seed, epoch])
    batches: list[list[TrainImage]] = []
    for key in sorted(groups):
        items = [groups[key][i] for i in rng.permutation(len(groups[key]))]
        for size in _chunk_sizes(len(items), settings.min_group, settings.max_group, rng):
            batches.append(items[:size])
            items = items[size:]
    return [batches[i] for i in rng.permutation(len(batches))]


def _chunk_sizes(count: int, low: int, high: int, rng: np.random.Generator) -> list[int]:
    """Random sizes in [low, high] summing to ``count``.

    Each size is drawn uniformly; when what it leaves cannot be cut into sizes in [low, high], the
    nearest size that can (the larger one on a tie) is taken instead. Only a count that has no such
    partition at all (fewer than ``low`` images, or e.g. 5 with sizes 3 to 4) gets a smaller chunk.
    """
    sizes = []
    while count > 0:
        drawn = int(rng.integers(low, high + 1))
        choices = [size for size in range(low, min(high, count) + 1) if _partitionable(count - size, low, high)]
        size = min(choices, key=lambda size: (abs(size - drawn), -size)) if choices else min(count, high)
        sizes.append(size)
        count -= size
    return sizes


def _partitionable(count: int, low: int, high: int) -> bool:
    """Whether ``count`` is a sum of sizes in [low, high] (0 is: the empty sum)."""
    return count == 0 or -(-count // high) <= count // low


def make_batch(
    batch: Sequence[TrainImage],
    store: ImageStore,
    settings: SamplerSettings,
    epoch: int,
    index: int,
    donors: Sequence[TrainImage] = (),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (k, 3, S, S) in [0, 1] and targets (k, 1, S, S) in [0, 1] for batch ``index`` of ``epoch``.

    ``donors`` are the images composites and outsiders come from; only those of other groups are used.
    """
    rng = np.random.default_rng([settings.seed, epoch, index])
    images, targets = [], []
    other_groups: dict[str, list[TrainImage]] = {}  # donors outside each group, listed once per batch

    def others_of(item: TrainImage) -> list[TrainImage]:
        if item.group_key not in other_groups:
            other_groups[item.group_key] = [donor for donor in donors if donor.group_key != item.group_key]
        return other_groups[item.group_key]

    for position, item in enumerate(batch):
        # Drawn only when asked for, so that runs without outsiders keep their exact random stream.
        outsider = position > 0 and settings.outsider_fraction > 0 and rng.random() < settings.outsider_fraction
        if outsider and others_of(item):
            outsiders = others_of(item)
            rgb, _ = store.get(outsiders[int(rng.integers(len(outsiders)))])
            image, target = augment(rgb, np.zeros(rgb.shape[:2], np.float32), settings, rng)
        else:
            image, target = render_view(item, store, settings, rng, others_of(item))
        images.append(image)
        targets.append(target)
    return torch.stack(images), torch.stack(targets)


def render_view(
    item: TrainImage,
    store: ImageStore,
    settings: SamplerSettings,
    rng: np.random.Generator,
    others: Sequence[TrainImage],
) -> tuple[torch.Tensor, torch.Tensor]:
    """One augmented view of ``item`` and its target; a composite (a pasted object of one of ``others``)
    with probability ``composite_fraction``."""
    rgb, mask = store.get(item)
    image, target = augment(rgb, mask, settings, rng)
    if settings.composite_fraction > 0 and rng.random() < settings.composite_fraction and others:
        donor_rgb, donor_mask = store.get(others[int(rng.integers(len(others)))])
        image, target, _ = paste_object(image, target, donor_rgb, donor_mask, settings, rng)
    return image, target


def augment(
    rgb: np.ndarray, mask: np.ndarray, settings: SamplerSettings, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random crop + flip, resized to (3, S, S) and (1, S, S)."""
    height, width = mask.shape
    area = rng.uniform(*settings.crop_area)
    aspect = np.exp(rng.uniform(*np.log(settings.crop_aspect)))
    crop_h = max(1, round(height * min(1.0, np.sqrt(area / aspect))))
    crop_w = max(1, round(width * min(1.0, np.sqrt(area * aspect))))
    top = int(rng.integers(0, height - crop_h + 1))
    left = int(rng.integers(0, width - crop_w + 1))
    image = torch.from_numpy(rgb[top : top + crop_h, left : left + crop_w]).permute(2, 0, 1).float() / 255.0
    target = torch.from_numpy(mask[top : top + crop_h, left : left + crop_w])[None]
    if settings.flip and rng.random() < 0.5:
        image, target = image.flip(-1), target.flip(-1)
    return _resize(image, settings.size), _resize(target, settings.size)


def paste_object(
    image: torch.Tensor,
    target: torch.Tensor,
    donor_rgb: np.ndarray,
    donor_mask: np.ndarray,
    settings: SamplerSettings,
    rng: np.random.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Paste the donor's object at a random place and scale; returns image, target and the paste's alpha."""
    size = image.shape[-1]
    rows, cols = np.nonzero(donor_mask > 0.5)
    if rows.size == 0:
        return image, target, torch.zeros_like(target)
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    cut = torch.from_numpy(donor_rgb[top:bottom, left:right]).permute(2, 0, 1).float() / 255.0
    alpha = torch.from_numpy(donor_mask[top:bottom, left:right])[None]
    scale = rng.uniform(*settings.paste_size) * size / max(bottom - top, right - left)
    out_h = min(size, max(1, round((bottom - top) * scale)))
    out_w = min(size, max(1, round((right - left) * scale)))
    cut = F.interpolate(cut[None], size=(out_h, out_w), mode="bilinear", antialias=True, align_corners=False)[0]
    alpha = F.interpolate(alpha[None], size=(out_h, out_w), mode="bilinear", antialias=True, align_corners=False)[0]
    y = int(rng.integers(0, size - out_h + 1))
    x = int(rng.integers(0, size - out_w + 1))
    full_alpha = torch.zeros_like(target)
    full_alpha[:, y : y + out_h, x : x + out_w] = alpha.clamp(0.0, 1.0)
    pasted = image.clone()
    pasted[:, y : y + out_h, x : x + out_w] = cut
    image = image * (1 - full_alpha) + pasted * full_alpha
    target = target * (1 - full_alpha)  # the pasted object hides the group's own object
    return image, target, full_alpha


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(x[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
