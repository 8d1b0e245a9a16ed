"""`cosal export`: ONNX graphs that pass onnx.checker, run in onnxruntime and give torch's maps."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from cosal_cli.cli import app

from .conftest import EXAMPLES


def example_batch(size: int = 224) -> torch.Tensor:
    paths = sorted((EXAMPLES / "Image" / "cat").glob("*.jpg"))
    pixels = np.stack([np.asarray(Image.open(p).convert("RGB").resize((size, size), Image.BILINEAR)) for p in paths])
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255.0


def export(tmp_path, method: str, *extra: str) -> dict:
    result = CliRunner().invoke(app, ["export", "-m", method, "-o", str(tmp_path), "--offline", "--json", *extra])
    assert result.exit_code == 0, result.output
    description = json.loads(result.stdout)
    assert json.loads((tmp_path / "export.json").read_text()) == description
    for entry in description["files"]:
        assert hashlib.sha256((tmp_path / entry["file"]).read_bytes()).hexdigest() == entry["sha256"]
    return description


def session(path):
    import onnxruntime

    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.weights
def test_sod_exports_one_graph_that_gives_torchs_maps_at_any_size(tmp_path, linked_home):
    from cosal_cli.methods.loader import load_method

    linked_home("vgg16-imagenet")
    description = export(tmp_path, "sod")
    assert [entry["graph"] for entry in description["files"]] == ["sod"]
    assert description["weights"]["head"]["component"] == "sod-head" and description["opset"] == 17
    method = load_method("sod", "cpu", 8, True)
    graph = session(tmp_path / "sod.sod.onnx")
    for size in (224, 160):  # dynamic height and width
        images = example_batch(size)
        with torch.inference_mode():
            expected = method.predict_group(images).numpy()
        maps = graph.run(None, {"images": images.numpy()})[0]
        assert maps.shape == expected.shape
        assert np.abs(maps - expected).max() < 2 / 255


@pytest.mark.weights
def test_gicd_exports_its_two_passes_and_they_give_torchs_maps(tmp_path, linked_home):
    from cosal_cli.methods.loader import load_method

    linked_home("efficientnet-lite0-imagenet")
    description = export(tmp_path, "gicd", "--opset", "18")
    assert [entry["graph"] for entry in description["files"]] == ["consensus", "gim"]
    assert description["opset"] == 18
    images = example_batch()
    logits = np.concatenate([session(tmp_path / "gicd.consensus.onnx").run(None, {"images": part.numpy()})[0]
                             for part in images.split(3)])  # fmt: skip
    total = logits.sum(axis=0, keepdims=True)
    consensus = np.exp(total - total.max()) / np.exp(total - total.max()).sum()
    maps = session(tmp_path / "gicd.gim.onnx").run(None, {"images": images.numpy(),
                                                           "consensus": consensus.astype(np.float32)})[0]
    method = load_method("gicd", "cpu", 3, True, options=None)
    method.options = type(method.options)(outsiders="keep")
    with torch.inference_mode():
        expected = method.predict_group(images).numpy()  # 8 images in chunks of 3: the consensus pass first
    assert np.abs(maps - expected).max() < 2 / 255


def test_a_method_without_graphs_and_a_bad_opset_are_usage_errors(tmp_path):
    result = CliRunner().invoke(app, ["export", "-m", "gmr", "-o", str(tmp_path), "--offline"])
    assert result.exit_code == 2 and "cannot be exported to ONNX yet" in result.output
    result = CliRunner().invoke(app, ["export", "-m", "sod", "-o", str(tmp_path), "--opset", "3", "--offline"])
    assert result.exit_code == 2 and "--opset 3" in result.output
