"""What every co-saliency method implements; the pipeline does everything else.

The pipeline decodes and resizes each image to ``input_size`` x ``input_size`` RGB in [0, 1], moves
the whole group to the device as one (N, 3, S, S) tensor, calls :meth:`Method.predict_group`
once, and resizes each returned map back to its image's original size with
``output_interpolation`` before writing it. A method therefore owns only its computation.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

import torch


class Method(ABC):
    name: ClassVar[str]
    #: Weight roles read from the manifest (``methods: <name>: {role: component}``).
    roles: ClassVar[tuple[str, ...]]
    input_size: ClassVar[int] = 224
    #: How maps are brought back to the image size: "bilinear" or "bicubic" (clamped to [0, 1], rounded to
    #: 8 bits), or "bilinear-official" (align_corners=True and truncation, as GICD's own test script saves).
    output_interpolation: ClassVar[str] = "bilinear"
    #: False for methods that need autograd at inference (GICD); the pipeline then leaves grad mode on.
    inference_mode: ClassVar[bool] = True

    def __init__(self, weights: Mapping[str, Path], device: torch.device, batch_size: int = 8):
        self.device = device
        self.batch_size = max(1, batch_size)

    @abstractmethod
    def predict_group(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) RGB in [0, 1] on ``self.device`` to (N, h, w) maps in [0, 1].

        The whole group comes in one call because the result of every co-saliency method depends on
        the other images of the group; a method bounds its own memory with ``self.batch_size``.
        """


class TrainableMethod(Method):
    """A method with a head that ``cosal train`` learns on top of a frozen, shared backbone.

    The network a subclass builds has a ``head`` sub-module (the only part saved, see
    :mod:`cosal_cli.models.heads`), a ``config`` dict, and a ``forward`` taking one sub-group of
    images (k, 3, S, S) in [0, 1] to a list of logit maps (k, 1, S, S), the final output first and
    deep-supervision outputs after it.
    """

    roles = ("backbone", "head")
    #: Loss of the method's paper (:data:`cosal_cli.training.losses.LOSSES`).
    loss: ClassVar[str] = "soft-iou"

    def __init__(self, weights: Mapping[str, Path], device: torch.device, batch_size: int = 8):
        from cosal_cli.models.heads import load_head

        super().__init__(weights, device, batch_size)
        head = load_head(weights["head"], self.name)
        network = self.build_network(weights["backbone"], head.config)
        network.head.load_state_dict(head.tensors, strict=True)
        self.network = network.to(device).eval()

    @classmethod
    def from_network(cls, network: torch.nn.Module, device: torch.device, batch_size: int = 8) -> TrainableMethod:
        """The method around a network being trained (for validation), without reading any file."""
        method = cls.__new__(cls)
        Method.__init__(method, {}, device, batch_size)
        method.network = network
        return method

    @classmethod
    @abstractmethod
    def build_network(cls, backbone: Path, config: Mapping | None = None) -> torch.nn.Module:
        """The network with the backbone weights loaded and a freshly initialised head."""
