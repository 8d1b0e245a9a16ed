"""Gaussian filtering in a high-dimensional feature space with a permutohedral lattice, in torch.

Adams, Baek & Davis, "Fast High-Dimensional Filtering Using the Permutohedral Lattice" (Eurographics
2010): every point is splatted onto the d + 1 vertices of the lattice simplex around it, the lattice
is blurred with [1/2, 1, 1/2] along each of its d + 1 axes, and the points read their value back.
This follows Krähenbühl's ``permutohedral.cpp`` (the one inside pydensecrf) step for step, rounding
included, so that a dense CRF built on it agrees with the reference to the label: the same elevation
and scale factors, the same nearest remainder-0 point (ties go down, C's truncating sum), the same
stable ranking, the same barycentric weights and the same final ``alpha`` constant.

The hash table of the C++ code becomes a sort: each vertex's d integer coordinates are packed into
one int64, ``unique`` numbers the vertices and ``searchsorted`` finds the blur neighbours, which works
the same on CPU and CUDA.
"""

from __future__ import annotations

import math

import numpy as np
import torch

CPU_CHUNK = 98304  # values (points x (d + 1)) per chunk: one chunk's temporaries stay in the CPU's caches


class PermutohedralLattice:
    """The lattice of N points with (N, d) ``features`` (already divided by the kernel's widths).

    :meth:`filter` then computes, for (C, N) values v, approximately ``sum_j exp(-|f_i - f_j|² / 2) v_j``
    up to one constant factor, for all i at once.
    """

    def __init__(self, features: torch.Tensor):
        points, dims = features.shape
        self.device = features.device
        # Per-point work in cache-sized chunks on CPU: with N-long temporaries it runs 3x slower.
        chunk = CPU_CHUNK // (dims + 1) if self.device.type == "cpu" else points
        code, codes, weights = _SimplexCode(dims), [], []
        for part in features.float().split(chunk):
            elevated = _elevate(part)
            remainder0, rank = _nearest_remainder0(elevated)
            weights.append(_barycentric(elevated, remainder0, rank)[:, : dims + 1])
            codes.append(code.encode(remainder0, rank))
        # Neighbouring points mostly share their simplex: number the distinct simplices first, so the
        # costly part (d + 1 vertices each, sorted) runs on far fewer than N.
        simplices, simplex_of = _unique(torch.cat(codes))
        keys = _simplex_keys(*code.decode(simplices))  # (S, d + 1, d): the vertices around each simplex
        packed, units = _pack(keys.reshape(-1, dims))
        vertices, inverse = _unique(packed)
        # Slot 0 of every value array is the "no such vertex" vertex, always 0: shift indices by one.
        self._simplex_vertices = inverse.reshape(-1, dims + 1) + 1
        self._simplex_of = simplex_of
        self._vertex_of = self._simplex_vertices[simplex_of]
        self._weight = torch.cat(weights)
        self._neighbours = [_neighbours(vertices, units, axis) for axis in range(dims + 1)]
        self.vertex_count = int(vertices.numel())
        self._alpha = 1.0 / (1.0 + 2.0 ** (-dims))

    def filter(self, values: torch.Tensor) -> torch.Tensor:
        """Splat, blur, slice: (C, N) float32 in, (C, N) float32 out."""
        channels = values.shape[0]
        lattice = torch.zeros(channels, self.vertex_count + 1, dtype=torch.float32, device=self.device)
        weighted = values[:, :, None] * self._weight[None]
        lattice.index_add_(1, self._vertex_of.reshape(-1), weighted.reshape(channels, -1))
        for below, above in self._neighbours:
            lattice = lattice + 0.5 * (lattice[:, below] + lattice[:, above])
        # Slice through the simplices: gathering one row of d + 1 values per point is cheaper than
        # gathering d + 1 scattered values per point.
        corners = lattice[:, self._simplex_vertices].index_select(1, self._simplex_of)
        sliced = torch.einsum("cnk,nk->cn", corners, self._weight)
        return sliced * self._alpha


def _elevate(features: torch.Tensor) -> torch.Tensor:
    """Each point on the hyperplane sum(x) = 0 of R^(d+1), scaled so the blur is a unit Gaussian."""
    points, dims = features.shape
    inverse_std = math.sqrt(2.0 / 3.0) * (dims + 1)
    scale = torch.tensor([inverse_std / math.sqrt((i + 2) * (i + 1)) for i in range(dims)],
                         dtype=torch.float32, device=features.device)  # fmt: skip
    scaled = features * scale
    elevated = torch.empty(points, dims + 1, dtype=torch.float32, device=features.device)
    running = torch.zeros(points, dtype=torch.float32, device=features.device)
    for j in range(dims, 0, -1):  # the C++ loop's order, so float32 sums round the same way
        elevated[:, j] = running - j * scaled[:, j - 1]
        running = running + scaled[:, j - 1]
    elevated[:, 0] = running
    return elevated


def _nearest_remainder0(elevated: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The closest remainder-0 lattice point (coordinates multiples of d + 1) and the simplex's rank order."""
    dims = elevated.shape[1] - 1
    down = _float32(1.0 / (dims + 1))  # as in the C++ code
    scaled = elevated * down
    up, low = torch.ceil(scaled) * (dims + 1), torch.floor(scaled) * (dims + 1)
    remainder0 = torch.where(up - elevated < elevated - low, up, low)
    # C++ adds each rd * float(1/(d+1)) to an int sum; for d = 2 and 5 those products are exact
    # integers in float32 (checked in the tests), so the integer sum here is the same number.
    total = torch.div(remainder0.sum(dim=1), dims + 1, rounding_mode="floor").long()
    residual = elevated - remainder0
    # rank[i] = how many coordinates have a larger residual, earlier ones winning ties: C++'s pairwise
    # loop, on contiguous rows and int16 counts (several times faster than sorting N short rows).
    residual = residual.t().contiguous()
    rank = torch.zeros(residual.shape, dtype=torch.int16, device=residual.device)
    for i in range(dims + 1):
        for j in range(i + 1, dims + 1):
            later_larger = residual[i] < residual[j]
            rank[i] += later_larger
            rank[j] += ~later_larger
    rank = rank.t().long() + total[:, None]
    # Ranks outside 0..d wrap around, moving the remainder-0 point by d + 1 the other way.
    wrap = (rank < 0).long().sub_((rank > dims).long()).mul_(dims + 1)
    return remainder0.long().add_(wrap), rank.add_(wrap)


def _float32(value: float) -> float:
    """``value`` rounded to float32, as C++'s float constants are (the product then rounds the same)."""
    return float(np.float32(value))


def _barycentric(elevated: torch.Tensor, remainder0: torch.Tensor, rank: torch.Tensor) -> torch.Tensor:
    dims = elevated.shape[1] - 1
    share = (elevated - remainder0.float()) * _float32(1.0 / (dims + 1))
    weights = torch.zeros(elevated.shape[0], dims + 2, dtype=torch.float32, device=elevated.device)
    weights.scatter_add_(1, dims - rank, share)
    weights.scatter_add_(1, dims - rank + 1, -share)
    weights[:, 0] += 1.0 + weights[:, dims + 1]
    return weights


def _simplex_keys(remainder0: torch.Tensor, rank: torch.Tensor) -> torch.Tensor:
    """The first d coordinates of the d + 1 vertices of each point's simplex: (N, d + 1, d)."""
    dims = remainder0.shape[1] - 1
    remainders = torch.arange(dims + 1, device=rank.device)[None, :, None]  # (1, d + 1, 1)
    ranks = rank[:, None, :dims]  # (N, 1, d)
    canonical = torch.where(ranks <= dims - remainders, remainders, remainders - (dims + 1))
    return remainder0[:, None, :dims] + canonical


class _SimplexCode:
    """A point's simplex (its remainder-0 point and rank order) as one int64, to number simplices.

    The remainder-0 coordinates are multiples of d + 1 (stored divided by it); the ranks of the first
    d coordinates are base-(d + 1) digits (the last one is implied: ranks are a permutation).
    """

    def __init__(self, dims: int):
        self.dims, self.digits = dims, (dims + 1) ** dims
        self.bits = (62 - self.digits.bit_length()) // dims
        self.low = -(1 << (self.bits - 1))  # cells are stored offset by -low, centred on 0

    def encode(self, remainder0: torch.Tensor, rank: torch.Tensor) -> torch.Tensor:
        dims = self.dims
        coarse = torch.div(remainder0[:, :dims].t(), dims + 1, rounding_mode="floor").contiguous() - self.low
        if coarse.numel() and (int(coarse.min()) < 0 or int(coarse.max()) >= 1 << self.bits):
            raise ValueError("features span too many lattice cells to number; use wider kernels or a smaller image")
        ranks = rank[:, :dims].t().contiguous()
        cells = torch.zeros(remainder0.shape[0], dtype=torch.int64, device=remainder0.device)
        digits = torch.zeros_like(cells)
        for i in range(dims):
            cells += coarse[i] << (self.bits * i)
            digits += ranks[i] * (dims + 1) ** i
        return cells * self.digits + digits

    def decode(self, code: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dims = self.dims
        cells, digits = torch.div(code, self.digits, rounding_mode="floor"), code % self.digits
        remainder0 = torch.empty(code.shape[0], dims + 1, dtype=torch.int64, device=code.device)
        rank = torch.empty_like(remainder0)
        for i in range(dims):
            remainder0[:, i] = (((cells >> (self.bits * i)) & ((1 << self.bits) - 1)) + self.low) * (dims + 1)
            rank[:, i] = torch.div(digits, (dims + 1) ** i, rounding_mode="floor") % (dims + 1)
        # The last coordinate and rank follow from the others (sum 0, a permutation); keys don't use them.
        remainder0[:, dims] = -remainder0[:, :dims].sum(dim=1)
        rank[:, dims] = dims * (dims + 1) // 2 - rank[:, :dims].sum(dim=1)
        return remainder0, rank


def _pack(keys: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """d small signed coordinates in one int64, ``sum((x_i - low) << (bits * i))``, and the packed unit
    step of each coordinate (``1 << (bits * i)``)."""
    dims = keys.shape[1]
    bits = 62 // dims
    margin = dims + 1  # a neighbour is at most d + 1 away along any coordinate
    low, high = int(keys.min()) - margin, int(keys.max()) + margin
    if high - low >= 1 << bits:
        raise ValueError(f"features span {high - low} lattice steps, more than the {1 << bits} that "
                         f"{dims} dimensions can pack; use wider kernels or a smaller image")  # fmt: skip
    packed = torch.zeros(keys.shape[0], dtype=torch.int64, device=keys.device)
    for i in range(dims):
        packed += (keys[:, i] - low) << (bits * i)
    return packed, [1 << (bits * i) for i in range(dims)]


def _unique(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted distinct vertices and each entry's index among them."""
    if packed.device.type == "cpu":  # numpy's sort-based unique is several times faster than torch's here
        vertices, inverse = np.unique(packed.numpy(), return_inverse=True)
        return torch.from_numpy(vertices), torch.from_numpy(inverse.reshape(-1))
    return torch.unique(packed, sorted=True, return_inverse=True)


def _neighbours(vertices: torch.Tensor, units: list[int], axis: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Slot indices (with slot 0 = missing) of each vertex's two neighbours along lattice ``axis``.

    Along axis j < d the neighbours are key + 1 with coordinate j at key - d, and key - 1 with j at
    key + d; along the last axis (whose coordinate is implied), key + 1 and key - 1 everywhere.
    """
    dims = len(units)
    ones = sum(units)
    step = ones - (dims + 1) * units[axis] if axis < dims else ones
    found = [_find(vertices, vertices + step), _find(vertices, vertices - step)]
    zero = torch.zeros(1, dtype=torch.int64, device=vertices.device)
    return tuple(torch.cat([zero, slots]) for slots in found)  # type: ignore[return-value]


def _find(vertices: torch.Tensor, wanted: torch.Tensor) -> torch.Tensor:
    """1 + the index of each wanted vertex, or 0 where the lattice has no such vertex."""
    at = torch.searchsorted(vertices, wanted).clamp_(max=vertices.numel() - 1)
    return torch.where(vertices[at] == wanted, at + 1, 0)
