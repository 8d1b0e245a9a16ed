"""The CPU-only parts of the benchmark scripts (throughput.py, overlapped_io.py, gpu_check.sh, tune_membership.py,
csmg_mask_ceiling.py)."""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from cosal_cli.models.membership import Membership

from .conftest import EXAMPLES, REPO, auc


@pytest.mark.weights
def test_the_throughput_benchmark_prints_each_methods_rate_beside_its_backbone(linked_home):
    linked_home("vgg16-imagenet", "efficientnet-lite0-imagenet")
    command = [sys.executable, str(REPO / "benchmarks" / "throughput.py"), "--quick", "--methods", "gicd",
               "--threads", "1", "--precision", "fp32", "bf16", "--tta", "none", "flip", "--resize", "224"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "backbone bound (batch 8, 224 px): efficientnet-lite0 fp32" in result.stdout
    assert "efficientnet-lite0 bf16" in result.stdout and "re-encoded at 224 x 224" in result.stdout
    for precision, tta in itertools.product(("fp32", "bf16"), ("none", "flip")):
        row = re.search(rf"^gicd\s+{precision}\s+pillow\s+{tta}\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+(\d+)%$",
                        result.stdout, re.MULTILINE)  # fmt: skip
        assert row is not None, result.stdout
        few, many, bound, ratio = (float(value) for value in row.groups())
        assert few > 0 and many > 0 and bound > 0 and abs(ratio - 100 * few / bound) <= 1


@pytest.mark.weights
def test_the_overlapped_io_benchmark_accounts_for_each_stage_and_the_wall_time(linked_home):
    linked_home("efficientnet-lite0-imagenet")
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "overlapped_io.py"), "--quick", "--methods",
                             "gicd", "--threads", "1"], capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = re.findall(r"^gicd\s+(\S+)" + r"\s+([\d.]+)" * 5 + r"\s+([\d.]+)\+([\d.]+)\s+([\d.]+)$", result.stdout,
                      re.MULTILINE)  # fmt: skip
    assert [row[0] for row in rows] == ["examples", "640x480"], result.stdout
    for _, decode, compute, write, total, wall, decode_wait, write_wait, ratio in rows:
        decode, compute, write, total, wall = (float(value) for value in (decode, compute, write, total, wall))
        assert abs(decode + compute + write - total) <= 0.02 and compute <= wall
        # the main thread waited at most for what the other threads did
        assert float(decode_wait) <= decode + 0.01 and float(write_wait) <= write + 0.01
        # the ratio of the unrounded times, within what rounding each to 0.01 s allows
        assert (total - 0.005) / (wall + 0.005) - 0.005 <= float(ratio) <= (total + 0.005) / (wall - 0.005) + 0.005


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer on a machine without CUDA")
def test_the_gpu_check_says_there_is_no_cuda_and_writes_its_result_file(tmp_path):
    result_file = tmp_path / "gpu_check.txt"
    # a weight file carried in parts (it does not fit the device tool's 64 MiB in one call) is joined first
    home, weights = tmp_path / "home", os.urandom(3000)
    (home / "parts").mkdir(parents=True)
    for index, start in enumerate(range(0, 3000, 1024)):
        (home / "parts" / f"abc.safetensors.part-a{'abc'[index]}").write_bytes(weights[start : start + 1024])
    environment = {**os.environ, "PYTHON": sys.executable, "COSAL_HOME": str(home)}
    environment.pop("OUT", None)
    run = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), str(result_file)], capture_output=True,
                         text=True, env=environment, timeout=120)  # fmt: skip
    assert run.returncode == 2, run.stdout + run.stderr
    text = result_file.read_text()
    assert text.startswith("cosal gpu_check ") and "no CUDA device visible" in text
    assert (home / "weights" / "abc.safetensors").read_bytes() == weights
    assert [path.name for path in (home / "weights").iterdir()] == ["abc.safetensors"]


def _scored_group(tune_membership, with_outsider: bool):
    """One cat group's Scored: six alike images (one a little less sure of the cat, its map barely above
    0.5) and, optionally, an outsider whose logits hold the same values on unrelated classes."""
    generator = torch.Generator().manual_seed(0)
    profile = 2.0 * torch.randn(1000, generator=generator)
    logits = profile + 0.1 * torch.randn(7, 1000, generator=generator)
    logits[6] = profile[torch.randperm(1000, generator=generator)]
    logits[:, 281] = 12.0
    logits[5, 281] = 9.0  # about 3 nats of agreement below the median image
    peak = np.array([230.0] * 5 + [140.0, 200.0])
    keep = slice(None) if with_outsider else slice(0, 6)
    outsider = np.array([False] * 6 + [True])
    return tune_membership.Scored(logits=[logits[keep]], outsider=outsider[keep], peak=peak[keep],
                                  mean=np.full(7, 40.0)[keep], has_object=~outsider[keep])  # fmt: skip


def test_tune_membership_takes_each_shapes_smallest_safe_offset_and_the_lowest_ratio(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import tune_membership

    tuning = (_scored_group(tune_membership, True), _scored_group(tune_membership, False))
    shapes = [Membership(0.0, 0.5, 0.0), Membership(0.0, 0.5, 20.0)]
    choices = tune_membership.tune(tuning, shapes, max_lost=0.01)
    (best, best_ratio), (other, other_ratio) = choices
    assert best.similarity == 20.0 and best_ratio < 0.1 < 0.9 < other_ratio  # the agreement cannot see it
    # the outsider scores below every cat with the similarity, above the unsure cat without it
    assert tune_membership.separation(tuning[0], best) == 1.0
    assert tune_membership.separation(tuning[0], other) < 1.0
    for membership in (best, other):  # the smallest offset that keeps the unsure cat's map above 0.5
        assert tuning[1].lost(tuning[1].weights(membership)) == 0.0
        lower = replace(membership, offset=membership.offset - 0.25)
        assert tuning[1].lost(tuning[1].weights(lower)) > 0.01


def test_the_csmg_mask_ceilings_ground_truth_masks_are_the_masks_share_of_each_relu5_3_cell(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from csmg_mask_ceiling import ground_truth_masks

    left = np.zeros((224, 224), np.uint8)
    left[:, :120] = 255  # 7 cells of 16 columns, and half of the eighth
    empty = np.zeros((50, 40), np.uint8)  # an outsider's mask, of another size than the input
    masks = ground_truth_masks([left, empty], 224, (14, 14))
    assert masks.shape == (2, 14, 14) and masks.dtype == torch.float32
    assert torch.equal(masks[0, :, :7], torch.ones(14, 7)) and torch.equal(masks[0, :, 8:], torch.zeros(14, 6))
    assert torch.allclose(masks[0, :, 7], torch.full((14,), 0.5))
    assert torch.equal(masks[1], torch.zeros(14, 14))
    stretched = ground_truth_masks([left[::2]], 224, (14, 14))[0]  # resized to the input, as its image is
    assert torch.allclose(stretched, masks[0], atol=0.02)


@pytest.mark.weights
def test_the_csmg_mask_ceiling_swaps_stage_1_alone(linked_home, monkeypatch):
    """With the ADMM in place it gives the shipped csmg's maps to the bit; the ground-truth masks change them,
    and on the examples guide the FCN better than the ADMM masks and no masks (all ones) do."""
    import cosal_cli

    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from csmg_mask_ceiling import STAGE_ONE, SwappedStageOne

    linked_home("vgg16-imagenet")
    images = sorted((EXAMPLES / "Image" / "cat").glob("*.jpg"))
    masks_of = {image: EXAMPLES / "GroundTruth" / "cat" / f"{image.stem}.png" for image in images}
    maps = {stage: SwappedStageOne(stage, masks_of, "off").predict(images) for stage in STAGE_ONE}
    shipped = cosal_cli.load("csmg", device="cpu", offline=True, smoothing="off").predict(images)
    assert all(np.array_equal(ours, theirs) for ours, theirs in zip(maps["admm"], shipped))
    targets = [np.asarray(Image.open(masks_of[image]).convert("L")) > 127 for image in images]
    mean_auc = {stage: np.mean([auc(m, t) for m, t in zip(values, targets)]) for stage, values in maps.items()}
    assert mean_auc["ground-truth"] > max(mean_auc["admm"], mean_auc["none"]), mean_auc  # .993, .975, .978
    assert not any(np.array_equal(a, b) for a, b in zip(maps["ground-truth"], maps["admm"]))
    with pytest.raises(ValueError, match="stage 1 is one of"):
        SwappedStageOne("oracle", masks_of)
