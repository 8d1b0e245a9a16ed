"""On a CUDA device (``pytest -m cuda``; benchmarks/gpu_check.sh runs these): CUDA gives the CPU's maps."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cosal_cli.cli import app

from .conftest import EXAMPLES, assert_maps_agree

pytestmark = pytest.mark.cuda


def detect(out, method: str, device: str, *extra: str) -> dict:
    result = CliRunner().invoke(app, ["detect", str(EXAMPLES / "Image" / "cat"), "-o", str(out), "-m", method,
                                      "--device", device, "--offline", "--json", "--quiet", *extra])  # fmt: skip
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.weights
@pytest.mark.parametrize("method", ["gicd", "sod", "icnet", "gs"])
def test_cuda_maps_equal_the_cpu_maps(method, tmp_path, linked_home):
    linked_home("vgg16-imagenet", "efficientnet-lite0-imagenet")
    summaries = {device: detect(tmp_path / device, method, device) for device in ("cpu", "cuda")}
    assert summaries["cuda"]["device"].startswith("cuda")
    for path in sorted((tmp_path / "cpu" / "cat").glob("*.png")):
        on_cpu = np.asarray(Image.open(path), dtype=int)
        on_cuda = np.asarray(Image.open(tmp_path / "cuda" / "cat" / path.name), dtype=int)
        assert_maps_agree(np.abs(on_cpu - on_cuda), 2, rank_swaps=method == "icnet")
