"""``gs``: robust co-saliency with group semantics (Wang, Zha, Liu, Xie, AAAI 2019), any group size.

The network (:mod:`cosal_cli.models.gs`) pools the whole group's pool5 features into one semantic
vector ``s`` by H-LRBP (chunk by chunk, so it does not depend on the order or number of the images)
and decodes every image's pool3/4/5 pyramid with ``s`` broadcast to each level. A group of one works:
its ``s`` is that image's own.

The paper's ablations are switches (:class:`~cosal_cli.methods.options.GsOptions`), each to its own
trained head: ``--co-category off`` (trained without the co-category loss) and ``--pooling average``
(FC + average pooling instead of H-LRBP).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from pathlib import Path

import numpy as np
import torch

from cosal_cli.methods import base
from cosal_cli.methods.base import GroupImages
from cosal_cli.methods.options import GsOptions
from cosal_cli.models.gs import LEVELS, GroupSemanticNetwork
from cosal_cli.models.vgg import VGG16Features

#: The head role of each (--co-category, --pooling) choice.
HEAD_ROLES = {("on", "hlrbp"): "head", ("off", "hlrbp"): "head_no_category", ("on", "average"): "head_average"}


class Method(base.TrainableMethod):
    name = "gs"
    roles = ("backbone", *HEAD_ROLES.values())
    input_size = 224  # the paper's; pool3 at 28 x 28, the last deconvolution upsamples x8
    loss = "bce"  # eq. 9: pixel-wise cross-entropy
    trains_from_cache = True  # the co-category loss is computed on cached pool5 sub-groups
    co_category_loss = True
    options_class = GsOptions

    def head_role(self) -> str:
        return HEAD_ROLES[self.options.head_choice]

    @classmethod
    def build_network(cls, backbone: Path, config: Mapping | None = None) -> GroupSemanticNetwork:
        return GroupSemanticNetwork(VGG16Features.from_file(backbone), config)

    def predict_group(self, images: torch.Tensor, sources: GroupImages | None = None) -> torch.Tensor:
        return self.network.predict_group(images, chunk=self.batch_size)

    def graph_names(self) -> tuple[str, ...]:
        return ("encode", "decode")

    def export_graphs(self) -> list[base.ExportGraph]:
        """The two passes of :meth:`GroupSemanticNetwork.predict_group`: pyramid and running sums, then maps."""
        traced = partial(base.GraphModule, self.network)  # a pass of the network, as a module to trace
        images = self.example_images()
        with torch.no_grad():
            levels = self.network.encode(images)
            semantic = self.network.group_semantic(levels["pool5"])
        batch = {0: "images"}
        pyramid = tuple(levels[level] for level in LEVELS)
        return [
            base.ExportGraph("encode", traced(_encode), (images,), ("images",), (*LEVELS, "sums"),
                             {"images": batch, **dict.fromkeys(LEVELS, batch)},
                             "a chunk's scaled pool3-pool5 and its H-LRBP running sums; the caller adds the "
                             "sums over the group and makes the group vector s"),
            base.ExportGraph("decode", traced(_decode), (*pyramid, semantic), (*LEVELS, "semantic"),
                             ("maps",), {**dict.fromkeys(LEVELS, batch), "maps": batch},
                             "maps of a chunk from its pyramid and the group vector s"),
        ]  # fmt: skip

    def predict_with_graphs(self, run, images: torch.Tensor, sources: GroupImages | None = None) -> torch.Tensor:
        kept, totals = [], None
        for chunk in images.split(self.batch_size):
            *pyramid, sums = run("encode", {"images": chunk.numpy()})
            totals = torch.from_numpy(sums) if totals is None else totals + torch.from_numpy(sums)
            kept.append([level.astype(np.float16) for level in pyramid])  # as the torch path keeps them
        with torch.no_grad():
            semantic = self.network.head.semantics.vector(totals, images.shape[0]).numpy()
        maps = [run("decode", {**{name: level.astype(np.float32) for name, level in zip(LEVELS, pyramid)},
                               "semantic": semantic})[0] for pyramid in kept]  # fmt: skip
        return torch.from_numpy(np.concatenate(maps))


def _encode(network: GroupSemanticNetwork, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
    levels = network.encode(images)
    return (*(levels[level] for level in LEVELS), network.head.semantics.add(levels["pool5"]))


def _decode(network: GroupSemanticNetwork, pool3, pool4, pool5, semantic) -> torch.Tensor:
    size = (pool3.shape[-2] * 8, pool3.shape[-1] * 8)  # pool3 is at 1/8 of the input
    return torch.sigmoid(network.decode({"pool3": pool3, "pool4": pool4, "pool5": pool5}, semantic, size)[:, 0])
