"""Graph-based manifold ranking on SLIC superpixels (Yang, Zhang, Lu, Ruan, Yang, CVPR 2013).

The graph: one node per superpixel, its feature the mean CIELab colour. Each node is joined to the
superpixels it touches (8-connected, as the authors' ``AdjcProcloop``) and to the neighbours of those
(the 2-ring), and every pair of superpixels on the image border is joined too (the paper's
"close-loop" graph: the border is one background region, whatever lies between its sides). As in
the authors' code the 2-ring is taken on the graph that already holds the border pairs, so a
superpixel touching any border superpixel is joined to all of them. Edge weights are

    w_ij = exp(-theta * d_ij),   d_ij = ||c_i - c_j|| min-max normalised to [0, 1] over the edges.

The ranking of a query indicator y (equation 3) is f* = (D - alpha W)^-1 y. Like the authors' code,
the diagonal of that inverse (the "optimal affinity") is set to zero first, so a query does not
rank itself: the self term would otherwise dominate f* at every query node.

:func:`gmr_saliency` is the two-stage GMR map; :func:`superpixel_graph`, :func:`ranking_matrix`,
:func:`rank` and :func:`superpixel_means` let other methods rank their own per-superpixel queries.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from skimage.color import rgb2lab
from skimage.segmentation import slic

N_SEGMENTS = 200  # the authors' superpixel count
COMPACTNESS = 20.0  # the authors' SLIC compactness (on Lab)
THETA = 10.0  # edge weight scale on the [0, 1] colour distances
ALPHA = 0.99  # balance of smoothness and fitting in the ranking
_FLAT = 1e-9  # a range below this counts as constant (min-max would divide by ~0)


@dataclass(frozen=True)
class SuperpixelGraph:
    labels: np.ndarray  # (H, W) int superpixel index per pixel, 0 .. n-1, every index present
    colours: np.ndarray  # (n, 3) mean CIELab colour per superpixel
    connected: np.ndarray  # (n, n) bool, symmetric, False on the diagonal: the graph's edges
    affinity: np.ndarray  # (n, n) float64 W: exp(-theta * d_ij) on edges, 0 elsewhere

    @property
    def size(self) -> int:
        return len(self.colours)


def relabel(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered 0 .. n-1 in order, so that every index names a non-empty superpixel."""
    _, dense = np.unique(labels, return_inverse=True)
    return dense.reshape(labels.shape)


def slic_superpixels(image: np.ndarray, n_segments: int = N_SEGMENTS, compactness: float = COMPACTNESS) -> np.ndarray:
    """SLIC labels (0 .. n-1) of an (H, W, 3) RGB image in [0, 1], clustered in CIELab.

    The RGB image goes in, not a Lab one: skimage min-max rescales its input to [0, 1] before
    converting, which would shrink Lab colour distances ~100x and leave a plain grid.
    """
    labels = slic(image, n_segments=n_segments, compactness=compactness, convert2lab=True, start_label=0)
    return relabel(labels)


def superpixel_means(labels: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Mean of ``values`` ((H, W) or (H, W, C)) over each superpixel: (n,) or (n, C)."""
    n = int(labels.max()) + 1
    flat = values.reshape(labels.size, -1).astype(np.float64)
    counts = np.bincount(labels.ravel(), minlength=n)
    sums = np.stack([np.bincount(labels.ravel(), flat[:, c], minlength=n) for c in range(flat.shape[1])], axis=1)
    means = sums / counts[:, None]
    return means[:, 0] if values.ndim == labels.ndim else means


def border_superpixels(labels: np.ndarray) -> dict[str, np.ndarray]:
    """Indices of the superpixels touching each side of the image: ``top``, ``bottom``, ``left``, ``right``."""
    return {
        "top": np.unique(labels[0, :]),
        "bottom": np.unique(labels[-1, :]),
        "left": np.unique(labels[:, 0]),
        "right": np.unique(labels[:, -1]),
    }


def adjacency(labels: np.ndarray, border_loop: bool = True) -> np.ndarray:
    """(n, n) bool: superpixels that touch (8-connected pixels) plus, with ``border_loop`` (gmr's
    close-loop graph), every pair of border superpixels."""
    n = int(labels.max()) + 1
    touching = np.zeros((n, n), dtype=bool)
    # Right, down, and both diagonals of every 2 x 2 pixel block cover all 8-neighbour pairs.
    pairs = (
        (labels[:, :-1], labels[:, 1:]),
        (labels[:-1, :], labels[1:, :]),
        (labels[:-1, :-1], labels[1:, 1:]),
        (labels[:-1, 1:], labels[1:, :-1]),
    )
    for a, b in pairs:
        touching[a.ravel(), b.ravel()] = True
    if border_loop:
        border = np.unique(np.concatenate(list(border_superpixels(labels).values())))
        touching[np.ix_(border, border)] = True
    touching |= touching.T
    np.fill_diagonal(touching, False)
    return touching


def two_ring(neighbours: np.ndarray) -> np.ndarray:
    """Neighbours and neighbours of neighbours, without self loops."""
    hops = neighbours.astype(np.int64)
    reach = neighbours | ((hops @ hops) > 0)
    np.fill_diagonal(reach, False)
    return reach


def colour_affinity(colours: np.ndarray, connected: np.ndarray, theta: float = THETA) -> np.ndarray:
    """W on the edges: exp(-theta * d) with d the colour distance min-max normalised over the edges.

    If all edge distances are equal (a flat image) they normalise to 0 and every weight is 1.
    """
    distances = np.linalg.norm(colours[:, None, :] - colours[None, :, :], axis=-1)
    on_edges = distances[connected]
    affinity = np.zeros_like(distances)
    if on_edges.size:
        affinity[connected] = np.exp(-theta * normalise(on_edges))
    return affinity


def superpixel_graph(
    image: np.ndarray, n_segments: int = N_SEGMENTS, compactness: float = COMPACTNESS, theta: float = THETA
) -> SuperpixelGraph:
    """The GMR graph of an (H, W, 3) RGB image in [0, 1]."""
    image = np.asarray(image, dtype=np.float64)
    labels = slic_superpixels(image, n_segments, compactness)
    return graph_from_labels(labels, rgb2lab(image), theta)


def graph_from_labels(labels: np.ndarray, lab: np.ndarray, theta: float = THETA) -> SuperpixelGraph:
    """The GMR graph for given superpixel labels ((H, W) ints) and an (H, W, 3) CIELab image."""
    labels = relabel(labels)
    colours = superpixel_means(labels, lab)
    connected = two_ring(adjacency(labels))
    return SuperpixelGraph(labels, colours, connected, colour_affinity(colours, connected, theta))


def ranking_matrix(affinity: np.ndarray, alpha: float = ALPHA, zero_diagonal: bool = True) -> np.ndarray:
    """A = (D - alpha W)^-1, with its diagonal set to 0 by default (as the authors' code does).

    Computed once per graph and reused for every query. Raises ``ValueError`` when a node has no
    edge (its row of D - alpha W is zero, so there is no inverse), e.g. a graph of one superpixel.
    """
    degrees = affinity.sum(axis=1)
    if affinity.shape[0] == 0 or np.any(degrees <= 0):
        raise ValueError("manifold ranking needs a graph in which every node has an edge")
    inverse = np.linalg.inv(np.diag(degrees) - alpha * affinity)
    if zero_diagonal:
        np.fill_diagonal(inverse, 0.0)
    return inverse


def rank(ranking: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """f* = A y for one query vector (n,) or several as columns (n, k); queries may be soft (any weights)."""
    return ranking @ np.asarray(queries, dtype=np.float64)


def normalise(values: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1]; a constant vector (range below 1e-9) becomes zeros instead of NaN."""
    low, high = float(values.min()), float(values.max())
    if high - low < _FLAT:
        return np.zeros_like(values, dtype=np.float64)
    return (values - low) / (high - low)


def paint(labels: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Per-superpixel values on the pixels, as float32."""
    return np.asarray(values, dtype=np.float32)[labels]


def gmr_superpixel_saliency(graph: SuperpixelGraph, alpha: float = ALPHA) -> np.ndarray:
    """GMR saliency per superpixel, in [0, 1].

    Stage 1: rank from each side's border superpixels; 1 - normalised ranking is how unlike that
    side (the background) a node is; the four maps multiply, so a node must be unlike every side.
    Stage 2: the nodes at or above the stage-1 mean become foreground queries; their normalised
    ranking is the saliency. All-equal rankings normalise to 0 (see :func:`normalise`).
    """
    ranking = ranking_matrix(graph.affinity, alpha)
    sides = border_superpixels(graph.labels)
    queries = np.zeros((graph.size, len(sides)))
    for column, members in enumerate(sides.values()):
        queries[members, column] = 1.0
    side_rankings = rank(ranking, queries)
    stage1 = np.prod([1.0 - normalise(side_rankings[:, c]) for c in range(len(sides))], axis=0)
    foreground = (stage1 >= stage1.mean()).astype(np.float64)
    return normalise(rank(ranking, foreground))


def gmr_saliency(
    image: np.ndarray, n_segments: int = N_SEGMENTS, compactness: float = COMPACTNESS, alpha: float = ALPHA
) -> np.ndarray:
    """GMR saliency of an (H, W, 3) RGB image in [0, 1]: (H, W) float32 in [0, 1].

    An image without colour contrast between superpixels (e.g. a constant image), or that SLIC
    leaves as one superpixel, has nothing to rank against its border: the map is all zeros.
    """
    graph = superpixel_graph(image, n_segments, compactness)
    if graph.size < 2 or np.ptp(graph.colours, axis=0).max() < _FLAT:
        return np.zeros(graph.labels.shape, dtype=np.float32)
    return paint(graph.labels, gmr_superpixel_saliency(graph, alpha))
