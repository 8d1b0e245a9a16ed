"""GS: H-LRBP (eq. 5) and its order- and size-free group vector, chunked pooling, the co-category
targets, training with the co-category loss, and the shipped heads."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cosal_cli.errors import UsageError
from cosal_cli.methods.options import GsOptions
from cosal_cli.models.gs import GroupSemanticNetwork, LowRankBilinear
from cosal_cli.models.vgg import VGG16Features
from cosal_cli.training import co_category
from cosal_cli.training.sampler import TrainImage


@pytest.fixture(scope="module", params=["hlrbp", "average"])
def network(request) -> GroupSemanticNetwork:
    """GS on a randomly initialised VGG-16: enough for shapes, order and chunking, fast, no weights."""
    torch.manual_seed(0)
    backbone = VGG16Features().eval().requires_grad_(False)
    return GroupSemanticNetwork(backbone, {"pooling": request.param, "categories": 6}).eval()


def test_lrbp_is_the_papers_low_rank_bilinear_classifier():
    torch.manual_seed(1)
    layer = LowRankBilinear(inputs=5, outputs=3, rank=4)
    rows = torch.randn(7, 5, dtype=torch.float64)
    layer = layer.double()
    for c in range(3):  # eq. 4 with W_c = U+ U+^T - U- U-^T: (1/K) tr(W_c^T X^T X) + b_c
        plus = layer.plus.weight[2 * c : 2 * c + 2].T
        minus = layer.minus.weight[2 * c : 2 * c + 2].T
        weight = plus @ plus.T - minus @ minus.T
        expected = torch.trace(weight.T @ rows.T @ rows) / 7 + layer.bias[c]
        torch.testing.assert_close(layer(rows)[c], expected)
    with pytest.raises(ValueError, match="even"):
        LowRankBilinear(5, 3, 3)


def test_the_group_vector_depends_neither_on_the_order_nor_on_the_number_of_images(network):
    pool5 = torch.rand(9, 512, 7, 7, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        semantic = network.group_semantic(pool5)
        shuffled = network.group_semantic(pool5[torch.randperm(9, generator=torch.Generator().manual_seed(3))])
        doubled = network.group_semantic(torch.cat([pool5, pool5]))  # the same images, twice as many
        chunked = network.head.semantics(pool5.split(2))
        other = network.group_semantic(pool5[:4])
    assert semantic.shape == (256,)
    for same in (shuffled, doubled, chunked):
        torch.testing.assert_close(same, semantic, atol=2e-5, rtol=0)
    assert float((other - semantic).abs().max()) > 1e-3  # other images, another vector


@pytest.mark.parametrize("count", [1, 2, 7, 23])
def test_any_group_size_gives_one_map_per_image_whatever_the_order_and_the_chunk(network, count):
    images = torch.rand(count, 3, 64, 64, generator=torch.Generator().manual_seed(count))
    maps = network.predict_group(images, chunk=4)
    assert maps.shape == (count, 64, 64) and bool(((maps >= 0) & (maps <= 1)).all())
    permutation = torch.randperm(count, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(network.predict_group(images[permutation], chunk=3), maps[permutation],
                               atol=1e-5, rtol=0)  # fmt: skip


def test_the_other_images_change_an_images_map_through_the_group_vector(network):
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    groups = [torch.rand(3, 512, 2, 2, generator=torch.Generator().manual_seed(seed)) for seed in (7, 8)]
    with torch.no_grad():
        levels = network.encode(images)
        maps = [network.decode(levels, network.group_semantic(pool5), (64, 64)) for pool5 in (*groups, groups[0])]
    assert torch.equal(maps[0], maps[2])
    assert float((maps[0] - maps[1]).abs().max()) > 1e-4


def test_the_backbone_runs_once_per_image_and_the_decoder_one_chunk_at_a_time(network):
    seen: Counter = Counter()
    hooks = [network.backbone.features[0].register_forward_hook(lambda m, i, o: seen.update(conv1_1=i[0].shape[0])),
             network.head.score.register_forward_hook(lambda m, i, o: seen.update(decoded=1))]  # fmt: skip
    try:
        network.predict_group(torch.rand(23, 3, 32, 32), chunk=8)
    finally:
        for hook in hooks:
            hook.remove()
    assert seen == {"conv1_1": 23, "decoded": 3}


def test_a_method_counts_its_images_as_they_are_encoded_for_the_progress_bar(network):
    from cosal_cli.methods.gs import Method

    method = Method.from_network(network, torch.device("cpu"), batch_size=3)
    counted = []
    with method.counting_images(counted.append):
        method.predict_group(torch.rand(7, 3, 32, 32))
    method.predict_group(torch.rand(2, 3, 32, 32))  # outside: not counted
    assert counted == [3, 3, 1]


def test_the_category_logits_and_a_cached_sub_group_give_the_maps_of_the_images(network):
    images = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        cached = {name: value.half() for name, value in network.encode_for_cache(images).items()}
        from_cache = torch.sigmoid(network.forward_from_cache(cached, (64, 64))[0][:, 0])
        logits = network.category_logits(cached)
    # the same maps up to float16 in the group vector (the cache stores pool5 in float16)
    torch.testing.assert_close(from_cache, network.predict_group(images, chunk=4), atol=1e-3, rtol=0)
    assert logits.shape == (6,)
    with torch.no_grad():  # a collaborative batch: another sub-group's vector in place of its own
        foreign = network.group_semantic(torch.rand(2, 512, 2, 2, generator=torch.Generator().manual_seed(6)))
        exchanged = network.forward_from_cache(cached, (64, 64), foreign)[0]
    assert exchanged.shape == (4, 1, 64, 64)
    assert float((torch.sigmoid(exchanged[1:, 0]) - from_cache[1:]).abs().max()) > 1e-4


def test_ablation_options_pick_heads_and_refuse_what_was_not_trained():
    assert GsOptions().head_choice == ("on", "hlrbp")
    assert GsOptions(co_category="off").head_choice == ("off", "hlrbp")
    assert GsOptions(pooling="average").head_choice == ("on", "average")
    with pytest.raises(UsageError, match="no head was trained with both"):
        GsOptions(co_category="off", pooling="average")
    with pytest.raises(UsageError, match="--pooling must be hlrbp or average"):
        GsOptions(pooling="max")


# ----------------------------------------------------------------------------------------------
# Co-category targets
# ----------------------------------------------------------------------------------------------


def images_of(*groups: tuple[str, str, int], base: Path = Path("/nowhere")) -> list[TrainImage]:
    return [TrainImage(dataset, group, f"{group}{index}", base / dataset / group / f"{index}.png", base / "m.png")
            for dataset, group, count in groups for index in range(count)]  # fmt: skip


def test_table_targets_are_multi_hot_over_the_training_groups_categories():
    images = images_of(("davis12", "bmx-trees", 2), ("sysu5", "car", 3), ("duts_class", "0001-tabby", 2))
    targets = co_category.table_targets(images)
    assert targets.labels == ["bicycle", "car", "person", "tabby"]
    assert targets.targets["davis12/bmx-trees"].tolist() == [1.0, 0.0, 1.0, 0.0]
    assert targets.targets["sysu5/car"].tolist() == [0.0, 1.0, 0.0, 0.0]
    assert targets.targets["duts_class/0001-tabby"].tolist() == [0.0, 0.0, 0.0, 1.0]
    with pytest.raises(KeyError, match="not in the category table"):
        co_category.table_targets(images_of(("elsewhere", "thing", 1)))


def test_imagenet_targets_keep_each_groups_top_classes_and_are_reused(tmp_path):
    images = images_of(("d", "red", 3), ("d", "blue", 2), base=tmp_path)
    for item in images:
        item.image.parent.mkdir(parents=True, exist_ok=True)
        colour = (200, 10, 10) if item.group == "red" else (10, 10, 200)
        Image.new("RGB", (40, 30), colour).save(item.image)
    calls = []

    def classify(batch: torch.Tensor) -> torch.Tensor:  # red images vote for class 7, blue ones for 900
        calls.append(batch.shape[0])
        logits = torch.zeros(batch.shape[0], 1000)
        logits[:, 7] = batch[:, 0].mean((1, 2)) * 10
        logits[:, 900] = batch[:, 2].mean((1, 2)) * 10
        logits[:, 3] = 1.0
        return logits

    stored = tmp_path / "cache" / "co-category-imagenet.json"
    targets = co_category.imagenet_targets(images, classify, stored, "sha")
    assert len(targets.labels) == 1000 and targets.labels[7] == "cock"  # torchvision's ImageNet names
    red, blue = targets.targets["d/red"], targets.targets["d/blue"]
    assert red[7] == 1.0 and blue[900] == 1.0 and 0 < red[3] < 1 and 0 < red[900] < 1
    assert int((red > 0).sum()) == co_category.TOP_CLASSES
    assert sorted(calls) == [2, 3]
    again = co_category.imagenet_targets(images, classify, stored, "sha")
    assert len(calls) == 2 and torch.equal(again.targets["d/red"], red)  # read back, not recomputed
    co_category.imagenet_targets(images, classify, stored, "another classifier")
    assert len(calls) == 4
    assert json.loads(stored.read_text())["identity"]["classifier_sha256"] == "another classifier"


def test_the_co_category_loss_is_binary_cross_entropy_weighted_by_lambda():
    class Fixed:
        def category_logits(self, cached):
            return torch.tensor([2.0, -1.0, 0.0])

    targets = co_category.CoCategoryTargets("table", ["a", "b", "c"], {"g": torch.tensor([1.0, 0.0, 1.0])}, 0.5)
    expected = 0.5 * torch.nn.functional.binary_cross_entropy_with_logits(torch.tensor([2.0, -1.0, 0.0]),
                                                                          torch.tensor([1.0, 0.0, 1.0]))  # fmt: skip
    torch.testing.assert_close(targets.loss(Fixed(), {}, "g"), expected)
    assert targets.describe() == {"source": "table", "weight": 0.5, "labels": 3, "names": ["a", "b", "c"]}


# ----------------------------------------------------------------------------------------------
# Training and the shipped heads, with the real VGG-16
# ----------------------------------------------------------------------------------------------


def write_named_toy(base: Path) -> dict[str, Path]:
    """A toy DUTS_class (the category table names its groups' categories by folder name): 3 groups of 6."""
    from .test_train import square_image

    rng = np.random.default_rng(5)
    colours = {"0001-square": (230, 40, 40), "0002-block": (40, 40, 230), "0003-tile": (40, 230, 40)}
    for group, colour in colours.items():  # each group's objects have their own colour
        for folder in ("Image", "GroundTruth"):
            (base / "duts_class" / folder / group).mkdir(parents=True, exist_ok=True)
        for index in range(6):
            rgb, mask = square_image(rng)
            rgb[mask > 0] = colour
            Image.fromarray(rgb).save(base / "duts_class" / "Image" / group / f"{index}.jpg")
            Image.fromarray(mask).save(base / "duts_class" / "GroundTruth" / group / f"{index}.png")
    split = base / "split.yaml"
    split.write_text("schema: 1\nname: toy-split\ndatasets:\n  duts_class:\n    held_out_groups: [0003-tile]\n")
    return {"data": base / "duts_class", "split": split}


@pytest.mark.weights
def test_cosal_train_gs_learns_maps_and_co_categories_and_gs_loads_the_head(tmp_path, real_weights):
    from cosal_cli.methods import gs
    from cosal_cli.splits import load_split
    from cosal_cli.training import trainer
    from cosal_cli.training.sampler import SamplerSettings

    from .test_train import Recorder

    backbone = real_weights("vgg16-imagenet")
    toy = write_named_toy(tmp_path)
    output = tmp_path / "gs-head.safetensors"
    settings = trainer.TrainSettings(
        method="gs", data=[toy["data"]], split=load_split(toy["split"]), output=output, epochs=4, lr=1e-3,
        sampler=SamplerSettings(size=128, min_group=3, max_group=4, outsider_fraction=0.2, collaborative_fraction=0.3),
        val_limit=3, device="cpu", offline=True, cache_views=2,
    )  # fmt: skip
    uncached = SamplerSettings(size=128, min_group=3, max_group=4)
    with pytest.raises(UsageError, match="co-category branch from cached views: add --cache-views 1"):
        trainer.train(trainer.TrainSettings(**{**settings.__dict__, "cache_views": 0, "sampler": uncached}),
                      Recorder())  # fmt: skip
    recorder = Recorder()
    metadata = trainer.train(settings, recorder)
    assert metadata["training"]["loss"] == "bce"
    assert metadata["training"]["co_category"] == {"source": "table", "weight": 1.0, "labels": 2,
                                                   "names": ["block", "square"]}  # fmt: skip
    assert metadata["config"]["categories"] == 2 and metadata["config"]["co_category"] == "table"
    losses = [np.mean(epoch) for epoch in recorder.epoch_losses]
    assert losses[-1] < losses[0], losses
    method = gs.Method({"backbone": backbone, "head": output}, torch.device("cpu"))
    from .test_feature_cache import toy_group

    images, masks = toy_group(toy["data"], "0003-tile")
    maps = method.predict_group(torch.nn.functional.interpolate(images, size=128, mode="bilinear"))
    maps = torch.nn.functional.interpolate(maps[:, None], size=64, mode="bilinear")[:, 0]
    assert maps[masks].mean() > maps[~masks].mean() + 0.1, (maps[masks].mean(), maps[~masks].mean())
    with torch.no_grad():  # the co-category classifier tells the training groups' categories (block, square) apart
        network, margins = method.network, []
        for group in ("0001-square", "0002-block"):
            group_images, _ = toy_group(toy["data"], group)
            logits = network.category_logits(network.encode_for_cache(torch.nn.functional.interpolate(group_images,
                                                                                                      size=128)))
            margins.append(float(logits[1] - logits[0]))  # square minus block
    assert margins[0] > margins[1] + 0.5, margins


@pytest.mark.weights
def test_co_category_flags_are_checked_against_the_method(tmp_path):
    from typer.testing import CliRunner

    from cosal_cli.cli import app

    toy = write_named_toy(tmp_path)
    base = ["train", "--data", str(toy["data"]), "--split", str(toy["split"]), "--offline"]
    result = CliRunner().invoke(app, [*base, "-m", "sod", "-o", str(tmp_path / "s.safetensors"), "--co-category",
                                      "table"])  # fmt: skip
    assert result.exit_code == 2 and "--co-category does not apply to method 'sod'" in result.output
    result = CliRunner().invoke(app, [*base, "-m", "gs", "-o", str(tmp_path / "g.safetensors"), "--co-category",
                                      "coco"])  # fmt: skip
    assert result.exit_code == 2 and "--co-category must be table, imagenet or off" in result.output


@pytest.mark.weights
@pytest.mark.parametrize("role", ["head", "head_no_category", "head_average"])
def test_the_heads_are_bundled_and_trained_as_their_ablation_says(real_hub, real_weights, role):
    from .conftest import check_shipped_head

    head = real_weights(real_hub.manifest.roles("gs")[role])
    metadata = check_shipped_head(real_hub, "gs", head, max_bytes=6_000_000, role=role)
    assert metadata["training"]["split"]["name"] == "shared-v2"
    assert metadata["training"]["loss"] == "bce"  # eq. 9
    config = metadata["config"]
    assert (config["co_category"] == "off") is (role == "head_no_category")
    assert (config["pooling"] == "average") is (role == "head_average")
    assert metadata["validation"]["kept"]["sm"] > 0.65


@pytest.mark.weights
def test_detect_gs_on_the_examples_and_on_groups_of_1_2_and_23(linked_home, tmp_path):
    from typer.testing import CliRunner

    from cosal_cli.cli import app

    from .conftest import detect_examples, example_groups

    linked_home("vgg16-imagenet")
    _, scores = detect_examples(tmp_path / "examples", "--method", "gs")
    assert np.mean([area for _, area in scores.values()]) > 0.85
    example_groups(tmp_path / "groups", (1, 2, 23))
    result = CliRunner().invoke(app, ["detect", str(tmp_path / "groups"), "-o", str(tmp_path / "out"), "--method",
                                      "gs", "--offline", "--json", "--co-category", "off"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["counts"]["written"] == 26
