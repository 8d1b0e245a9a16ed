"""csmg's FCN-8s skip (`cosal train --method csmg --output-stride 8`): logits at 1/8 of the input from the
image's unmasked pool3 and conv7's feature, added to the paper's x32 maps, starting at zero so that a
stride-32 head it starts from keeps its maps."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cosal_cli.cli import app
from cosal_cli.models.csmg import SKIP_INPUT, MaskGuidedFcn
from cosal_cli.models.heads import load_tensors, save_head
from cosal_cli.models.vgg import VGG16Features


def soft_masks(relu5_3: torch.Tensor) -> torch.Tensor:
    """A stand-in for the ADMM (fast and deterministic): where relu5_3 is strongest."""
    energy = relu5_3.float().sum(dim=1)
    return energy / energy.flatten(1).amax(dim=1).clamp_min(1e-6)[:, None, None]


@pytest.fixture(scope="module")
def pair() -> tuple[MaskGuidedFcn, MaskGuidedFcn]:
    """CSMG's FCN at stride 32 and 8, on one randomly initialised VGG-16 and with the same head."""
    torch.manual_seed(0)
    backbone = VGG16Features().eval().requires_grad_(False)
    plain, skipping = MaskGuidedFcn(backbone, soft_masks), MaskGuidedFcn(backbone, soft_masks, {"output_stride": 8})
    missing, unexpected = skipping.head.load_state_dict(plain.head.state_dict(), strict=False)
    assert not unexpected and missing and all(name.startswith("skip.") for name in missing)
    assert skipping.init_may_add() == ({"output_stride": 8}, ("skip.",)) and plain.init_may_add() == ({}, ())
    return plain.eval(), skipping.eval()


def test_an_untrained_skip_keeps_the_stride_32_maps_and_caches_the_unmasked_pool3(pair):
    plain, skipping = pair
    images = torch.rand(5, 3, 64, 64)
    (expected, _), (got, _) = plain.predict_group(images, 2), skipping.predict_group(images, 2)
    torch.testing.assert_close(got, expected, atol=0, rtol=0)
    with torch.no_grad():
        cached = skipping.encode_for_cache(images)
        assert set(cached) - set(plain.encode_for_cache(images)) == {SKIP_INPUT}
        torch.testing.assert_close(cached[SKIP_INPUT], skipping.encode(images)[0])  # pool3 as the image gives it
        (from_cache,) = skipping.forward_from_cache(cached, (64, 64))
    torch.testing.assert_close(from_cache.sigmoid()[:, 0], expected, atol=1e-6, rtol=0)


def test_a_trained_skip_draws_the_maps_from_the_unmasked_pool3(pair):
    plain, _ = pair
    from .test_gwd_skip import assert_a_trained_skip_reads

    skipping = MaskGuidedFcn(plain.backbone, soft_masks, {"output_stride": 8}).eval()
    assert_a_trained_skip_reads(plain, skipping, torch.rand(3, 3, 64, 64), SKIP_INPUT)  # stride 32 never reads it

    # Where the mask is zero the masked branches are blind, and the skip still sees the image: with all-zero
    # masks two images get one map at stride 32 and two different maps with the skip.
    blind = MaskGuidedFcn(plain.backbone, lambda relu5_3: torch.zeros(relu5_3.shape[0], *relu5_3.shape[-2:]),
                          {"output_stride": 8}).eval()  # fmt: skip
    blind.head.load_state_dict(skipping.head.state_dict())
    with torch.no_grad():
        silent = blind.encode_for_cache(torch.rand(2, 3, 64, 64))
        silent[SKIP_INPUT] = torch.rand_like(silent[SKIP_INPUT]) * 1000  # a trained VGG-16's scale
        (unseen,) = plain.forward_from_cache(silent, (64, 64))
        (seen,) = blind.forward_from_cache(silent, (64, 64))
    torch.testing.assert_close(unseen[0], unseen[1])
    assert (seen[0] - seen[1]).abs().max() > 1e-3


def test_the_skip_learns_from_its_zero_start(pair):
    plain, _ = pair
    from .test_gwd_skip import assert_the_skip_learns_from_zero

    skipping = MaskGuidedFcn(plain.backbone, soft_masks, {"output_stride": 8}).train()
    assert_the_skip_learns_from_zero(skipping, torch.rand(3, 3, 64, 64))


def test_a_stride_the_network_cannot_build_is_a_value_error():
    with pytest.raises(ValueError, match="output_stride is one of"):
        MaskGuidedFcn(VGG16Features(), soft_masks, {"output_stride": 16})


@pytest.mark.weights
def test_cosal_train_adds_the_skip_to_the_bundled_head_and_csmg_loads_it(tmp_path, real_weights, monkeypatch):
    from cosal_cli.methods import csmg

    from .test_feature_cache import toy_group, write_toy

    backbone = real_weights("vgg16-imagenet")
    monkeypatch.setattr(csmg.Method, "input_size", 128)  # pool5 at 4 x 4, pool3 at 16 x 16
    toy = write_toy(tmp_path, per_group=6)
    # The bundled head without its skip, saved as before csmg had an output stride (its config does not say 32)
    bundled = load_tensors(Path(csmg.__file__).parents[1] / "weights" / "csmg-head.safetensors")
    start = tmp_path / "start.safetensors"
    config = {key: value for key, value in bundled.metadata["config"].items() if key != "output_stride"}
    save_head(start, {name: tensor for name, tensor in bundled.tensors.items() if not name.startswith("skip.")},
              {**bundled.metadata, "config": config})  # fmt: skip
    output = tmp_path / "skip.safetensors"
    result = CliRunner().invoke(app, [
        "train", "-m", "csmg", "--data", str(toy["data"]), "--split", str(toy["split"]), "--size", "128",
        "--val-limit", "3", "--device", "cpu", "--threads", "1", "--offline", "--lr", "1e-3", "--epochs", "2",
        "--cache-dir", str(tmp_path / "cache"), "--cache-views", "1", "--output-stride", "8", "--init", str(start),
        "--output", str(output)])  # fmt: skip
    assert result.exit_code == 0, result.output
    head, begun = load_tensors(output), load_tensors(start)
    assert head.metadata["config"] == {**begun.metadata["config"], "output_stride": 8}
    assert set(head.tensors) - set(begun.tensors) == {name for name in head.tensors if name.startswith("skip.")}
    assert head.tensors["skip.score.weight"].abs().max() > 0  # learnt from zero
    method = csmg.Method({"backbone": backbone, "head": output}, torch.device("cpu"))
    before = csmg.Method({"backbone": backbone, "head": start}, torch.device("cpu"))
    assert method.network.skips and not before.network.skips
    images, _ = toy_group(toy["data"], "c")
    images = torch.nn.functional.interpolate(images, size=128, mode="bilinear")
    maps, start_maps = method.predict_group(images), before.predict_group(images)
    assert maps.shape == start_maps.shape == (len(images), 128, 128) and torch.isfinite(maps).all()
    assert (maps - start_maps).abs().max() > 1e-3  # trained: its maps moved away from the start head's
