"""gwd's tuned conv5 (`cosal train --method gwd --tune-encoder`): a low-rank update of VGG-16's conv5
weights, trained from cached pool4 features, while VGG-16 itself stays frozen."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cosal_cli.cli import app
from cosal_cli.models.gwd import GroupWiseFcn
from cosal_cli.models.heads import load_tensors, save_head
from cosal_cli.models.vgg import VGG16Features
from cosal_cli.training import trainer

from .test_feature_cache import toy_group, write_toy


def pair() -> tuple[GroupWiseFcn, GroupWiseFcn]:
    """GWD without and with the tuned conv5, on one randomly initialised VGG-16 and with the same blocks."""
    torch.manual_seed(0)
    backbone = VGG16Features().eval().requires_grad_(False)
    plain, tuned = GroupWiseFcn(backbone), GroupWiseFcn(backbone, {"tune_encoder": True})
    missing, unexpected = tuned.head.load_state_dict(plain.head.state_dict(), strict=False)
    assert not unexpected and missing and all(name.startswith("conv5.") for name in missing)
    return plain.eval(), tuned.eval()


def test_an_untrained_update_is_vgg16s_own_conv5():
    plain, tuned = pair()
    images = torch.rand(6, 3, 64, 64)
    assert torch.equal(plain.predict_group(images, 5), tuned.predict_group(images, 5))
    with torch.no_grad():
        untuned, cached = plain.encode_for_cache(images[:5]), tuned.encode_for_cache(images[:5])
        assert set(untuned) == {"relu5_3", "descriptor"} and set(cached) == {"pool4", "descriptor"}
        # the neighbours of a sample come from the frozen relu5_3 either way, so they never move
        assert torch.equal(untuned["descriptor"], cached["descriptor"])
        (expected,) = plain.forward_from_cache(untuned, (64, 64))
        (got,) = tuned.forward_from_cache(cached, (64, 64))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    shapes = {name: tuple(value.shape) for name, value in tuned.head.state_dict().items() if name.startswith("conv5.")}
    assert shapes == {**{f"conv5.down.{i}": (32, 4608) for i in range(3)}, **{f"conv5.up.{i}": (512, 32)
                                                                            for i in range(3)}}  # fmt: skip


def test_a_step_moves_the_update_at_its_own_rate_and_never_vgg16():
    _, network = pair()
    groups = network.parameter_groups(1e-3)
    assert [group["lr"] for group in groups] == pytest.approx([1e-3, 1e-3])  # the update starts at 0: learnt
    chosen = trainer._parameter_groups(network, 1e-3, 0.25)  # cosal train --encoder-lr-scale 0.25
    assert [group["lr"] for group in chosen] == pytest.approx([1e-3, 2.5e-4])
    update = set(map(id, network.head.conv5.parameters()))
    assert update == set(map(id, groups[1]["params"])) and not update & set(map(id, groups[0]["params"]))
    network.train()
    images = torch.rand(5, 3, 64, 64)
    before = network.backbone.features[24].weight.clone()
    with torch.no_grad():
        frozen_relu5_3 = network.backbone.features[:30](images)
    optimiser = torch.optim.Adam(groups)
    for _ in range(2):  # the first step moves `up` (the gradient of `down` is zero while `up` is)
        optimiser.zero_grad()
        network.forward_from_cache(network.encode_for_cache(images), (64, 64))[0].sigmoid().mean().backward()
        optimiser.step()
    assert all(param.grad is not None and param.grad.abs().sum() > 0 for param in network.head.conv5.parameters())
    assert all(param.grad is None for param in network.backbone.parameters())
    assert torch.equal(network.backbone.features[24].weight, before)
    with torch.no_grad():
        assert not torch.allclose(network.encode(images)[0], frozen_relu5_3, atol=1e-6)


@pytest.mark.weights
def test_cosal_train_tunes_conv5_then_adds_the_skip_from_the_cache_and_gwd_loads_both(tmp_path, real_weights,
                                                                                      monkeypatch):  # fmt: skip
    from cosal_cli.methods import gwd

    backbone = real_weights("vgg16-imagenet")
    monkeypatch.setattr(gwd.Method, "input_size", 128)  # relu5_3 at 8 x 8
    toy = write_toy(tmp_path, per_group=6)
    base = ["train", "-m", "gwd", "--data", str(toy["data"]), "--split", str(toy["split"]), "--size", "128",
            "--val-limit", "3", "--device", "cpu", "--threads", "1", "--offline", "--lr", "1e-3",
            "--cache-dir", str(tmp_path / "cache"), "--cache-views", "1"]  # fmt: skip
    start = tmp_path / "start.safetensors"
    result = CliRunner().invoke(app, [*base, "--output", str(start), "--epochs", "2"])
    assert result.exit_code == 0, result.output
    older = load_tensors(start)  # as a head saved before gwd had an output stride: its config does not say 16
    save_head(start, older.tensors, {**older.metadata, "config": {"channels": 128}})
    result = CliRunner().invoke(app, [*base[:-4], "--output", str(tmp_path / "t.safetensors"), "--tune-encoder"])
    assert result.exit_code == 2 and "add --cache-views 1" in result.output  # its sub-groups need the cache
    tuned = tmp_path / "tuned.safetensors"
    result = CliRunner().invoke(app, [*base, "--output", str(tuned), "--epochs", "2", "--tune-encoder",
                                      "--outsider-fraction", "0.2", "--init", str(start)])  # fmt: skip
    assert result.exit_code == 0, result.output
    # the untuned run's cache in the same folder holds relu5_3: the tuned run needs pool4, so it rebuilt it
    assert "building the feature cache" in result.output and "using the feature cache" not in result.output
    head, begun = load_tensors(tuned), load_tensors(start)
    assert head.metadata["config"] == {"channels": 128, "output_stride": 16, "tune_encoder": True}
    assert set(head.tensors) - set(begun.tensors) == {name for name in head.tensors if name.startswith("conv5.")}
    assert all(head.tensors[f"conv5.up.{i}"].abs().max() > 0 for i in range(3))  # learnt from zero
    method = gwd.Method({"backbone": backbone, "head": tuned}, torch.device("cpu"))
    assert method.network.tunes_encoder
    assert_finds_the_object(method, toy["data"])
    # --output-stride 8 from the stride-16 head: only the skip is new, it is learnt from zero, and the cache grows
    skipping = tmp_path / "skip.safetensors"
    result = CliRunner().invoke(app, [*base, "--output", str(skipping), "--tune-encoder", "--output-stride", "8",
                                      "--init", str(tuned)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "building the feature cache" in result.output  # the stride-16 cache has no pool3
    head, begun = load_tensors(skipping), head
    assert head.metadata["config"] == {"channels": 128, "output_stride": 8, "tune_encoder": True}
    assert set(head.tensors) - set(begun.tensors) == {name for name in head.tensors if name.startswith("skip.")}
    assert head.tensors["skip.score.weight"].abs().max() > 0
    method = gwd.Method({"backbone": backbone, "head": skipping}, torch.device("cpu"))
    assert method.network.skips
    assert_finds_the_object(method, toy["data"])


def assert_finds_the_object(method, data):
    images, masks = toy_group(data, "c")
    maps = method.predict_group(torch.nn.functional.interpolate(images, size=128, mode="bilinear"))
    maps = torch.nn.functional.interpolate(maps[:, None], size=64, mode="bilinear")[:, 0]
    assert np.isfinite(maps.numpy()).all()
    assert maps[masks].mean() > maps[~masks].mean() + 0.08, (maps[masks].mean(), maps[~masks].mean())
