"""``gicd``: GICD with cosal's own weights (:mod:`cosal_cli.models.gicd_lite`), the default GICD.

EfficientNet-Lite0 (frozen, ImageNet) is the co-classifier and the encoder; the ARM decoder is
trained by ``cosal train --method gicd`` with jigsaw composites and shipped inside the package.
For the authors' VGG-16 network and weights see ``gicd-official``.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from pathlib import Path

import numpy as np
import torch

from cosal_cli.methods import base
from cosal_cli.methods.base import GroupImages
from cosal_cli.methods.options import OutsiderOptions
from cosal_cli.models.efficientnet_lite import EfficientNetLite0
from cosal_cli.models.gicd_lite import GicdLite
from cosal_cli.models.membership import Membership, consensus_of

#: Tuned on groups of shared-v2 *training* images (benchmarks/tune_membership.py --similarities 0 5 10 20,
#: README "Outsiders"): of each similarity's smallest offset with which at most 1 % of their objects (groups
#: without outsiders) fall below 0.5, the one with the lowest outsider ratio.
MEMBERSHIP = Membership(offset=9.5, temperature=0.5, similarity=20.0)


class Method(base.TrainableMethod):
    name = "gicd"
    input_size = 224  # the paper's size; the GIM then works on Lite0's last 7 x 7 grid (official GICD: 14 x 14)
    loss = "soft-iou"
    # the GIM's gradient is written out (GicdLite.induce), so no autograd is needed at inference
    trains_from_cache = True
    tunable_encoder = True
    options_class = OutsiderOptions

    @classmethod
    def build_network(cls, backbone: Path, config: Mapping | None = None) -> GicdLite:
        return GicdLite(EfficientNetLite0.from_file(backbone), config)

    def predict_group(self, images: torch.Tensor, sources: GroupImages | None = None) -> torch.Tensor:
        membership = MEMBERSHIP if self.options.dim_outsiders else None
        return self.network.predict_group(images, chunk=self.batch_size, membership=membership)

    def graph_names(self) -> tuple[str, ...]:
        return ("group", "consensus", "gim")

    def export_graphs(self) -> list[base.ExportGraph]:
        """As at inference: a group that fits one chunk in one pass; a larger one's logits, then the GIM per chunk."""
        traced = partial(base.GraphModule, self.network)  # a pass of the network, as a module to trace
        images = self.example_images()
        consensus = torch.softmax(torch.randn(1, 1000, device=self.device), dim=1)
        batch = {0: "images"}
        maps_and_logits = {"images": batch, "maps": batch, "logits": batch}
        return [
            base.ExportGraph("group", traced(_gim_maps), (images,), ("images",), ("maps", "logits"),
                             maps_and_logits, "maps of a whole group in one pass (its own consensus), and its "
                             "logits, which outsider dimming weighs against that consensus"),
            base.ExportGraph("consensus", traced(_logits), (images,), ("images",), ("logits",),
                             {"images": batch, "logits": batch},
                             "ImageNet logits of a chunk; the group's consensus is softmax(sum of all its logits)"),
            base.ExportGraph("gim", traced(_gim_maps), (images, consensus), ("images", "consensus"),
                             ("maps", "logits"), maps_and_logits, "maps of a chunk under the group's consensus "
                             "(1, 1000), and the logits"),
        ]  # fmt: skip

    def predict_with_graphs(self, run, images: torch.Tensor, sources: GroupImages | None = None) -> torch.Tensor:
        """:meth:`GicdLite.predict_group`'s steps around the graphs: one pass for a group that fits a chunk."""
        chunks = [part.numpy() for part in images.split(self.batch_size)]
        if len(chunks) == 1:
            maps, logits = (torch.from_numpy(array) for array in run("group", {"images": chunks[0]}))
            consensus = consensus_of(logits)
        else:
            logits = torch.cat([torch.from_numpy(run("consensus", {"images": chunk})[0]) for chunk in chunks])
            consensus = consensus_of(logits)
            given = consensus.numpy().astype(np.float32)
            maps = torch.cat([torch.from_numpy(run("gim", {"images": chunk, "consensus": given})[0])
                              for chunk in chunks])  # fmt: skip
        if self.options.dim_outsiders:
            maps = maps * MEMBERSHIP.weights(logits, consensus)[:, None, None]
        return maps


def _logits(network: GicdLite, images: torch.Tensor) -> torch.Tensor:
    return network.logits(network.encode(images)[1])


def _gim_maps(network: GicdLite, images: torch.Tensor,
              consensus: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    pyramid, features = network.encode(images)
    logits = network.decode(pyramid, features, images.shape[-2:], consensus)
    return torch.sigmoid(logits[0][:, 0]), network.logits(features)
