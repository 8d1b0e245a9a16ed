"""What every co-saliency method implements (the method contract); the inference path does the rest.

The inference path (:mod:`cosal_cli.inference`) decodes and resizes each image to ``input_size`` x
``input_size`` RGB in [0, 1], moves the whole group to the device as one (N, 3, S, S) tensor, calls
:meth:`Method.predict_group` once, and resizes each returned map back to its image's original size
with ``output_interpolation``, then applies the refiners. A method therefore owns only its computation.

Options a user gives (``--sism``, ``--sism-dir``, ``--subgroup``) reach a method as the typed options
its card declares (:mod:`cosal_cli.methods.options`); the loader refuses options a method does not take.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from cosal_cli.methods.options import MethodOptions, SismChoice, SismOptions

__all__ = ["ExportGraph", "GraphModule", "GroupImages", "Method", "MethodOptions", "SismChoice", "SismOptions",
           "TrainableMethod"]


@dataclass(frozen=True)
class GroupImages:
    """Which files a group's input tensor came from (for SISMs read by group and stem)."""

    group: str
    stems: tuple[str, ...]
    #: The tensor holds the images mirrored left to right (``--tta flip``): maps read from files are mirrored too.
    mirrored: bool = False


@dataclass(frozen=True)
class ExportGraph:
    """One ONNX graph of a method (``cosal export``): a module, example inputs, names and dynamic axes.

    ``note`` says what the caller does around the graph (sum the consensus, apply a sigmoid...), for
    ``export.json``.
    """

    name: str
    module: torch.nn.Module
    inputs: tuple[torch.Tensor, ...]
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    dynamic_axes: dict[str, dict[int, str]]
    note: str = ""


class GraphModule(torch.nn.Module):
    """One pass of a method as a module to trace: ``function(network, *inputs)``, with the network
    registered as a sub-module so that its weights become the graph's initializers."""

    def __init__(self, network: torch.nn.Module, function: Callable[..., Any]):
        super().__init__()
        self.network, self.function = network, function

    def forward(self, *inputs: torch.Tensor) -> Any:
        return self.function(self.network, *inputs)


class Method(ABC):
    name: ClassVar[str]
    #: Weight roles read from the manifest (``methods: <name>: {role: component}``).
    roles: ClassVar[tuple[str, ...]]
    input_size: ClassVar[int] = 224
    #: How maps are brought back to the image size: "bilinear" or "bicubic" (clamped to [0, 1], rounded to
    #: 8 bits), or "bilinear-official" (align_corners=True and truncation, as GICD's own test script saves).
    output_interpolation: ClassVar[str] = "bilinear"
    #: False for methods that need autograd at inference (GICD); the inference path then leaves grad mode on.
    inference_mode: ClassVar[bool] = True
    #: The options it takes; the same class as its card's ``options`` (a test keeps them in step).
    options_class: ClassVar[type[MethodOptions]] = MethodOptions
    #: Run convolutions in channels-last memory order (weights converted at load, input by the inference
    #: path): 1.3x faster for VGG-16 and EfficientNet-Lite0 on CPU (benchmarks/throughput.py). The official
    #: methods keep the official code's order, which their agreement checks were measured with.
    channels_last: ClassVar[bool] = False
    #: "fp32", or "bf16": the network under bfloat16 autocast (:meth:`autocast`); the loader sets it per run.
    precision: str = "fp32"

    def __init__(
        self,
        weights: Mapping[str, Path],
        device: torch.device,
        batch_size: int = 8,
        options: MethodOptions | None = None,
    ):
        self.device = device
        self.batch_size = max(1, batch_size)
        self.options = options if options is not None else self.options_class()
        #: Remarks for the user about this run (e.g. a SISM generator other than the one trained with).
        self.notices: list[str] = []

    @abstractmethod
    def predict_group(self, images: torch.Tensor, sources: GroupImages | None = None) -> torch.Tensor:
        """(N, 3, S, S) RGB in [0, 1] on ``self.device`` to (N, h, w) maps in [0, 1].

        The whole group comes in one call because the result of every co-saliency method depends on
        the other images of the group; a method bounds its own memory with ``self.batch_size``.
        ``sources`` names the group and the images' stems (for SISMs read from a folder); it is None
        when the images come from elsewhere (training, validation).
        """

    def autocast(self) -> torch.autocast:
        """The autocast context the inference path predicts in: bfloat16 with ``precision="bf16"``, else off."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")

    def memory_format(self) -> torch.memory_format:
        """The memory order of the method's convolution weights and input (see ``channels_last``)."""
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def group_notices(self, count: int) -> list[str]:
        """Remarks about running on a group of ``count`` images (GWD pads groups smaller than five)."""
        return []

    def graph_names(self) -> tuple[str, ...]:
        """The names of :meth:`export_graphs`' graphs (without building them); none: not exportable yet."""
        from cosal_cli.errors import UsageError

        raise UsageError(f"method {self.name!r} cannot be exported to ONNX or run in onnxruntime: it has no "
                         "network (every method with one can)")  # fmt: skip

    def example_images(self, count: int = 2) -> torch.Tensor:
        """Random RGB images in [0, 1] at the method's input size: the example inputs a graph is traced with."""
        return torch.rand(count, 3, self.input_size, self.input_size, device=self.device)

    def export_graphs(self) -> list[ExportGraph]:
        """The method's network as ONNX graphs (one per pass), named as :meth:`graph_names` says."""
        self.graph_names()
        raise NotImplementedError

    def predict_with_graphs(self, run: Callable[[str, dict], list], images: torch.Tensor,
                            sources: GroupImages | None = None) -> torch.Tensor:  # fmt: skip
        """:meth:`predict_group` with the exported graphs: ``run(graph name, {input: array})`` gives its outputs."""
        self.graph_names()
        raise NotImplementedError

    def counting_images(self, callback: Callable[[int], None]) -> AbstractContextManager:
        """While in it, ``callback(k)`` as each chunk of k images is encoded (for progress); this method: never."""
        return nullcontext()


class TrainableMethod(Method):
    """A method with a head that ``cosal train`` learns on top of a frozen, shared backbone.

    The network a subclass builds has a ``head`` sub-module (the only part saved, see
    :mod:`cosal_cli.models.heads`), a ``config`` dict, and a ``forward`` taking one sub-group of
    images (k, 3, S, S) in [0, 1] to a list of logit maps (k, 1, S, S), the final output first and
    deep-supervision outputs after it.
    """

    roles = ("backbone", "head")
    channels_last = True
    #: Loss of the method's paper (:data:`cosal_cli.training.losses.LOSSES`).
    loss: ClassVar[str] = "soft-iou"
    #: True when layer shapes fix the input size (ICNet): training crops must be ``input_size`` too.
    fixed_input: ClassVar[bool] = False
    #: False for single-image methods (sod): a map never depends on the other images of the group.
    group_context: ClassVar[bool] = True
    #: Whether its network has ``encode_for_cache`` / ``forward_from_cache`` (``cosal train --cache-views``).
    trains_from_cache: ClassVar[bool] = False
    #: True when a cached view depends on the sub-group it was encoded with (CSMG's masks): outsiders
    #: and collaborative batches would then pair views with masks of another group, so they are refused.
    cached_sub_groups: ClassVar[bool] = False
    #: True when the network also learns to classify its group's common categories (GS, ``--co-category``;
    #: :mod:`cosal_cli.training.co_category`); such a network has ``category_logits(cached)``.
    co_category_loss: ClassVar[bool] = False
    #: ``cosal train --tune-encoder`` also tunes part of the backbone (gicd: a copy of its early blocks; gwd: conv5).
    tunable_encoder: ClassVar[bool] = False
    #: The tuned part runs on the cached encoder outputs (gwd's conv5 on pool4), so it trains from the cache.
    tuned_above_cache: ClassVar[bool] = False
    #: The strides ``cosal train --output-stride`` may give the maps (the paper's, or 8 with the pool3 skip).
    output_strides: ClassVar[tuple[int, ...]] = ()
    #: Adam's L2 weight decay on the head (CSMG's eq. 9 has one).
    weight_decay: ClassVar[float] = 0.0

    def __init__(
        self,
        weights: Mapping[str, Path],
        device: torch.device,
        batch_size: int = 8,
        options: MethodOptions | None = None,
    ):
        from cosal_cli.models.heads import load_head

        super().__init__(weights, device, batch_size, options)
        head = load_head(weights[self.head_role()], self.name)
        network = self.build_network(weights["backbone"], head.config)
        network.head.load_state_dict(head.tensors, strict=True)
        self.network = network.to(device, memory_format=self.memory_format()).eval()


    def head_role(self) -> str:
        """The weight role of the head to load: ``head``, or an ablation's head picked by the options (CSMG, GS)."""
        return "head"

    @classmethod
    def from_network(cls, network: torch.nn.Module, device: torch.device, batch_size: int = 8) -> TrainableMethod:
        """The method around a network being trained (for validation), without reading any file."""
        method = cls.__new__(cls)
        Method.__init__(method, {}, device, batch_size)
        method.network = network
        return method

    @contextmanager
    def counting_images(self, callback: Callable[[int], None]) -> Iterator[None]:
        hook = self.network.input_layer().register_forward_pre_hook(lambda module, inputs: callback(len(inputs[0])))
        try:
            yield
        finally:
            hook.remove()

    @classmethod
    @abstractmethod
    def build_network(cls, backbone: Path, config: Mapping | None = None) -> torch.nn.Module:
        """The network with the backbone weights loaded and a freshly initialised head."""

    @classmethod
    def prepare_training(cls, network: torch.nn.Module, device: torch.device, offline: bool) -> None:
        """Whatever the network needs at training time beyond its weights (ICNet: its SISM generator)."""
