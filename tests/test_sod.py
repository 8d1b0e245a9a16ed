"""The shipped `sod` head: what the manifest pins, what its metadata promises, and that it works.

The head is a bundled component (inside the package), so these tests need only the VGG-16
backbone from the cache. The example cats are mostly *training* images of the head (the split
holds out 2 of the 14), so the quality checks here are sanity floors; the held-out scores are
measured with `cosal bench --split` and reported in the README.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cosal_cli import methods

from .conftest import EXAMPLES, check_shipped_head, detect_examples

pytestmark = pytest.mark.weights


@pytest.fixture(scope="module")
def sod_weights(real_hub, real_weights):
    roles = real_hub.manifest.roles("sod")
    return {role: real_weights(component) for role, component in roles.items()}


def test_the_head_is_a_small_bundled_component_trained_on_the_shipped_split(real_hub, sod_weights):
    metadata = check_shipped_head(real_hub, "sod", sod_weights["head"], max_bytes=6_000_000)  # "a few MB"
    kept = metadata["validation"]["kept"]
    assert 0.0 < kept["mae"] < 0.5 and kept["sm"] > 0.5


def test_sod_is_a_sism_generator_loadable_by_other_methods(real_hub, sod_weights, monkeypatch):
    from cosal_cli.methods.loader import load_method

    monkeypatch.setenv("COSAL_HOME", str(real_hub.home))
    monkeypatch.delenv("COSAL_MANIFEST", raising=False)
    assert {"sod", "gmr"} <= set(methods.sism_generators())
    assert "csmg-mask" not in methods.sism_generators()
    method = load_method("sod", torch.device("cpu"), offline=True)
    assert method.name == "sod" and not method.network.training


def test_each_image_is_predicted_alone(sod_weights):
    from cosal_cli.methods.sod import Method as Sod

    method = Sod(sod_weights, torch.device("cpu"), batch_size=2)
    files = sorted((EXAMPLES / "Image" / "cat").glob("*.jpg"))[:3]
    pixels = np.stack([np.asarray(Image.open(path).convert("RGB").resize((224, 224))) for path in files])
    batch = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    with torch.inference_mode():
        together = method.predict_group(batch)
        alone = torch.cat([method.predict_group(batch[i : i + 1]) for i in range(len(files))])
    assert together.shape == (3, 224, 224) and 0.0 <= float(together.min()) and float(together.max()) <= 1.0
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)  # no group context, no batch effects
    assert float(together.std()) > 0.1  # a real map, not a constant


def test_detect_with_sod_finds_the_cats(real_hub, sod_weights, tmp_path, monkeypatch):
    monkeypatch.setenv("COSAL_HOME", str(real_hub.home))
    monkeypatch.delenv("COSAL_MANIFEST", raising=False)
    summary, scores = detect_examples(tmp_path / "maps", "--method", "sod")
    assert summary["method"] == "sod"
    # Measured with the shipped head: 13x to 83x brighter on the cats than off them, AUC 0.89 to 0.995
    # (mean 0.97); the two held-out photos (group0255_jpg, group0294_jpeg) score AUC 0.99 and 0.97.
    assert all(ratio > 5 for ratio, _ in scores.values()), scores
    aucs = [value for _, value in scores.values()]
    assert min(aucs) > 0.8 and float(np.mean(aucs)) > 0.9, scores
