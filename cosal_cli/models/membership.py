"""Whether an image shows its group's object at all, from an ImageNet classifier: outsider dimming.

A co-saliency map should be nearly black on a photo that does not show the group's common object
(an *outsider*), but a decoder that normalises its features per image cannot tell how well an image
fits its group. An ImageNet classifier can: an image whose classes disagree with the group's
consensus (softmax of the summed logits, GICD's consensus) is rarely of the group; on the held-out
outsider set this agreement separates outsiders from in-group images with AUC .95. So the map of
each image is multiplied by a weight from its agreement relative to the group's *median* image: the
typical image of a group is never touched, a group of one never dimmed. The weight depends only on
the frozen classifier, so it is tuned without training (``benchmarks/tune_membership.py``, on groups
of training images). It does not change S, max F, E or MAE, which normalise each map to its own range;
it changes how bright a map is: the outsider / in-group map ratio, and what survives a threshold.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Membership:
    """How much an image whose classes disagree with its group's consensus is dimmed.

    ``agreement`` is sum_k consensus_k log p_k(image), the image's log-likelihood of the consensus
    classes. Relative to the group's median image it gives the weight
    ``min(1, sigmoid((relative + offset) / temperature) / sigmoid(offset / temperature))``: 1 for
    the median image and above (so a group of one is never dimmed), 1/2 about ``offset`` nats below it.
    """

    offset: float
    temperature: float

    def weights(self, logits: torch.Tensor, consensus: torch.Tensor) -> torch.Tensor:
        """(N,) weights in (0, 1] for the images of ``logits`` (N, 1000) against ``consensus`` (1, 1000)."""
        return self.weights_of_relative(relative_agreement(logits, consensus))

    def weights_of_relative(self, relative: torch.Tensor) -> torch.Tensor:
        """The weights of agreements given relative to the group's median image."""
        scale = torch.sigmoid(torch.tensor(self.offset / self.temperature, dtype=relative.dtype))
        return (torch.sigmoid((relative + self.offset) / self.temperature) / scale).clamp(max=1.0)


def relative_agreement(logits: torch.Tensor, consensus: torch.Tensor) -> torch.Tensor:
    """(N,) each image's log-likelihood of the consensus classes minus that of the group's median image."""
    agreement = (torch.log_softmax(logits, dim=1) * consensus).sum(dim=1)
    return agreement - agreement.median()


def consensus_of(logits: torch.Tensor) -> torch.Tensor:
    """GICD's consensus of a group's ImageNet logits (N, 1000): softmax of their sum, (1, 1000)."""
    return torch.softmax(logits.sum(dim=0, keepdim=True), dim=1)


def group_weights(
    classify: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, chunk: int, membership: Membership
) -> torch.Tensor:
    """(N,) dimming weights of a whole group, classified ``chunk`` images at a time."""
    with torch.no_grad():
        logits = torch.cat([classify(part) for part in images.split(chunk)])
    return membership.weights(logits, consensus_of(logits))
