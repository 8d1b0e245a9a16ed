"""gicd's tuned pyramid (`cosal train --method gicd --tune-encoder`): a trainable copy of Lite0's early
blocks that the decoder reads, while the classifier (consensus and gradient) stays frozen."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cosal_cli.cli import app
from cosal_cli.models.heads import load_tensors
from cosal_cli.training import trainer

from .test_feature_cache import example_cats, toy_group, write_toy


@pytest.fixture(scope="module")
def lite_file(real_weights):
    return real_weights("efficientnet-lite0-imagenet")


def build(lite_file, **config):
    from cosal_cli.models.efficientnet_lite import EfficientNetLite0
    from cosal_cli.models.gicd_lite import GicdLite

    torch.manual_seed(0)
    return GicdLite(EfficientNetLite0.from_file(lite_file), config)


@pytest.mark.weights
def test_the_tuned_pyramid_starts_as_the_classifiers_own_taps(lite_file):
    plain, tuned = build(lite_file), build(lite_file, tune_encoder=True)
    images = example_cats(96)[:3]
    with torch.no_grad():
        (plain_taps, plain_features), (tuned_taps, tuned_features) = plain.encode(images), tuned.encode(images)
    assert [tap.shape[1] for tap in tuned_taps] == [16, 24, 40, 112]
    for a, b in zip(plain_taps, tuned_taps):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert torch.equal(plain_features, tuned_features)
    assert not plain.config.get("tune_encoder") and "encoder.stem.weight" not in plain.head.state_dict()


@pytest.mark.weights
def test_a_loss_moves_the_tuned_pyramid_at_a_tenth_of_the_rate_and_never_the_classifier(lite_file):
    network = build(lite_file, tune_encoder=True).train()
    groups = network.parameter_groups(1e-3)
    assert [group["lr"] for group in groups] == pytest.approx([1e-3, 1e-4])
    chosen = trainer._parameter_groups(network, 1e-3, 0.5)  # cosal train --encoder-lr-scale 0.5
    assert [group["lr"] for group in chosen] == pytest.approx([1e-3, 5e-4])
    assert [group["lr_scale"] for group in chosen] == [1.0, 0.5]
    encoder = set(map(id, network.head.encoder.parameters()))
    assert encoder == set(map(id, groups[1]["params"])) and not encoder & set(map(id, groups[0]["params"]))
    outputs = network(example_cats(64)[:3])
    sum(output.mean() for output in outputs).backward()
    assert all(param.grad is not None and param.grad.abs().sum() > 0 for param in network.head.encoder.parameters())
    assert all(param.grad is None and not param.requires_grad for param in network.classifier.parameters())
    optimiser = torch.optim.Adam(groups)
    trainer._set_lr(optimiser, 2e-3, 0, 10)  # the schedule keeps each group's scale
    assert [group["lr"] for group in optimiser.param_groups] == pytest.approx([2e-3, 2e-4])


@pytest.mark.weights
def test_cosal_train_tunes_the_encoder_of_a_head_that_had_none_and_gicd_loads_it(tmp_path, lite_file, monkeypatch):
    from cosal_cli.methods import gicd

    monkeypatch.setattr(gicd.Method, "input_size", 64)
    toy = write_toy(tmp_path)
    base = ["train", "-m", "gicd", "--data", str(toy["data"]), "--split", str(toy["split"]), "--size", "64",
            "--min-group", "2", "--max-group", "3", "--val-limit", "2", "--device", "cpu", "--threads", "1",
            "--offline", "--lr", "0.003"]  # fmt: skip
    start = tmp_path / "start.safetensors"
    result = CliRunner().invoke(app, [*base, "--output", str(start), "--epochs", "1"])
    assert result.exit_code == 0, result.output
    tuned = tmp_path / "tuned.safetensors"
    result = CliRunner().invoke(app, [*base, "--output", str(tuned), "--epochs", "2", "--tune-encoder",
                                      "--encoder-lr-scale", "0.5", "--outsider-fraction", "0.3", "--init",
                                      str(start)])  # fmt: skip
    assert result.exit_code == 0, result.output
    head, begun = load_tensors(tuned), load_tensors(start)
    assert head.metadata["config"] == {"channels": 32, "tune_encoder": True}
    assert head.metadata["training"]["init"]["from"] == str(start)
    assert set(head.tensors) - set(begun.tensors) == {name for name in head.tensors if name.startswith("encoder.")}
    copied = build(lite_file, tune_encoder=True).head.state_dict()
    moved = [name for name in head.tensors if name.startswith("encoder.") and not torch.equal(
        head.tensors[name], copied[name])]  # fmt: skip
    assert len(moved) > 10, moved
    method = gicd.Method({"backbone": lite_file, "head": tuned}, torch.device("cpu"))
    assert method.network.tunes_encoder
    images, masks = toy_group(toy["data"], "c")
    maps = method.predict_group(images)
    assert maps.shape == (4, 64, 64) and np.isfinite(maps.numpy()).all()
    assert maps[masks].mean() > maps[~masks].mean(), (maps[masks].mean(), maps[~masks].mean())
    # the other way round, a tuned head cannot start a run without a tuned encoder
    result = CliRunner().invoke(app, [*base, "--output", str(tmp_path / "back.safetensors"), "--init", str(tuned)])
    assert result.exit_code == 2 and "config" in result.output


def test_tune_encoder_is_refused_where_it_cannot_work(tmp_path):
    toy = write_toy(tmp_path)
    base = ["train", "--data", str(toy["data"]), "--split", str(toy["split"]), "--output",
            str(tmp_path / "h.safetensors"), "--tune-encoder"]  # fmt: skip
    result = CliRunner().invoke(app, [*base, "-m", "sod"])
    assert result.exit_code == 2 and "--tune-encoder does not apply" in result.output
    assert "methods that tune one: gicd, gwd" in " ".join(result.output.split())
    result = CliRunner().invoke(app, [*base, "-m", "gicd", "--cache-views", "1", "--offline"])
    assert result.exit_code == 2 and "trains from images" in result.output
    result = CliRunner().invoke(app, [*base, "-m", "gicd", "--encoder-lr-scale", "0", "--offline"])
    assert result.exit_code == 2 and "drop --tune-encoder" in result.output
    untuned = [arg for arg in base if arg != "--tune-encoder"]
    result = CliRunner().invoke(app, [*untuned, "-m", "gicd", "--encoder-lr-scale", "0.5", "--offline"])
    assert result.exit_code == 2 and "use it with --tune-encoder" in result.output


@pytest.mark.parametrize(("written", "given"), [(None, 0.5), (0.5, None), (0.5, 0.25)])
def test_resume_refuses_a_checkpoint_written_with_another_encoder_rate(tmp_path, written, given):
    from cosal_cli.errors import UsageError
    from cosal_cli.models.heads import save_tensors
    from cosal_cli.splits import Split
    from cosal_cli.training.checkpoints import CHECKPOINT_FORMAT, load_checkpoint

    def settings(scale):
        split = Split("toy", tmp_path / "split.yaml", "0" * 64, {})
        return trainer.TrainSettings(method="gicd", data=[tmp_path], split=split, output=tmp_path / "h.safetensors",
                                     config={"tune_encoder": True}, encoder_lr_scale=scale)  # fmt: skip

    save_tensors(settings(written).checkpoint, {"head.x": torch.zeros(1)},
                 {"format": CHECKPOINT_FORMAT, "fingerprint": settings(written).fingerprint()})  # fmt: skip
    with pytest.raises(UsageError, match="different encoder_lr_scale"):
        load_checkpoint(settings(given), None, None, print)
