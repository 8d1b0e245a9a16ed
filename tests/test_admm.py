"""The CSMG ADMM checked against its own optimality conditions, not only end to end."""

from __future__ import annotations

import pytest
import torch

from cosal_cli.refine.admm import (
    AdmmSettings,
    co_salient_masks,
    first_principal_direction,
    learn_mask_filter,
    objective,
    scale_descriptors,
    soft_threshold,
    w_system_matrix,
)

PAPER = AdmmSettings()


def random_descriptors(seed: int, n: int = 240, d: int = 12) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    # Non-negative like ReLU features, with a few correlated directions so PCA has something to find.
    mixing = torch.randn(d, d, generator=generator, dtype=torch.float64)
    x = torch.relu(torch.randn(n, d, generator=generator, dtype=torch.float64) @ mixing)
    return scale_descriptors(x, PAPER.feature_scale)


def scatter(x: torch.Tensor) -> torch.Tensor:
    centred = x - x.mean(0)
    return centred.T @ centred


def gradient_g(x: torch.Tensor, w: torch.Tensor, lambda1: float) -> torch.Tensor:
    """Gradient of g(w) = -||X_c w||^2 + lambda1 ||w||^2."""
    return -2.0 * scatter(x) @ w + 2.0 * lambda1 * w


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_w_update_zeroes_the_augmented_lagrangian_gradient(seed):
    x = random_descriptors(seed)
    result = learn_mask_filter(x, AdmmSettings(iterations=4), keep_history=True)
    m = x @ first_principal_direction(x)
    z = torch.zeros_like(m)
    for step in result.history:
        w = step["w"]
        grad = gradient_g(x, w, PAPER.lambda1) + PAPER.rho * x.T @ (x @ w - m + z)
        scale = (PAPER.rho * x.T @ (m - z)).norm()
        assert grad.norm() <= 1e-9 * scale
        m, z = step["m"], step["z"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_m_update_is_the_l1_proximal_point(seed):
    x = random_descriptors(seed)
    result = learn_mask_filter(x, AdmmSettings(iterations=4), keep_history=True)
    threshold = PAPER.lambda2 / PAPER.rho
    z_before = torch.zeros(x.shape[0], dtype=torch.float64)
    for step in result.history:
        v = x @ step["w"] + z_before  # what the m-step thresholds
        m = step["m"]
        # 0 in lambda2 * d|m| - rho (v - m): equality where m != 0, inequality where m == 0.
        nonzero = m != 0
        assert torch.allclose(PAPER.rho * (v - m)[nonzero], PAPER.lambda2 * torch.sign(m[nonzero]), atol=1e-9)
        assert (v[~nonzero].abs() <= threshold + 1e-12).all()
        assert torch.allclose(step["z"], z_before + x @ step["w"] - m, atol=1e-12)
        z_before = step["z"]


def test_converges_to_the_optimum_of_a_strongly_convex_instance():
    """With lambda1 above the top eigenvalue of S the objective is strongly convex, so ADMM must reach
    the unique minimiser, which satisfies the KKT conditions of equation (2)."""
    x = random_descriptors(3, n=120, d=8)
    lambda1 = 1.5 * float(torch.linalg.eigvalsh(scatter(x))[-1])
    settings = AdmmSettings(lambda1=lambda1, lambda2=5.0, rho=10.0, iterations=3000)
    result = learn_mask_filter(x, settings)
    w, m, z = result.w, result.m, result.z
    dual = settings.rho * z  # the multiplier s of equation (3)
    # Primal feasibility m = X w, and the multiplier is a subgradient of lambda2 |m|_1.
    assert (x @ w - m).abs().max() < 1e-6
    assert (dual.abs() <= settings.lambda2 + 1e-6).all()
    active = m.abs() > 1e-8
    assert torch.allclose(dual[active], settings.lambda2 * torch.sign(m[active]), atol=1e-5)
    # Stationarity: grad g(w) + X^T s = 0.
    stationarity = gradient_g(x, w, lambda1) + x.T @ dual
    assert stationarity.norm() < 1e-5 * (gradient_g(x, w, lambda1).norm() + 1.0)
    # And it is a minimum: no random nearby point is better.
    best = objective(x, w, lambda1, settings.lambda2)
    generator = torch.Generator().manual_seed(0)
    for _ in range(50):
        probe = w + 1e-3 * w.norm() * torch.randn(w.shape, generator=generator, dtype=torch.float64)
        assert objective(x, probe, lambda1, settings.lambda2) >= best - 1e-9


def test_soft_threshold_matches_its_definition():
    values = torch.tensor([-12.0, -10.0, -3.0, 0.0, 9.99, 10.0, 10.5, 30.0], dtype=torch.float64)
    expected = torch.tensor([-2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.5, 20.0], dtype=torch.float64)
    assert torch.equal(soft_threshold(values, 10.0), expected)


def test_system_matrix_is_positive_definite_with_the_paper_rho_even_with_dead_channels():
    x = random_descriptors(4)
    x[:, :3] = 0.0  # channels dead across the whole group
    h = w_system_matrix(x, PAPER.lambda1, PAPER.rho)
    smallest = float(torch.linalg.eigvalsh(h)[0])
    assert smallest == pytest.approx(2 * PAPER.lambda1, rel=1e-6)
    learn_mask_filter(x, PAPER)  # the Cholesky solve must accept it


def test_rho_below_two_is_refused():
    x = random_descriptors(5)
    with pytest.raises(ValueError, match="positive definite"):
        learn_mask_filter(x, AdmmSettings(rho=0.5))


def test_descriptor_scaling_sets_the_mean_norm():
    x = torch.rand(50, 7, dtype=torch.float64) * 37.0
    scaled = scale_descriptors(x, 100.0)
    assert float(scaled.norm(dim=1).mean()) == pytest.approx(100.0)


def _planted_group(seed: int, count: int = 6, channels: int = 32, size: int = 10):
    """Features whose only thing in common is one object pattern at a random place per image."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.zeros(count, channels, size, size)
    regions = torch.zeros(count, size, size, dtype=torch.bool)
    common = torch.rand(channels, generator=generator) * 3.0
    for index in range(count):
        # Each image has its own background statistics (different scenes) ...
        background = torch.rand(channels, generator=generator)
        features[index] = background[:, None, None] * torch.rand(channels, size, size, generator=generator)
        top, left = torch.randint(0, size - 4, (2,), generator=generator).tolist()
        regions[index, top : top + 4, left : left + 4] = True
        # ... and the shared object.
        noise = 0.2 * torch.rand(channels, 4, 4, generator=generator)
        features[index, :, top : top + 4, left : left + 4] = common[:, None, None] + noise
    return features, regions


def _auc(scores: torch.Tensor, positives: torch.Tensor) -> float:
    pos, neg = scores[positives], scores[~positives]
    return float((pos[:, None] > neg[None, :]).double().mean() + 0.5 * (pos[:, None] == neg[None, :]).double().mean())


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_masks_light_up_the_planted_common_object(seed):
    features, regions = _planted_group(seed)
    maps = co_salient_masks(features)
    assert maps.shape == regions.shape
    assert float(maps.min()) >= 0.0 and float(maps.max()) <= 1.0
    for image_map, region in zip(maps, regions):
        assert _auc(image_map, region) > 0.95


def test_masks_do_not_depend_on_feature_scale_or_image_order():
    features, _ = _planted_group(7)
    maps = co_salient_masks(features)
    assert torch.allclose(co_salient_masks(features * 13.0), maps, atol=1e-5)
    order = torch.tensor([3, 0, 5, 1, 4, 2])
    assert torch.allclose(co_salient_masks(features[order]), maps[order], atol=1e-5)


def test_every_map_reaches_one_where_the_object_is_found():
    features, _ = _planted_group(8)
    maps = co_salient_masks(features)
    assert torch.allclose(maps.flatten(1).max(dim=1).values, torch.ones(len(maps)))
