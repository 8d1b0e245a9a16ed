"""CSMG's stage 3: multi-scale label smoothing over a whole group (CVPR 2019, section 3.3, eqs. 10-17).

Given the FCN's maps ``s`` of a group, rank ``rounds`` times, with a CRF and an update of L between
two rankings:

1. **Superpixel level** (eq. 11, closed form eq. 17), at each SLIC scale: one graph over the
   superpixels of *all* the group's images. Within an image, superpixels that touch are joined with
   weight ``exp(-theta d)`` (``d`` their CIELab distance, min-max normalised over the image's edges,
   as :mod:`cosal_cli.refine.manifold_ranking`); across images, each superpixel is joined to its
   ``neighbours`` most similar superpixels of the other images by deep features (the mean VGG-16
   relu5_3 over the superpixel), with weight ``exp(-(1 - cos) / feature_width)``. That keeps the graph
   sparse: about (8 + 2 x neighbours) edges per node, whatever the group's size, solved by conjugate
   gradients (the system is well conditioned, see :func:`ranking_scores`). The indicators
   ``l`` are 1 on superpixels whose mean map is above their image's mean (the paper's rule), and

       r = ((1 + lambda4) I - S)^-1 (lambda4 l + (1 - beta) / 2 c),   S = D^-1/2 W D^-1/2.

   The paper writes ``P^T 1`` for ``c``, which would make ``r`` independent of the labels X and the
   alternation no alternation; ``c`` here is the derivative of the unary over the pixels the CRF
   labelled foreground, taken as each superpixel's foreground *share* so that it is on the scale of
   ``l`` (in the first round, the share of pixels where s > 0.5).
2. **Pixel level** (eq. 12): the dense CRF (:mod:`cosal_cli.refine.crf`, Krähenbühl's default
   kernels) with foreground probability ``p = beta s + (1 - beta) P r`` (P r averaged over the scales,
   each scale's r min-max normalised per image) and unaries -log p, -log(1 - p).
3. **Update L**: ``l`` is recomputed from ``x * s``, the map masked by the CRF's labels.

The result is ``output_weight s + (1 - output_weight) P r`` after the last ranking: on training groups
it beat the CRF's (near binary) marginal and the CRF's own probability as the map (README, "csmg").
Everything runs at the network's input resolution (the group's images as the FCN saw them); the
inference path resizes the maps back.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sparse
import torch
from scipy.sparse.linalg import cg
from skimage.color import rgb2lab

from cosal_cli.refine import manifold_ranking as ranking
from cosal_cli.refine.crf import CrfParameters, dense_crf, unary_from_probabilities


@dataclass(frozen=True)
class SmoothingSettings:
    scales: tuple[int, ...] = (100, 200, 300)  # SLIC superpixels per image, one graph per scale
    rounds: int = 2  # rankings; between two of them the CRF labels the pixels and L is updated
    beta: float = 0.9  # the paper's weight of the FCN map in the CRF's unary
    lambda4: float = 1.0  # the paper's fitting weight of eq. 11
    theta: float = ranking.THETA  # within-image colour affinity scale (gmr's)
    neighbours: int = 8  # cross-image edges per superpixel (nearest by deep features)
    feature_width: float = 0.1  # cross-image affinity exp(-(1 - cos) / width)
    compactness: float = ranking.COMPACTNESS
    #: The FCN map's weight in the result, output_weight s + (1 - output_weight) P r after the last
    #: ranking (the CRF's marginals, near binary, lowered S and max F on training groups; see the README).
    #: 0.7 for the head with the pool3 skip (training groups: S .755, max F .718; 0.5: .753, .700).
    output_weight: float = 0.7


@dataclass
class _Scale:
    labels: list[np.ndarray]  # per image, (H, W) superpixel index within the image
    offsets: np.ndarray  # first node of each image in the group graph
    matrix: sparse.csr_matrix  # (1 + lambda4) I - S


def smooth_group(images: np.ndarray, maps: np.ndarray, features: torch.Tensor,
                 settings: SmoothingSettings = SmoothingSettings(), device: str = "cpu") -> np.ndarray:  # fmt: skip
    """Stage 3 for a group: (N, H, W, 3) uint8 images, (N, H, W) maps in [0, 1] and (N, C, h, w)
    deep features to the smoothed maps (N, H, W) float32."""
    rgb, lab = colour_spaces(images)
    scales = [_build_scale(rgb, lab, features, n_segments, settings) for n_segments in settings.scales]
    labels = (maps > 0.5).astype(np.float64)
    masked = maps.astype(np.float64)
    for round_index in range(settings.rounds):
        ranked = np.mean([_rank(scale, masked, labels, settings) for scale in scales], axis=0)
        if round_index == settings.rounds - 1:
            break
        probability = settings.beta * maps + (1.0 - settings.beta) * ranked
        labels = np.stack([_crf_labels(image, p, device) for image, p in zip(images, probability)])
        masked = maps * labels
    return (settings.output_weight * maps + (1.0 - settings.output_weight) * ranked).astype(np.float32)


def _crf_labels(image: np.ndarray, probability: np.ndarray, device: str) -> np.ndarray:
    """Eq. 12: the dense CRF with unaries -log p and -log(1 - p); its labels (marginal above 0.5)."""
    unary = unary_from_probabilities(np.stack([1.0 - probability, probability]))
    return (dense_crf(unary, image, CrfParameters(), "auto", device)[1] > 0.5).astype(np.float64)


def indicators(labels: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The paper's l: 1 on superpixels whose mean value is above the image's mean, else 0."""
    return (ranking.superpixel_means(labels, values) > values.mean()).astype(np.float64)


def ranking_scores(matrix: sparse.spmatrix, indicator: np.ndarray, foreground: np.ndarray,
                   settings: SmoothingSettings) -> np.ndarray:  # fmt: skip
    """Eq. 17: r = ((1 + lambda4) I - S)^-1 (lambda4 l + (1 - beta) / 2 c), with ``matrix`` the first factor."""
    right = settings.lambda4 * indicator + (1.0 - settings.beta) / 2.0 * foreground
    # The matrix is symmetric with eigenvalues in [lambda4, 2 + lambda4] (those of S lie in [-1, 1]):
    # conjugate gradients converge in a few dozen steps, with no fill-in however large the group.
    solution, info = cg(matrix, right, rtol=1e-10, atol=0.0, maxiter=1000)
    if info != 0:
        raise RuntimeError(f"label smoothing: conjugate gradients did not converge ({info})")
    return np.asarray(solution, dtype=np.float64)


def system_matrix(affinity: sparse.spmatrix, lambda4: float) -> sparse.csr_matrix:
    """(1 + lambda4) I - D^-1/2 W D^-1/2 for a symmetric sparse affinity W."""
    degree = np.asarray(affinity.sum(axis=1)).ravel()
    scale = sparse.diags(1.0 / np.sqrt(np.maximum(degree, 1e-12)))
    normalised = scale @ affinity @ scale
    return sparse.csr_matrix(sparse.identity(affinity.shape[0]) * (1.0 + lambda4) - normalised)


def colour_spaces(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, H, W, 3) uint8 images as RGB in [0, 1] (what SLIC takes) and CIELab, computed once for every scale."""
    rgb = images.astype(np.float64) / 255.0
    return rgb, rgb2lab(rgb)


def _build_scale(rgb: np.ndarray, lab: np.ndarray, features: torch.Tensor, n_segments: int,
                 settings: SmoothingSettings) -> _Scale:  # fmt: skip
    labels, blocks, descriptors = [], [], []
    for image, image_lab, feature in zip(rgb, lab, features):
        segments = ranking.slic_superpixels(image, n_segments, settings.compactness)
        colours = ranking.superpixel_means(segments, image_lab)
        touching = ranking.adjacency(segments, border_loop=False)
        blocks.append(sparse.csr_matrix(ranking.colour_affinity(colours, touching, settings.theta)))
        descriptors.append(_superpixel_features(segments, feature))
        labels.append(segments)
    offsets = np.cumsum([0] + [len(block.indptr) - 1 for block in blocks])
    within = sparse.block_diag(blocks, format="csr")
    across = _cross_image_affinity(descriptors, offsets, settings)
    affinity = within + across
    return _Scale(labels, offsets[:-1], system_matrix(affinity, settings.lambda4))


def _superpixel_features(segments: np.ndarray, feature: torch.Tensor) -> np.ndarray:
    """Mean deep feature per superpixel, unit length: each pixel takes the feature of the grid cell it
    lies in, so the mean is the superpixel's cell coverage (n x cells) times the (cells x C) features."""
    channels, rows, columns = feature.shape
    height, width = segments.shape
    cell = (np.arange(height) * rows // height)[:, None] * columns + (np.arange(width) * columns // width)[None, :]
    count = int(segments.max()) + 1
    coverage = np.bincount((segments * rows * columns + cell).ravel(), minlength=count * rows * columns)
    coverage = coverage.reshape(count, rows * columns).astype(np.float64)
    coverage /= coverage.sum(axis=1, keepdims=True)
    means = coverage @ feature.reshape(channels, -1).T.double().cpu().numpy()
    return means / np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)


def _cross_image_affinity(descriptors: list[np.ndarray], offsets: np.ndarray,
                          settings: SmoothingSettings) -> sparse.csr_matrix:  # fmt: skip
    """Each superpixel joined to its most similar superpixels of the other images (symmetrised)."""
    total = int(offsets[-1])
    everything = np.concatenate(descriptors).astype(np.float32)
    owner = np.repeat(np.arange(len(descriptors)), np.diff(offsets))
    rows, columns, weights = [], [], []
    k = min(settings.neighbours, total - int(np.diff(offsets).max()))  # candidates outside the largest image
    if k == 0:
        return sparse.csr_matrix((total, total))
    for start in range(0, total, 1024):  # bounded memory: 1024 x total similarities at a time
        block = everything[start : start + 1024] @ everything.T
        block[owner[start : start + 1024, None] == owner[None, :]] = -np.inf  # other images only
        nearest = np.argpartition(-block, k - 1, axis=1)[:, :k]
        similarity = np.take_along_axis(block, nearest, axis=1)
        rows.append(np.repeat(np.arange(start, start + len(block)), k))
        columns.append(nearest.ravel())
        weights.append(np.exp(-(1.0 - similarity.ravel()) / settings.feature_width))
    joined = sparse.csr_matrix((np.concatenate(weights), (np.concatenate(rows), np.concatenate(columns))),
                               shape=(total, total))  # fmt: skip
    return joined.maximum(joined.T)


def _rank(scale: _Scale, masked: np.ndarray, labels: np.ndarray, settings: SmoothingSettings) -> np.ndarray:
    """One scale's ranking r painted back on the pixels, min-max normalised per image: (N, H, W)."""
    indicator = np.concatenate([indicators(segments, values) for segments, values in zip(scale.labels, masked)])
    share = np.concatenate([ranking.superpixel_means(segments, x) for segments, x in zip(scale.labels, labels)])
    scores = ranking_scores(scale.matrix, indicator, share, settings)
    painted = []
    for segments, start in zip(scale.labels, scale.offsets):
        values = scores[start : start + int(segments.max()) + 1]
        painted.append(ranking.paint(segments, ranking.normalise(values)))
    return np.stack(painted)
