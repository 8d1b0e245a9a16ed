"""``csmg``: CSMG complete (Zhang, Li, Liu, Liu, CVPR 2019), the paper's three cascades.

1. the ADMM mask of every image from the whole group's VGG-16 relu5_3 (section 3.1, ``csmg-mask``);
2. the mask-guided FCN (section 3.2, :mod:`cosal_cli.models.csmg`), VGG-16 frozen and cosal's trained
   head, with the masks multiplied into pool3 and pool5;
3. multi-scale label smoothing over the group (section 3.3, :mod:`cosal_cli.refine.label_smoothing`):
   a superpixel graph across the group's images alternated with the dense CRF.

The paper's ablations are switches (:class:`~cosal_cli.methods.options.CsmgOptions`): ``--smoothing off``
(the FCN alone), ``--branches pool3|pool5`` (one masked branch, with the head trained that way) and
``--scales single`` (one SLIC scale).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from pathlib import Path

import numpy as np
import torch

from cosal_cli.methods import base
from cosal_cli.methods.base import GroupImages
from cosal_cli.methods.options import CsmgOptions
from cosal_cli.models.csmg import OUTPUT_STRIDES, MaskGuidedFcn
from cosal_cli.models.vgg import VGG16Features
from cosal_cli.refine.admm import AdmmSettings, co_salient_masks


def admm_masks(relu5_3: torch.Tensor) -> torch.Tensor:
    """Stage 1, as ``csmg-mask``: the ADMM masks of a (sub-)group from its relu5_3 features."""
    # A 512 x 512 float64 problem: cheaper on the CPU than as a stream of small CUDA kernels.
    return co_salient_masks(relu5_3.float().cpu(), AdmmSettings())


#: The head role of each ``--branches`` choice (each trained with that branch alone).
HEAD_ROLES = {"both": "head", "pool3": "head_pool3", "pool5": "head_pool5"}
SINGLE_SCALE = (200,)


class Method(base.TrainableMethod):
    name = "csmg"
    roles = ("backbone", *HEAD_ROLES.values())
    input_size = 224  # relu5_3 at 14 x 14, pool5 at 7 x 7: the FCN's deconvolution upsamples x32
    loss = "l2"  # eq. 9: squared L2 of the sigmoid map (weight decay: weight_decay)
    weight_decay = 5e-4  # the paper's
    trains_from_cache = True
    cached_sub_groups = True  # the cache holds each view masked by the ADMM of its own sub-group
    options_class = CsmgOptions
    output_strides = OUTPUT_STRIDES  # 32: the paper's x32 deconvolution; 8: FCN-8s's pool3 skip as well

    def head_role(self) -> str:
        return HEAD_ROLES[self.options.branch_choice]

    @classmethod
    def build_network(cls, backbone: Path, config: Mapping | None = None) -> MaskGuidedFcn:
        return MaskGuidedFcn(VGG16Features.from_file(backbone), admm_masks, config)

    @classmethod
    def from_network(cls, network: torch.nn.Module, device: torch.device, batch_size: int = 8) -> base.TrainableMethod:
        """Validation during training scores the FCN alone (stage 3 only post-processes its maps)."""
        method = super().from_network(network, device, batch_size)
        method.options = CsmgOptions(smoothing="off")
        return method

    def predict_group(self, images: torch.Tensor, sources: GroupImages | None = None) -> torch.Tensor:
        maps, features = self.network.predict_group(images, chunk=self.batch_size)
        return self._smoothed(images, maps, features)

    def _smoothed(self, images: torch.Tensor, maps: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Stage 3 on the FCN's maps (unless --smoothing off)."""
        if not self.options.smooth:
            return maps
        from cosal_cli.refine.label_smoothing import SmoothingSettings, smooth_group

        settings = SmoothingSettings() if self.options.multi_scale else SmoothingSettings(scales=SINGLE_SCALE)
        pixels = (images.permute(0, 2, 3, 1).cpu().numpy() * 255.0).round().astype(np.uint8)
        smoothed = smooth_group(pixels, maps.float().cpu().numpy(), features, settings, str(self.device))
        return torch.from_numpy(smoothed).to(maps.device)

    def graph_names(self) -> tuple[str, ...]:
        return ("encode", "decode")

    def export_graphs(self) -> list[base.ExportGraph]:
        """The FCN around stage 1: pool3 and relu5_3 per chunk; the group's ADMM (torch); the masked FCN."""
        traced = partial(base.GraphModule, self.network)  # a pass of the network, as a module to trace
        images = self.example_images()
        with torch.no_grad():
            pool3, relu5_3 = self.network.encode(images)
        masks = torch.rand(2, *relu5_3.shape[-2:], device=self.device)
        batch = {0: "images"}
        return [
            base.ExportGraph("encode", traced(MaskGuidedFcn.encode), (images,), ("images",), ("pool3", "relu5_3"),
                             dict.fromkeys(("images", "pool3", "relu5_3"), batch),
                             "pool3 and relu5_3 of a chunk; the caller runs the ADMM on the whole group's relu5_3"),
            base.ExportGraph("decode", traced(_decode), (pool3, relu5_3, masks), ("pool3", "relu5_3", "masks"),
                             ("maps",), dict.fromkeys(("pool3", "relu5_3", "masks", "maps"), batch),
                             "the mask-guided FCN's maps of a chunk; stage 3 (smoothing) then runs in torch"),
        ]  # fmt: skip

    def predict_with_graphs(self, run, images: torch.Tensor, sources: GroupImages | None = None) -> torch.Tensor:
        encoded = [run("encode", {"images": chunk.numpy()}) for chunk in images.split(self.batch_size)]
        features = torch.from_numpy(np.concatenate([relu5_3 for _, relu5_3 in encoded]))
        masks = self.network.masks(features).numpy().astype(np.float32)
        parts = np.split(masks, np.cumsum([len(pool3) for pool3, _ in encoded])[:-1])  # the chunks' masks
        maps = np.concatenate([run("decode", {"pool3": pool3, "relu5_3": relu5_3, "masks": part})[0]
                               for (pool3, relu5_3), part in zip(encoded, parts)])  # fmt: skip
        return self._smoothed(images, torch.from_numpy(maps), features)


def _decode(network: MaskGuidedFcn, pool3: torch.Tensor, relu5_3: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    branches = network.branch_features(pool3, relu5_3, masks)
    return torch.sigmoid(network.decode(branches, (pool3.shape[-2] * 8, pool3.shape[-1] * 8), pool3)[:, 0])
