"""CSMG's mask learning (Zhang, Li, Liu, Liu, CVPR 2019, section 3.1, equations (2) to (7)).

Given the conv5_3 descriptors of every location of every image in a group, stacked as the rows of
X (n x d), learn one linear filter w so that the mask m = X w has large variance over the group
(the PCA term) and is sparse (the l1 term), which suppresses the background PCA alone lights up:

    min_w  -sum_n ||X_n w - Xbar w||^2 + lambda1 ||w||^2 + lambda2 sum_n |m_n|_1   s.t. m_n = X_n w

ADMM with the scaled dual z alternates (equations 5 to 7)

    w <- (-2 S + 2 lambda1 I + rho X^T X)^(-1) rho X^T (m - z)     S: scatter of the centred rows
    m <- soft_threshold(X w + z, lambda2 / rho)
    z <- z + X w - m

Stacking the images' rows is exact: every term is a sum over locations.

Two facts from measuring this on real groups (see the README, "csmg-mask") shape the code:

* For the paper's lambda1 = 0.001 the objective is unbounded below (lambda1 is far below the top
  eigenvalue of S), so "the optimum" does not exist; what the paper runs is 3 iterations from a good
  start. We start from the first principal direction's projection, m = X v1, z = 0.
* The soft threshold lambda2 / rho = 10 is in feature units, so the constants only mean something
  for a stated feature scale: every descriptor is divided by the group's mean descriptor L2 norm
  and multiplied by 100 (``feature_scale``), after which about half of m stays non-zero.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class AdmmSettings:
    lambda1: float = 1e-3
    lambda2: float = 100.0
    rho: float = 10.0
    iterations: int = 3
    feature_scale: float = 100.0


@dataclass
class AdmmResult:
    w: torch.Tensor  # (d,) the learned 1x1 filter
    m: torch.Tensor  # (n,) the sparse mask variable after the last iteration
    z: torch.Tensor  # (n,) the scaled dual variable
    history: list[dict[str, torch.Tensor]] = field(default_factory=list)  # per-iteration w, m, z (if kept)


def scale_descriptors(descriptors: torch.Tensor, feature_scale: float) -> torch.Tensor:
    """Divide every row by the mean row L2 norm and multiply by ``feature_scale``."""
    mean_norm = descriptors.norm(dim=1).mean()
    if mean_norm <= 0:
        return descriptors.clone()
    return descriptors * (feature_scale / mean_norm)


def first_principal_direction(descriptors: torch.Tensor) -> torch.Tensor:
    """Unit eigenvector of the centred scatter with the largest eigenvalue."""
    centred = descriptors - descriptors.mean(dim=0, keepdim=True)
    _, eigenvectors = torch.linalg.eigh(centred.T @ centred)
    return eigenvectors[:, -1]


def soft_threshold(values: torch.Tensor, threshold: float) -> torch.Tensor:
    """Equation (7): the proximal operator of threshold * |.|_1."""
    return torch.sign(values) * torch.clamp(values.abs() - threshold, min=0.0)


def w_system_matrix(descriptors: torch.Tensor, lambda1: float, rho: float) -> torch.Tensor:
    """H = -2 S + 2 lambda1 I + rho X^T X (equation 6); positive definite for rho > 2."""
    centred = descriptors - descriptors.mean(dim=0, keepdim=True)
    scatter = centred.T @ centred
    gram = descriptors.T @ descriptors
    eye = torch.eye(descriptors.shape[1], dtype=descriptors.dtype, device=descriptors.device)
    return -2.0 * scatter + 2.0 * lambda1 * eye + rho * gram


def learn_mask_filter(
    descriptors: torch.Tensor,
    settings: AdmmSettings = AdmmSettings(),
    initial_m: torch.Tensor | None = None,
    keep_history: bool = False,
) -> AdmmResult:
    """Run the ADMM on already scaled descriptors (n x d); computed in float64.

    ``initial_m`` defaults to the projection on the first principal direction. Up to a few dozen
    relu5_3 channels can be dead across a whole group, which leaves H with eigenvalues of only
    2*lambda1; float64 and a Cholesky solve on the full H keep that well defined.
    """
    x = descriptors.to(torch.float64)
    h = w_system_matrix(x, settings.lambda1, settings.rho)
    factor, info = torch.linalg.cholesky_ex(h)
    if int(info) != 0:
        raise ValueError(
            f"ADMM system matrix is not positive definite (rho={settings.rho}); rho must exceed 2 "
            "so that rho X^T X dominates the -2S term"
        )
    m = x @ first_principal_direction(x) if initial_m is None else initial_m.to(torch.float64)
    z = torch.zeros_like(m)
    threshold = settings.lambda2 / settings.rho
    history = []
    w = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    for _ in range(settings.iterations):
        rhs = settings.rho * (x.T @ (m - z))
        w = torch.cholesky_solve(rhs[:, None], factor)[:, 0]
        xw = x @ w
        m = soft_threshold(xw + z, threshold)
        z = z + xw - m
        if keep_history:
            history.append({"w": w.clone(), "m": m.clone(), "z": z.clone()})
    return AdmmResult(w=w, m=m, z=z, history=history)


def objective(descriptors: torch.Tensor, w: torch.Tensor, lambda1: float, lambda2: float) -> torch.Tensor:
    """Equation (2) at m = X w: -||X_c w||^2 + lambda1 ||w||^2 + lambda2 |X w|_1."""
    x = descriptors.to(torch.float64)
    centred = x - x.mean(dim=0, keepdim=True)
    return -(centred @ w).square().sum() + lambda1 * w.square().sum() + lambda2 * (x @ w).abs().sum()


def co_salient_masks(features: torch.Tensor, settings: AdmmSettings = AdmmSettings()) -> torch.Tensor:
    """CSMG masks for a group: (N, d, h, w) non-negative features to (N, h, w) maps in [0, 1].

    The filter's sign is arbitrary (the objective is even in w), so it is oriented to correlate
    positively with the activation energy (the channel sum): on real groups that picked the object
    side in 26 of 28 groups, against 24 for "the smaller positive area is the object" (and in all
    20 groups of our development data). The map is the positive side, max(X_n w, 0), divided by its
    image's maximum; on the development data that beat per-image min-max scaling of X_n w
    (S-measure .569 against .539, MAE .157 against .276; README, "csmg-mask").
    """
    count, channels, height, width = features.shape
    descriptors = features.permute(0, 2, 3, 1).reshape(-1, channels).to(torch.float64)
    scaled = scale_descriptors(descriptors, settings.feature_scale)
    w = learn_mask_filter(scaled, settings).w
    response = scaled @ w
    energy = descriptors.sum(dim=1)
    if _correlation(response, energy) < 0:
        response = -response
    maps = response.reshape(count, height * width).clamp_min(0.0)
    maps = maps / maps.max(dim=1, keepdim=True).values.clamp_min(1e-12)
    return maps.reshape(count, height, width).to(features.dtype)


def _correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    a = a - a.mean()
    b = b - b.mean()
    denominator = a.norm() * b.norm()
    return float((a @ b) / denominator) if denominator > 0 else 0.0
