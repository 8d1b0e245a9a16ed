"""CSMG complete: the mask-guided FCN (stage 2), the label smoothing (stage 3) and the method's switches."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sparse
import torch
from scipy.optimize import minimize

from cosal_cli import methods
from cosal_cli.bench import method_label
from cosal_cli.errors import UsageError
from cosal_cli.methods.csmg import admm_masks
from cosal_cli.methods.options import CsmgOptions
from cosal_cli.models.csmg import MaskGuidedFcn
from cosal_cli.models.vgg import VGG16Features
from cosal_cli.refine import label_smoothing as smoothing


@pytest.fixture(scope="module")
def fcn() -> MaskGuidedFcn:
    """The FCN on a randomly initialised VGG-16: enough to check where the masks go, fast, no weights."""
    torch.manual_seed(0)
    return MaskGuidedFcn(VGG16Features().eval().requires_grad_(False), admm_masks).eval()


def test_masking_changes_the_output(fcn):
    images = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        pool3, relu5_3 = fcn.encode(images)
        ones = fcn.decode(fcn.branch_features(pool3, relu5_3, torch.ones(3, 4, 4)), (64, 64))
        half = torch.ones(3, 4, 4)
        half[:, :, 2:] = 0.0
        masked = fcn.decode(fcn.branch_features(pool3, relu5_3, half), (64, 64))
    assert ones.shape == masked.shape == (3, 1, 64, 64)
    assert (ones - masked).abs().max() > 1e-3 * ones.abs().max()  # random weights: small but real changes


def test_the_mask_reaches_pool3_and_pool5_only(fcn):
    """conv1-conv3 never see the mask; the pool3 branch is conv4-5 of the masked pool3; the pool5
    branch is pool5 times the mask; nothing else."""
    images = torch.rand(2, 3, 64, 64)
    mask = torch.rand(2, 4, 4)
    layers = fcn.backbone.features
    with torch.no_grad():
        pool3, relu5_3 = fcn.encode(images)
        assert torch.equal(pool3, layers[:17](fcn_input(images)))  # encode takes no mask
        branches = fcn.branch_features(pool3, relu5_3, mask)
        mask_at_pool3 = torch.nn.functional.interpolate(mask[:, None], size=(8, 8), mode="bilinear")
        expected_pool3 = layers[17:31](pool3 * mask_at_pool3)
        expected_pool5 = layers[30](relu5_3) * torch.nn.functional.adaptive_avg_pool2d(mask[:, None], (2, 2))
    torch.testing.assert_close(branches["pool3"], expected_pool3)
    torch.testing.assert_close(branches["pool5"], expected_pool5)
    # A zero mask leaves nothing of the image: pool5's branch is zero, pool3's only conv4-5's biases.
    with torch.no_grad():
        silent = fcn.branch_features(pool3, relu5_3, torch.zeros(2, 4, 4))
    assert float(silent["pool5"].abs().max()) == 0.0
    torch.testing.assert_close(silent["pool3"][0], silent["pool3"][1])


def fcn_input(images: torch.Tensor) -> torch.Tensor:
    from cosal_cli.models.vgg import imagenet_normalise

    return imagenet_normalise(images)


@pytest.mark.parametrize("branches", [["pool3"], ["pool5"]])
def test_a_single_branch_network_uses_only_that_branch(branches):
    network = MaskGuidedFcn(VGG16Features().eval(), admm_masks, {"branches": branches})
    with torch.no_grad():
        pool3, relu5_3 = network.encode(torch.rand(2, 3, 64, 64))
        assert set(network.branch_features(pool3, relu5_3, torch.ones(2, 4, 4))) == set(branches)


def test_unknown_branches_are_refused():
    with pytest.raises(ValueError, match="branches"):
        MaskGuidedFcn(VGG16Features(), admm_masks, {"branches": ["pool4"]})


def test_forward_runs_the_sub_group_admm_and_the_head_learns(fcn):
    images = torch.rand(4, 3, 64, 64)
    outputs = fcn(images)
    assert len(outputs) == 1 and outputs[0].shape == (4, 1, 64, 64)
    loss = outputs[0].sigmoid().mean()
    loss.backward()
    assert all(parameter.grad is not None for parameter in fcn.head.parameters())
    assert all(parameter.grad is None for parameter in fcn.backbone.parameters())
    fcn.head.zero_grad()


def random_affinity(nodes: int, seed: int) -> sparse.csr_matrix:
    rng = np.random.default_rng(seed)
    dense = rng.uniform(0.05, 1.0, (nodes, nodes)) * (rng.random((nodes, nodes)) < 0.3)
    dense = np.triu(dense, 1)
    dense = dense + dense.T
    dense[np.arange(nodes - 1), np.arange(1, nodes)] = 0.5  # connected: no zero degree
    dense[np.arange(1, nodes), np.arange(nodes - 1)] = 0.5
    return sparse.csr_matrix(dense)


def test_eq17_closed_form_minimises_the_superpixel_objective():
    """r of eq. 17 against a direct numerical minimisation of eq. 11 with the CRF's linear term."""
    settings = smoothing.SmoothingSettings()
    affinity = random_affinity(30, seed=1)
    rng = np.random.default_rng(2)
    indicator = (rng.random(30) > 0.5).astype(float)
    foreground = rng.random(30)
    closed = smoothing.ranking_scores(smoothing.system_matrix(affinity, settings.lambda4), indicator, foreground,
                                      settings)  # fmt: skip
    weights = affinity.toarray()
    degree = weights.sum(1)

    def energy(r):
        scaled = r / np.sqrt(degree)
        smooth = 0.5 * (weights * (scaled[:, None] - scaled[None, :]) ** 2).sum()
        return smooth + settings.lambda4 * ((r - indicator) ** 2).sum() - (1 - settings.beta) * foreground @ r

    direct = minimize(energy, np.zeros(30), method="L-BFGS-B", options={"gtol": 1e-12, "ftol": 1e-15}).x
    np.testing.assert_allclose(closed, direct, atol=1e-5)
    # ...and it is the dense solve of the same linear system.
    normalised = weights / np.sqrt(degree[:, None] * degree[None, :])
    dense = np.linalg.solve((1 + settings.lambda4) * np.eye(30) - normalised,
                            settings.lambda4 * indicator + (1 - settings.beta) / 2 * foreground)  # fmt: skip
    np.testing.assert_allclose(closed, dense, atol=1e-10)


def disc_group(count: int = 4, size: int = 64, seed: int = 0):
    """Images of a red disc at different places on varied backgrounds, and maps that half-find it."""
    rng = np.random.default_rng(seed)
    images, maps, discs = [], [], []
    rows, columns = np.mgrid[0:size, 0:size]
    for _ in range(count):
        centre = rng.uniform(0.35, 0.65, 2) * size
        disc = np.hypot(rows - centre[0], columns - centre[1]) < size / 5
        background = rng.uniform(40, 200, 3)
        image = np.where(disc[..., None], [220, 40, 40], background) + rng.normal(0, 8, (size, size, 3))
        noisy = np.clip(0.35 + 0.3 * disc + rng.normal(0, 0.25, (size, size)), 0, 1)
        images.append(np.clip(image, 0, 255).astype(np.uint8))
        maps.append(noisy.astype(np.float32))
        discs.append(disc)
    return np.stack(images), np.stack(maps), np.stack(discs)


def test_label_smoothing_cleans_noisy_maps_of_a_group():
    images, maps, discs = disc_group()
    # Deep features stand-in: a "redness" channel and its complement, at 1/16 of the size (as relu5_3).
    red = torch.from_numpy(images[..., 0].astype(np.float32) / 255.0)[:, None]
    features = torch.nn.functional.avg_pool2d(torch.cat([red, 1 - red], dim=1), 16)
    # half the ranking's (the default, 0.7 s, trusts a trained FCN's maps more than these noisy ones)
    settings = smoothing.SmoothingSettings(scales=(40, 80), neighbours=4, output_weight=0.5)
    smoothed = smoothing.smooth_group(images, maps, features, settings)
    assert smoothed.shape == maps.shape and smoothed.dtype == np.float32
    before = ((maps > 0.5) == discs).mean()
    after = ((smoothed > 0.5) == discs).mean()
    assert after > 0.97 and after > before + 0.1


def test_the_group_graph_is_sparse_and_bounded():
    images, _, _ = disc_group(count=6)
    features = torch.rand(6, 8, 4, 4)
    settings = smoothing.SmoothingSettings(neighbours=3)
    scale = smoothing._build_scale(*smoothing.colour_spaces(images), features, 60, settings)
    nodes = scale.matrix.shape[0]
    off_diagonal = scale.matrix.nnz - nodes
    # Touching superpixels (a handful each) plus at most 2 x 3 cross-image edges per node.
    assert off_diagonal / nodes < 8 + 2 * 3
    assert nodes == sum(int(labels.max()) + 1 for labels in scale.labels)


def test_switches_parse_and_label_the_bench_row():
    options = methods.options_for("csmg", {"smoothing": "off", "branches": "pool3", "scales": None})
    assert isinstance(options, CsmgOptions)
    assert not options.smooth and options.branch_choice == "pool3" and options.multi_scale
    assert method_label("csmg", ["crf"], options) == "csmg,smoothing=off,branches=pool3+crf"
    assert method_label("csmg", [], methods.options_for("csmg", {})) == "csmg"
    with pytest.raises(UsageError, match="--scales must be multi or single"):
        methods.options_for("csmg", {"scales": "three"})
    with pytest.raises(UsageError):
        methods.options_for("gicd", {"smoothing": "off"})


@pytest.fixture(scope="module")
def csmg_weights(real_hub, real_weights):
    return {role: real_weights(component) for role, component in real_hub.manifest.roles("csmg").items()}


@pytest.mark.weights
@pytest.mark.parametrize(("role", "branches", "stride", "max_bytes"), [
    ("head", ["pool3", "pool5"], 8, 2_300_000),  # with the pool3 skip (331,969 values)
    ("head_pool3", ["pool3"], 32, 1_000_000),
    ("head_pool5", ["pool5"], 32, 1_000_000),
])  # fmt: skip
def test_the_heads_are_bundled_and_trained_on_the_shipped_split(real_hub, csmg_weights, role, branches, stride,
                                                                max_bytes):  # fmt: skip
    from .conftest import check_shipped_head

    assert real_hub.manifest.roles("csmg")["backbone"] == "vgg16-imagenet"
    metadata = check_shipped_head(real_hub, "csmg", csmg_weights[role], max_bytes=max_bytes, role=role)
    assert metadata["training"]["split"]["name"] == "shared-v2"
    assert metadata["config"]["branches"] == branches
    assert metadata["config"].get("output_stride", 32) == stride
    assert metadata["training"]["loss"] == "l2"  # eq. 9
    assert metadata["validation"]["kept"]["sm"] > 0.65  # the FCN alone (measured .689 to .706)


@pytest.mark.weights
def test_detect_csmg_and_its_switches_on_the_examples(linked_home, tmp_path):
    from .conftest import detect_examples

    linked_home("vgg16-imagenet")
    full, full_scores = detect_examples(tmp_path / "full", "--method", "csmg")
    assert full["method"] == "csmg"
    assert np.mean([area for _, area in full_scores.values()]) > 0.85
    _, fcn_scores = detect_examples(tmp_path / "fcn", "--method", "csmg", "--smoothing", "off")
    _, pool5_scores = detect_examples(tmp_path / "pool5", "--method", "csmg", "--branches", "pool5",
                                      "--smoothing", "off")  # fmt: skip
    # Each switch changes the maps (another head, no smoothing): the scores differ per image.
    assert fcn_scores != full_scores and pool5_scores != fcn_scores
    assert np.mean([area for _, area in fcn_scores.values()]) > 0.85
