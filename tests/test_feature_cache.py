"""Training from cached encoder outputs (`cosal train --cache-views`), with outsiders and collaborative
batches; the image store's shrinking of large training images."""

from __future__ import annotations

import json
from collections import namedtuple
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from cosal_cli.cli import app
from cosal_cli.errors import UsageError
from cosal_cli.splits import load_split
from cosal_cli.training import cache, trainer
from cosal_cli.training.sampler import SamplerSettings, TrainImage

from .conftest import EXAMPLES
from .test_train import Recorder, square_image


def write_toy(base: Path, groups: str = "abc", per_group: int = 4) -> dict[str, Path]:
    rng = np.random.default_rng(5)
    for group in groups:
        for folder in ("Image", "GroundTruth"):
            (base / "toy" / folder / group).mkdir(parents=True, exist_ok=True)
        for index in range(per_group):
            rgb, mask = square_image(rng)
            Image.fromarray(rgb).save(base / "toy" / "Image" / group / f"{group}{index}.jpg")
            Image.fromarray(mask).save(base / "toy" / "GroundTruth" / group / f"{group}{index}.png")
    split = base / "split.yaml"
    split.write_text(f"schema: 1\nname: toy-split\ndatasets:\n  toy:\n    held_out_groups: [{groups[-1]}]\n")
    return {"data": base / "toy", "split": split}


def toy_group(data: Path, group: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A toy group's images (k, 3, 64, 64) in [0, 1] and their masks (k, 64, 64) as booleans."""
    pictures = sorted((data / "Image" / group).glob("*.jpg"))
    images = torch.stack([torch.from_numpy(np.array(Image.open(p))).permute(2, 0, 1).float() / 255 for p in pictures])
    masks = torch.stack([torch.from_numpy(np.array(Image.open(p))) > 127
                         for p in sorted((data / "GroundTruth" / group).glob("*.png"))])  # fmt: skip
    return images, masks


# ----------------------------------------------------------------------------------------------
# Cached batches, with an encoder that is a plain function (no weights needed)
# ----------------------------------------------------------------------------------------------


class MeanEncoder(torch.nn.Module):
    """A stand-in network: the 'encoder' is the grey level of each pixel, the head one scale."""

    def __init__(self) -> None:
        super().__init__()
        self.head = torch.nn.Conv2d(1, 1, 1)
        self.seen: list[tuple[dict, torch.Tensor | None]] = []

    def encode_for_cache(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"grey": images.mean(dim=1, keepdim=True)}

    def forward_from_cache(self, cached, size, consensus=None):
        self.seen.append((cached, consensus))
        return [self.head(cached["grey"].float())]

    def consensus_from_cache(self, cached):
        return cached["grey"].float().mean().reshape(1, 1)


def toy_images(toy: dict[str, Path]) -> list[TrainImage]:
    items = []
    for image in sorted((toy["data"] / "Image").glob("*/*.jpg")):
        mask = toy["data"] / "GroundTruth" / image.parent.name / f"{image.stem}.png"
        items.append(TrainImage("toy", image.parent.name, image.stem, image, mask))
    return items


def build(tmp_path: Path, images, settings: SamplerSettings, views: int = 2, notices: list | None = None):
    identity = cache.fingerprint(images, views, settings, "toy", "0" * 64, {})
    notes = notices if notices is not None else []
    return cache.open_or_build(tmp_path / "cache", MeanEncoder(), images, views, settings, identity, notes.append)


def test_the_cache_holds_every_view_of_every_image_with_its_target(tmp_path):
    images = toy_images(write_toy(tmp_path))
    settings = SamplerSettings(size=32, seed=3)
    features = build(tmp_path, images, settings)
    assert features.arrays["grey"].shape == (len(images) * 2, 1, 32, 32)
    assert features.arrays["grey"].dtype == np.float16 and features.arrays["targets"].dtype == np.uint8
    # the targets are the masks of the squares: bright pixels of the view are the object
    for row in range(len(images) * 2):
        grey = features.arrays["grey"][row, 0].astype(np.float32)
        target = features.arrays["targets"][row] > 127
        assert grey[target].mean() > grey[~target].mean() + 0.3
    # the two views of an image are different crops
    assert not np.array_equal(features.arrays["grey"][0], features.arrays["grey"][1])


def test_a_matching_cache_is_reused_and_any_change_rebuilds_it(tmp_path):
    images = toy_images(write_toy(tmp_path))
    settings = SamplerSettings(size=32, seed=3)
    notices: list[str] = []
    first = np.array(build(tmp_path, images, settings, notices=notices).arrays["grey"])
    assert any("building the feature cache" in note for note in notices)
    notices.clear()
    batch_only = SamplerSettings(size=32, seed=3, outsider_fraction=0.5, max_group=4)
    again = build(tmp_path, images, batch_only, notices=notices)
    assert any("using the feature cache" in note for note in notices)  # batch-only settings keep the views
    assert np.array_equal(first, np.array(again.arrays["grey"]))
    for changed in ({"settings": SamplerSettings(size=32, seed=4)}, {"views": 3}, {"images": images[:-1]}):
        notices.clear()
        build(tmp_path, changed.get("images", images), changed.get("settings", settings), changed.get("views", 2),
              notices=notices)  # fmt: skip
        assert any("building the feature cache" in note for note in notices), changed


def test_a_half_written_cache_is_rebuilt(tmp_path):
    images = toy_images(write_toy(tmp_path))
    settings = SamplerSettings(size=32, seed=3)
    build(tmp_path, images, settings)
    (tmp_path / "cache" / "cache.json").unlink()  # as if the build had been killed before its last write
    notices: list[str] = []
    build(tmp_path, images, settings, notices=notices)
    assert any("building the feature cache" in note for note in notices)
    assert json.loads((tmp_path / "cache" / "cache.json").read_text())["arrays"] == ["grey", "targets"]


def test_a_cache_larger_than_the_free_disk_is_refused_before_it_is_written(tmp_path, monkeypatch):
    images = toy_images(write_toy(tmp_path))
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(cache.shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 1000, 1000))
    with pytest.raises(UsageError, match=r"needs .* GiB .* free; use fewer views"):
        build(tmp_path, images, SamplerSettings(size=32))
    assert not (tmp_path / "cache" / "cache.json").exists()


def cached_batches(tmp_path, **sampler):
    images = toy_images(write_toy(tmp_path))
    settings = SamplerSettings(size=32, seed=3, **sampler)
    features = build(tmp_path, images, settings)
    return cache.CachedBatches(features, settings, torch.device("cpu"), torch.autocast("cpu", enabled=False)), images


def test_cached_outsiders_are_views_of_another_group_with_zero_targets_and_never_first(tmp_path):
    batches, images = cached_batches(tmp_path, outsider_fraction=0.5)
    network = MeanEncoder()
    group_a = [item for item in images if item.group == "a"]
    zero_seen = 0
    for index in range(30):
        captured = {}
        original = batches.cache.read

        def read(rows, device, captured=captured, original=original):
            captured["rows"] = list(rows)
            return original(rows, device)

        batches.cache.read = read
        batches.loss(network, group_a, 0, index, "soft-iou")
        rows = captured["rows"]
        groups = [batches.cache.images[row // 2].group for row in rows]
        assert groups[0] == "a"
        zero_seen += sum(group != "a" for group in groups)
    assert 10 < zero_seen < 80  # about half of 3 x 30 non-first places


def test_an_outsider_target_is_all_zero_and_an_in_group_target_is_not(tmp_path):
    batches, images = cached_batches(tmp_path, outsider_fraction=1.0)
    captured = {}

    def loss_of(name, outputs, targets):
        captured["targets"] = targets
        return outputs[0].sum() * 0

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cache, "deep_supervision", loss_of)
        batches.loss(MeanEncoder(), [item for item in images if item.group == "b"], 0, 0, "soft-iou")
    targets = captured["targets"]
    assert targets[0].max() > 0.5 and all(float(target.max()) == 0.0 for target in targets[1:])


def test_collaborative_batches_run_again_with_another_groups_consensus_and_zero_targets(tmp_path):
    batches, images = cached_batches(tmp_path, collaborative_fraction=1.0)
    network = MeanEncoder()
    batches.loss(network, [item for item in images if item.group == "a"], 0, 0, "soft-iou")
    (own, own_consensus), (same, foreign) = network.seen
    assert own_consensus is None and same is own and foreign is not None
    never, never_images = cached_batches(tmp_path / "never", collaborative_fraction=0.0)
    network = MeanEncoder()
    never.loss(network, [item for item in never_images if item.group == "a"], 0, 0, "soft-iou")
    assert len(network.seen) == 1


def test_a_single_group_has_no_other_group_to_collaborate_with(tmp_path):
    images = toy_images(write_toy(tmp_path, groups="a"))
    settings = SamplerSettings(size=32, seed=3, collaborative_fraction=1.0, outsider_fraction=1.0)
    batches = cache.CachedBatches(build(tmp_path, images, settings), settings, torch.device("cpu"), nullcontext())
    network = MeanEncoder()
    batches.loss(network, images[:3], 0, 0, "soft-iou")
    assert len(network.seen) == 1  # its own images must never be taught as absent


def test_collaborative_batches_and_caching_are_refused_where_they_cannot_work(tmp_path):
    toy = write_toy(tmp_path)
    output = str(tmp_path / "h.safetensors")
    base = ["train", "--data", str(toy["data"]), "--split", str(toy["split"]), "--output", output]
    result = CliRunner().invoke(app, [*base, "-m", "gicd", "--collaborative-fraction", "0.5"])
    assert result.exit_code == 2 and "--cache-views" in result.output
    result = CliRunner().invoke(app, [*base, "-m", "sod", "--cache-views", "2"])
    assert result.exit_code == 2 and "cannot train from cached" in result.output


# ----------------------------------------------------------------------------------------------
# GICD from the cache (real EfficientNet-Lite0)
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lite(real_weights):
    from cosal_cli.models.efficientnet_lite import EfficientNetLite0
    from cosal_cli.models.gicd_lite import GicdLite

    torch.manual_seed(0)
    return GicdLite(EfficientNetLite0.from_file(real_weights("efficientnet-lite0-imagenet")))


def example_cats(size: int) -> torch.Tensor:
    files = sorted((EXAMPLES / "Image" / "cat").glob("*.jpg"))
    pixels = np.stack([np.asarray(Image.open(path).convert("RGB").resize((size, size))) for path in files])
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255


@pytest.mark.weights
def test_gicd_from_its_cache_gives_the_maps_of_gicd_from_images(lite):
    images = example_cats(128)[:4]
    with torch.no_grad():
        direct = lite(images)
        cached = {name: tensor.half() for name, tensor in lite.encode_for_cache(images).items()}  # as stored
        from_cache = lite.forward_from_cache(cached, images.shape[-2:])
    for a, b in zip(direct, from_cache):
        torch.testing.assert_close(torch.sigmoid(a), torch.sigmoid(b), atol=2e-2, rtol=0)  # float16 storage only
    # another group's consensus (a collaborative batch) changes the maps
    other = torch.zeros(1, 1000)
    other[0, 817] = 1.0  # sports car
    with torch.no_grad():
        foreign = lite.forward_from_cache(cached, images.shape[-2:], other)
    assert float((torch.sigmoid(foreign[0]) - torch.sigmoid(from_cache[0])).abs().max()) > 1e-3


@pytest.mark.weights
def test_cosal_train_from_the_cache_trains_a_gicd_head_that_gicd_loads(tmp_path, real_weights, monkeypatch):
    from cosal_cli.methods import gicd

    backbone = real_weights("efficientnet-lite0-imagenet")
    monkeypatch.setattr(gicd.Method, "input_size", 64)
    toy = write_toy(tmp_path)
    output = tmp_path / "gicd-head.safetensors"
    settings = trainer.TrainSettings(
        method="gicd", data=[toy["data"]], split=load_split(toy["split"]), output=output, epochs=3, lr=3e-3,
        sampler=SamplerSettings(size=64, min_group=2, max_group=3, composite_fraction=0.5, outsider_fraction=0.3,
                                collaborative_fraction=0.5),
        val_limit=2, device="cpu", offline=True, cache_views=2,
    )  # fmt: skip
    recorder = Recorder()
    metadata = trainer.train(settings, recorder)
    assert (tmp_path / "gicd-head.cache" / "cache.json").exists()
    assert metadata["config"] == {"channels": 32}
    losses = [np.mean(epoch) for epoch in recorder.epoch_losses]
    assert losses[-1] < losses[0], losses
    method = gicd.Method({"backbone": backbone, "head": output}, torch.device("cpu"))
    images, masks = toy_group(toy["data"], "c")
    maps = method.predict_group(images)
    assert maps[masks].mean() > maps[~masks].mean() + 0.2, (maps[masks].mean(), maps[~masks].mean())
    # the same command again reuses the cache (and refuses the finished run's checkpoint without --resume)
    output.with_name("gicd-head.checkpoint.safetensors").unlink()
    recorder = Recorder()
    trainer.train(settings, recorder)
    assert any("using the feature cache" in note for note in recorder.notices)


def test_the_image_store_shrinks_large_images_and_their_masks_together(tmp_path):
    from cosal_cli.training.sampler import ImageStore

    rgb = np.zeros((300, 500, 3), np.uint8)
    mask = np.zeros((300, 500), np.uint8)
    rgb[100:200, 200:300] = 255
    mask[100:200, 200:300] = 255
    Image.fromarray(rgb).save(tmp_path / "big.png")
    Image.fromarray(mask).save(tmp_path / "big-mask.png")
    item = TrainImage("d", "g", "big", tmp_path / "big.png", tmp_path / "big-mask.png")
    small_rgb, small_mask = ImageStore(short_side=150).get(item)
    assert small_rgb.shape == (150, 250, 3) and small_mask.shape == (150, 250) and small_mask.dtype == np.float32
    assert small_mask[75, 125] == pytest.approx(1.0) and small_mask[10, 10] == 0.0
    assert (small_rgb[..., 0] > 127).sum() == pytest.approx((small_mask > 0.5).sum(), rel=0.02)
    full_rgb, full_mask = ImageStore(short_side=400).get(item)  # smaller than the limit: untouched
    assert full_rgb.shape == (300, 500, 3) and np.array_equal(full_mask, mask / 255.0)
