"""``gwd``: group-wise deep co-saliency (Wei, Zhao, Bourahla, Li, Wu, IJCAI 2017), any group size.

The network (:mod:`cosal_cli.models.gwd`) takes exactly five images. A group of N >= 5 is covered by
five-image subsets in which every image appears at least 3 times (:func:`~cosal_cli.models.gwd.covering_subsets`,
seeded by the images' content), and each map is the mean of that image's predictions: the backbone
and the single-image block run once per image, the group and collaborative blocks 3 to 3.6 times.
A group of 1 to 4 images is padded to five by repeating its images, with a notice.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from pathlib import Path

import numpy as np
import torch

from cosal_cli.methods import base
from cosal_cli.methods.base import GroupImages
from cosal_cli.models.gwd import GROUP_SIZE, OUTPUT_STRIDES, GroupWiseFcn, content_keys, covering_subsets
from cosal_cli.models.vgg import VGG16Features


class Method(base.TrainableMethod):
    name = "gwd"
    input_size = 224  # relu5_3 at 14 x 14; the deconvolution upsamples x16
    loss = "l2"  # eq. 7: squared L2 of the sigmoid maps
    trains_from_cache = True  # training sub-groups are picked by neighbours among cached descriptors
    tunable_encoder = True  # conv5, as a low-rank update of VGG-16's weights
    tuned_above_cache = True  # the cache holds pool4, below it
    output_strides = OUTPUT_STRIDES  # 16: the paper's x16 deconvolution; 8: FCN-8s's pool3 skip as well

    @classmethod
    def build_network(cls, backbone: Path, config: Mapping | None = None) -> GroupWiseFcn:
        return GroupWiseFcn(VGG16Features.from_file(backbone), config)

    def predict_group(self, images: torch.Tensor, sources: GroupImages | None = None) -> torch.Tensor:
        return self.network.predict_group(images, chunk=self.batch_size)

    def graph_names(self) -> tuple[str, ...]:
        return ("encode", "subsets")

    def export_graphs(self) -> list[base.ExportGraph]:
        """Per image: scaled relu5_3, the single-image block (and the skip's details of pool3); per five-image
        subset: the maps."""
        traced = partial(base.GraphModule, self.network)  # a pass of the network, as a module to trace
        images = self.example_images()
        with torch.no_grad():
            encoded = _encode(self.network, images)
        names = _feature_names(self.network)
        subsets = tuple(feature[[0, 1, 0, 1, 0]][None] for feature in encoded)
        return [
            base.ExportGraph("encode", traced(_encode), (images,), ("images",), names,
                             {name: {0: "images"} for name in ("images", *names)},
                             "each image's scaled relu5_3 and single-image features (and the skip's details)"),
            base.ExportGraph("subsets", traced(_subsets), subsets, names, ("maps",),
                             {**{name: {0: "subsets"} for name in names}, "maps": {0: "maps"}},
                             "maps (subsets x 5) of subsets of five images (the caller picks the covering "
                             "subsets and averages each image's maps)"),
        ]  # fmt: skip

    def predict_with_graphs(self, run, images: torch.Tensor, sources: GroupImages | None = None) -> torch.Tensor:
        encoded = [run("encode", {"images": chunk.numpy()}) for chunk in images.split(self.batch_size)]
        features = dict(zip(_feature_names(self.network), (np.concatenate(parts) for parts in zip(*encoded))))
        subsets = np.array(covering_subsets(content_keys(images)))
        total = np.zeros((images.shape[0], *images.shape[-2:]), np.float32)
        for part in np.array_split(subsets, max(1, -(-len(subsets) // self.batch_size))):
            maps = run("subsets", {name: feature[part] for name, feature in features.items()})[0]
            np.add.at(total, part.reshape(-1), maps)
        return torch.from_numpy(total / np.bincount(subsets.reshape(-1), minlength=len(total))[:, None, None])

    def group_notices(self, count: int) -> list[str]:
        if count >= GROUP_SIZE:
            return []
        return [f"gwd takes {GROUP_SIZE} images at a time: this group of {count} was padded to {GROUP_SIZE} "
                "by repeating its images, so the group context is weaker than in a larger group"]  # fmt: skip


def _feature_names(network: GroupWiseFcn) -> tuple[str, ...]:
    return ("scaled", "single", "details") if network.skips else ("scaled", "single")


def _encode(network: GroupWiseFcn, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
    scaled, single, details = network.encode_each(images)
    return (scaled, single) if details is None else (scaled, single, details)


def _subsets(network: GroupWiseFcn, scaled: torch.Tensor, single: torch.Tensor,
             details: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """(B, 5, 512, h, w), (B, 5, C, h, w) and for the skip the details (B, 5, 64, 2h, 2w) to the maps
    (B * 5, 16 h, 16 w) in [0, 1]."""
    picked = None if details is None else details.flatten(0, 1)
    return torch.sigmoid(network.head.collaborate(single, network.head.group_feature(scaled), picked)[:, 0])
