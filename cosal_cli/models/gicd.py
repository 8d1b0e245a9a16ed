"""GICD (Zhang, Jin, Xu, Cheng, ECCV 2020) in the official module layout, with a batched GIM.

Module and key names follow the official ``zzhanghub/gicd`` code so that ``gicd_ginet.pth`` (92
keys, a bare state dict) loads into :class:`GINet` with ``strict=True``; the co-classifier is a
stock torchvision VGG-16 (``features.*``, ``classifier.*``).

The test-time computation (reference: ``../shared/reference/architectures.md`` section 2):

1. consensus: softmax of the *sum* of the co-classifier's ImageNet logits over the whole group
   (computed in chunks: memory does not grow with the group);
2. gradient inducing (GIM), per image: the gradient of <consensus, GINet's own logits> w.r.t. conv5;
   channel weights = ReLU(GAP(gradient)), min-max normalised per image; weighted conv5; CAM = ReLU of
   its channel mean, min-max normalised per image;
3. the decoder with attention retaining (ARM): each lateral feature is multiplied by the upsampled
   previous prediction before the top-down add; deep-supervised sigmoid maps at every level.

The official test runs one image at a time; here conv1..conv5 run without autograd for a chunk of
images, and one ``torch.autograd.grad`` call gives every image's gradient at once (the similarity
is a sum over images, so the per-image gradients do not mix). Normalisations are per image.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

_BLOCKS = ((1, 3, 64, 2), (2, 64, 128, 2), (3, 128, 256, 3), (4, 256, 512, 3), (5, 512, 512, 3))
LATERAL_CHANNELS = {4: 512, 3: 256, 2: 128, 1: 64}


class GicdVGG(nn.Module):
    """The "pool at the front of the block" VGG-16 of the official code, with avgpool and classifier."""

    def __init__(self) -> None:
        super().__init__()
        for block, in_channels, out_channels, convs in _BLOCKS:
            layers: OrderedDict[str, nn.Module] = OrderedDict()
            if block > 1:
                layers[f"pool{block - 1}"] = nn.MaxPool2d(kernel_size=2, stride=2)
            for index in range(1, convs + 1):
                layers[f"conv{block}_{index}"] = nn.Conv2d(in_channels, out_channels, 3, padding=1)
                layers[f"relu{block}_{index}"] = nn.ReLU(inplace=True)
                in_channels = out_channels
            setattr(self, f"conv{block}", nn.Sequential(layers))
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(),
            nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(),
            nn.Linear(4096, 1000),
        )  # fmt: skip

    def logits(self, x5: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(x5), 1))


def _two_convs(in_channels: int, final_relu: bool) -> nn.Sequential:
    layers = [nn.Conv2d(in_channels, 64, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(64, 64, 3, padding=1)]
    return nn.Sequential(*layers, *([nn.ReLU(inplace=True)] if final_relu else []))


class LatLayer(nn.Module):
    def __init__(self, in_channels: int):
        super().__init__()
        self.convlayer = _two_convs(in_channels, final_relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convlayer(x)


class EnLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enlayer = _two_convs(64, final_relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.enlayer(x)


class DSLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enlayer = _two_convs(64, final_relu=True)
        self.predlayer = nn.Sequential(nn.Conv2d(64, 1, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predlayer(self.enlayer(x))


def _resize(x: torch.Tensor, size: torch.Size) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


def minmax_per_image(x: torch.Tensor, eps: float) -> torch.Tensor:
    low = x.amin(dim=(1, 2, 3), keepdim=True)
    high = x.amax(dim=(1, 2, 3), keepdim=True)
    return (x - low) / (high - low + eps)


def group_consensus(classify: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, chunk: int) -> torch.Tensor:
    """softmax(sum of the group's ImageNet logits), (1, 1000), summed ``chunk`` images at a time.

    The sum is order-invariant, so memory holds one chunk's activations whatever the group's size.
    """
    total = images.new_zeros(1, 1000)
    with torch.no_grad():
        for part in images.split(chunk):
            total += classify(part).sum(dim=0, keepdim=True)
    return torch.softmax(total, dim=1)


def consensus_gradient(
    classify: Callable[[torch.Tensor], torch.Tensor], features: torch.Tensor, consensus: torch.Tensor | None
) -> torch.Tensor:
    """The gradient of <consensus, classify(features)> w.r.t. ``features``, for every image in one call.

    The similarity is a sum over images, so their gradients do not mix. Without ``consensus`` the
    images are the whole group and it comes from their own logits (held constant, as in the paper).
    """
    with torch.enable_grad():
        leaf = features.detach().requires_grad_(True)
        logits = classify(leaf)
        if consensus is None:
            consensus = torch.softmax(logits.detach().sum(dim=0, keepdim=True), dim=1)
        (gradient,) = torch.autograd.grad((logits * consensus).sum(), leaf)
    return gradient


def vgg_classifier_gradient(avgpool: nn.AdaptiveAvgPool2d, classifier: nn.Sequential, features: torch.Tensor,
                            consensus: torch.Tensor | None) -> torch.Tensor:  # fmt: skip
    """:func:`consensus_gradient` for the official GINet's VGG classifier, as explicit operations (no autograd).

    ``classifier`` is torchvision's fc6, ReLU, Dropout, fc7, ReLU, Dropout, fc8 (dropout is the identity
    at inference). Back from fc8: the consensus through fc8's weights, fc7's and fc6's ReLU masks and
    weights, then the adaptive average pool to 7 x 7 (the official network has no max pool5 before its
    classifier: it pools conv5_3 by averaging), spread back over each cell's window.
    """
    fc6, fc7, fc8 = classifier[0], classifier[3], classifier[6]
    pooled = torch.flatten(avgpool(features), 1)
    hidden6 = fc6(pooled)
    hidden7 = fc7(F.relu(hidden6))
    if consensus is None:
        consensus = torch.softmax(fc8(F.relu(hidden7)).sum(dim=0, keepdim=True), dim=1)
    upstream = (consensus @ fc8.weight) * (hidden7 > 0)  # (1, 4096) broadcast over the images by their masks
    upstream = (upstream @ fc7.weight) * (hidden6 > 0)
    cells = (upstream @ fc6.weight).view(features.shape[0], features.shape[1], *avgpool.output_size)
    return adaptive_average_pool_backward(cells, features.shape[-2:])


def adaptive_average_pool_backward(gradient: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The gradient w.r.t. the input of ``adaptive_avg_pool2d`` (to ``gradient``'s size) of an input of ``size``.

    Each output cell averaged the window PyTorch gives it (rows floor(i H / h) to ceil((i + 1) H / h)),
    so its gradient is shared evenly over that window; overlapping windows add up.
    """
    height, width = size
    cells_high, cells_wide = gradient.shape[-2:]
    if height % cells_high == 0 and width % cells_wide == 0:  # equal windows that do not overlap (224 px: 2 x 2)
        rows, columns = height // cells_high, width // cells_wide
        spread = gradient.repeat_interleave(rows, dim=-2).repeat_interleave(columns, dim=-1)
        return spread / (rows * columns)
    result = gradient.new_zeros(*gradient.shape[:-2], height, width)
    for row in range(cells_high):
        top, bottom = row * height // cells_high, -(-(row + 1) * height // cells_high)
        for column in range(cells_wide):
            left, right = column * width // cells_wide, -(-(column + 1) * width // cells_wide)
            share = gradient[..., row : row + 1, column : column + 1] / ((bottom - top) * (right - left))
            result[..., top:bottom, left:right] += share
    return result


def gradient_cam(features: torch.Tensor, gradient: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """GICD's channel weighting and CAM, per image: (features weighted by the gradient, CAM in [0, 1]).

    The official code takes global min / max, which are per image because its batch is 1.
    """
    weights = minmax_per_image(F.relu(F.adaptive_avg_pool2d(gradient, 1)), eps=1e-20)
    weighted = features * weights
    cam = F.relu(weighted.mean(dim=1, keepdim=True))
    cam = cam - cam.amin(dim=(1, 2, 3), keepdim=True)
    return weighted, (cam / (cam.amax(dim=(1, 2, 3), keepdim=True) + 1e-6)).clamp(0, 1)


class GINet(nn.Module):
    """Everything ``gicd_ginet.pth`` holds: backbone (with its own classifier) and the ARM decoder."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = GicdVGG()
        self.toplayer = nn.Sequential(nn.Conv2d(512, 64, 1), nn.ReLU(inplace=True), nn.Conv2d(64, 64, 1))
        for level, channels in LATERAL_CHANNELS.items():
            setattr(self, f"latlayer{level}", LatLayer(channels))
            setattr(self, f"enlayer{level}", EnLayer())
            setattr(self, f"dslayer{level}", DSLayer())

    def encode(self, images: torch.Tensor) -> list[torch.Tensor]:
        """conv1 .. conv5 outputs (normalised RGB in), without autograd."""
        features, x = [], images
        with torch.no_grad():
            for block in range(1, 6):
                x = getattr(self.backbone, f"conv{block}")(x)
                features.append(x)
        return features

    def induce(self, x5: torch.Tensor, consensus: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """GIM for a batch: (conv5 weighted by the consensus gradient, CAM in [0, 1]) per image."""
        return gradient_cam(x5, consensus_gradient(self.backbone.logits, x5, consensus))

    def decode(self, features: list[torch.Tensor], weighted: torch.Tensor, cam: torch.Tensor) -> list[torch.Tensor]:
        """``[cam, pred4, pred3, pred2, pred1]``, each resized to the input size (align_corners=True)."""
        top = self.toplayer(weighted)
        predictions = [cam]
        for level in (4, 3, 2, 1):
            lateral = features[level - 1]
            attended = lateral * _resize(predictions[-1], lateral.shape[-2:])  # ARM
            top = _resize(top, lateral.shape[-2:]) + getattr(self, f"latlayer{level}")(attended)
            top = getattr(self, f"enlayer{level}")(top)
            predictions.append(getattr(self, f"dslayer{level}")(top))
        size = features[0].shape[-2:]
        return [_resize(prediction, size) for prediction in predictions]

    def forward(self, images: torch.Tensor, consensus: torch.Tensor) -> list[torch.Tensor]:
        features = self.encode(images)
        weighted, cam = self.induce(features[-1], consensus)
        with torch.no_grad():
            return self.decode(features, weighted, cam)


class GICD(nn.Module):
    """Co-classifier (stock torchvision VGG-16) + GINet; ``forward`` takes a whole group."""

    def __init__(self, chunk: int = 8) -> None:
        # Imported here: torchvision.models pulls in torch._dynamo (1.4 s), which only this network needs.
        from torchvision.models import vgg16

        super().__init__()
        self.co_classifier = vgg16(weights=None)
        self.ginet = GINet()
        self.chunk = chunk

    def consensus(self, images: torch.Tensor) -> torch.Tensor:
        """softmax(sum of the group's ImageNet logits), (1, 1000); summed chunk by chunk."""
        return group_consensus(self.co_classifier, images, self.chunk)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """(N, 3, S, S) normalised RGB of one group to the five (N, 1, S, S) maps, pred1 last.

        Memory: the consensus pass holds one chunk's activations at a time; the maps of the whole
        group are kept (five per image), which is what a caller needs anyway.
        """
        consensus = self.consensus(images)
        outputs = [self.ginet(chunk, consensus) for chunk in images.split(self.chunk)]
        return [torch.cat(level) for level in zip(*outputs)]

    def predict_group(self, images: torch.Tensor) -> torch.Tensor:
        """pred1 only, (N, S, S): what the official test saves; other levels are dropped chunk by chunk."""
        consensus = self.consensus(images)
        return torch.cat([self.ginet(chunk, consensus)[-1][:, 0] for chunk in images.split(self.chunk)])


# -- importing the official files (``cosal weights import gicd``) ------------------------------------


def convert_ginet(path: Path) -> dict[str, torch.Tensor]:
    """``gicd_ginet.pth`` loaded with ``weights_only=True`` and checked strictly against :class:`GINet`."""
    from cosal_cli.models.convert import check_state_dict, convert_torch_state_dict

    with torch.device("meta"):  # keys and shapes only: no 560 MB allocation for the check
        model = GINet()
    return check_state_dict(convert_torch_state_dict(path), model, path.name)


def convert_co_classifier(path: Path) -> dict[str, torch.Tensor]:
    """torchvision's ``vgg16-397923af.pth``, checked strictly against a stock ``vgg16()``."""
    from torchvision.models import vgg16

    from cosal_cli.models.convert import check_state_dict, convert_torch_state_dict

    with torch.device("meta"):
        model = vgg16(weights=None)
    return check_state_dict(convert_torch_state_dict(path), model, path.name)
