"""ICNet's ONNX graphs, shared by ``icnet`` and ``icnet-official`` (they differ only in their VGG-16).

ICNet needs the whole group in one place only: each image's co-saliency features correlate it with
every image's SIVs (saliency-weighted mean features, :meth:`IcnetHead.vectors`). So there are two
graphs, each run on a chunk of images:

* ``encode``: images and SISMs to the decoder's three shallow VGG taps, the three compressed deep
  taps the co-saliency modules read, and the chunk's SIVs (six: Co6, Co5, Co4, foreground and
  background of each);
* ``decode``: a chunk's taps and SISMs and the *whole group's* SIVs to its final maps.

Between them the caller concatenates the chunks' SIVs. A group that fits one chunk is encoded once;
a larger one is encoded again, chunk by chunk, for the decoder (as :func:`icnet.predict_group` does),
so memory holds one chunk's shallow taps.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np
import torch
from torch import nn

from cosal_cli import sism
from cosal_cli.methods import base
from cosal_cli.methods.base import GroupImages
from cosal_cli.models.icnet import IcnetHead

SHALLOW = ("conv1_2", "conv2_2", "conv3_3")
COMPRESSED = ("conv6", "conv5", "conv4")
VECTORS = tuple(f"sivs{level}_{side}" for level in (6, 5, 4) for side in ("foreground", "background"))


class IcnetGraphs:
    """Mixin for a method with ``sisms`` and ``options.subgroup``, given its network and how to run it."""

    batch_size: int
    input_size: int
    device: torch.device
    sisms: Callable
    options: base.SismOptions

    def graph_network(self) -> nn.Module:
        """The module whose weights the graphs hold."""
        raise NotImplementedError

    @staticmethod
    def graph_head(network: nn.Module) -> IcnetHead:
        raise NotImplementedError

    @staticmethod
    def graph_taps(network: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
        """VGG taps conv1_2 ... conv5_3 of RGB ``images`` in [0, 1]."""
        raise NotImplementedError

    def graph_names(self) -> tuple[str, ...]:
        return ("encode", "decode")

    def export_graphs(self) -> list[base.ExportGraph]:
        network = self.graph_network()
        size = self.input_size
        images = self.example_images()
        sisms = torch.rand(2, 1, size, size, device=self.device)
        encode = partial(_encode, type(self).graph_taps, type(self).graph_head)
        decode = partial(_decode, type(self).graph_head)
        with torch.no_grad():
            encoded = encode(network, images, sisms)
        group = [torch.cat([sivs, sivs[:1]]) for sivs in encoded[6:]]  # a group of three around a chunk of two
        images_axis, group_axis = {0: "images"}, {0: "group"}
        encode_axes = dict.fromkeys(("images", "sisms", *SHALLOW, *COMPRESSED, *VECTORS), images_axis)
        decode_axes = {**dict.fromkeys(("sisms", *SHALLOW, *COMPRESSED, "maps"), images_axis),
                       **dict.fromkeys(VECTORS, group_axis)}  # fmt: skip
        return [
            base.ExportGraph("encode", base.GraphModule(network, encode), (images, sisms), ("images", "sisms"),
                             (*SHALLOW, *COMPRESSED, *VECTORS), encode_axes,
                             "a chunk's shallow taps, compressed deep taps and SIVs; the caller concatenates "
                             "the SIVs of the whole group's chunks"),
            base.ExportGraph("decode", base.GraphModule(network, decode), (*encoded[:6], sisms, *group),
                             (*SHALLOW, *COMPRESSED, "sisms", *VECTORS), ("maps",), decode_axes,
                             "a chunk's final maps (sigmoid applied) against the whole group's SIVs"),
        ]  # fmt: skip

    def predict_with_graphs(self, run, images: torch.Tensor, sources: GroupImages | None = None) -> torch.Tensor:
        def group_maps(part: torch.Tensor, sisms: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(run_group(run, part.numpy(), sisms.cpu().numpy(), self.batch_size))

        return sism.predict_in_subgroups(images, sources, self.options.subgroup, self.sisms, group_maps)


def run_group(run, images: np.ndarray, sisms: np.ndarray, batch_size: int) -> np.ndarray:
    """Final maps of one (sub-)group with the two graphs, ``batch_size`` images at a time."""
    starts = range(0, len(images), batch_size)
    feeds = [{"images": images[i : i + batch_size], "sisms": sisms[i : i + batch_size]} for i in starts]
    if len(feeds) == 1:
        outputs = run("encode", feeds[0])
        return _run_decode(run, outputs[:6], feeds[0]["sisms"], outputs[6:])
    deep = [run("encode", feed)[3:] for feed in feeds]  # compressed taps and SIVs; shallow taps dropped
    group = [np.concatenate(level) for level in zip(*(outputs[3:] for outputs in deep))]
    maps = []
    for feed, outputs in zip(feeds, deep):
        shallow = run("encode", feed)[:3]
        maps.append(_run_decode(run, [*shallow, *outputs[:3]], feed["sisms"], group))
    return np.concatenate(maps)


def _run_decode(run, taps: list[np.ndarray], sisms: np.ndarray, group: list[np.ndarray]) -> np.ndarray:
    feed = {**dict(zip(SHALLOW + COMPRESSED, taps)), "sisms": sisms, **dict(zip(VECTORS, group))}
    return run("decode", feed)[0]


def _encode(taps_of, head_of, network: nn.Module, images: torch.Tensor, sisms: torch.Tensor) -> tuple:
    head, taps = head_of(network), taps_of(network, images)
    compressed = head.compress(*taps[3:])
    return (*taps[:3], *compressed, *head.vectors(compressed, sisms))


def _decode(head_of, network: nn.Module, *inputs: torch.Tensor) -> torch.Tensor:
    head = head_of(network)
    shallow, compressed, sisms, group = inputs[:3], inputs[3:6], inputs[6], inputs[7:]
    feat_45, logits_4 = head.correlate(list(compressed), list(group), whole=True)
    return torch.sigmoid(head.refine(*shallow, logits_4, sisms, feat_45)[0][:, 0])
