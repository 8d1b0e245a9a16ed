"""GWD's training sub-groups: an anchor image and its nearest neighbours within its group.

GWD (IJCAI 2017, section 3.1) makes each five-image training group from one image and the 4 images
of its group most similar to it by a global descriptor. The descriptor here is the network's
(:func:`cosal_cli.models.gwd.global_descriptor`: pooled relu5_3 and a CIELab histogram), stored in
the feature cache with each view, so the neighbours cost no extra encoder pass.

An epoch takes every training image once as an anchor; the order of the anchors and the order of
the images inside each sub-group are shuffled from (seed, epoch), so the network does not learn a
position for the anchor. A group smaller than the sub-group repeats its images.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from cosal_cli.training.sampler import TrainImage


def nearest_neighbours(descriptors: torch.Tensor, count: int) -> torch.Tensor:
    """(n, count) indices of each row's ``count`` nearest other rows (Euclidean), nearest first.

    With fewer than ``count + 1`` rows, the other rows are repeated (nearest first), then the row itself.
    """
    rows = descriptors.shape[0]
    distances = torch.cdist(descriptors.double(), descriptors.double())
    distances.fill_diagonal_(float("inf"))
    order = distances.argsort(dim=1, stable=True)[:, : max(rows - 1, 0)]
    if rows - 1 >= count:
        return order[:, :count]
    own = torch.arange(rows)[:, None]
    cycle = torch.cat([order, own], dim=1)  # the others nearest first, then the image itself
    return cycle[:, torch.arange(count) % rows]


def neighbour_batches(
    groups: Mapping[str, Sequence[TrainImage]],
    neighbours: Mapping[str, list[list[int]]],
    seed: int,
    epoch: int,
) -> list[list[TrainImage]]:
    """One sub-group per training image, the anchor and its ``neighbours`` (indices within its group, as
    :func:`nearest_neighbours` gives them once for every epoch), shuffled from (seed, epoch)."""
    size = 1 + len(next(iter(neighbours.values()))[0])
    rng = np.random.default_rng([seed, epoch, size])
    batches = []
    for key in sorted(groups):
        items = list(groups[key])
        for anchor, others in enumerate(neighbours[key]):
            batch = [items[anchor], *(items[other] for other in others)]
            batches.append([batch[i] for i in rng.permutation(size)])
    return [batches[i] for i in rng.permutation(len(batches))]
