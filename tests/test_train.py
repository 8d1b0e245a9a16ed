"""`cosal train`: the group-aware sampler, augmentation and composites, losses, splits, and the training loop
(head files with metadata, keeping the best head, checkpoints and bit-identical resumption).

Everything runs on tiny synthetic datasets built in tmp_path (never ../shared); the training runs need the real
VGG-16 backbone (``real_weights``) and are skipped without it.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

import cosal_cli
from cosal_cli.cli import app
from cosal_cli.cli import train as train_command
from cosal_cli.errors import UsageError
from cosal_cli.methods import sod
from cosal_cli.models.heads import HEAD_FORMAT, load_head, load_tensors, save_head, save_tensors
from cosal_cli.splits import load_split, parse_split
from cosal_cli.training import checkpoints, checks, losses, trainer
from cosal_cli.training.sampler import (
    ImageStore,
    SamplerSettings,
    TrainImage,
    augment,
    by_group,
    epoch_batches,
    make_batch,
    paste_object,
)

from .conftest import REPO, SHIPPED_MANIFEST

SHIPPED_SOD_HEAD = REPO / "cosal_cli" / "weights" / "sod-head.safetensors"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The machine is small and shared; one thread also keeps every run in this module bit-reproducible."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def save_pair(root: Path, group: str, stem: str, rgb: np.ndarray, mask: np.ndarray, suffix: str = ".png") -> TrainImage:
    """``root`` is a dataset folder: writes Image/<group>/<stem><suffix> and GroundTruth/<group>/<stem>.png."""
    image_path = root / "Image" / group / f"{stem}{suffix}"
    mask_path = root / "GroundTruth" / group / f"{stem}.png"
    image_path.parent.mkdir(parents=True, exist_ok=True)
    mask_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb.astype(np.uint8), "RGB").save(image_path, quality=95)
    Image.fromarray(mask.astype(np.uint8), "L").save(mask_path)
    return TrainImage(root.name, group, stem, image_path, mask_path)


def l_shape(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A 0/255 mask: an off-centre rectangle with a smaller block on its right (no symmetry a flip could hide)."""
    mask = np.zeros((height, width), np.uint8)
    top, left = int(rng.integers(2, height // 3)), int(rng.integers(2, width // 3))
    h, w = int(rng.integers(height // 3, height // 2)), int(rng.integers(width // 4, width // 3))
    mask[top : top + h, left : left + w] = 255
    mask[top : top + h // 2, left + w : left + w + w // 2] = 255
    return mask


def colour_dataset(tmp_path: Path, groups: dict[tuple[str, str], int], count: int = 3) -> list[TrainImage]:
    """Images whose object is exactly their mask, in one pure colour channel per group, on black.

    ``groups`` maps (dataset, group) to the channel (0 R, 1 G, 2 B); images are 40 x 48 (not square).
    """
    rng = np.random.default_rng(7)
    items = []
    for (dataset, group), channel in groups.items():
        for i in range(count):
            mask = l_shape(40, 48, rng)
            rgb = np.zeros((40, 48, 3), np.uint8)
            rgb[..., channel] = mask
            items.append(save_pair(tmp_path / dataset, group, f"img{i}", rgb, mask))
    return items


# ----------------------------------------------------------------------------------------------
# Sampler: sub-groups
# ----------------------------------------------------------------------------------------------


def fake_images() -> list[TrainImage]:
    """Groups of 1 to 12 images; 'cat' exists in two datasets and must stay two groups."""
    sizes = {
        ("d1", "cat"): 7, ("d1", "dog"): 1, ("d1", "ant"): 3, ("d2", "cat"): 5, ("d2", "bird"): 12, ("d2", "eel"): 2
    }
    return [
        TrainImage(
            dataset, group, f"{group}{i:02d}", Path(f"/nowhere/{dataset}/{group}{i}.jpg"), Path("/nowhere/m.png")
        )
        for (dataset, group), size in sizes.items()
        for i in range(size)
    ]


def as_ids(batches: list[list[TrainImage]]) -> list[list[tuple[str, str, str]]]:
    return [[(item.dataset, item.group, item.stem) for item in batch] for batch in batches]


def test_by_group_keys_groups_by_dataset_and_name_and_sorts_by_stem():
    images = fake_images()[::-1]
    groups = by_group(images)
    assert list(groups) == ["d1/ant", "d1/cat", "d1/dog", "d2/bird", "d2/cat", "d2/eel"]
    assert [len(items) for items in groups.values()] == [3, 7, 1, 12, 5, 2]
    assert all([item.stem for item in items] == sorted(item.stem for item in items) for items in groups.values())
    assert {item.dataset for item in groups["d2/cat"]} == {"d2"}


@pytest.mark.parametrize("low, high", [(2, 3), (2, 6), (3, 5), (1, 1), (4, 7)])
def test_an_epoch_visits_every_image_once_in_unmixed_sub_groups_of_allowed_sizes(low, high):
    images = fake_images()
    groups = by_group(images)
    for seed in range(3):
        settings = SamplerSettings(min_group=low, max_group=high, seed=seed)
        for epoch in range(4):
            batches = epoch_batches(groups, settings, epoch)
            seen = Counter(id(item) for batch in batches for item in batch)
            assert sorted(seen) == sorted(id(item) for item in images) and set(seen.values()) == {1}
            for batch in batches:
                assert len({(item.dataset, item.group) for item in batch}) == 1  # 'd1/cat' never meets 'd2/cat'
                group = groups[batch[0].group_key]
                if len(group) < low:
                    assert sorted(batch, key=lambda item: item.stem) == group  # a small group is one batch
                else:
                    assert low <= len(batch) <= high, (seed, epoch, batch[0].group_key, len(batch))


def test_sub_group_sizes_stay_in_range_whenever_the_group_can_be_split_so():
    images = [TrainImage("d", "g", f"{i:02d}", Path(f"/nowhere/{i}.jpg"), Path("/nowhere/m.png")) for i in range(8)]
    for seed in range(10):
        settings = SamplerSettings(min_group=3, max_group=4, seed=seed)
        sizes = [len(batch) for batch in epoch_batches(by_group(images), settings, 0)]
        assert all(3 <= size <= 4 for size in sizes), (seed, sizes)


def test_epoch_batches_depend_on_seed_and_epoch_only():
    groups = by_group(fake_images())
    settings = SamplerSettings(min_group=2, max_group=4, seed=5)
    first = as_ids(epoch_batches(groups, settings, 3))
    assert as_ids(epoch_batches(groups, settings, 3)) == first
    assert as_ids(epoch_batches(by_group(fake_images()[::-1]), settings, 3)) == first  # input order is irrelevant
    assert as_ids(epoch_batches(groups, settings, 4)) != first
    assert as_ids(epoch_batches(groups, SamplerSettings(min_group=2, max_group=4, seed=6), 3)) != first
    # not only the order of the batches changes between epochs: the images within a group are reshuffled
    orders = {tuple(stem for batch in as_ids(epoch_batches(groups, settings, e))
                    for (_, g, stem) in batch if g == "bird")
              for e in range(4)}  # fmt: skip
    assert len(orders) == 4


def test_sampler_settings_are_validated():
    with pytest.raises(ValueError, match="sub-group"):
        SamplerSettings(min_group=4, max_group=3)
    with pytest.raises(ValueError, match="sub-group"):
        SamplerSettings(min_group=0, max_group=3)
    with pytest.raises(ValueError, match="composite"):
        SamplerSettings(composite_fraction=1.5)


# ----------------------------------------------------------------------------------------------
# Augmentation keeps image and mask aligned
# ----------------------------------------------------------------------------------------------


def test_augment_crops_and_flips_image_and_mask_together():
    rng = np.random.default_rng(0)
    mask = l_shape(40, 56, rng)
    rgb = rng.integers(0, 256, (40, 56, 3)).astype(np.uint8)
    rgb[..., 0] = mask  # red is exactly the mask
    settings = SamplerSettings(size=32, crop_area=(0.4, 1.0))
    flipped = 0
    outputs = set()
    for seed in range(24):
        image, target = augment(rgb, mask.astype(np.float32) / 255, settings, np.random.default_rng(seed))
        assert image.shape == (3, 32, 32) and target.shape == (1, 32, 32)
        assert image.dtype == torch.float32 and target.dtype == torch.float32
        assert -1e-6 <= image.min() and image.max() <= 1 + 1e-6 and -1e-6 <= target.min() and target.max() <= 1 + 1e-6
        torch.testing.assert_close(image[0], target[0], atol=1e-6, rtol=0)
        outputs.add(target.numpy().tobytes())
        # Which flips happened: compare with the same crop unflipped (same generator, flip off).
        unflipped = augment(rgb, mask.astype(np.float32) / 255,
                            SamplerSettings(size=32, crop_area=(0.4, 1.0), flip=False),
                            np.random.default_rng(seed))[1]  # fmt: skip
        if not torch.equal(unflipped, target):
            torch.testing.assert_close(unflipped.flip(-1), target, atol=1e-6, rtol=0)
            flipped += 1
    assert 4 <= flipped <= 20  # both flipped and unflipped crops occurred
    assert len(outputs) == 24  # every crop differs


def test_augment_without_crop_or_flip_is_a_plain_resize():
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (24, 24, 3)).astype(np.uint8)
    mask = (rng.random((24, 24)) > 0.5).astype(np.float32)
    settings = SamplerSettings(size=24, crop_area=(1.0, 1.0), crop_aspect=(1.0, 1.0), flip=False)
    image, target = augment(rgb, mask, settings, np.random.default_rng(0))
    torch.testing.assert_close(image, torch.from_numpy(rgb).permute(2, 0, 1).float() / 255, atol=1e-6, rtol=0)
    torch.testing.assert_close(target[0], torch.from_numpy(mask), atol=1e-6, rtol=0)


def test_make_batch_keeps_targets_on_the_objects_and_is_deterministic(tmp_path):
    items = colour_dataset(tmp_path, {("d1", "a"): 0, ("d1", "b"): 1})
    settings = SamplerSettings(size=32, min_group=2, max_group=3, crop_area=(0.4, 1.0), seed=3)
    batches = epoch_batches(by_group(items), settings, 0)
    store = ImageStore()
    differ = 0
    for index, batch in enumerate(batches):
        images, targets = make_batch(batch, store, settings, 0, index, items)
        assert images.shape == (len(batch), 3, 32, 32) and targets.shape == (len(batch), 1, 32, 32)
        for image, target, item in zip(images, targets, batch):
            channel = 0 if item.group == "a" else 1
            torch.testing.assert_close(image[channel], target[0], atol=1e-6, rtol=0)
            assert image[1 - channel].max() == 0 and image[2].max() == 0
        again = make_batch(batch, ImageStore(), settings, 0, index, items)  # a fresh store: no hidden state
        assert torch.equal(again[0], images) and torch.equal(again[1], targets)
        other = make_batch(batch, store, settings, 1, index, items)  # another epoch: other crops
        differ += not torch.equal(other[0], images)
        other = make_batch(batch, store, settings, 0, index + 1, items)  # another batch index: other crops
        differ += not torch.equal(other[0], images)
    assert differ == 2 * len(batches)


# ----------------------------------------------------------------------------------------------
# Jigsaw composites
# ----------------------------------------------------------------------------------------------


def own_image(size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    image = torch.full((3, size, size), 0.5)
    target = torch.zeros(1, size, size)
    target[:, 10:50, 12:44] = 1.0
    image[:, 10:50, 12:44] = torch.tensor([1.0, 0.0, 0.0])[:, None, None]
    return image, target


def donor_ellipse() -> tuple[np.ndarray, np.ndarray]:
    """A 44 x 60 donor: a blue ellipse 2:1 (41 x 21 pixels) on green."""
    yy, xx = np.mgrid[:44, :60]
    mask = (((xx - 30) / 20.5) ** 2 + ((yy - 22) / 10.5) ** 2 <= 1).astype(np.float32)
    rgb = np.zeros((44, 60, 3), np.uint8)
    rgb[..., 1] = 255
    rgb[mask > 0] = (0, 0, 255)
    return rgb, mask


@pytest.mark.parametrize("paste_size", [(0.3, 0.6), (0.7, 0.8)])
def test_paste_object_hides_the_own_object_and_pastes_the_donor_at_the_configured_size(paste_size):
    image, target = own_image()
    donor_rgb, donor_mask = donor_ellipse()
    settings = SamplerSettings(size=64, paste_size=paste_size)
    extents = []
    for seed in range(30):
        out, out_target, alpha = paste_object(
            image, target, donor_rgb, donor_mask, settings, np.random.default_rng(seed)
        )
        assert out.shape == image.shape and out_target.shape == target.shape and alpha.shape == target.shape
        assert alpha.min() >= 0 and alpha.max() <= 1 and alpha.max() > 0.999
        torch.testing.assert_close(out_target, target * (1 - alpha), atol=1e-6, rtol=0)
        solid = alpha[0] > 0.999
        torch.testing.assert_close(out[:, solid], torch.tensor([[0.0], [0.0], [1.0]]).expand(3, int(solid.sum())),
                                   atol=2e-3, rtol=0)  # fmt: skip
        untouched = alpha[0] == 0
        assert torch.equal(out[:, untouched], image[:, untouched])
        rows = torch.nonzero(alpha[0].sum(1)).flatten()
        cols = torch.nonzero(alpha[0].sum(0)).flatten()
        height, width = int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)
        assert paste_size[0] * 64 - 1 <= width <= paste_size[1] * 64 + 1, (seed, width)
        assert 1.7 <= width / height <= 2.3  # the donor's aspect ratio is kept
        extents.append(width)
    assert max(extents) - min(extents) >= 0.5 * (paste_size[1] - paste_size[0]) * 64  # sizes are drawn, not fixed


def test_paste_object_with_an_empty_donor_mask_changes_nothing():
    image, target = own_image()
    donor_rgb, donor_mask = donor_ellipse()
    out, out_target, alpha = paste_object(image, target, donor_rgb, donor_mask * 0, SamplerSettings(size=64),
                                          np.random.default_rng(0))  # fmt: skip
    assert torch.equal(out, image) and torch.equal(out_target, target) and alpha.max() == 0


COMPOSITE_GROUPS = {("d1", "a"): 0, ("d1", "b"): 1, ("d2", "a"): 2}  # 'a' in two datasets: two groups


def composites(tmp_path: Path, fraction: float, epochs: int = 4):
    """(item, image, target) for every image of ``epochs`` epochs with the given composite fraction."""
    items = colour_dataset(tmp_path, COMPOSITE_GROUPS, count=4)
    settings = SamplerSettings(size=32, min_group=2, max_group=3, composite_fraction=fraction, paste_size=(0.4, 0.7))
    store = ImageStore()
    for epoch in range(epochs):
        for index, batch in enumerate(epoch_batches(by_group(items), settings, epoch)):
            images, targets = make_batch(batch, store, settings, epoch, index, items)
            yield from zip(batch, images, targets)


def test_every_composite_takes_its_object_from_another_group(tmp_path):
    donors: dict[str, set[int]] = {key: set() for key in ("d1/a", "d1/b", "d2/a")}
    count = 0
    for item, image, target in composites(tmp_path, 1.0):
        own = COMPOSITE_GROUPS[(item.dataset, item.group)]
        foreign = [channel for channel in range(3) if channel != own]
        # Only donors of other groups bring other colours; every image got one, with a solid part.
        pasted = [channel for channel in foreign if image[channel].max() > 0.999]
        assert len(pasted) == 1, (item, [float(image[c].max()) for c in range(3)])
        donors[item.group_key].update(pasted)
        # The target is the own object minus what the paste hides: exactly what is left of the own colour.
        torch.testing.assert_close(target[0], image[own], atol=1e-5, rtol=0)
        assert target[0][image[pasted[0]] > 0.999].max() <= 1e-3
        count += 1
    assert count == 4 * 12
    # 'd2/a' is another group than 'd1/a' although both are called 'a': each gave objects to the other.
    assert donors == {"d1/a": {1, 2}, "d1/b": {0, 2}, "d2/a": {0, 1}}


def test_composite_fraction_zero_never_pastes_and_one_half_pastes_about_half(tmp_path):
    for item, image, target in composites(tmp_path / "none", 0.0):
        own = COMPOSITE_GROUPS[(item.dataset, item.group)]
        assert all(image[channel].max() == 0 for channel in range(3) if channel != own)
        torch.testing.assert_close(target[0], image[own], atol=1e-6, rtol=0)
    pasted = [
        any(
            image[channel].max() > 0.5
            for channel in range(3)
            if channel != COMPOSITE_GROUPS[(item.dataset, item.group)]
        )
        for item, image, _ in composites(tmp_path / "half", 0.5, epochs=5)
    ]
    assert 0.3 * len(pasted) <= sum(pasted) <= 0.7 * len(pasted)


def test_composites_need_donors_of_another_group(tmp_path):
    items = colour_dataset(tmp_path, {("d1", "a"): 0}, count=3)
    settings = SamplerSettings(size=32, composite_fraction=1.0)
    images, targets = make_batch(items, ImageStore(), settings, 0, 0, items)  # only its own group: no paste
    assert images[:, 1:].max() == 0
    torch.testing.assert_close(targets[:, 0], images[:, 0], atol=1e-6, rtol=0)


def test_outsiders_come_from_another_group_with_zero_targets_and_never_first(tmp_path):
    items = colour_dataset(tmp_path, COMPOSITE_GROUPS, count=4)
    settings = SamplerSettings(size=32, min_group=2, max_group=3, outsider_fraction=1.0)
    store, seen = ImageStore(), 0
    for epoch in range(3):
        for index, batch in enumerate(epoch_batches(by_group(items), settings, epoch)):
            images, targets = make_batch(batch, store, settings, epoch, index, items)
            own = COMPOSITE_GROUPS[(batch[0].dataset, batch[0].group)]
            torch.testing.assert_close(targets[0, 0], images[0, own], atol=1e-6, rtol=0)  # the group's own image
            assert targets[0].max() > 0.5
            for image, target in zip(images[1:], targets[1:]):
                assert target.max() == 0  # an outsider: nothing of the group's object is in it
                assert image[own].max() == 0 and image.max() > 0.5  # its object has another group's colour
                seen += 1
    assert seen > 0


def test_outsider_fraction_half_replaces_about_half_and_zero_none(tmp_path):
    items = colour_dataset(tmp_path, COMPOSITE_GROUPS, count=6)
    for fraction, low, high in ((0.0, 0.0, 0.0), (0.5, 0.3, 0.7)):
        settings = SamplerSettings(size=32, min_group=3, max_group=3, outsider_fraction=fraction)
        flags = []
        for epoch in range(6):
            for index, batch in enumerate(epoch_batches(by_group(items), settings, epoch)):
                _, targets = make_batch(batch, ImageStore(), settings, epoch, index, items)
                flags += [bool(target.max() == 0) for target in targets[1:]]
        assert low * len(flags) <= sum(flags) <= high * len(flags), (fraction, sum(flags), len(flags))


def test_outsiders_are_refused_for_a_single_image_method(tmp_path):
    settings = trainer.TrainSettings(method="sod", data=[], split=None, output=tmp_path / "h.safetensors",
                                     sampler=SamplerSettings(outsider_fraction=0.2))  # fmt: skip
    with pytest.raises(UsageError, match="sees one image at a time"):
        checks.check_settings(checks.trainable_method("sod"), settings)


# ----------------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------------


def logit(p: float) -> float:
    return math.log(p / (1 - p))


# Two 2 x 2 images: probabilities and targets.
PROBS = [[0.5, 0.5, 0.5, 0.5], [0.8, 0.2, 0.8, 0.2]]
TARGETS = [[1.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]]


def loss_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    logits = torch.tensor([[logit(p) for p in row] for row in PROBS], dtype=torch.float64).view(2, 1, 2, 2)
    return logits, torch.tensor(TARGETS, dtype=torch.float64).view(2, 1, 2, 2)


def test_soft_iou_is_averaged_per_image():
    # image 1: intersection 1, union 2 + 2 - 1 = 3; image 2: intersection 0.8, union 2 + 1 - 0.8 = 2.2
    expected = ((1 - 1 / 3) + (1 - 0.8 / 2.2)) / 2  # 43/66; over the whole batch at once it would be 1 - 1.8/5.2
    assert losses.soft_iou(*loss_inputs()).item() == pytest.approx(expected, abs=1e-5)
    target = torch.tensor([1.0, 0.0, 1.0, 1.0]).view(1, 1, 2, 2)
    assert losses.soft_iou((target * 2 - 1) * 50, target).item() == pytest.approx(0.0, abs=1e-5)
    assert losses.soft_iou(-(target * 2 - 1) * 50, target).item() == pytest.approx(1.0, abs=1e-5)


def test_soft_iou_of_an_empty_target_is_the_mean_map_so_an_outsider_is_taught_to_go_dark():
    empty = torch.zeros(1, 1, 2, 2)
    probabilities = torch.tensor([0.9, 0.5, 0.2, 0.2]).view(1, 1, 2, 2)
    logits = torch.logit(probabilities).requires_grad_(True)
    loss = losses.soft_iou(logits, empty)
    assert loss.item() == pytest.approx(0.45, abs=1e-6)
    loss.backward()
    assert (logits.grad > 0).all()  # every bright pixel is pushed down (1 - 0/sum(S) would give no gradient)
    # mixed batches: each image keeps its own term
    batch_logits = torch.cat([torch.logit(probabilities), (torch.ones(1, 1, 2, 2) * 2 - 1) * 50])
    batch_targets = torch.cat([empty, torch.ones(1, 1, 2, 2)])
    assert losses.soft_iou(batch_logits, batch_targets).item() == pytest.approx(0.45 / 2, abs=1e-5)


def test_bce_is_the_mean_binary_cross_entropy_of_the_logits():
    terms = [-(g * math.log(p) + (1 - g) * math.log(1 - p)) for ps, gs in zip(PROBS, TARGETS) for p, g in zip(ps, gs)]
    assert losses.bce(*loss_inputs()).item() == pytest.approx(sum(terms) / 8, abs=1e-6)
    # computed on logits: no clamping of log(0) at -100 as binary_cross_entropy on probabilities does
    assert losses.bce(torch.full((1, 1, 1, 1), 200.0), torch.zeros(1, 1, 1, 1)).item() == pytest.approx(200.0)


def test_l2_is_the_mean_squared_error_of_the_sigmoid():
    # 4 x 0.25 + (0.04 + 0.04 + 0.64 + 0.04), over 8 pixels
    assert losses.l2(*loss_inputs()).item() == pytest.approx(1.76 / 8, abs=1e-6)
    assert set(losses.LOSSES) == {"soft-iou", "bce", "l2"}


def test_losses_are_registered_under_their_names():
    logits, target = loss_inputs()
    bce = (
        sum(-(g * math.log(p) + (1 - g) * math.log(1 - p)) for ps, gs in zip(PROBS, TARGETS) for p, g in zip(ps, gs))
        / 8
    )
    expected = {"soft-iou": 43 / 66, "bce": bce, "l2": 0.22}
    assert {name: losses.deep_supervision(name, [logits], target).item() for name in expected} == pytest.approx(
        expected, abs=1e-5
    )
    assert sod.Method.loss == "soft-iou"  # GICD / ICNet's loss for cosal's own head


@pytest.mark.parametrize("name", ["soft-iou", "bce", "l2"])
def test_deep_supervision_sums_the_loss_of_every_output_upsampled_to_the_target(name):
    loss = losses.LOSSES[name]
    target = torch.zeros(2, 1, 4, 4)
    target[0, :, 1:3, :2] = 1
    target[1, :, 3:, 1:] = 1
    full = torch.linspace(-3, 3, 32).view(2, 1, 4, 4)
    half = torch.zeros(2, 1, 2, 2)  # constant maps upsample to the same constant at any size
    single = torch.full((2, 1, 1, 1), 1.5)
    expected = loss(full, target) + loss(torch.zeros(2, 1, 4, 4), target) + loss(torch.full((2, 1, 4, 4), 1.5), target)
    total = losses.deep_supervision(name, [full, half, single], target)
    assert total.item() == pytest.approx(expected.item(), abs=1e-6)
    assert losses.deep_supervision(name, [full], target).item() == pytest.approx(loss(full, target).item(), abs=1e-7)
    # bf16 outputs (CUDA autocast) are scored in float32
    assert losses.deep_supervision(name, [full.bfloat16()], target).dtype == torch.float32
    # the loss reaches every output
    outputs = [full.clone().requires_grad_(), half.clone().requires_grad_()]
    losses.deep_supervision(name, outputs, target).backward()
    assert all(output.grad is not None and output.grad.abs().sum() > 0 for output in outputs)


# ----------------------------------------------------------------------------------------------
# Splits
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "datasets: [",  # not YAML
        "- a list",
        "schema: 2\nname: x\ndatasets: {d: {}}",
        "schema: 1\ndatasets: {d: {}}",  # no name
        "schema: 1\nname: x\ndatasets: {}",
        "schema: 1\nname: x\ndatasets: {d: {held_out_groups: car}}",  # not a list
        "schema: 1\nname: x\ndatasets: {d: {held_out_groups: [1, 2]}}",
        "schema: 1\nname: x\ndatasets: {d: {held_out_fraction: {car: 1.0}}}",
        "schema: 1\nname: x\ndatasets: {d: {held_out_fraction: {car: 0}}}",
        "schema: 1\nname: x\ndatasets: {d: {held_out_fraction: {car: half}}}",
        "schema: 1\nname: x\ndatasets: {d: {held_out_fraction: [car]}}",
        "schema: 1\nname: x\ndatasets: {d: {held_out: [car]}}",  # unknown key
        "schema: 1\nname: x\ndatasets: {d: [car]}",
    ],
)
def test_a_malformed_split_file_is_a_usage_error_naming_it(tmp_path, text):
    path = tmp_path / "bad-split.yaml"
    path.write_text(text)
    with pytest.raises(UsageError) as error:
        load_split(path)
    assert str(path) in str(error.value)


def test_a_missing_split_file_is_a_usage_error_naming_it(tmp_path):
    with pytest.raises(UsageError, match="cannot read split file .*nope.yaml"):
        load_split(tmp_path / "nope.yaml")


def expected_part(group: str, stem: str, fraction: float) -> str:
    """The documented rule: held out when sha256('<group>/<stem>')[:8] / 2**32 < fraction."""
    value = int(hashlib.sha256(f"{group}/{stem}".encode()).hexdigest()[:8], 16) / 2**32
    return "held-out" if value < fraction else "train"


def test_part_holds_out_named_groups_and_a_hashed_fraction(tmp_path):
    path = tmp_path / "split.yaml"
    text = (
        "schema: 1\nname: s\ndatasets:\n  DSet:\n    held_out_groups: [Car]\n"
        "    held_out_fraction: {People: 0.25}\n  other:\n"
    )
    path.write_text(text)
    split = load_split(path)
    assert split.name == "s" and split.path == path and split.sha256 == hashlib.sha256(text.encode()).hexdigest()
    assert split.part("dset", "car", "x") == split.part("DSET", "CAR", "y") == "held-out"  # case-insensitive
    assert split.part("dset", "dog", "x") == "train" and split.part("other", "car", "x") == "train"
    stems = [f"img{i:03d}" for i in range(200)]
    parts = [split.part("DSet", "People", stem) for stem in stems]
    assert parts == [expected_part("People", stem, 0.25) for stem in stems]
    assert 30 <= parts.count("held-out") <= 70
    with pytest.raises(UsageError, match="says nothing about dataset 'unknown'"):
        split.part("unknown", "car", "x")


def test_check_groups_refuses_groups_the_dataset_lacks(tmp_path):
    split = parse_split({"schema": 1, "name": "s", "datasets": {"d": {"held_out_groups": ["Car", "bus"],
                                                                        "held_out_fraction": {"tram": 0.5}}}},
                        tmp_path / "s.yaml")  # fmt: skip
    split.check_groups("d", ["car", "BUS", "tram", "dog"])  # all present, case aside
    with pytest.raises(UsageError) as error:
        split.check_groups("d", ["car", "tram", "dog"])
    assert "bus" in str(error.value) and str(tmp_path / "s.yaml") in str(error.value)
    with pytest.raises(UsageError, match="tram"):
        split.check_groups("d", ["car", "bus"])
    with pytest.raises(UsageError, match="says nothing about dataset 'e'"):
        split.check_groups("e", ["car"])


def tiny_dataset(root: Path, groups: dict[str, int], start: int = 0) -> None:
    rng = np.random.default_rng(start)
    for group, count in groups.items():
        for i in range(start, start + count):
            save_pair(root, group, f"im{i:02d}", rng.integers(0, 256, (8, 8, 3)), np.full((8, 8), 255))


def test_collect_data_splits_image_by_image_and_is_unmoved_by_other_images(tmp_path):
    root = tmp_path / "toy"
    tiny_dataset(root, {"people": 10, "cars": 5, "dogs": 3})
    split = parse_split({"schema": 1, "name": "s", "datasets": {"toy": {"held_out_groups": ["cars"],
                                                                          "held_out_fraction": {"people": 0.5}}}},
                        tmp_path / "s.yaml")  # fmt: skip
    data = trainer.collect_data([root], split, val_limit=3)
    parts = {(item.group, item.stem): "train" for item in data.train}
    for items in data.held_out.values():
        parts.update({(item.group, item.stem): "held-out" for item in items})
    people = [f"im{i:02d}" for i in range(10)]
    assert {stem for (group, stem), part in parts.items() if group == "people" and part == "train"} == {
        stem for stem in people if expected_part("people", stem, 0.5) == "train"
    }
    assert {item.group for item in data.train} == {"people", "dogs"}
    assert [item.stem for item in data.held_out["toy/cars"]] == ["im00", "im02", "im04"]  # val_limit, evenly spaced
    people_held_out = sum(expected_part("people", stem, 0.5) == "held-out" for stem in people)
    assert data.summary == [
        {"dataset": "toy", "groups": 3, "train": 10 - people_held_out + 3, "held-out": 5 + people_held_out}
    ]
    # More images in every group: the first ones keep their parts.
    tiny_dataset(root, {"people": 10, "cars": 2, "dogs": 2}, start=10)
    again = trainer.collect_data([root], split, val_limit=0)
    train_again = {(item.group, item.stem) for item in again.train}
    assert {key for key, part in parts.items() if part == "train"} <= train_again
    assert all(key not in train_again for key, part in parts.items() if part == "held-out")
    assert len(again.held_out["toy/cars"]) == 7  # val_limit 0: all of them


def test_collect_data_refuses_a_split_leaving_nothing_to_train_on_or_naming_unknown_groups(tmp_path):
    root = tmp_path / "toy"
    tiny_dataset(root, {"cars": 2})
    split = parse_split(
        {"schema": 1, "name": "all", "datasets": {"toy": {"held_out_groups": ["cars"]}}}, tmp_path / "s"
    )
    with pytest.raises(UsageError, match="no training images"):
        trainer.collect_data([root], split, 0)
    typo = parse_split({"schema": 1, "name": "t", "datasets": {"toy": {"held_out_groups": ["carz"]}}}, tmp_path / "t")
    with pytest.raises(UsageError, match="carz"):
        trainer.collect_data([root], typo, 0)


def test_the_shipped_split_parses():
    path = REPO / "training" / "splits" / "shared-v1.yaml"
    split = load_split(path)
    assert split.name == "shared-v1" and split.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert set(split.datasets) == {"davis12", "sysu5", "cats", "persons"}
    assert split.part("davis12", "dog", "00000") == split.part("sysu5", "boat", "x") == "held-out"
    assert split.part("davis12", "bear", "00000") == "train"
    assert split.datasets["persons"].held_out_fraction == {"ccp": 0.2, "humanseg": 0.2}


def test_shared_v2_is_shared_v1_plus_all_of_duts_class_for_training():
    old = load_split(REPO / "training" / "splits" / "shared-v1.yaml")
    new = load_split(REPO / "training" / "splits" / "shared-v2.yaml")
    assert new.name == "shared-v2" and set(new.datasets) == set(old.datasets) | {"duts_class"}
    for name, rule in old.datasets.items():  # the held-out part stays comparable
        assert new.datasets[name] == rule, name
    assert new.part("duts_class", "0001-goldfish", "ILSVRC2012_test_00000003") == "train"


# ----------------------------------------------------------------------------------------------
# Training (real VGG-16 backbone)
# ----------------------------------------------------------------------------------------------


def square_image(rng: np.random.Generator, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A bright square on a textured background."""
    rgb = rng.integers(30, 130, (size, size, 3)).astype(np.uint8)
    side = int(rng.integers(size // 3, size // 2))
    top, left = rng.integers(2, size - side - 2, 2)
    mask = np.zeros((size, size), np.uint8)
    mask[top : top + side, left : left + side] = 255
    rgb[mask > 0] = rng.integers(215, 256, 3)
    return rgb, mask


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> dict[str, Path]:
    """Dataset 'toy': groups a, b, c of 4 images of 64 x 64 (JPEG); the split holds c out."""
    base = tmp_path_factory.mktemp("toy")
    rng = np.random.default_rng(11)
    for group in ("a", "b", "c"):
        for i in range(4):
            save_pair(base / "toy", group, f"{group}{i}", *square_image(rng), suffix=".jpg")
    split = base / "split.yaml"
    split.write_text("schema: 1\nname: toy-split\ndatasets:\n  toy:\n    held_out_groups: [c]\n")
    return {"data": base / "toy", "split": split}


class Recorder:
    """A TrainReporter keeping everything; raises KeyboardInterrupt at step ``interrupt_at`` (1-based)."""

    def __init__(self, interrupt_at: int | None = None, output: Path | None = None):
        self.interrupt_at, self.output = interrupt_at, output
        self.steps = 0
        self.epoch_losses: list[list[float]] = []
        self.validations: list[tuple[int, dict, bool]] = []
        self.head_files: dict[int, dict[str, torch.Tensor]] = {}
        self.notices: list[str] = []

    def notice(self, message: str) -> None:
        self.notices.append(message)

    def epoch_start(self, epoch: int, epochs: int, batches: int, done: int) -> None:
        self.epoch_losses.append([])

    def step(self, images: int, loss: float) -> None:
        self.steps += 1
        self.epoch_losses[-1].append(loss)
        if self.steps == self.interrupt_at:
            raise KeyboardInterrupt

    def validation_start(self, images: int) -> None:
        pass

    def validated(self, epoch: int, scores: dict[str, float], kept: bool) -> None:
        self.validations.append((epoch, scores, kept))
        if self.output is not None:
            self.head_files[epoch] = load_tensors(self.output).tensors


def settings_for(toy: dict[str, Path], output: Path, **changes) -> trainer.TrainSettings:
    sampler = SamplerSettings(size=64, min_group=2, max_group=3, composite_fraction=0.5, seed=0)
    options = {"method": "sod", "data": [toy["data"]], "split": load_split(toy["split"]), "output": output, "epochs": 2,
               "lr": 1e-3, "sampler": sampler, "val_limit": 2, "checkpoint_every": 100, "device": "cpu",
               "offline": True}
    return trainer.TrainSettings(**{**options, **changes})


CLI_OPTIONS = ["--epochs", "2", "--lr", "0.001", "--size", "64", "--min-group", "2", "--max-group", "3",
               "--composite-fraction", "0.5", "--seed", "0", "--val-limit", "2", "--checkpoint-every", "100",
               "--device", "cpu", "--threads", "1", "--offline"]  # fmt: skip  (the same run as settings_for)


def cli_train(toy: dict[str, Path], output: Path, *options: str):
    args = [
        "train", "--method", "sod", "--data", str(toy["data"]), "--split", str(toy["split"]), "--output", str(output)
    ]
    return CliRunner().invoke(app, [*args, *options])


@pytest.fixture
def small_validation(monkeypatch):
    """Validate at 64 x 64 instead of sod's 224 (the same code path, a fraction of the time)."""
    monkeypatch.setattr(sod.Method, "input_size", 64)


def head_tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_tensors(path).tensors


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    different = [name for name in a if not torch.equal(a[name], b[name])]
    assert not different, different


@pytest.fixture(scope="module")
def uninterrupted(toy, real_weights, tmp_path_factory) -> dict:
    """The reference run of ``settings_for(toy, ...)``, uninterrupted (2 epochs x 4 batches)."""
    real_weights("vgg16-imagenet")
    output = tmp_path_factory.mktemp("uninterrupted") / "head.safetensors"
    recorder = Recorder()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sod.Method, "input_size", 64)
        metadata = trainer.train(settings_for(toy, output), recorder)
    checkpoint = load_tensors(settings_for(toy, output).checkpoint)
    return {"output": output, "metadata": metadata, "recorder": recorder, "checkpoint": checkpoint}


def test_the_learning_rate_decays_along_a_cosine_to_one_percent():
    optimiser = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=0.5)
    lrs = []
    for step in (0, 25, 50, 75, 100, 130):
        trainer._set_lr(optimiser, 2e-3, step, 100)
        lrs.append(optimiser.param_groups[0]["lr"])
    expected = [2e-3 * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * s / 100))) for s in (0, 25, 50, 75, 100, 100)]
    assert lrs == pytest.approx(expected, rel=1e-9)
    assert lrs[0] == pytest.approx(2e-3) and lrs[2] == pytest.approx(1.01e-3) and lrs[-1] == pytest.approx(2e-5)


@pytest.mark.weights
def test_cli_trains_a_sod_head_that_sod_then_loads(toy, real_weights, tmp_path):
    backbone = real_weights("vgg16-imagenet")
    output = tmp_path / "sod-head.safetensors"
    options = ["--epochs", "3", "--size", "64", "--min-group", "2", "--max-group", "3", "--val-limit", "2",
               "--device", "cpu", "--threads", "1", "--offline", "--json"]  # fmt: skip
    result = cli_train(toy, output, *options)
    assert result.exit_code == 0, result.output
    head = load_tensors(output)
    metadata = head.metadata
    assert json.loads(result.stdout) == metadata

    manifest = yaml.safe_load(SHIPPED_MANIFEST.read_text())
    assert metadata["format"] == HEAD_FORMAT == "cosal-head/1"
    assert metadata["method"] == "sod" and metadata["config"] == {"channels": 64}
    assert metadata["backbone"] == {"component": "vgg16-imagenet",
                                    "sha256": manifest["components"]["vgg16-imagenet"]["sha256"]}  # fmt: skip
    assert metadata["cosal_version"] == cosal_cli.__version__
    training = metadata["training"]
    assert training["split"] == {"name": "toy-split", "file": "split.yaml",
                                 "sha256": hashlib.sha256(toy["split"].read_bytes()).hexdigest()}  # fmt: skip
    assert training["data"] == [{"dataset": "toy", "groups": 3, "train": 8, "held-out": 4}]
    kept = metadata["validation"]["kept"]
    # 2 training groups of 4 images in sub-groups of 2..3: always 2 + 2, 4 batches of 2 images per epoch
    assert training["epochs"] == kept["epoch"] and training["epochs_planned"] == 3
    assert training["steps"] == 4 * kept["epoch"] and training["images_seen"] == 8 * kept["epoch"]
    assert training["lr"] == 1e-3 and training["loss"] == "soft-iou" and training["sampler"]["size"] == 64
    assert metadata["validation"]["images_per_group"] == 2

    history = metadata["validation"]["history"]
    assert [entry["epoch"] for entry in history] == [1, 2, 3] and kept in history
    assert training["epochs_run"] == 3 and training["seconds_total"] >= training["seconds"]
    for entry in history:
        assert set(entry) == {"epoch", "loss", "sm", "max_fm", "mean_em", "mae"}
        assert all(0 <= entry[name] <= 1 for name in ("sm", "max_fm", "mean_em", "mae"))
    # The head's history is the checkpoint's: the loss went down and the kept head is the best by S-measure.
    full_history = load_tensors(output.with_name("sod-head.checkpoint.safetensors")).metadata["state"]["history"]
    assert full_history == history
    assert full_history[-1]["loss"] < 0.85 * full_history[0]["loss"], [entry["loss"] for entry in full_history]
    best = max(entry["sm"] for entry in full_history)
    assert kept == next(entry for entry in full_history if entry["sm"] == best) and best > 0.8

    # The head loads into sod, which finds the squares of the held-out group.
    method = sod.Method({"backbone": backbone, "head": output}, torch.device("cpu"))
    pictures = sorted((toy["data"] / "Image" / "c").glob("*.jpg"))
    images = torch.stack([torch.from_numpy(np.array(Image.open(p))).permute(2, 0, 1).float() / 255 for p in pictures])
    with torch.inference_mode():
        maps = method.predict_group(images)
    assert maps.shape == (4, 64, 64) and maps.min() >= 0 and maps.max() <= 1
    masks = torch.stack([torch.from_numpy(np.array(Image.open(p))) > 127
                         for p in sorted((toy["data"] / "GroundTruth" / "c").glob("*.png"))])  # fmt: skip
    assert maps[masks].mean() > maps[~masks].mean() + 0.5

    # A head for another method, or a file that is not a head, is refused.
    other = tmp_path / "other.safetensors"
    save_head(other, head.tensors, {**{k: v for k, v in metadata.items() if k != "format"}, "method": "gicd"})
    with pytest.raises(ValueError, match="gicd"):
        sod.Method({"backbone": backbone, "head": other}, torch.device("cpu"))
    save_tensors(other, head.tensors, {**metadata, "format": "something/1"})
    with pytest.raises(ValueError, match="not a cosal head"):
        sod.Method({"backbone": backbone, "head": other}, torch.device("cpu"))


@pytest.mark.weights
def test_a_sod_head_trains_under_bf16_autocast_on_the_cpu(toy, real_weights, tmp_path):
    real_weights("vgg16-imagenet")
    output = tmp_path / "sod-head.safetensors"
    result = cli_train(toy, output, "--epochs", "3", "--size", "64", "--min-group", "2", "--max-group", "3",
                       "--val-limit", "2", "--device", "cpu", "--threads", "1", "--offline", "--precision", "bf16")
    assert result.exit_code == 0, result.output
    history = load_tensors(output.with_name("sod-head.checkpoint.safetensors")).metadata["state"]["history"]
    # as in float32 (the test above): the loss falls and the squares are found; the weights stay float32
    assert history[-1]["loss"] < 0.85 * history[0]["loss"] and max(entry["sm"] for entry in history) > 0.8, history
    assert all(tensor.dtype == torch.float32 for tensor in load_tensors(output).tensors.values())


@pytest.mark.weights
def test_the_head_kept_is_the_best_by_s_measure(toy, real_weights, tmp_path, monkeypatch):
    real_weights("vgg16-imagenet")
    scripted = iter([0.5, 0.7, 0.7, 0.6])  # epoch 3 ties epoch 2 (not better), epoch 4 is worse

    def fake_validation(self, network):
        return {"sm": next(scripted), "max_fm": 0.5, "mean_em": 0.5, "mae": 0.1}

    monkeypatch.setattr(trainer._Validator, "run", fake_validation)
    output = tmp_path / "head.safetensors"
    settings = settings_for(toy, output, epochs=4, sampler=SamplerSettings(size=32, min_group=2, max_group=3))
    recorder = Recorder(output=output)
    metadata = trainer.train(settings, recorder)
    assert [(epoch, kept) for epoch, _, kept in recorder.validations] == [(1, True), (2, True), (3, False), (4, False)]
    assert metadata == load_tensors(output).metadata
    assert metadata["validation"]["kept"]["epoch"] == 2 and metadata["validation"]["kept"]["sm"] == 0.7
    assert metadata["training"]["epochs"] == 2 and metadata["training"]["steps"] == 8
    assert [entry["sm"] for entry in metadata["validation"]["history"]] == [0.5, 0.7, 0.7, 0.6]  # every epoch run
    assert_same_tensors(head_tensors(output), recorder.head_files[2])  # not overwritten by epochs 3 and 4
    assert not torch.equal(recorder.head_files[1]["predict.0.weight"], recorder.head_files[2]["predict.0.weight"])
    checkpoint_tensors = load_tensors(settings.checkpoint).tensors
    last = {name[5:]: value for name, value in checkpoint_tensors.items() if name.startswith("head.")}
    assert not torch.equal(last["predict.0.weight"], recorder.head_files[2]["predict.0.weight"])
    # the loss recorded per epoch is the mean of its batch losses
    history = load_tensors(settings.checkpoint).metadata["state"]["history"]
    assert [entry["loss"] for entry in history] == [round(sum(ls) / len(ls), 5) for ls in recorder.epoch_losses]


@pytest.mark.weights
def test_the_epoch_loss_is_the_mean_even_when_the_number_of_batches_varies(toy, real_weights, tmp_path, monkeypatch):
    real_weights("vgg16-imagenet")
    monkeypatch.setattr(trainer._Validator, "run", lambda self, network: {"sm": 0.5, "max_fm": 0.5, "mean_em": 0.5,
                                                                          "mae": 0.1})  # fmt: skip
    output = tmp_path / "head.safetensors"
    settings = settings_for(toy, output, epochs=3, sampler=SamplerSettings(size=32, min_group=2, max_group=4))
    recorder = Recorder()
    trainer.train(settings, recorder)
    counts = [len(losses_) for losses_ in recorder.epoch_losses]
    history = load_tensors(settings.checkpoint).metadata["state"]["history"]
    expected = [round(sum(ls) / len(ls), 5) for ls in recorder.epoch_losses]
    assert [entry["loss"] for entry in history] == pytest.approx(expected, abs=2e-5), counts


@pytest.mark.weights
def test_an_interrupted_run_resumes_bit_identically(toy, uninterrupted, tmp_path, small_validation):
    output = tmp_path / "head.safetensors"
    settings = settings_for(toy, output)
    # Interrupt at step 6 of 8 (epoch 2, batch 2); the last periodic save was the epoch-1 end (step 4).
    recorder = Recorder(interrupt_at=6)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(settings, recorder)
    saved = load_tensors(settings.checkpoint).metadata
    assert saved["format"] == checkpoints.CHECKPOINT_FORMAT
    assert (saved["state"]["epoch"], saved["state"]["batch"], saved["state"]["step"]) == (1, 2, 6)
    assert saved["state"]["images"] == 12 and len(saved["state"]["history"]) == 1
    assert any("--resume" in notice for notice in recorder.notices)

    resumed = Recorder()
    metadata = trainer.train(settings_for(toy, output, resume=True), resumed)
    assert resumed.steps == 2 and any("resuming" in notice for notice in resumed.notices)
    reference = uninterrupted["metadata"]
    assert metadata["validation"] == reference["validation"]
    wall_clock = {"seconds", "seconds_total"}  # timings differ between any two runs
    assert {k: v for k, v in metadata["training"].items() if k not in wall_clock} == {
        k: v for k, v in reference["training"].items() if k not in wall_clock
    }
    assert_same_tensors(head_tensors(output), head_tensors(uninterrupted["output"]))
    final = load_tensors(settings.checkpoint)  # head and optimiser state after the last step
    assert_same_tensors(final.tensors, uninterrupted["checkpoint"].tensors)
    assert final.metadata["state"]["history"] == uninterrupted["checkpoint"].metadata["state"]["history"]
    assert resumed.epoch_losses[-1] == uninterrupted["recorder"].epoch_losses[-1][2:]


@pytest.mark.weights
def test_cli_interrupt_refusals_and_resume(toy, uninterrupted, tmp_path, monkeypatch, small_validation):
    output = tmp_path / "head.safetensors"
    steps = []

    def interrupting_step(self, images, loss):
        steps.append(loss)
        if len(steps) == 3:  # in epoch 1: only the interrupt's checkpoint can exist
            raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(train_command._TrainConsoleReporter, "step", interrupting_step)
        result = cli_train(toy, output, *CLI_OPTIONS)
    assert result.exit_code == 130, result.output
    assert "interrupted" in result.stderr
    checkpoint = output.with_name("head.checkpoint.safetensors")
    assert load_tensors(checkpoint).metadata["state"]["step"] == 3 and not output.exists()

    result = cli_train(toy, output, *CLI_OPTIONS)  # no --resume: refused, nothing overwritten
    message = " ".join(result.stderr.split())
    assert result.exit_code == 2 and "exists from an earlier run" in message and "--resume" in message, result.output
    for option, value, name in [("--lr", "0.002", "lr"), ("--epochs", "3", "epochs"), ("--seed", "1", "sampler")]:
        changed = list(CLI_OPTIONS)
        if option in changed:
            changed[changed.index(option) + 1] = value
        result = cli_train(toy, output, *changed, "--resume")
        message = " ".join(result.stderr.split())
        assert result.exit_code == 2, result.output
        assert re.search(rf"different {name}\b", message) and str(checkpoint) in message, message
    assert load_tensors(checkpoint).metadata["state"]["step"] == 3

    result = cli_train(toy, output, *CLI_OPTIONS, "--resume")
    assert result.exit_code == 0, result.output
    assert_same_tensors(head_tensors(output), head_tensors(uninterrupted["output"]))
    assert load_tensors(output).metadata["validation"] == uninterrupted["metadata"]["validation"]

    result = cli_train(toy, output.with_name("fresh.safetensors"), *CLI_OPTIONS, "--resume")
    assert result.exit_code == 2 and "no checkpoint" in result.stderr, result.output


@pytest.mark.weights
def test_init_fine_tunes_a_given_head_or_component_and_records_it(toy, uninterrupted, tmp_path, small_validation):
    # With --lr 0 the kept head is exactly the one it started from, which the seeded start is not.
    start = uninterrupted["output"]
    options = [*CLI_OPTIONS, "--lr", "0", "--epochs", "1"]
    result = cli_train(toy, tmp_path / "tuned.safetensors", *options, "--init", str(start))
    assert result.exit_code == 0, result.output
    assert_same_tensors(head_tensors(tmp_path / "tuned.safetensors"), head_tensors(start))
    init = load_tensors(tmp_path / "tuned.safetensors").metadata["training"]["init"]
    assert init == {"from": str(start), "sha256": hashlib.sha256(start.read_bytes()).hexdigest(),
                    "kept": uninterrupted["metadata"]["validation"]["kept"]}  # fmt: skip
    result = cli_train(toy, tmp_path / "seeded.safetensors", *options)
    assert result.exit_code == 0, result.output
    seeded = head_tensors(tmp_path / "seeded.safetensors")
    assert any(not torch.equal(seeded[name], value) for name, value in head_tensors(start).items())
    assert "init" not in load_tensors(tmp_path / "seeded.safetensors").metadata["training"]

    # A component id resolves through the hub (the bundled sod-head, verified).
    result = cli_train(toy, tmp_path / "bundled.safetensors", *options, "--init", "sod-head")
    assert result.exit_code == 0, result.output
    assert_same_tensors(head_tensors(tmp_path / "bundled.safetensors"), head_tensors(SHIPPED_SOD_HEAD))


@pytest.mark.weights
def test_init_refuses_a_missing_file_or_another_methods_or_configs_head(toy, real_weights, tmp_path):
    real_weights("vgg16-imagenet")
    head = load_tensors(SHIPPED_SOD_HEAD)
    metadata = {key: value for key, value in head.metadata.items() if key != "format"}
    other_method, other_config = tmp_path / "gicd.safetensors", tmp_path / "narrow.safetensors"
    save_head(other_method, head.tensors, {**metadata, "method": "gicd"})
    save_head(other_config, head.tensors, {**metadata, "config": {"channels": 32}})
    for init, expected in [(tmp_path / "missing.safetensors", "no such head file"), (other_method, "'gicd'"),
                           (other_config, "'channels': 32"), ("no-such-component", "unknown weight component")]:
        result = cli_train(toy, tmp_path / "head.safetensors", *CLI_OPTIONS, "--init", str(init))
        message = " ".join(result.stderr.split())
        assert result.exit_code == 2 and expected in message and str(init) in message, result.output
    assert not (tmp_path / "head.safetensors").exists()


def test_cli_refuses_bad_train_options_before_loading_anything(toy, tmp_path):
    base = ["--size", "64", "--device", "cpu", "--offline"]
    result = cli_train(toy, tmp_path / "head.pt", *base)
    assert result.exit_code == 2 and ".safetensors" in result.stderr, result.output
    result = cli_train(toy, tmp_path / "head.safetensors", *base, "--min-group", "4", "--max-group", "3")
    assert result.exit_code == 2 and "sub-group" in result.stderr, result.output
    result = cli_train(toy, tmp_path / "head.safetensors", *base, "--precision", "half")
    assert result.exit_code == 2 and "--precision must be auto, fp32 or bf16" in result.stderr, result.output
    result = CliRunner().invoke(app, ["train", "--method", "gmr", "--data", str(toy["data"]),
                                      "--split", str(toy["split"]),
                                      "--output", str(tmp_path / "head.safetensors"), *base])  # fmt: skip
    assert result.exit_code == 2 and "nothing to train" in result.stderr, result.output
    bad_split = tmp_path / "split.yaml"
    bad_split.write_text("schema: 1\nname: typo\ndatasets:\n  toy:\n    held_out_groups: [zebra]\n")
    result = CliRunner().invoke(app, ["train", "--method", "sod", "--data", str(toy["data"]), "--split", str(bad_split),
                                      "--output", str(tmp_path / "head.safetensors"), *base])  # fmt: skip
    message = " ".join(result.stderr.split())
    assert result.exit_code == 2 and "zebra" in message and str(bad_split) in message, result.output
    assert not (tmp_path / "head.safetensors").exists()


@pytest.mark.weights
def test_cli_trains_a_gicd_head_that_gicd_then_loads(toy, real_weights, tmp_path, monkeypatch):
    """`cosal train --method gicd`: the same loop drives the co-saliency network (GIM inside forward)."""
    from cosal_cli.methods import gicd

    backbone = real_weights("efficientnet-lite0-imagenet")
    monkeypatch.setattr(gicd.Method, "input_size", 64)  # validate at the training size
    output = tmp_path / "gicd-head.safetensors"
    options = ["--epochs", "3", "--lr", "0.003", "--size", "64", "--min-group", "2", "--max-group", "3",
               "--composite-fraction", "0.5", "--val-limit", "2", "--device", "cpu", "--threads", "1", "--offline",
               "--json"]  # fmt: skip
    args = [
        "train", "--method", "gicd", "--data", str(toy["data"]), "--split", str(toy["split"]), "--output", str(output)
    ]
    result = CliRunner().invoke(app, [*args, *options])
    assert result.exit_code == 0, result.output
    metadata = load_tensors(output).metadata
    assert metadata["method"] == "gicd" and metadata["config"] == {"channels": 32}
    assert metadata["backbone"]["component"] == "efficientnet-lite0-imagenet"
    assert metadata["training"]["sampler"]["composite_fraction"] == 0.5
    history = load_tensors(output.with_name("gicd-head.checkpoint.safetensors")).metadata["state"]["history"]
    assert history[-1]["loss"] < 0.9 * history[0]["loss"], [entry["loss"] for entry in history]

    method = gicd.Method({"backbone": backbone, "head": output}, torch.device("cpu"))
    pictures = sorted((toy["data"] / "Image" / "c").glob("*.jpg"))
    images = torch.stack([torch.from_numpy(np.array(Image.open(p))).permute(2, 0, 1).float() / 255 for p in pictures])
    maps = method.predict_group(images)
    assert maps.shape == (4, 64, 64) and maps.min() >= 0 and maps.max() <= 1
    masks = torch.stack([torch.from_numpy(np.array(Image.open(p))) > 127
                         for p in sorted((toy["data"] / "GroundTruth" / "c").glob("*.png"))])  # fmt: skip
    assert maps[masks].mean() > maps[~masks].mean() + 0.2, (maps[masks].mean(), maps[~masks].mean())


def _head(tmp_path: Path, name: str, value: float, **metadata) -> Path:
    path = tmp_path / name
    tensors = {"conv.weight": torch.full((2, 3), value), "bn.num_batches_tracked": torch.tensor(int(value * 10))}
    save_head(path, tensors, {"method": "sod", "config": {"channels": 64}, "backbone": {"sha256": "b"},
                              "training": {"lr": value}, **metadata})  # fmt: skip
    return path


def test_interpolate_heads_averages_the_weights_and_records_both_parents(tmp_path):
    start, tuned = _head(tmp_path, "start.safetensors", 1.0), _head(tmp_path, "tuned.safetensors", 3.0)
    output = tmp_path / "mixed.safetensors"
    script = REPO / "training" / "interpolate_heads.py"
    run = subprocess.run([sys.executable, str(script), str(start), str(tuned), "--alpha", "0.25", "-o", str(output)],
                         capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
    assert run.returncode == 0, run.stderr
    head = load_tensors(output)
    assert torch.equal(head.tensors["conv.weight"], torch.full((2, 3), 1.5))  # 0.75 x 1 + 0.25 x 3
    assert head.tensors["bn.num_batches_tracked"].item() == 30  # integers are the tuned head's
    assert head.metadata["format"] == HEAD_FORMAT and head.metadata["training"] == {"lr": 3.0}
    assert head.metadata["interpolation"] == {
        "alpha": 0.25,
        "start": {"file": "start.safetensors", "sha256": hashlib.sha256(start.read_bytes()).hexdigest()},
        "tuned": {"file": "tuned.safetensors", "sha256": hashlib.sha256(tuned.read_bytes()).hexdigest()},
    }

    other = _head(tmp_path, "other.safetensors", 3.0, config={"channels": 32})
    for args, expected in [([str(start), str(other), "--alpha", "0.5"], "differ in config"),
                           ([str(start), str(tuned), "--alpha", "1.5"], "alpha must be in [0, 1]")]:  # fmt: skip
        run = subprocess.run([sys.executable, str(script), *args, "-o", str(tmp_path / "bad.safetensors")],
                             capture_output=True, text=True)  # fmt: skip
        assert run.returncode == 2 and expected in run.stderr, run.stderr
    assert not (tmp_path / "bad.safetensors").exists()


def test_subnormal_weights_are_zeroed_when_a_head_loads_and_after_every_step(tmp_path):
    """Weight decay leaves dead channels' weights subnormal, which slows CPU convolutions about tenfold."""
    tiny = torch.finfo(torch.float32).tiny
    weights = torch.tensor([1e-39, -1e-40, tiny, 0.5, -2e-39])
    path = tmp_path / "head.safetensors"
    save_head(path, {"w": weights, "steps": torch.tensor([3])}, {"method": "sod", "config": {}})
    loaded = load_head(path, "sod").tensors
    assert torch.equal(loaded["w"], torch.tensor([0.0, 0.0, tiny, 0.5, 0.0]))  # the smallest normal stays
    assert loaded["steps"].item() == 3
    layer = torch.nn.Linear(4, 1)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1e-39, 1.0, 2.0, 3.0]]))
    optimiser = torch.optim.Adam(layer.parameters(), lr=0.0)  # the step itself leaves the subnormal as it is
    trainer._step(optimiser, layer(torch.ones(2, 4)).sum())
    assert layer.weight[0, 0].item() == 0.0 and layer.weight[0, 1:].abs().min() > 0.5
