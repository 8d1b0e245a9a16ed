"""The one in-memory inference path for a group: decode, resize to the method's input, predict,
resize back to each image's size, refine.

The folder runner, ``bench`` (through the runner), ``train``'s validation and the Python API all call
these functions, so a map is computed the same way wherever it is asked for. Nothing here writes a
file or reports progress: that is the runners' job.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from cosal_cli.errors import InputError, UsageError
from cosal_cli.io import DecodedImage, Group, ImageFile, Problem, load_rgb
from cosal_cli.methods.base import GroupImages, Method
from cosal_cli.refine import Refiner


@dataclass
class DecodedGroup:
    """One group ready for the network: kept images and their network-size pixels."""

    images: list[Any]  # what each kept image came from (an ImageFile in folder runs)
    sizes: list[tuple[int, int]]  # (width, height) of each original, after EXIF orientation
    #: (N, S, S, 3) uint8: an array, or a tensor when decoded for a CUDA device (pinned, or on it)
    pixels: np.ndarray | torch.Tensor | None
    problems: list[Problem]
    notes: list[str]
    seconds: float
    #: The (H, W, 3) uint8 originals, kept only when refiners will need them.
    originals: list[np.ndarray] | None = None


def decode_group(group: Group, size: int, keep_originals: bool = False, pool: Executor | None = None,
                 device: torch.device | None = None, jpeg_on_device: bool = False) -> DecodedGroup:  # fmt: skip
    """Decode a discovered group's files; an unusable file becomes a Problem, never an exception.

    With ``pool``, the images are decoded and resized in its threads (Pillow releases the GIL), in order.
    ``device`` is where the group will be computed: a CUDA device gets the pixels in pinned memory (its
    copy to the GPU then needs no staging), and with ``jpeg_on_device`` the JPEGs are decoded on it
    (:mod:`cosal_cli.io.device_jpeg`), unless the originals are kept (their users work on the CPU).
    """
    tick = time.perf_counter()
    decoded = DecodedGroup([], [], None, [], [], 0.0, [] if keep_originals else None)
    on_device = _decode_jpegs(group.images, size, device, pool) if jpeg_on_device and not keep_originals else {}
    rest = [image for index, image in enumerate(group.images) if index not in on_device]
    load = functools.partial(_load, size=size)
    loaded_rest = iter(pool.map(load, rest) if pool else map(load, rest))
    pixels = []
    for index, image in enumerate(group.images):
        if index in on_device:
            decoded.images.append(image)
            decoded.sizes.append(on_device[index][0])
            pixels.append(on_device[index][1])
            continue
        loaded = next(loaded_rest)
        if isinstance(loaded, InputError):
            decoded.problems.append(Problem(image.path, str(loaded), group.name))
            continue
        decoded.notes += [f"{image.path}: {note}" for note in loaded[0].notes]
        pixels.append(_add(decoded, image, loaded[0].rgb, loaded[1]))
    decoded.pixels = _stacked(pixels, device) if pixels else None
    decoded.seconds = time.perf_counter() - tick
    return decoded


def check_gpu_decode(backend: str, device: str) -> None:
    """``--gpu-decode`` needs a CUDA device computing in torch (ONNX Runtime reads its inputs from the CPU)."""
    if not device.startswith("cuda"):
        raise UsageError(f"--gpu-decode needs a CUDA device (--device cuda), not {device}: it decodes with nvJPEG")
    if backend != "torch":
        raise UsageError("--gpu-decode is for --backend torch: ONNX Runtime reads its inputs from the CPU")


def _decode_jpegs(images: Sequence[ImageFile], size: int, device: torch.device | None,
                  pool: Executor | None) -> dict[int, tuple[tuple[int, int], torch.Tensor]]:  # fmt: skip
    """{index: ((width, height), network pixels on ``device``)} of the images the device decoded."""
    from cosal_cli.io.device_jpeg import decode_on_device, device_candidate, network_tensor

    paths = [image.path for image in images]
    candidates = list(pool.map(device_candidate, paths) if pool else map(device_candidate, paths))
    indices = [index for index, candidate in enumerate(candidates) if candidate is not None]
    if not indices:
        return {}
    upright = decode_on_device([candidates[index] for index in indices], device or torch.device("cpu"))
    return {index: ((image.shape[2], image.shape[1]), network_tensor(image, size))
            for index, image in zip(indices, upright) if image is not None}  # fmt: skip


def _stacked(pixels: list, device: torch.device | None) -> np.ndarray | torch.Tensor:
    """The group's (N, S, S, 3) pixels: on the device when some were decoded there, pinned for CUDA."""
    if any(isinstance(image, torch.Tensor) for image in pixels):
        target = next(image.device for image in pixels if isinstance(image, torch.Tensor))
        return torch.stack([image if isinstance(image, torch.Tensor) else torch.tensor(image, device=target)
                            for image in pixels])  # fmt: skip
    if device is None or device.type != "cuda":
        return np.stack(pixels)
    pinned = torch.empty((len(pixels), *pixels[0].shape), dtype=torch.uint8, pin_memory=True)
    np.stack(pixels, out=pinned.numpy())
    return pinned


def _load(image: ImageFile, size: int) -> tuple[DecodedImage, np.ndarray] | InputError:
    try:
        loaded = load_rgb(image.path)
    except InputError as exc:
        return exc
    return loaded, network_pixels(loaded.rgb, size)


def prepare_images(images: Sequence[Image.Image], labels: Sequence[Any], size: int,
                   keep_originals: bool = False) -> DecodedGroup:  # fmt: skip
    """The same for images already in memory (8-bit RGB PIL images, EXIF orientation applied)."""
    decoded = DecodedGroup([], [], None, [], [], 0.0, [] if keep_originals else None)
    pixels = [_add(decoded, label, image, network_pixels(image, size)) for label, image in zip(labels, images)]
    decoded.pixels = np.stack(pixels) if pixels else None
    return decoded


def network_pixels(rgb: Image.Image, size: int) -> np.ndarray:
    """The (size, size, 3) uint8 network input of an RGB image."""
    # Square resize with Pillow's bilinear filter, as the GICD / ICNet reference test scripts do.
    return np.asarray(rgb.resize((size, size), Image.BILINEAR))


def _add(decoded: DecodedGroup, label: Any, rgb: Image.Image, pixels: np.ndarray) -> np.ndarray:
    decoded.images.append(label)
    decoded.sizes.append(rgb.size)
    if decoded.originals is not None:
        decoded.originals.append(np.asarray(rgb))
    return pixels


def predict(method: Method, pixels: np.ndarray | torch.Tensor, sources: GroupImages | None = None) -> torch.Tensor:
    """(N, S, S, 3) uint8 pixels to the method's (N, h, w) float32 maps in [0, 1], on the CPU."""
    if isinstance(pixels, np.ndarray):
        pixels = torch.from_numpy(pixels)
    # non_blocking: from pinned memory the copy runs beside the CPU's work, ordered before the network's
    batch = pixels.to(method.device, non_blocking=True).permute(0, 3, 1, 2)
    # One copy that converts and lays the tensor out as the method's convolutions want it: channels-last
    # for cosal's own networks (faster), contiguous NCHW for the official ones (their code's layout).
    batch = batch.to(dtype=torch.float32, memory_format=method.memory_format()).div_(255.0)
    with torch.inference_mode(method.inference_mode), method.autocast():
        maps = _predict_group(method, batch, sources)
    maps = maps.detach().float().cpu()
    if maps.ndim != 3 or maps.shape[0] != pixels.shape[0]:
        raise TypeError(f"{method.name} returned maps of shape {tuple(maps.shape)} for {pixels.shape[0]} images")
    return maps


def _predict_group(method: Method, batch: torch.Tensor, sources: GroupImages | None) -> torch.Tensor:
    """The method's maps of the group; with ``--tta flip``, averaged with those of the mirrored group.

    The whole group is mirrored at once, so that a co-saliency method's consensus is computed over
    mirrored images only; the mirrored maps are mirrored back before the mean.
    """
    maps = method.predict_group(batch, sources)
    if not method.options.flip:
        return maps
    mirrored_batch = batch.flip(-1).contiguous(memory_format=method.memory_format())
    mirrored_sources = None if sources is None else replace(sources, mirrored=True)
    mirrored = method.predict_group(mirrored_batch, mirrored_sources).flip(-1)
    return (maps.float() + mirrored.float()) / 2


def map_at_size(low_res: torch.Tensor, size: tuple[int, int], interpolation: str) -> np.ndarray:
    """A method's (h, w) map in [0, 1] as the (H, W) float32 map of an image of ``size`` = (W, H)."""
    width, height = size
    official = interpolation == "bilinear-official"  # GICD's test.py: align_corners=True
    mode = "bilinear" if official else interpolation
    full = F.interpolate(low_res[None, None], size=(height, width), mode=mode, align_corners=official)[0, 0]
    return full.clamp_(0.0, 1.0).numpy()


def to_8_bits(values: np.ndarray, interpolation: str) -> np.ndarray:
    """A float map in [0, 1] as 8 bits: rounded, or truncated as GICD's ToPILImage does (bilinear-official)."""
    scaled = np.multiply(values, np.float32(255.0), dtype=np.float32)
    return (np.floor(scaled) if interpolation == "bilinear-official" else np.rint(scaled)).astype(np.uint8)


def to_image_size(low_res: torch.Tensor, size: tuple[int, int], interpolation: str) -> np.ndarray:
    """A method's (h, w) map in [0, 1] as the (H, W) uint8 map of an image of ``size`` = (W, H)."""
    return to_8_bits(map_at_size(low_res, size, interpolation), interpolation)


@dataclass
class GroupMaps:
    """A group's maps, brought to each image's size (and refined) one at a time, when asked for.

    Full-size maps of a large group of large photos do not fit in memory together; the low-resolution
    maps do, so that is what is kept.
    """

    low_res: torch.Tensor  # (N, h, w) in [0, 1]
    sizes: list[tuple[int, int]]
    interpolation: str
    refiners: Sequence[Refiner] = ()
    originals: list[np.ndarray] | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    notices: list[str] = field(default_factory=list)  # the method's remarks about this group

    def __len__(self) -> int:
        return len(self.sizes)

    def full(self, index: int) -> np.ndarray:
        """Map ``index`` at its image's size, float32 in [0, 1], refined."""
        values = map_at_size(self.low_res[index], self.sizes[index], self.interpolation)
        for refiner in self.refiners:
            values = np.clip(refiner(values, self.originals[index]), 0.0, 1.0).astype(np.float32)
        return values

    def eight_bit(self, index: int) -> np.ndarray:
        """Map ``index`` as written to a PNG."""
        return to_8_bits(self.full(index), self.interpolation)


def infer(method: Method, decoded: DecodedGroup, sources: GroupImages | None = None,
          refiners: Sequence[Refiner] = ()) -> GroupMaps:  # fmt: skip
    """Predict a decoded group; its maps come back lazily at each image's size."""
    if refiners and decoded.originals is None:
        raise ValueError("refiners need the original images: decode with keep_originals=True")
    tick = time.perf_counter()
    low_res = predict(method, decoded.pixels, sources)
    return GroupMaps(low_res, decoded.sizes, method.output_interpolation, refiners, decoded.originals,
                     {"compute_s": time.perf_counter() - tick}, method.group_notices(len(decoded.sizes)))  # fmt: skip


def sources_of(group: Group, images: Sequence[ImageFile]) -> GroupImages:
    """The group's name and the output stems of its kept images (SISM folders are keyed by them)."""
    return GroupImages(group.name, tuple(image.output_name.removesuffix(".png") for image in images))
