"""JPEG decoding on the computing device (``cosal detect --gpu-decode``): nvJPEG through torchvision on CUDA.

On a GPU that computes a thousand maps a second, decoding photos with Pillow on a few CPU threads is
what everything waits for. torchvision decodes a batch of JPEGs with nvJPEG straight into GPU memory,
where they are oriented and resized to the network's input without coming back to the CPU.

Pillow stays the judge of what a file is: it reads each header first (cheap, nothing decoded), with the
same checks as :func:`~cosal_cli.io.load_rgb`. Only plain RGB or grayscale JPEGs whose data ends where
a JPEG ends go to the device; anything else (other formats, CMYK, a truncated file, a file nvJPEG
refuses) is decoded by Pillow as usual, so a damaged file gets the same message and notes either way.
On the CPU (``device="cpu"``) torchvision decodes with libjpeg-turbo: that is how the tests check this
path against Pillow's without a GPU.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from cosal_cli import decode_messages
from cosal_cli.errors import InputError
from cosal_cli.io.decoding import _opened

#: EXIF orientation (tag 0x0112) to the steps that bring a (C, H, W) image upright, as Pillow's
#: ImageOps.exif_transpose does: 2 mirrored, 3 upside down, 4 flipped, 5-8 turned by a quarter.
_ORIENT = {
    1: lambda x: x,
    2: lambda x: x.flip(-1),
    3: lambda x: x.flip(-2, -1),
    4: lambda x: x.flip(-2),
    5: lambda x: x.transpose(-2, -1),
    6: lambda x: x.transpose(-2, -1).flip(-1),
    7: lambda x: x.transpose(-2, -1).flip(-2, -1),
    8: lambda x: x.transpose(-2, -1).flip(-2),
}


@dataclass
class DeviceJpeg:
    """A JPEG the device decoder takes: its bytes and its EXIF orientation."""

    data: bytes
    orientation: int


def device_candidate(path: Path) -> DeviceJpeg | None:
    """The file as a :class:`DeviceJpeg` when the device can decode it, else None (Pillow will)."""
    try:
        with decode_messages.captured() as messages, _opened(path, messages) as image:
            if image.format != "JPEG" or image.mode not in ("RGB", "L"):
                return None
            orientation = _orientation(image)
    except InputError:
        return None  # Pillow decodes it again, and reports what is wrong with it
    try:
        data = path.read_bytes()
    except OSError:
        return None
    # A truncated JPEG lacks its end marker: nvJPEG may fill the rest silently, Pillow says so.
    return DeviceJpeg(data, orientation) if data.rstrip(b"\x00").endswith(b"\xff\xd9") else None


def _orientation(image) -> int:
    try:
        value = int(image.getexif().get(0x0112, 1))
    except Exception:  # broken EXIF blocks come in many shapes: used as stored, as load_rgb does
        return 1
    return value if value in _ORIENT else 1


def decode_on_device(jpegs: list[DeviceJpeg], device: torch.device) -> list[torch.Tensor | None]:
    """Each JPEG as an upright (3, H, W) uint8 tensor on ``device``; None where the decoder refused it."""
    from torchvision.io import ImageReadMode, decode_jpeg

    def decode(batch: list[DeviceJpeg]) -> list[torch.Tensor]:
        encoded = [torch.frombuffer(bytearray(jpeg.data), dtype=torch.uint8) for jpeg in batch]
        with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders in favour of TorchCodec
            warnings.simplefilter("ignore")
            return list(decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device))

    try:
        decoded: list[torch.Tensor | None] = list(decode(jpegs))
    except RuntimeError:  # one bad file fails the batch: find it, decode the others
        decoded = []
        for jpeg in jpegs:
            try:
                decoded += decode([jpeg])
            except RuntimeError:
                decoded.append(None)
    return [None if image is None else _ORIENT[jpeg.orientation](image) for jpeg, image in zip(jpegs, decoded)]


def network_tensor(image: torch.Tensor, size: int) -> torch.Tensor:
    """An upright (3, H, W) uint8 image as the (size, size, 3) uint8 network input, on its device.

    Bilinear with antialiasing when shrinking, as Pillow's BILINEAR filter resizes (within a level).
    """
    resized = F.interpolate(image[None].float(), size=(size, size), mode="bilinear", antialias=True,
                            align_corners=False)  # fmt: skip
    return resized[0].round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0)
