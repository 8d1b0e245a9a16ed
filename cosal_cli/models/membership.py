"""Whether an image shows its group's object at all, from an ImageNet classifier: outsider dimming.

A co-saliency map should be nearly black on a photo that does not show the group's common object
(an *outsider*), but a decoder that normalises its features per image cannot tell how well an image
fits its group. An ImageNet classifier can: an image whose classes disagree with the group's
consensus (softmax of the summed logits, GICD's consensus) is rarely of the group. Two cues measure it:
the image's log-likelihood of the consensus classes (*agreement*, which sees only the group's top
classes) and the cosine between its logits and the group's summed logits (*similarity*, the whole
1000-class profile). On the held-out outsider set they separate outsiders from in-group images with
AUC .960 and .978, and their sum, with the similarity weighted 20, with .983. So the map of
each image is multiplied by a weight from that sum relative to the group's *median* image: the typical
image of a group is never touched, a group of one never dimmed. The weight depends only on
the frozen classifier, so it is tuned without training (``benchmarks/tune_membership.py``, on groups
of training images). S, max F, E and MAE normalise each map to its own range, so it changes them only
where a map dimmed to nearly black rounds to zero in 8 bits; it changes how bright a map is: the
outsider / in-group map ratio, and what survives a threshold.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Membership:
    """How much an image whose classes disagree with its group's consensus is dimmed.

    An image's score is ``agreement + similarity * cosine``: agreement is sum_k consensus_k log p_k(image),
    its log-likelihood of the consensus classes (nats); cosine is that of its logits and the group's
    summed logits (``similarity`` converts it to nats; 0 leaves the agreement alone). Relative to the
    group's median image the score gives the weight
    ``min(1, sigmoid((relative + offset) / temperature) / sigmoid(offset / temperature))``: 1 for
    the median image and above (so a group of one is never dimmed), 1/2 about ``offset`` below it.
    """

    offset: float
    temperature: float
    similarity: float = 0.0

    def weights(self, logits: torch.Tensor, consensus: torch.Tensor) -> torch.Tensor:
        """(N,) weights in (0, 1] for the images of ``logits`` (N, 1000) against ``consensus`` (1, 1000)."""
        return self.weights_of_relative(self.relative(logits, consensus))

    def relative(self, logits: torch.Tensor, consensus: torch.Tensor) -> torch.Tensor:
        """(N,) each image's score minus that of the group's median image."""
        logits = logits.float()  # a bf16 cosine is too coarse for the nats it is weighed in
        score = agreement(logits, consensus)
        if self.similarity:
            score = score + self.similarity * logit_similarity(logits)
        return score - score.median()

    def weights_of_relative(self, relative: torch.Tensor) -> torch.Tensor:
        """The weights of scores given relative to the group's median image."""
        scale = torch.sigmoid(torch.tensor(self.offset / self.temperature, dtype=relative.dtype))
        return (torch.sigmoid((relative + self.offset) / self.temperature) / scale).clamp(max=1.0)


def agreement(logits: torch.Tensor, consensus: torch.Tensor) -> torch.Tensor:
    """(N,) each image's log-likelihood of the consensus classes."""
    return (torch.log_softmax(logits, dim=1) * consensus).sum(dim=1)


def logit_similarity(logits: torch.Tensor) -> torch.Tensor:
    """(N,) the cosine of each image's logits and the group's summed logits."""
    return F.cosine_similarity(logits, logits.sum(dim=0, keepdim=True), dim=1)


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
