"""ICNet: the official layout (keys of ICNet_vgg16.pth, the co-saliency module as the reference
describes it, import), cosal's trained ``icnet``, and the ``icnet-official`` method."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode
from typer.testing import CliRunner

from cosal_cli.cli import app
from cosal_cli.models.icnet import ICNet, IcnetHead, IcnetNetwork
from cosal_cli.models.vgg import imagenet_normalise

from .conftest import EXAMPLES, REPO, check_shipped_head, detect_examples, not_a_cat
from .test_train import toy  # noqa: F401 (a fixture)

runner = CliRunner()
# Measured with the shipped head on the 14 committed examples: 5.7x to 10.0x brighter on the cats than
# off them, AUC 0.897 to 0.996, mean 0.978 (with gmr's SISMs instead: 2.1x to 8.8x, AUC from 0.746, mean 0.931).
ICNET_MIN_RATIO, ICNET_MIN_AUC, ICNET_MEAN_AUC = 4.0, 0.85, 0.95


def test_keys_and_sizes_match_the_official_checkpoint():
    state = ICNet().state_dict()
    assert len(state) == 190
    floats = sum(value.numel() for key, value in state.items() if not key.endswith("num_batches_tracked"))
    assert floats == 18_435_396  # section 3.7: the float values, besides 16 BatchNorm step counters
    assert sum(key.endswith("num_batches_tracked") for key in state) == 16
    assert state["vgg.vgg.28.weight"].shape == (512, 512, 3, 3)
    assert state["Co6.cosal_feat.conv.0.weight"].shape == (128, 49, 1, 1)
    assert state["Co5.cosal_feat.conv.0.weight"].shape == (128, 196, 1, 1)
    assert state["Co4.cosal_feat.conv.0.weight"].shape == (128, 784, 1, 1)
    assert state["conv6_cmprs.8.weight"].shape == (128, 128, 3, 3) and "conv6_cmprs.6.running_var" in state
    assert state["merge_co_45.1.weight"].shape == (32, 128, 1, 1)
    assert state["refine_1.cmprs.weight"].shape == (32, 64, 1, 1)
    assert state["refine_3.merge_conv.4.running_mean"].shape == (32,)
    assert state["refine_2.pred.pred.0.weight"].shape == (1, 32, 1, 1)


def test_cosals_head_is_the_official_network_without_its_vgg():
    """An official checkpoint's head part loads into cosal's IcnetHead as it is (same names and shapes)."""
    official = ICNet().state_dict()
    head_part = {key: value for key, value in official.items() if not key.startswith("vgg.")}
    IcnetHead().load_state_dict(head_part, strict=True)
    assert len(head_part) == 190 - 26


def test_cosals_network_trains_its_head_alone_on_a_frozen_backbone():
    from cosal_cli.models.vgg import VGG16Features

    network = IcnetNetwork(VGG16Features(), {"sism": "gmr"}).train()
    assert network.config == {"sism": "gmr"}
    assert network.head.training and not network.backbone.training  # frozen: stays in eval mode
    assert not any(p.requires_grad for p in network.backbone.parameters())
    assert all(p.requires_grad for p in network.head.parameters())


def test_a_group_gives_one_map_per_image_and_other_sizes_are_refused():
    torch.manual_seed(0)
    model = ICNet().eval()
    with torch.no_grad():
        maps = model(torch.randn(3, 3, 224, 224), torch.rand(3, 1, 224, 224))
        deep = model(torch.randn(3, 3, 224, 224), torch.rand(3, 1, 224, 224), training=True)
    assert maps.shape == (3, 1, 224, 224) and 0 <= float(maps.min()) and float(maps.max()) <= 1
    assert [tuple(m.shape) for m in deep] == [(3, 1, 224, 224)] * 4
    with pytest.raises(ValueError, match="224x224"):
        model(torch.randn(1, 3, 256, 256), torch.rand(1, 1, 256, 256))


def _reference_cosal_sub_module(module, feats: torch.Tensor, sisms: torch.Tensor) -> torch.Tensor:
    """Cosal_Sub_Module.forward written image by image from the reference's seven steps (section 3.4)."""
    n, c, h, w = feats.shape
    saliency = F.interpolate(sisms, size=(h, w), mode="bilinear", align_corners=True)
    normed = [f / f.norm(dim=0, keepdim=True).clamp_min(1e-12) for f in feats]  # L2 over channels per pixel
    sivs = []
    for i in range(n):
        vector = (normed[i] * saliency[i]).sum(dim=(1, 2)) / (h * w)  # plain mean over all pixels
        sivs.append(vector / vector.norm().clamp_min(1e-12))
    outputs = []
    for i in range(n):
        corr = torch.stack([(normed[i] * sivs[j][:, None, None]).sum(0).flatten() for j in range(n)])  # [N, hw]
        corr = corr / corr.norm(dim=1, keepdim=True).clamp_min(1e-12)
        gram = corr @ corr.T  # [N, N]
        weights = torch.softmax(gram.sum(dim=1), dim=0)
        csa = sum(corr[j] * weights[j] for j in range(n))
        csa = (csa - csa.min()) / (csa.max() - csa.min() + 1e-12)
        flat = normed[i].reshape(c, h * w)
        scf = flat.T @ flat  # row k: pixel k against all pixels
        order = torch.argsort(csa, descending=True)
        rscf = scf[order].reshape(h * w, h, w)
        outputs.append(rscf * csa.reshape(1, h, w))
    return module.conv(torch.stack(outputs))


@pytest.mark.parametrize("training", [False, True], ids=["image-by-image", "whole-batch"])
@pytest.mark.parametrize("size", [7, 14])
def test_the_co_saliency_module_follows_the_reference_step_by_step(size, training):
    from cosal_cli.models.icnet import CosalSubModule

    torch.manual_seed(size)
    module = CosalSubModule(size, size).train(training)
    feats, sisms = torch.randn(4, 16, size, size), torch.rand(4, 1, 224, 224)
    with torch.no_grad():
        expected = _reference_cosal_sub_module(module, feats, sisms)
        torch.testing.assert_close(module(feats, sisms), expected, rtol=1e-4, atol=1e-4)
        # the module depends on the other images of the group: a changed image changes this image's output
        changed = feats.clone()
        changed[3] = torch.randn(16, size, size)
        assert not torch.allclose(module(changed, sisms)[0], expected[0], atol=1e-4)


class _LargestTensor(TorchDispatchMode):
    """Records the element count of the largest tensor any operation produces."""

    largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in (out if isinstance(out, (tuple, list)) else [out]):
            if isinstance(tensor, torch.Tensor):
                self.largest = max(self.largest, tensor.numel())
        return out


def _largest_tensor(module, n: int, side: int, training: bool) -> int:
    torch.manual_seed(0)
    feats, sisms = torch.randn(n, 8, side, side), torch.rand(n, 1, 224, 224)
    with torch.no_grad(), _LargestTensor() as measure:
        module.train(training)(feats, sisms)
    return measure.largest


def test_at_inference_the_co_saliency_memory_grows_linearly_with_the_group():
    """Each image's SCF (hw x hw) and its correlations with the group (N x hw) are made one image at a time:
    the whole group's would be N x hw x hw and N x N x hw, what grew icnet's memory with the group."""
    from cosal_cli.models.icnet import CosalSubModule

    hw = 28 * 28
    module = CosalSubModule(28, 28)
    assert _largest_tensor(module, 6, 28, training=True) == 6 * hw * hw  # the measure sees the batched SCF
    assert _largest_tensor(module, 6, 28, training=False) == hw * hw
    module = CosalSubModule(7, 7)  # a small SCF, a large group: correlations across the group would dominate
    assert _largest_tensor(module, 128, 7, training=True) >= 128 * 128 * 49  # N x N x hw (and N^3 Gram values)
    assert _largest_tensor(module, 128, 7, training=False) <= 2 * _largest_tensor(module, 64, 7, training=False)


def test_the_decoder_is_gated_by_the_28_pixel_map_alone():
    """refine_2 and refine_1 take cosal_map_4, not the previous block's prediction (section 3.5)."""
    torch.manual_seed(0)
    head = IcnetHead().eval()
    calls = []
    for name in ("refine_3", "refine_2", "refine_1"):
        getattr(head, name).register_forward_pre_hook(lambda module, args: calls.append(args[1].shape[-1]))
    taps = [torch.randn(2, c, s, s) for c, s in ((64, 224), (128, 112), (256, 56), (512, 28), (512, 14))]
    with torch.no_grad():
        logits = head.decode(taps, torch.rand(2, 1, 224, 224))
    assert calls == [28, 28, 28]
    assert [tuple(x.shape[-2:]) for x in logits] == [(224, 224), (112, 112), (56, 56), (28, 28)]


def test_the_official_file_imports_and_other_sizes_are_named(tmp_path):
    from safetensors.torch import load_file

    from cosal_cli.hub import WeightHub
    from cosal_cli.models import icnet

    state = ICNet().state_dict()
    wrapped = tmp_path / "ICNet_vgg16.pth"
    torch.save({"state_dict": state, "optimizer": {}}, wrapped)  # a training checkpoint: state_dict unwrapped
    hub = WeightHub(home=tmp_path / "home")
    record = hub.import_file("icnet-official", wrapped)
    assert hub.verify(hub.manifest.component("icnet-official")).state == "ok"
    loaded = load_file(record.path)
    assert set(loaded) == set(state)
    assert torch.equal(loaded["Co4.cosal_feat.conv.0.weight"], state["Co4.cosal_feat.conv.0.weight"])
    ICNet().load_state_dict(loaded, strict=True)

    other = dict(state)
    other["Co6.cosal_feat.conv.0.weight"] = torch.zeros(128, 64, 1, 1)  # the 256-input copy: 8x8 at stride 32
    torch.save(other, tmp_path / "icnet256.pth")
    with pytest.raises(ValueError, match=r"ICNet for 256x256 input"):
        icnet.convert_icnet(tmp_path / "icnet256.pth")


def test_the_cli_import_shows_a_readable_diff_for_a_wrong_file(tmp_path, monkeypatch):
    monkeypatch.setenv("COSAL_HOME", str(tmp_path / "home"))
    state = ICNet().state_dict()
    del state["refine_1.pred.pred.0.bias"]
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "broken.pth")
    result = runner.invoke(app, ["weights", "import", "icnet", str(tmp_path / "broken.pth")])
    assert result.exit_code == 2
    message = " ".join(result.output.split())
    assert "does not fit" in message and "refine_1.pred.pred.0.bias" in message and "extra.weight" in message


# -- with the real backbone -------------------------------------------------------------------------


def _example_group(count: int) -> torch.Tensor:
    from PIL import Image

    files = sorted((EXAMPLES / "Image" / "cat").glob("*.jpg"))[:count]
    pixels = np.stack([np.asarray(Image.open(f).convert("RGB").resize((224, 224), Image.BILINEAR)) for f in files])
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255


@pytest.fixture
def official_weights(real_weights, tmp_path, monkeypatch):
    """Random weights saved in the official format and imported into a temporary COSAL_HOME."""
    from cosal_cli.hub import WeightHub

    backbone = real_weights("vgg16-imagenet")  # sod's, the default SISM generator: linked from the real cache
    torch.manual_seed(0)
    torch.save(ICNet().state_dict(), tmp_path / "ICNet_vgg16.pth")
    home = tmp_path / "home"
    (home / "weights").mkdir(parents=True)
    (home / "weights" / backbone.name).symlink_to(backbone)
    record = WeightHub(home=home).import_file("icnet-official", tmp_path / "ICNet_vgg16.pth")
    monkeypatch.setenv("COSAL_HOME", str(home))
    return Path(record.path)


@pytest.mark.weights
def test_icnet_official_runs_imported_weights_with_sod_sisms(official_weights):
    from cosal_cli.methods.icnet_official import Method

    method = Method({"icnet": official_weights}, torch.device("cpu"))
    images = _example_group(3)
    with torch.inference_mode():
        maps = method.predict_group(images)
        sisms = method.sisms(images)
        direct = method.model(imagenet_normalise(images), sisms)[:, 0]
    assert maps.shape == (3, 224, 224)
    torch.testing.assert_close(maps, direct)
    assert any("EGNet" in notice for notice in method.notices)


def test_a_large_group_in_bounded_memory_gives_the_single_batch_maps(monkeypatch):
    """A group larger than batch_size goes in chunks, encoded once while its shallow taps fit the bound and
    twice beyond it; the maps are the single batch's either way."""
    from cosal_cli.models import icnet

    torch.manual_seed(0)
    model = ICNet().eval()  # random weights check the plumbing; test_chunk_runs_sub_groups... the trained maps
    images, sisms = torch.randn(5, 3, 224, 224), torch.rand(5, 1, 224, 224)
    encoded = []

    def encode(x, levels=5):
        encoded.append(len(x))
        return model.encode(x, levels)

    with torch.no_grad():
        whole = model(images, sisms)[:, 0]
        chunked = icnet.predict_group(model, encode, images, sisms, batch_size=2)
        assert encoded == [2, 2, 1]
        torch.testing.assert_close(chunked, whole, rtol=1e-4, atol=1e-5)
        encoded.clear()
        monkeypatch.setattr(icnet, "KEEP_TAPS_BYTES", 2 * 22_478_848)  # the shallow taps of two images
        torch.testing.assert_close(icnet.predict_group(model, encode, images, sisms, batch_size=2), chunked)
        assert encoded == [2, 2, 1, 2, 1]  # the first chunk was kept, the other two encoded again
        encoded.clear()
        torch.testing.assert_close(icnet.predict_group(model, encode, images, sisms, batch_size=8), whole)
        assert encoded == [5]
        with pytest.raises(RuntimeError, match="eval mode"):  # chunks would give BatchNorm their own statistics
            icnet.predict_group(model.train(), encode, images, sisms, batch_size=2)


@pytest.mark.weights
def test_icnet_official_through_the_cli_with_a_sism_folder(official_weights, tmp_path):
    """Imported weights run from `cosal detect`; SISMs from a folder, a missing one named, other groups written."""
    sisms = tmp_path / "sisms"
    result = runner.invoke(app, ["detect", str(EXAMPLES / "Image"), "-o", str(sisms), "--method", "gmr", "--offline"])
    assert result.exit_code == 0, result.output
    (sisms / "cat-pairs" / "group0207_jpeg.png").unlink()
    result = runner.invoke(app, ["detect", str(EXAMPLES / "Image"), "-o", str(tmp_path / "maps"), "--method",
                                 "icnet-official", "--sism-dir", str(sisms), "--offline", "--json"])  # fmt: skip
    assert result.exit_code == 1, result.output  # some images failed, the rest written
    summary = json.loads(result.stdout)
    assert summary["counts"]["written"] == 8 and summary["counts"]["failed"] == 6
    assert "group0207_jpeg.png" in result.output and "1 of 6 SISMs missing" in " ".join(result.output.split())
    assert sorted(p.name for p in (tmp_path / "maps" / "cat").iterdir()) == sorted(
        f"{f.stem}.png" for f in (EXAMPLES / "Image" / "cat").iterdir()
    )


@pytest.mark.weights
def test_icnet_official_exports_and_runs_in_onnxruntime_as_in_torch(official_weights, tmp_path):
    group = tmp_path / "cats"
    group.mkdir()
    for image in sorted((EXAMPLES / "Image" / "cat").glob("*.jpg"))[:5]:
        (group / image.name).symlink_to(image)
    maps = {}
    for backend in ("torch", "onnxruntime"):  # --batch-size 2: the group's SIVs from three chunks
        out = tmp_path / backend
        result = runner.invoke(app, ["detect", str(group), "-o", str(out), "-m", "icnet-official", "--offline",
                                     "--backend", backend, "--batch-size", "2", "--json"])  # fmt: skip
        assert result.exit_code == 0, result.output
        maps[backend] = [np.asarray(Image.open(path), dtype=int) for path in sorted(out.rglob("*.png"))]
    assert len(maps["onnxruntime"]) == 5
    assert max(int(np.abs(a - b).max()) for a, b in zip(maps["torch"], maps["onnxruntime"])) <= 2
    result = runner.invoke(app, ["export", "-m", "icnet-official", "-o", str(tmp_path / "export"), "--offline"])
    assert result.exit_code == 0, result.output
    assert sorted(path.name for path in (tmp_path / "export").iterdir()) == [
        "export.json", "icnet-official.decode.onnx", "icnet-official.encode.onnx"]


# -- cosal's trained icnet ----------------------------------------------------------------------------


@pytest.fixture
def icnet_home(linked_home):
    return linked_home("vgg16-imagenet", "efficientnet-lite0-imagenet")  # Lite0: the classifier that dims outsiders


def test_the_shipped_head_is_trained_with_sod_sisms(real_hub):
    head = REPO / "cosal_cli" / "weights" / "icnet-head.safetensors"
    metadata = check_shipped_head(real_hub, "icnet", head, max_bytes=16_000_000)
    assert metadata["config"] == {"sism": "sod"}
    assert metadata["training"]["loss"] == "soft-iou" and metadata["training"]["sampler"]["size"] == 224


@pytest.mark.weights
def test_detect_with_icnet_finds_the_cats_and_caches_the_sisms(icnet_home, tmp_path):
    summary, scores = detect_examples(tmp_path / "maps", "--method", "icnet")
    assert summary["method"] == "icnet"
    aucs = [value for _, value in scores.values()]
    assert all(ratio > ICNET_MIN_RATIO for ratio, _ in scores.values()), scores
    assert min(aucs) > ICNET_MIN_AUC and float(np.mean(aucs)) > ICNET_MEAN_AUC, scores
    cached = list((icnet_home / "sism").glob("sod-*/*/*.png"))
    assert len(cached) == 14  # one SISM per image, sod's, keyed by content

    # A second run reads every SISM from the cache (the files are not rewritten) and gives the same maps.
    stamps = {path: path.stat().st_mtime_ns for path in cached}
    detect_examples(tmp_path / "again", "--method", "icnet")
    assert {path: path.stat().st_mtime_ns for path in cached} == stamps
    for first in (tmp_path / "maps").rglob("*.png"):
        second = tmp_path / "again" / first.relative_to(tmp_path / "maps")
        assert np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(second)))


@pytest.mark.weights
@pytest.mark.parametrize("batch_size", [8, 3], ids=["one-chunk", "three-chunks"])
def test_with_sod_sisms_each_image_goes_through_vgg_once_and_the_sisms_are_sods(icnet_home, batch_size):
    """sod runs on the same frozen VGG-16: its decoder reads icnet's taps instead of encoding again."""
    from cosal_cli.methods.loader import load_method

    keep = {"outsiders": "keep"}
    method = load_method("icnet", torch.device("cpu"), batch_size, True, options=_icnet_options(keep))
    assert method.sod_head is not None and method.network.backbone is method.sisms.method.network.backbone
    images = _example_group(8)
    seen = []
    hook = method.network.input_layer().register_forward_pre_hook(lambda module, inputs: seen.append(len(inputs[0])))
    with torch.inference_mode():
        maps = method.predict_group(images)  # an empty SISM cache: all 8 SISMs computed here
    hook.remove()
    assert sum(seen) == 8  # one VGG pass per image, for the SISMs and icnet's own features alike
    with torch.inference_mode():
        sod_maps = load_method("sod", torch.device("cpu"), 8, True).predict_group(images)
        cached = method.sisms(images)  # from the cache the shared pass filled
        unshared = load_method("icnet", torch.device("cpu"), batch_size, True, options=_icnet_options(keep))
        unshared.sod_head = None  # the SISMs from the cache, icnet's taps from its own pass
        again = unshared.predict_group(images)
    assert torch.equal(cached[:, 0], sod_maps.mul(255).round().div(255))
    assert float((maps - again).abs().max()) == 0.0


def _icnet_options(values: dict):
    from cosal_cli import methods

    return methods.options_for("icnet", values)


@pytest.mark.weights
def test_sod_maps_given_as_a_folder_match_sod_as_the_generator(icnet_home, tmp_path):
    """`detect --method sod` then `--sism-dir` is the same input as `--sism sod`, up to two resizes."""
    detect_examples(tmp_path / "sod", "--method", "sod")
    detect_examples(tmp_path / "from-folder", "--method", "icnet", "--sism-dir", str(tmp_path / "sod"))
    detect_examples(tmp_path / "generated", "--method", "icnet", "--sism", "sod")
    differences = []
    for first in (tmp_path / "generated").rglob("*.png"):
        second = tmp_path / "from-folder" / first.relative_to(tmp_path / "generated")
        differences.append(np.abs(np.asarray(Image.open(first), float) - np.asarray(Image.open(second), float)).mean())
    assert max(differences) < 2.0, differences  # mean absolute difference in 8-bit levels
    # and a different generator gives different maps, with a notice that the head was trained on sod's
    summary, _ = detect_examples(tmp_path / "gmr", "--method", "icnet", "--sism", "gmr")
    assert any("trained with sod SISMs" in notice for notice in summary["notices"])
    first = next((tmp_path / "generated").rglob("*.png"))
    other = tmp_path / "gmr" / first.relative_to(tmp_path / "generated")
    assert np.abs(np.asarray(Image.open(first), float) - np.asarray(Image.open(other), float)).mean() > 2.0


@pytest.mark.weights
def test_chunk_runs_sub_groups_and_changes_the_maps(icnet_home):
    from cosal_cli.methods.loader import load_method
    from cosal_cli.methods.options import SismOutsiderOptions

    images = _example_group(6)
    keep = SismOutsiderOptions(outsiders="keep")  # dimming uses the whole group: tested on its own below
    whole = load_method("icnet", torch.device("cpu"), batch_size=4, options=keep)  # 6 > 4: encoded in two chunks
    one_pass = load_method("icnet", torch.device("cpu"), batch_size=8, options=keep)
    chunked = load_method("icnet", torch.device("cpu"), batch_size=4,
                          options=SismOutsiderOptions(subgroup=3, outsiders="keep"))  # fmt: skip
    with torch.inference_mode():
        full = whole.predict_group(images)
        parts = chunked.predict_group(images)
        separately = torch.cat([whole.predict_group(images[:3]), whole.predict_group(images[3:])])
        # --batch-size bounds memory only: the two-pass computation gives the single batch's maps
        torch.testing.assert_close(full, one_pass.predict_group(images), atol=1e-4, rtol=0)
    torch.testing.assert_close(parts, separately)
    assert (parts - full).abs().max() > 0.01  # the consensus of 3 images is not that of 6


@pytest.mark.weights
def test_an_image_that_is_not_of_the_group_is_dimmed_over_the_whole_group(icnet_home):
    from cosal_cli.methods.loader import load_method
    from cosal_cli.methods.options import SismOutsiderOptions

    group = torch.cat([_example_group(6), not_a_cat()[None]])  # six cats and a picture of no cat
    with torch.inference_mode():
        dimmed = load_method("icnet", torch.device("cpu"), batch_size=4).predict_group(group)
        kept = load_method("icnet", torch.device("cpu"), batch_size=4,
                           options=SismOutsiderOptions(outsiders="keep")).predict_group(group)  # fmt: skip
        in_subgroups = load_method("icnet", torch.device("cpu"), batch_size=4,
                                   options=SismOutsiderOptions(subgroup=4)).predict_group(group)  # fmt: skip
    assert float(dimmed[-1].max()) < 0.5 * float(kept[-1].max()), (float(dimmed[-1].max()), float(kept[-1].max()))
    ratios = dimmed[:-1].amax(dim=(1, 2)) / kept[:-1].amax(dim=(1, 2))
    assert int((ratios == 1.0).sum()) >= 3 and float(ratios.min()) > 0.5, ratios
    # With --subgroup 4 the picture sits in a sub-group with 2 cats, but is still weighed against the whole group.
    assert float(in_subgroups[-1].max()) < 0.5 * float(kept[-1].max())


def test_training_icnet_end_to_end_records_the_sism_generator(toy, real_weights, tmp_path):  # noqa: F811
    real_weights("vgg16-imagenet")
    output = tmp_path / "icnet-head.safetensors"
    arguments = ["train", "--method", "icnet", "--data", str(toy["data"]), "--split", str(toy["split"]), "--output",
                 str(output), "--epochs", "1", "--min-group", "4", "--max-group", "4", "--val-limit", "2",
                 "--threads", "1", "--offline", "--json"]  # fmt: skip
    result = runner.invoke(app, arguments)
    assert result.exit_code == 2
    assert "--size 192: icnet's layers fix the input at 224x224; add --size 224" in " ".join(result.output.split())
    result = runner.invoke(app, [*arguments, "--size", "224", "--sism", "gmr", "--per-group", "4"])
    assert result.exit_code == 0, result.output
    metadata = json.loads(result.stdout)
    assert metadata["config"] == {"sism": "gmr"} and metadata["training"]["per_group"] == 4
    assert metadata["training"]["images_seen"] == 8  # groups a and b, 4 images each; c is held out
    from cosal_cli.methods.icnet import Method

    method = Method({"backbone": real_weights("vgg16-imagenet"), "head": output}, torch.device("cpu"))
    assert method.sisms.name == "gmr"  # a head trained on gmr SISMs gets gmr SISMs by default
    result = runner.invoke(app, ["train", "--method", "sod", "--data", str(toy["data"]), "--split", str(toy["split"]),
                                 "--output", str(tmp_path / "x.safetensors"), "--sism", "gmr"])  # fmt: skip
    assert result.exit_code == 2 and "--sism does not apply to method 'sod'" in result.output


@pytest.mark.weights
def test_the_api_runs_icnet_official_as_the_cli_does(official_weights, tmp_path):
    """The Python API on an imported official checkpoint (random weights): the CLI's PNGs to 1/255."""
    import cosal_cli

    cats = sorted((EXAMPLES / "Image" / "cat").glob("*.jpg"))[:4]
    group = tmp_path / "cat"
    group.mkdir()
    for path in cats:
        (group / path.name).symlink_to(path)
    maps = cosal_cli.load("icnet-official", device="cpu", offline=True).predict(cats, name="cat")
    result = CliRunner().invoke(app, ["detect", str(group), "-m", "icnet-official", "-o", str(tmp_path / "o"),
                                      "--offline"])  # fmt: skip
    assert result.exit_code == 0, result.output
    for path, ours in zip(cats, maps):
        written = np.asarray(Image.open(tmp_path / "o" / "cat" / f"{path.stem}.png"), dtype=np.float32) / 255
        assert ours.shape == written.shape and np.abs(ours - written).max() <= 1 / 255 + 1e-6
