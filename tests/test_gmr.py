"""gmr and its manifold ranking (cosal_cli.refine.manifold_ranking): graph, ranking, maps, CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cosal_cli import methods
from cosal_cli.methods.gmr import Method as Gmr
from cosal_cli.refine import manifold_ranking as mr

from .conftest import detect_examples


def block_labels(rows: int, cols: int, block: int = 3) -> np.ndarray:
    """A rows x cols grid of block x block superpixels, numbered row by row."""
    return np.kron(np.arange(rows * cols).reshape(rows, cols), np.ones((block, block), dtype=np.int64))


def square_image(size: int = 96, top: int = 20, left: int = 40, side: int = 32) -> tuple[np.ndarray, np.ndarray]:
    image = np.empty((size, size, 3))
    image[:] = (0.3, 0.4, 0.6)
    mask = np.zeros((size, size), dtype=bool)
    mask[top : top + side, left : left + side] = True
    image[mask] = (0.9, 0.2, 0.1)
    return image, mask


def test_a_distinct_square_away_from_the_border_is_salient():
    image, mask = square_image()
    saliency = mr.gmr_saliency(image)
    assert saliency.shape == mask.shape and saliency.dtype == np.float32
    assert saliency.min() >= 0.0 and saliency.max() <= 1.0
    # Measured: 0.999 on the square, 1e-5 off it; an inverted map would swap them.
    assert saliency[mask].mean() > 0.9 and saliency[~mask].mean() < 0.05


def test_superpixels_follow_colour_edges():
    image, mask = square_image()
    labels = mr.slic_superpixels(image)
    assert 100 <= labels.max() + 1 <= 220 and set(np.unique(labels)) == set(range(labels.max() + 1))
    inside = mr.superpixel_means(labels, mask.astype(float))
    assert ((inside == 0) | (inside == 1)).all()  # no superpixel straddles the square's edge


def test_adjacency_is_8_connected_and_joins_all_border_superpixels():
    labels = block_labels(6, 6)
    touching = mr.adjacency(labels)
    assert (touching == touching.T).all() and not touching.diagonal().any()
    centre = 2 * 6 + 2  # (2, 2)
    assert set(np.flatnonzero(touching[centre])) == {7, 8, 9, 13, 15, 19, 20, 21}  # diagonals included
    border = [i for i in range(36) if i // 6 in (0, 5) or i % 6 in (0, 5)]
    assert all(touching[a, b] for a in border for b in border if a != b)  # opposite corners 0 and 35 too
    assert not touching[centre, 35]


def test_graph_edges_are_the_two_ring_including_through_the_border_loop():
    labels = block_labels(6, 6)
    connected = mr.two_ring(mr.adjacency(labels))
    centre = 2 * 6 + 2
    window = {r * 6 + c for r in range(5) for c in range(5)} - {centre}  # rows and columns 0..4
    assert set(np.flatnonzero(connected[centre])) == window
    assert not connected[centre, 2 * 6 + 5] and not connected[centre, 35]
    # (1, 1) touches border superpixel 0, which the loop joins to 35: as in the authors' code.
    assert connected[7, 35]
    lab = np.random.default_rng(0).uniform(0, 50, size=(*labels.shape, 3))
    graph = mr.graph_from_labels(labels, lab)
    assert (graph.connected == connected).all() and graph.size == 36
    assert ((graph.affinity > 0) == connected).all()


def test_edge_weights_are_exp_of_the_min_max_normalised_colour_distance():
    colours = np.array([[0.0, 0, 0], [3.0, 0, 0], [0, 4.0, 0], [30.0, 0, 0]])
    connected = np.array([[0, 1, 1, 0], [1, 0, 1, 0], [1, 1, 0, 1], [0, 0, 1, 0]], dtype=bool)
    affinity = mr.colour_affinity(colours, connected, theta=10.0)
    # Edge distances 3, 4, 5 and |(30,-4)| = 30.27: min-max maps 3 -> 0 and 30.27 -> 1.
    assert affinity[0, 1] == pytest.approx(1.0)
    assert affinity[2, 3] == pytest.approx(np.exp(-10.0))
    assert affinity[0, 2] == pytest.approx(np.exp(-10.0 * (4 - 3) / (np.hypot(30, 4) - 3)))
    assert affinity[0, 3] == 0.0 and (affinity == affinity.T).all()


def test_ranking_is_the_dense_solve_with_each_query_not_ranking_itself():
    rng = np.random.default_rng(1)
    weights = rng.uniform(0.1, 1.0, size=(6, 6))
    weights = np.triu(weights, 1)
    weights[0, 5] = weights[1, 4] = 0.0  # not complete: some node pairs have no edge
    weights = weights + weights.T
    queries = np.array([[1.0, 0.0], [0.0, 0.5], [0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    system = np.diag(weights.sum(axis=1)) - 0.99 * weights
    direct = np.linalg.solve(system, queries)
    assert mr.rank(mr.ranking_matrix(weights, zero_diagonal=False), queries) == pytest.approx(direct)
    # The authors zero the diagonal of (D - alpha W)^-1: f = solve(...) - diag(inverse) * y.
    self_terms = np.diag(np.linalg.inv(system))[:, None] * queries
    ranked = mr.rank(mr.ranking_matrix(weights), queries)
    assert ranked == pytest.approx(direct - self_terms)
    assert mr.rank(mr.ranking_matrix(weights), queries[:, 0]) == pytest.approx(ranked[:, 0])


def test_superpixel_means_and_paint_round_trip():
    labels = block_labels(2, 3, block=2)
    values = np.arange(6, dtype=float)
    pixels = mr.paint(labels, values)
    assert pixels.dtype == np.float32 and pixels.shape == labels.shape
    assert mr.superpixel_means(labels, pixels) == pytest.approx(values)
    assert mr.superpixel_means(labels, np.stack([pixels, -pixels], axis=-1)).shape == (6, 2)


def test_degenerate_inputs_give_zeros_not_nan():
    assert not mr.gmr_saliency(np.full((40, 50, 3), 0.5)).any()  # no colour contrast
    assert not mr.normalise(np.full(5, 3.0)).any()
    two_halves = np.zeros((30, 30, 3))
    two_halves[:, 15:] = 1.0
    assert np.isfinite(mr.gmr_saliency(two_halves)).all()
    tiny = np.random.default_rng(2).uniform(size=(3, 3, 3))
    tiny_map = mr.gmr_saliency(tiny)
    assert tiny_map.shape == (3, 3) and np.isfinite(tiny_map).all()
    with pytest.raises(ValueError, match="every node has an edge"):
        mr.ranking_matrix(np.zeros((1, 1)))


def test_method_maps_each_image_independently_on_the_images_device():
    image, mask = square_image(size=64, top=16, left=24, side=24)
    noise = np.random.default_rng(3).uniform(size=image.shape)
    batch = torch.from_numpy(np.stack([image, noise])).permute(0, 3, 1, 2).float()
    method = Gmr({}, torch.device("cpu"))
    assert method.roles == () and method.name == "gmr"
    maps = method.predict_group(batch)
    assert maps.shape == (2, 64, 64) and maps.dtype == torch.float32 and maps.device == batch.device
    assert maps.min() >= 0 and maps.max() <= 1
    assert maps[0][torch.from_numpy(mask)].mean() > 0.9
    assert torch.equal(maps[0], method.predict_group(batch[:1])[0])  # the other image changes nothing


def test_gmr_is_a_sism_generator():
    assert "gmr" in methods.sism_generators()
    assert methods.method_class("gmr") is Gmr


def test_cli_detect_with_gmr_finds_the_cats(tmp_path, monkeypatch):
    monkeypatch.setenv("COSAL_HOME", str(tmp_path / "home"))  # no weights needed, none fetched
    monkeypatch.delenv("COSAL_MANIFEST", raising=False)
    summary, scores = detect_examples(tmp_path / "maps", "--method", "gmr")
    assert summary["method"] == "gmr"
    # Measured: 1.8x to 46x brighter on the cats than off them; inverted or constant maps are <= 1x.
    assert all(ratio > 1.4 for ratio, _ in scores.values()), scores
    # Measured AUC 0.70 to 0.998, mean 0.90 (an inverted map gives 1 - AUC, a constant one 0.5).
    aucs = [value for _, value in scores.values()]
    assert min(aucs) > 0.6 and float(np.mean(aucs)) > 0.82, scores
