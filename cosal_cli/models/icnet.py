"""ICNet (Jin, Xu, Cheng, Zhang, Guo, NeurIPS 2020) in the official module layout (blanclist/ICNet).

Key names follow the official code so that ``ICNet_vgg16.pth`` (190 keys) loads with ``strict=True``;
the reference is ``../shared/reference/architectures.md`` section 3.

Everything after the VGG-16 is :class:`IcnetHead`; two networks put a VGG-16 under it:

* :class:`ICNet`, the official network (its own ``vgg.vgg.N`` VGG-16, torchvision input), for
  ``icnet-official``;
* :class:`IcnetNetwork`, cosal's ``icnet``: the head trained by ``cosal train --method icnet`` on the
  frozen, shared ``vgg16-imagenet`` backbone (the one ``sod`` uses).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cosal_cli.models.budget import KeptBytes
from cosal_cli.models.heads import FrozenBackboneNetwork

#: torchvision ``vgg16().features`` slice ends: conv1_2 (no pool), then each block starting with its pool.
VGG_SLICES = {"conv1_2": (0, 4), "conv2_2": (4, 9), "conv3_3": (9, 16), "conv4_3": (16, 23), "conv5_3": (23, 30)}
INPUT_SIZE = 224  # fixed by the Co6/Co5/Co4 weight shapes: in_channels = (224/32)^2, (224/16)^2, (224/8)^2


def _resize(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


class VGG16(nn.Module):
    """``vgg`` = the 31 layers of torchvision's ``features`` in a ModuleList (keys ``vgg.0.weight`` ...)."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 3
        for item in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"):
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(in_channels, item, 3, padding=1), nn.ReLU(inplace=True)]
                in_channels = item
        self.vgg = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor, name: str) -> torch.Tensor:
        start, end = VGG_SLICES[name]
        for layer in self.vgg[start:end]:
            x = layer(x)
        return x


class Res(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.conv(x))


class Prediction(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.pred = nn.Sequential(nn.Conv2d(channels, 1, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pred(x)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The map before its sigmoid (what cosal's training losses take)."""
        return self.pred[0](x)


class CosalSubModule(nn.Module):
    """SIVs, the correlation fusion (CSA), self-correlation features rearranged by the CSA (section 3.4).

    Two steps: :meth:`vectors` gives each image's SIV (its own features and SISM alone);
    :meth:`correlate` gives images' features against the whole group's SIVs. Only the SIVs are the
    group's, so an exported graph (``cosal export``) takes them as an input.
    """

    def __init__(self, height: int, width: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(height * width, 128, 1), Res(128))

    def forward(self, feats: torch.Tensor, sisms: torch.Tensor) -> torch.Tensor:
        return self.correlate(feats, self.vectors(feats, sisms))

    @staticmethod
    def vectors(feats: torch.Tensor, sisms: torch.Tensor) -> torch.Tensor:
        """The images' SIVs, (N, C): features L2-normalised per pixel, averaged under the SISM, normalised."""
        saliency = _resize(sisms, feats.shape[-2:])
        # .mean(3).mean(2) as the official code reduces: mean(dim=(2, 3)) sums in another order, and ICNet's
        # argsort of the co-saliency scores turns those 1e-7 differences into rank swaps.
        return F.normalize((F.normalize(feats, dim=1) * saliency).mean(3).mean(2), dim=1)

    def correlate(self, feats: torch.Tensor, sivs: torch.Tensor, whole: bool = False) -> torch.Tensor:
        """Features of ``feats``' images against the group's SIVs (N, C).

        At inference each image's correlation with the SIVs (N x hw) and its hw x hw self-correlation
        (2.5 MB at 28x28, held three times over) are made and consumed alone, so a group's peak memory
        grows by neither (for 300 images the whole group's correlations take 0.28 GB a copy, their Gram
        matrices 0.1 GB). Training keeps the batch whole, as BatchNorm's batch statistics in conv need;
        so does ``whole`` (an exported graph, run on one chunk).
        """
        nfs = F.normalize(feats, dim=1)
        if self.training or whole or len(nfs) == 1:
            return self._image_features(nfs, sivs)
        return torch.cat([self._image_features(nfs[i : i + 1], sivs) for i in range(len(nfs))])

    def _image_features(self, nfs: torch.Tensor, sivs: torch.Tensor) -> torch.Tensor:
        """The CSA of some of the group's images, their SCF rearranged by it and weighted by it, through conv."""
        _, _, h, w = nfs.shape
        flat = nfs.flatten(2)  # [m, C, hw]
        # The CSA is computed in float64 because the argsort below makes the maps a step function of it: its
        # 784 scores at 28x28 lie as close as 2e-8, and float32 rounding that differs by backend (ONNX Runtime's
        # MatMul against torch's: 5e-7) swapped ranks and moved maps by 9/255. In float64 they agree to 1/255.
        corr = F.normalize(sivs.double() @ flat.double(), dim=2)  # [m, N, hw]: each pixel against each SIV
        weights = torch.softmax((corr @ corr.transpose(1, 2)).sum(dim=2), dim=1)  # [m, N]
        csa = (corr * weights.unsqueeze(2)).sum(dim=1)  # [m, hw]
        low, high = csa.min(dim=1, keepdim=True).values, csa.max(dim=1, keepdim=True).values
        csa = (csa - low) / (high - low + 1e-12)
        scf = (flat.transpose(1, 2) @ flat).unflatten(2, (h, w))  # channel k: pixel k against all pixels
        order = csa.argsort(dim=1, descending=True)
        csa = csa.float()
        rscf = scf.gather(1, order[:, :, None, None].expand(-1, -1, h, w))
        return self.conv(rscf * csa.unflatten(1, (1, h, w)))


class CosalModule(nn.Module):
    def __init__(self, height: int, width: int) -> None:
        super().__init__()
        self.cosal_feat = CosalSubModule(height, width)  # shared by the foreground and background branches
        self.conv = nn.Sequential(nn.Conv2d(256, 128, 1), Res(128))

    def forward(self, feats: torch.Tensor, sisms: torch.Tensor) -> torch.Tensor:
        return self.correlate(feats, *self.vectors(feats, sisms))

    def vectors(self, feats: torch.Tensor, sisms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Foreground and background SIVs of the images (under the SISM and under its complement)."""
        return self.cosal_feat.vectors(feats, sisms), self.cosal_feat.vectors(feats, 1 - sisms)

    def correlate(self, feats, foreground, background, whole: bool = False) -> torch.Tensor:
        """The module's output for ``feats``' images, given the group's foreground and background SIVs."""
        branches = [self.cosal_feat.correlate(feats, sivs, whole) for sivs in (foreground, background)]
        return self.conv(torch.cat(branches, dim=1))


class DecoderBlock(nn.Module):
    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.cmprs = nn.Conv2d(in_channels, 32, 1)
        self.merge_conv = nn.Sequential(
            nn.Conv2d(96, 96, 3, padding=1), nn.BatchNorm2d(96), nn.ReLU(inplace=True),
            nn.Conv2d(96, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
        )  # fmt: skip
        self.pred = Prediction(32)

    def forward(self, low_level, cosal_map, sisms, old_feats) -> tuple[torch.Tensor, torch.Tensor]:
        size = low_level.shape[-2:]
        cmprs = self.cmprs(low_level)
        merged = torch.cat(
            [cmprs * _resize(cosal_map, size), cmprs * _resize(sisms, size), _resize(old_feats, size)], 1
        )
        feats = self.merge_conv(merged)
        return feats, self.pred.logits(feats)


class IcnetHead(nn.Module):
    """ICNet after the VGG-16: compressions, the three co-saliency modules and the decoder (section 3.5)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv6_cmprs = nn.Sequential(
            nn.MaxPool2d(2, 2), nn.Conv2d(512, 128, 1),
            nn.Conv2d(128, 128, 3, padding=1), nn.BatchNorm2d(128), nn.ReLU(inplace=True),
            nn.Conv2d(128, 128, 3, padding=1), nn.BatchNorm2d(128), nn.ReLU(inplace=True),
            nn.Conv2d(128, 128, 3, padding=1),
        )  # fmt: skip
        self.conv5_cmprs = nn.Conv2d(512, 256, 1)
        self.conv4_cmprs = nn.Conv2d(512, 256, 1)
        self.Co6 = CosalModule(7, 7)
        self.Co5 = CosalModule(14, 14)
        self.Co4 = CosalModule(28, 28)
        self.merge_co_56 = Res(128)
        self.merge_co_45 = nn.Sequential(Res(128), nn.Conv2d(128, 32, 1))
        self.get_pred_4 = Prediction(32)
        self.refine_3 = DecoderBlock(256)
        self.refine_2 = DecoderBlock(128)
        self.refine_1 = DecoderBlock(64)

    def decode(self, taps: list[torch.Tensor], sisms: torch.Tensor) -> list[torch.Tensor]:
        """VGG taps (conv1_2 ... conv5_3) and SISMs (N, 1, 224, 224) to logits map_1 (224^2) ... map_4 (28^2)."""
        conv1_2, conv2_2, conv3_3, conv4_3, conv5_3 = taps
        feat_45, logits_4 = self.co_saliency(self.compress(conv4_3, conv5_3), sisms)
        return self.refine(conv1_2, conv2_2, conv3_3, logits_4, sisms, feat_45) + [logits_4]

    def compress(self, conv4_3: torch.Tensor, conv5_3: torch.Tensor) -> list[torch.Tensor]:
        """The inputs of Co6, Co5 and Co4 (128 x 7^2, 256 x 14^2, 256 x 28^2): half the size of the two taps."""
        if tuple(conv4_3.shape[-2:]) != (INPUT_SIZE // 8, INPUT_SIZE // 8):
            side = conv4_3.shape[-1] * 8
            raise ValueError(f"ICNet's weights fix the input at {INPUT_SIZE}x{INPUT_SIZE}, got {side}x{side}")
        return [self.conv6_cmprs(conv5_3), self.conv5_cmprs(conv5_3), self.conv4_cmprs(conv4_3)]

    def co_saliency(self, compressed: list[torch.Tensor], sisms: torch.Tensor):
        """The group-wise part: the three co-saliency modules over the whole group; (feat_45, map_4 logits)."""
        return self.correlate(compressed, self.vectors(compressed, sisms))

    def vectors(self, compressed: list[torch.Tensor], sisms: torch.Tensor) -> list[torch.Tensor]:
        """Each image's SIVs for Co6, Co5, Co4, foreground and background of each (six (N, C) tensors)."""
        modules = (self.Co6, self.Co5, self.Co4)
        return [sivs for module, feats in zip(modules, compressed) for sivs in module.vectors(feats, sisms)]

    def correlate(self, compressed: list[torch.Tensor], sivs: list[torch.Tensor], whole: bool = False):
        """(feat_45, map_4 logits) of some of the group's images, given the whole group's SIVs (:meth:`vectors`)."""
        conv6, conv5, conv4 = compressed
        cosal_6 = self.Co6.correlate(conv6, *sivs[0:2], whole)
        cosal_5 = self.Co5.correlate(conv5, *sivs[2:4], whole)
        cosal_4 = self.Co4.correlate(conv4, *sivs[4:6], whole)
        feat_56 = self.merge_co_56(cosal_5 + _resize(cosal_6, cosal_5.shape[-2:]))
        feat_45 = self.merge_co_45(cosal_4 + _resize(feat_56, cosal_4.shape[-2:]))
        return feat_45, self.get_pred_4.logits(feat_45)

    def refine(self, conv1_2, conv2_2, conv3_3, logits_4, sisms, feat_45) -> list[torch.Tensor]:
        """The per-image part: the decoder, all three blocks gated by the 28x28 map_4; logits map_1 ... map_3."""
        map_4 = torch.sigmoid(logits_4)
        feat_34, logits_3 = self.refine_3(conv3_3, map_4, sisms, feat_45)
        feat_23, logits_2 = self.refine_2(conv2_2, map_4, sisms, feat_34)
        _, logits_1 = self.refine_1(conv1_2, map_4, sisms, feat_23)
        return [logits_1, logits_2, logits_3]


#: Shallow VGG taps (conv1_2, conv2_2, conv3_3: 22.5 MB an image at 224 px) a group larger than one chunk
#: keeps from its first pass for the decoder: groups of up to 22 images are encoded once; beyond, the chunks
#: past this bound are encoded a second time.
KEEP_TAPS_BYTES = 512 * 2**20


def predict_group(head: IcnetHead, encode, images: torch.Tensor, sisms, batch_size: int) -> torch.Tensor:
    """Final maps (N, 224, 224) in [0, 1] of one group, exactly as one batch, in memory bounded by ``batch_size``.

    ``encode(images, levels=5)`` gives the first ``levels`` VGG taps. ``sisms`` are the group's SISMs
    (N, 1, 224, 224), or ``sisms(rows, taps)`` gives those of ``images[rows]`` from their taps (a SISM
    generator on the same backbone: one VGG pass then serves both).

    Only the SIVs are the group's: each chunk's (from its compressed deep taps, 1 MB an image) are
    gathered first, then every chunk is correlated with all of them and decoded. The decoder's shallow
    taps (22.5 MB an image) are kept from the first pass up to :data:`KEEP_TAPS_BYTES` and encoded
    again beyond it (through the first three VGG blocks alone: 60 % of its work).
    """
    if head.training:  # BatchNorm would use each chunk's statistics: maps unlike the single batch's
        raise RuntimeError("icnet.predict_group needs the head in eval mode")
    sisms_of = sisms if callable(sisms) else lambda rows, taps: sisms[rows]
    if len(images) <= batch_size:
        taps = encode(images)
        return torch.sigmoid(head.decode(taps, sisms_of(slice(0, len(images)), taps))[0][:, 0])
    chunks, vectors, budget = [], [], KeptBytes(KEEP_TAPS_BYTES)
    for start in range(0, len(images), batch_size):
        rows = slice(start, start + batch_size)
        taps = encode(images[rows])
        chunk_sisms, compressed = sisms_of(rows, taps), head.compress(*taps[3:])
        vectors.append(head.vectors(compressed, chunk_sisms))
        chunks.append((rows, compressed, chunk_sisms, taps[:3] if budget.admit(taps[:3]) else None))
        del taps
    group = [torch.cat(level) for level in zip(*vectors)]
    maps = []
    while chunks:
        rows, compressed, chunk_sisms, shallow = chunks.pop(0)
        feat_45, logits_4 = head.correlate(compressed, group)
        conv1_2, conv2_2, conv3_3 = shallow if shallow is not None else encode(images[rows], 3)
        logits_1 = head.refine(conv1_2, conv2_2, conv3_3, logits_4, chunk_sisms, feat_45)[0]
        maps.append(torch.sigmoid(logits_1[:, 0]))
    return torch.cat(maps)


class ICNet(IcnetHead):
    """The official network: its own VGG-16 (``vgg.vgg.N``) under the head, same keys as ``ICNet_vgg16.pth``."""

    def __init__(self) -> None:
        super().__init__()
        self.vgg = VGG16()

    def forward(self, images: torch.Tensor, sisms: torch.Tensor, training: bool = False):
        """(N, 3, 224, 224) ImageNet-normalised group and (N, 1, 224, 224) SISMs to the final map (or 4 maps)."""
        if tuple(images.shape[-2:]) != (INPUT_SIZE, INPUT_SIZE):
            raise ValueError(
                f"ICNet's weights fix the input at {INPUT_SIZE}x{INPUT_SIZE}, got {tuple(images.shape[-2:])}"
            )
        logits = self.decode(self.encode(images), sisms)
        if not training:
            return torch.sigmoid(logits[0])
        # the official training output: map_4, map_3, map_2 (probabilities resized to 224), map_1
        size = images.shape[-2:]
        return [_resize(torch.sigmoid(x), size) for x in logits[:0:-1]] + [torch.sigmoid(logits[0])]

    def encode(self, images: torch.Tensor, levels: int = 5) -> list[torch.Tensor]:
        """ImageNet-normalised images to conv1_2 ... conv5_3 (the first ``levels`` of them)."""
        taps, x = [], images
        for name in list(VGG_SLICES)[:levels]:
            x = self.vgg(x, name)
            taps.append(x)
        return taps


#: cosal's ICNet head: ``sism`` names the SISM generator it was trained with (the one to use at test time).
DEFAULT_CONFIG: dict[str, Any] = {"sism": "sod"}
#: vgg16-imagenet taps that are ICNet's conv1_2 ... conv5_3 (post-ReLU, conv2_2 onwards after a pool).
BACKBONE_TAPS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")


class IcnetNetwork(FrozenBackboneNetwork):
    """cosal's ``icnet``: a frozen VGG-16 and a trainable :class:`IcnetHead` (``head``).

    ``forward(images, sisms)`` takes RGB in [0, 1] and SISMs in [0, 1] and returns the logit maps
    finest first (map_1 at 224^2, then map_2, map_3, map_4), the contract of cosal's trainer. During
    training the SISMs come from ``sism_source`` (the generator named in ``config["sism"]``), run on
    exactly the images the head sees, augmented and composited ones included.
    """

    def __init__(self, backbone: nn.Module, config: Mapping[str, Any] | None = None):
        super().__init__(config, DEFAULT_CONFIG)
        self.freeze("backbone", backbone)
        self.head = IcnetHead()
        self.sism_source: Callable[[torch.Tensor], torch.Tensor] | None = None

    def forward(self, images: torch.Tensor, sisms: torch.Tensor | None = None) -> list[torch.Tensor]:
        if sisms is None:
            if self.sism_source is None:
                raise ValueError("IcnetNetwork needs SISMs: pass them or set sism_source")
            with torch.no_grad():
                sisms = self.sism_source(images)
        return self.head.decode(self.encode(images), sisms)

    def encode(self, images: torch.Tensor, levels: int = 5) -> list[torch.Tensor]:
        """RGB in [0, 1] to the frozen VGG-16's conv1_2 ... conv5_3 (the first ``levels`` of them)."""
        from cosal_cli.models.vgg import imagenet_normalise

        names = BACKBONE_TAPS[:levels]
        with torch.no_grad():  # the backbone is frozen: no activations kept for backward
            taps = self.backbone(imagenet_normalise(images), taps=names)
        return [taps[name] for name in names]


def convert_icnet(path) -> dict[str, torch.Tensor]:
    """``ICNet_vgg16.pth`` (``{'state_dict': ...}`` or bare) loaded with ``weights_only=True``, checked strictly.

    A checkpoint for another input size (the fps-collection copy uses 256) is named as such: the Co
    modules' first conv takes (size/32)^2, (size/16)^2 and (size/8)^2 channels.
    """
    from cosal_cli.models.convert import check_state_dict, convert_torch_state_dict

    state = convert_torch_state_dict(path)
    key = "Co6.cosal_feat.conv.0.weight"
    found = next((value for name, value in state.items() if name.removeprefix("module.") == key), None)
    if found is not None and found.ndim == 4 and found.shape[1] != (INPUT_SIZE // 32) ** 2:
        side = round(found.shape[1] ** 0.5) * 32
        raise ValueError(
            f"{path.name} is an ICNet for {side}x{side} input ({key} takes {found.shape[1]} channels, "
            f"{(INPUT_SIZE // 32) ** 2} at {INPUT_SIZE}); the official release, which cosal runs, "
            f"is for {INPUT_SIZE}x{INPUT_SIZE}"
        )
    with torch.device("meta"):
        model = ICNet()
    return check_state_dict(state, model, path.name)
