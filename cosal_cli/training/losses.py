"""Training losses of the co-saliency papers, each averaged over the images of a batch.

* soft IoU (GICD eq. 3, ICNet): 1 - sum(S G) / sum(S + G - S G) per image; for an image whose
  target is empty (an outsider: the group's object is absent) it is the mean of S instead, because
  1 - 0 / sum(S) is 1 whatever S is, and so would teach nothing about absence;
* BCE (GS): binary cross-entropy on the logits;
* L2 (GWD, CSMG): mean squared error of the sigmoid map.

With deep supervision a method returns logits at several decoder levels; the loss is their sum.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

EPSILON = 1e-6


def soft_iou(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    prediction = torch.sigmoid(logits).flatten(1)
    target = target.flatten(1)
    intersection = (prediction * target).sum(1)
    union = (prediction + target - prediction * target).sum(1)
    per_image = 1.0 - intersection / (union + EPSILON)
    empty = target.amax(1) <= 0
    return torch.where(empty, prediction.mean(1), per_image).mean()


def bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, target)


def l2(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(torch.sigmoid(logits), target)


LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "soft-iou": soft_iou,
    "bce": bce,
    "l2": l2,
}


def deep_supervision(name: str, outputs: Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """Sum of the loss over every output; outputs smaller than the target are upsampled first."""
    loss_fn = LOSSES[name]
    total = target.new_zeros(())
    for logits in outputs:
        if logits.shape[-2:] != target.shape[-2:]:
            logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
        total = total + loss_fn(logits.float(), target)
    return total
