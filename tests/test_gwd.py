"""GWD: the group-wise FCN, any group size through covering subsets, order independence, training sub-groups."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from cosal_cli import inference
from cosal_cli.models.gwd import GROUP_SIZE, GroupWiseFcn, covering_subsets, global_descriptor, lab_histogram
from cosal_cli.models.vgg import VGG16Features
from cosal_cli.training.neighbours import nearest_neighbours, neighbour_batches
from cosal_cli.training.sampler import TrainImage

from .conftest import EXAMPLES


@pytest.fixture(scope="module")
def network() -> GroupWiseFcn:
    """GWD on a randomly initialised VGG-16: enough for shapes, counts and order, fast, no weights."""
    torch.manual_seed(0)
    return GroupWiseFcn(VGG16Features().eval().requires_grad_(False)).eval()


@pytest.mark.parametrize("count", [5, 6, 7, 12, 23, 100])
def test_every_image_is_in_at_least_three_subsets_of_five_distinct_images(count):
    keys = [f"{index:04d}" for index in range(count)]
    subsets = covering_subsets(keys)
    assert all(len(subset) == len(set(subset)) == GROUP_SIZE for subset in subsets)
    appearances = Counter(index for subset in subsets for index in subset)
    assert set(appearances) == set(range(count)) and min(appearances.values()) >= 3
    assert len(subsets) == 3 * -(-count // GROUP_SIZE)  # the stated cost: 3 rounds of ceil(N / 5) subsets


@pytest.mark.parametrize("count", [1, 2, 4])
def test_a_small_group_is_one_subset_of_its_images_repeated(count):
    subsets = covering_subsets([f"k{index}" for index in range(count)])
    assert len(subsets) == 1 and len(subsets[0]) == GROUP_SIZE and set(subsets[0]) == set(range(count))


def test_the_subsets_follow_the_images_content_not_their_order():
    keys = [f"{index:03d}" for index in range(13)]
    permutation = np.random.default_rng(3).permutation(13)
    shuffled = [keys[index] for index in permutation]
    as_keys = sorted(sorted(keys[i] for i in subset) for subset in covering_subsets(keys))
    shuffled_as_keys = sorted(sorted(shuffled[i] for i in subset) for subset in covering_subsets(shuffled))
    assert as_keys == shuffled_as_keys
    # other content, other subsets
    other = sorted(sorted(keys[i] for i in subset) for subset in covering_subsets([key + "x" for key in keys]))
    assert other != as_keys


@pytest.mark.parametrize("count", [1, 2, 7, 23])
def test_any_group_size_gives_one_map_per_image_and_the_order_does_not_matter(network, count):
    images = torch.rand(count, 3, 64, 64, generator=torch.Generator().manual_seed(count))
    maps = network.predict_group(images, chunk=4)
    assert maps.shape == (count, 64, 64) and bool(((maps >= 0) & (maps <= 1)).all())
    permutation = torch.randperm(count, generator=torch.Generator().manual_seed(1))
    permuted = network.predict_group(images[permutation], chunk=3)
    torch.testing.assert_close(permuted, maps[permutation], atol=1e-5, rtol=0)


def test_the_other_images_of_the_subset_change_an_images_map(network):
    semantic = torch.randn(5, 512, 4, 4, generator=torch.Generator().manual_seed(0)).relu()
    others = torch.randn(5, 512, 4, 4, generator=torch.Generator().manual_seed(1)).relu()
    with torch.no_grad():
        alone = network.decode(semantic, (64, 64))
        mixed = network.decode(torch.cat([semantic[:1], others[1:]]), (64, 64))
        again = network.decode(semantic.clone(), (64, 64))
    assert torch.equal(alone, again)
    assert float((alone[0] - mixed[0]).abs().max()) > 1e-3  # through the group block only


def test_the_backbone_and_the_single_image_block_run_once_per_image(network):
    seen = Counter()
    hooks = [network.backbone.features[0].register_forward_hook(lambda m, i, o: seen.update(conv1_1=i[0].shape[0])),
             network.head.single.register_forward_hook(lambda m, i, o: seen.update(single=i[0].shape[0])),
             network.head.group.register_forward_hook(lambda m, i, o: seen.update(group=i[0].shape[0]))]  # fmt: skip
    try:
        network.predict_group(torch.rand(23, 3, 32, 32), chunk=8)
    finally:
        for hook in hooks:
            hook.remove()
    # 23 images encoded once each, not once per place in the 15 subsets (75 places)
    assert seen == {"conv1_1": 23, "single": 23, "group": 15}


def test_the_network_takes_exactly_five(network):
    with pytest.raises(ValueError, match="exactly 5"):
        network(torch.rand(4, 3, 32, 32))
    assert network(torch.rand(5, 3, 32, 32))[0].shape == (5, 1, 32, 32)


def test_small_groups_get_a_notice_through_the_inference_path(network):
    from cosal_cli.methods.gwd import Method

    method = Method.from_network(network, torch.device("cpu"))
    pictures = [Image.open(path).convert("RGB") for path in sorted((EXAMPLES / "Image" / "cat").glob("*.jpg"))]
    for count, noticed in ((2, True), (5, False)):
        decoded = inference.prepare_images(pictures[:count], list(range(count)), 64)
        maps = inference.infer(method, decoded)
        assert len(maps) == count and maps.full(0).shape == pictures[0].size[::-1]
        assert any("padded to 5" in note for note in maps.notices) is noticed


def test_nearest_neighbours_nearest_first_and_repeated_in_small_groups():
    points = torch.tensor([[0.0], [1.0], [3.0], [7.0], [15.0]])
    assert nearest_neighbours(points, 2).tolist() == [[1, 2], [0, 2], [1, 0], [2, 1], [3, 2]]
    assert nearest_neighbours(points[:2], 4).tolist() == [[1, 0, 1, 0], [0, 1, 0, 1]]


def test_each_training_image_anchors_one_sub_group_of_its_neighbours_per_epoch():
    groups = {key: [TrainImage("d", key, f"{key}{i}", None, None) for i in range(count)]  # type: ignore[arg-type]
              for key, count in (("a", 9), ("b", 3))}  # fmt: skip
    descriptors = {key: torch.randn(len(items), 4, generator=torch.Generator().manual_seed(len(items)))
                   for key, items in groups.items()}  # fmt: skip
    nearest = {key: nearest_neighbours(values, 4).tolist() for key, values in descriptors.items()}
    batches = neighbour_batches(groups, nearest, seed=0, epoch=0)
    assert len(batches) == 12 and all(len(batch) == 5 for batch in batches)
    assert all(len({item.group for item in batch}) == 1 for batch in batches)
    for key, items in groups.items():  # each anchor's batch is it and its 4 nearest
        neighbours = nearest_neighbours(descriptors[key], 4)
        expected = Counter(tuple(sorted([anchor, *neighbours[anchor].tolist()])) for anchor in range(len(items)))
        found = Counter(tuple(sorted(items.index(item) for item in batch)) for batch in batches
                        if batch[0].group == key)  # fmt: skip
        assert found == expected
    assert neighbour_batches(groups, nearest, seed=0, epoch=0) == batches
    assert neighbour_batches(groups, nearest, seed=0, epoch=1) != batches


def test_the_global_descriptor_tells_colours_and_content_apart():
    red, blue = torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 16)
    red[:, 0], blue[:, 2] = 1.0, 1.0
    histograms = lab_histogram(torch.cat([red, red, blue]))
    torch.testing.assert_close(histograms.sum(dim=1), torch.ones(3))
    assert torch.equal(histograms[0], histograms[1]) and not torch.equal(histograms[0], histograms[2])
    features = torch.rand(3, 512, 2, 2)
    descriptor = global_descriptor(features, torch.cat([red, red, blue]))
    assert descriptor.shape == (3, 512 + 144)
    torch.testing.assert_close(descriptor.norm(dim=1), torch.full((3,), 2**0.5))


# ----------------------------------------------------------------------------------------------
# With the real VGG-16 and the shipped head
# ----------------------------------------------------------------------------------------------


@pytest.mark.weights
def test_cosal_train_gwd_learns_from_neighbour_sub_groups_and_gwd_loads_the_head(tmp_path, real_weights, monkeypatch):
    from cosal_cli.errors import UsageError
    from cosal_cli.methods import gwd
    from cosal_cli.splits import load_split
    from cosal_cli.training import trainer
    from cosal_cli.training.sampler import SamplerSettings

    from .test_feature_cache import toy_group, write_toy
    from .test_train import Recorder

    backbone = real_weights("vgg16-imagenet")
    monkeypatch.setattr(gwd.Method, "input_size", 128)  # relu5_3 at 8 x 8: at 64 px (4 x 4) it barely learns
    toy = write_toy(tmp_path, per_group=6)
    output = tmp_path / "gwd-head.safetensors"
    settings = trainer.TrainSettings(
        method="gwd", data=[toy["data"]], split=load_split(toy["split"]), output=output, epochs=4, lr=1e-3,
        sampler=SamplerSettings(size=128, composite_fraction=0.3, outsider_fraction=0.2), val_limit=3,
        device="cpu", offline=True, cache_views=2,
    )  # fmt: skip
    with pytest.raises(UsageError, match="--cache-views"):
        trainer.train(trainer.TrainSettings(**{**settings.__dict__, "cache_views": 0}), Recorder())
    collaborative = SamplerSettings(size=128, collaborative_fraction=0.5)
    with pytest.raises(UsageError, match="no group consensus"):
        trainer.train(trainer.TrainSettings(**{**settings.__dict__, "sampler": collaborative}), Recorder())
    recorder = Recorder()
    metadata = trainer.train(settings, recorder)
    assert metadata["training"]["loss"] == "l2"
    assert [len(epoch) for epoch in recorder.epoch_losses] == [12] * 4  # every training image anchors once
    losses = [np.mean(epoch) for epoch in recorder.epoch_losses]
    assert losses[-1] < losses[0], losses
    method = gwd.Method({"backbone": backbone, "head": output}, torch.device("cpu"))
    images, masks = toy_group(toy["data"], "c")
    maps = method.predict_group(torch.nn.functional.interpolate(images, size=128, mode="bilinear"))
    maps = torch.nn.functional.interpolate(maps[:, None], size=64, mode="bilinear")[:, 0]
    assert metadata["validation"]["kept"]["sm"] > 0.75  # the held-out group c
    assert maps[masks].mean() > maps[~masks].mean() + 0.08, (maps[masks].mean(), maps[~masks].mean())


@pytest.mark.weights
def test_the_head_is_bundled_and_trained_on_the_shipped_split(real_hub, real_weights):
    from .conftest import check_shipped_head

    assert real_hub.manifest.roles("gwd")["backbone"] == "vgg16-imagenet"
    head = real_weights(real_hub.manifest.roles("gwd")["head"])
    metadata = check_shipped_head(real_hub, "gwd", head, max_bytes=11_000_000)  # 10.2 MB: conv5's update, the skip
    assert metadata["config"]["output_stride"] == 8 and metadata["config"]["tune_encoder"]
    assert metadata["training"]["split"]["name"] == "shared-v2"
    assert metadata["training"]["loss"] == "l2"  # eq. 7
    assert metadata["training"]["sampler"]["composite_fraction"] > 0  # jigsaw composites
    assert metadata["validation"]["kept"]["sm"] > 0.65


@pytest.mark.weights
def test_detect_gwd_on_the_examples_and_on_groups_of_1_2_7_and_23(linked_home, tmp_path):
    import json

    from typer.testing import CliRunner

    from cosal_cli.cli import app

    from .conftest import detect_examples, example_groups

    linked_home("vgg16-imagenet")
    _, scores = detect_examples(tmp_path / "examples", "--method", "gwd")
    assert np.mean([area for _, area in scores.values()]) > 0.85
    example_groups(tmp_path / "groups", (1, 2, 7, 23))
    result = CliRunner().invoke(app, ["detect", str(tmp_path / "groups"), "-o", str(tmp_path / "out"), "--method",
                                      "gwd", "--offline", "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["counts"]["written"] == 33
    padded = [note for note in summary["notices"] if "padded to 5" in note]
    assert sorted(note.split(":")[0] for note in padded) == ["g1", "g2"]
    for count in (1, 2, 7, 23):
        assert len(list((tmp_path / "out" / f"g{count}").glob("*.png"))) == count
