"""``gwd``: group-wise deep co-saliency (Wei, Zhao, Bourahla, Li, Wu, IJCAI 2017), any group size.

The network (:mod:`cosal_cli.models.gwd`) takes exactly five images. A group of N >= 5 is covered by
five-image subsets in which every image appears at least 3 times (:func:`~cosal_cli.models.gwd.covering_subsets`,
seeded by the images' content), and each map is the mean of that image's predictions: the backbone
and the single-image block run once per image, the group and collaborative blocks 3 to 3.6 times.
A group of 1 to 4 images is padded to five by repeating its images, with a notice.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from cosal_cli.methods import base
from cosal_cli.methods.base import GroupImages
from cosal_cli.models.gwd import GROUP_SIZE, GroupWiseFcn
from cosal_cli.models.vgg import VGG16Features


class Method(base.TrainableMethod):
    name = "gwd"
    input_size = 224  # relu5_3 at 14 x 14; the deconvolution upsamples x16
    loss = "l2"  # eq. 7: squared L2 of the sigmoid maps
    trains_from_cache = True  # training sub-groups are picked by neighbours among cached descriptors

    @classmethod
    def build_network(cls, backbone: Path, config: Mapping | None = None) -> GroupWiseFcn:
        return GroupWiseFcn(VGG16Features.from_file(backbone), config)

    def predict_group(self, images: torch.Tensor, sources: GroupImages | None = None) -> torch.Tensor:
        return self.network.predict_group(images, chunk=self.batch_size)

    def group_notices(self, count: int) -> list[str]:
        if count >= GROUP_SIZE:
            return []
        return [f"gwd takes {GROUP_SIZE} images at a time: this group of {count} was padded to {GROUP_SIZE} "
                "by repeating its images, so the group context is weaker than in a larger group"]  # fmt: skip
