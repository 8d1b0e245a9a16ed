"""cosal's Python API: load a method once, get co-saliency maps for groups of images in memory.

    import cosal_cli

    detector = cosal_cli.load("gicd", device="cpu")
    maps = detector.predict(["a.jpg", "b.jpg", "c.jpg"])  # float32 (H, W) maps in [0, 1]

A group is a list of paths, PIL images or (H, W, 3) uint8 arrays, in any mix. Each map has its
image's original size (EXIF orientation applied for paths), and is the map ``cosal detect`` writes
to a PNG, before the PNG's rounding to 8 bits. An item that cannot be used raises
:class:`BadInput`, naming the item.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
from PIL import Image

from cosal_cli import inference, methods
from cosal_cli.errors import InputError
from cosal_cli.hub import ProgressCallback, WeightHub
from cosal_cli.io import load_rgb
from cosal_cli.methods.base import GroupImages, Method
from cosal_cli.methods.loader import load_method, use_threads
from cosal_cli.refine import Refiner, check_refiners, load_refiner

GroupItem = Union[str, Path, Image.Image, np.ndarray]

__all__ = ["BadInput", "Detector", "GroupItem", "load"]


class BadInput(InputError):
    """An item of a group that cannot be used; the message names the item and the reason."""

    def __init__(self, index: int, item: Any, reason: str):
        self.index, self.item = index, item
        super().__init__(f"item {index} ({_describe(item)}): {reason}")


def load(
    method: str | None = None,
    device: str = "auto",
    *,
    offline: bool = False,
    batch_size: int = 8,
    refine: Sequence[str] = (),
    progress: ProgressCallback | None = None,
    backend: str = "torch",
    threads: int | None = None,
    precision: str = "fp32",
    **options: Any,
) -> Detector:
    """A ready detector: the method's weights fetched if needed (unless ``offline``) and verified.

    ``options`` are the method's own (``sism="gmr"``, ``subgroup=5`` for ICNet; see ``cosal methods``) and
    ``tta="flip"``, which every method takes (each group's maps averaged with the mirrored group's);
    ``refine`` adds refiners after the method's (``refine=["ranking"]``); ``backend="onnxruntime"`` runs
    the method's exported graphs in ONNX Runtime (every method with a network); ``threads`` sets torch's
    (and onnxruntime's) CPU threads for the process (default: one per core); ``precision="bf16"`` runs the
    network under bfloat16 autocast (faster where the CPU or GPU has bf16 units; maps within a few 1/255,
    see the README's Speed section). Errors are those of the
    command line: UsageError, WeightsUnavailable, ChecksumMismatch (all ``cosal_cli.errors.CosalError``).
    """
    name = method or methods.DEFAULT_METHOD
    typed = methods.options_for(name, options)
    refiner_names = methods.refiners_for(name, refine)
    check_refiners(refiner_names)  # an unknown refiner fails before any download
    use_threads(threads)
    loaded = load_method(name, device, batch_size, offline, progress, typed, backend, precision)
    refiners = [load_refiner(refiner, str(loaded.device)) for refiner in refiner_names]
    return Detector(loaded, refiners, _weights_of(name))


@dataclass(frozen=True)
class WeightInfo:
    component: str
    sha256: str | None


class Detector:
    """A loaded method (and its refiners): call :meth:`predict` for each group."""

    def __init__(self, method: Method, refiners: Sequence[Refiner], weights: dict[str, WeightInfo]):
        self._method, self.refiners, self.weights = method, list(refiners), weights

    @property
    def method(self) -> str:
        return self._method.name

    @property
    def input_size(self) -> int:
        return self._method.input_size

    @property
    def device(self) -> str:
        return str(self._method.device)

    @property
    def notices(self) -> list[str]:
        """Remarks about this configuration (e.g. SISMs from another generator than the one trained with)."""
        return list(self._method.notices)

    def predict(self, group: Sequence[GroupItem], name: str = "group") -> list[np.ndarray]:
        """One float32 (H, W) map in [0, 1] per item, at the item's size, in the group's order.

        ``name`` is the group's name, used only by methods that read per-group files (``--sism-dir``:
        ``<DIR>/<name>/<stem>.png``, the stems being the paths' stems or ``0``, ``1`` ...).
        """
        if len(group) == 0:
            raise BadInput(0, group, "an empty group: give at least one image")
        images = [_as_rgb(index, item) for index, item in enumerate(group)]
        stems = tuple(Path(item).stem if isinstance(item, (str, Path)) else str(i) for i, item in enumerate(group))
        decoded = inference.prepare_images(images, list(range(len(images))), self.input_size,
                                           keep_originals=bool(self.refiners))  # fmt: skip
        maps = inference.infer(self._method, decoded, GroupImages(name, stems), self.refiners)
        for note in maps.notices:  # what the command line prints as a notice (gwd's padding of small groups)
            warnings.warn(f"{name}: {note}", UserWarning, stacklevel=2)
        return [maps.full(index) for index in range(len(maps))]

    def __repr__(self) -> str:
        refined = "".join(f"+{refiner.name}" for refiner in self.refiners)
        return f"Detector({self.method}{refined} on {self.device})"


def _as_rgb(index: int, item: GroupItem) -> Image.Image:
    if isinstance(item, (str, Path)):
        try:
            return load_rgb(Path(item)).rgb
        except InputError as exc:
            raise BadInput(index, item, str(exc)) from None
    if isinstance(item, Image.Image):
        return item if item.mode == "RGB" else item.convert("RGB")
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8 or item.ndim != 3 or item.shape[2] != 3 or min(item.shape[:2]) == 0:
            raise BadInput(index, item, "arrays must be (H, W, 3) uint8 RGB")
        return Image.fromarray(item)
    raise BadInput(index, item, "expected a path, a PIL image or an (H, W, 3) uint8 array")


def _describe(item: Any) -> str:
    if isinstance(item, np.ndarray):
        return f"array {item.dtype} {item.shape}"
    if isinstance(item, Image.Image):
        return f"PIL image {item.mode} {item.size[0]}x{item.size[1]}"
    return str(item) if isinstance(item, (str, Path)) else type(item).__name__


def _weights_of(method: str) -> dict[str, WeightInfo]:
    return {role: WeightInfo(*weight) for role, weight in WeightHub().method_weights(method).items()}
