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

from .conftest import EXAMPLES, assert_maps_agree


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
def test_gicd_exports_its_passes_and_they_give_torchs_maps(tmp_path, linked_home):
    from cosal_cli.methods.loader import load_method

    linked_home("efficientnet-lite0-imagenet")
    description = export(tmp_path, "gicd", "--opset", "18")
    assert [entry["graph"] for entry in description["files"]] == ["group", "consensus", "gim"]
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


@pytest.mark.weights
def test_icnets_decode_graph_takes_the_whole_groups_sivs_beside_a_chunk(tmp_path, linked_home):
    """As export.json says: encode each chunk, concatenate the SIVs, decode each chunk against all of them."""
    from cosal_cli.methods.loader import load_method

    linked_home("vgg16-imagenet", "efficientnet-lite0-imagenet")
    description = export(tmp_path, "icnet", "--outsiders", "keep")
    assert [entry["graph"] for entry in description["files"]] == ["encode", "decode"]
    method = load_method("icnet", "cpu", 8, True, options=None)
    method.options, method.classifier = type(method.options)(outsiders="keep"), None
    images = example_batch()
    with torch.inference_mode():
        sisms = method.sisms(images, None).numpy()
        expected = method.predict_group(images).numpy()
    encode, decode = session(tmp_path / "icnet.encode.onnx"), session(tmp_path / "icnet.decode.onnx")
    chunks = [slice(0, 3), slice(3, 8)]
    encoded = [encode.run(None, {"images": images[part].numpy(), "sisms": sisms[part]}) for part in chunks]
    group = [np.concatenate(level) for level in zip(*(outputs[6:] for outputs in encoded))]
    names = [entry["inputs"] for entry in description["files"]][1]
    maps = np.concatenate([decode.run(None, dict(zip(names, [*outputs[:6], sisms[part], *group])))[0]
                           for part, outputs in zip(chunks, encoded)])  # fmt: skip
    assert maps.shape == expected.shape
    # ONNX Runtime's convolutions round differently from torch's (1e-6), which can swap two of ICNet's ranks
    # (measured here: 0.1 % of one image's pixels, by at most 5.4/255)
    assert_maps_agree(np.rint(np.abs(maps - expected) * 255), 2, rank_swaps=True)


def test_a_method_without_graphs_and_a_bad_opset_are_usage_errors(tmp_path):
    result = CliRunner().invoke(app, ["export", "-m", "gmr", "-o", str(tmp_path), "--offline"])
    assert result.exit_code == 2 and "cannot be exported to ONNX" in result.output
    result = CliRunner().invoke(app, ["export", "-m", "sod", "-o", str(tmp_path), "--opset", "3", "--offline"])
    assert result.exit_code == 2 and "--opset 3" in result.output


# -- --backend onnxruntime -------------------------------------------------------------------------


def read_maps(folder):
    return {path.relative_to(folder): np.asarray(Image.open(path), dtype=int) for path in sorted(folder.rglob("*.png"))}


@pytest.mark.weights
@pytest.mark.parametrize("method", ["sod", "gicd", "gs", "csmg-mask", "gwd", "csmg", "icnet"])
def test_detect_with_onnxruntime_gives_torchs_maps_and_exports_once(tmp_path, linked_home, monkeypatch, method):
    from cosal_cli.methods import onnx_backend

    home = linked_home("vgg16-imagenet", "efficientnet-lite0-imagenet")
    exported = []
    real_write = onnx_backend.write_graph
    monkeypatch.setattr(onnx_backend, "write_graph", lambda graph, path, *rest: exported.append(path.name) or
                        real_write(graph, path, *rest))  # fmt: skip
    runs = {}
    for backend in ("torch", "onnxruntime", "onnxruntime"):
        out = tmp_path / f"{backend}-{len(runs)}"
        result = CliRunner().invoke(app, ["detect", str(EXAMPLES), "-o", str(out), "-m", method, "--offline", "--json",
                                          "--backend", backend, "--batch-size", "5"])  # fmt: skip
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["backend"] == backend
        runs[out.name] = read_maps(out)
    torch_maps, first, second = runs.values()
    assert first.keys() == torch_maps.keys() and len(first) == 14
    for key in first:  # within 2/255 (icnet: up to a rank swap, see assert_maps_agree)
        assert_maps_agree(np.abs(first[key] - torch_maps[key]), 2, rank_swaps=method == "icnet")
    assert all(np.array_equal(first[key], second[key]) for key in first)
    expected = {"sod": ["sod.sod.onnx"], "gicd": ["gicd.group.onnx", "gicd.consensus.onnx", "gicd.gim.onnx"],
                "gs": ["gs.encode.onnx", "gs.decode.onnx"], "csmg-mask": ["csmg-mask.relu5_3.onnx"],
                "gwd": ["gwd.encode.onnx", "gwd.subsets.onnx"], "csmg": ["csmg.encode.onnx", "csmg.decode.onnx"],
                "icnet": ["icnet.encode.onnx", "icnet.decode.onnx", "icnet.classify.onnx"]}
    assert exported == expected[method]  # the second run used the cached graphs
    assert [path.name for path in (home / "onnx").iterdir()][0].startswith(f"{method}-")


@pytest.mark.weights
def test_the_python_api_takes_the_backend(linked_home):
    import cosal_cli

    linked_home("vgg16-imagenet")
    pictures = sorted((EXAMPLES / "Image" / "cat").glob("*.jpg"))[:3]
    on_torch = cosal_cli.load("sod", device="cpu", offline=True).predict(pictures)
    on_onnx = cosal_cli.load("sod", device="cpu", offline=True, backend="onnxruntime").predict(pictures)
    assert max(float(np.abs(a - b).max()) for a, b in zip(on_torch, on_onnx)) < 2 / 255


def test_cuda_without_the_cuda_provider_is_a_usage_error_naming_the_package():
    from cosal_cli.errors import UsageError
    from cosal_cli.methods.onnx_backend import providers

    assert providers(torch.device("cpu")) == ["CPUExecutionProvider"]
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    with pytest.raises(UsageError, match="pip install onnxruntime-gpu"):
        providers(torch.device("cuda"))


def test_a_method_without_graphs_cannot_run_on_onnxruntime(tmp_path):
    result = CliRunner().invoke(app, ["detect", str(EXAMPLES), "-o", str(tmp_path), "-m", "gmr", "--backend",
                                      "onnxruntime", "--offline"])  # fmt: skip
    assert result.exit_code == 2 and "cannot be exported to ONNX or run in onnxruntime" in result.output
    result = CliRunner().invoke(app, ["detect", str(EXAMPLES), "-o", str(tmp_path), "--backend", "tf"])
    assert result.exit_code == 2 and "--backend must be torch or onnxruntime" in result.output
