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
from pathlib import Path

import torch

from cosal_cli.methods import base
from cosal_cli.methods.base import GroupImages
from cosal_cli.methods.options import GsOptions
from cosal_cli.models.gs import GroupSemanticNetwork
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
