"""Decoding images safely: every way a file can fail becomes one :class:`InputError` naming the fix."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cosal_cli import decode_messages
from cosal_cli.errors import InputError, first_line
from cosal_cli.io.files import (
    SUPPORTED_FORMATS,
    _status,
    _unsupported_message,
    unusable_reason,
)

#: Pillow refuses images above twice its MAX_IMAGE_PIXELS (about 179 megapixels) as decompression
#: bombs; we keep that limit and turn its error into a per-file message.
MAX_IMAGE_PIXELS = 2 * Image.MAX_IMAGE_PIXELS if Image.MAX_IMAGE_PIXELS else 178_956_970


@dataclass
class DecodedImage:
    rgb: Image.Image  # mode RGB, EXIF orientation applied
    notes: list[str]

    @property
    def size(self) -> tuple[int, int]:
        return self.rgb.size


def load_rgb(path: Path) -> DecodedImage:
    """Decode ``path`` to an 8-bit RGB image in display orientation, or raise InputError (and nothing else)."""
    notes: list[str] = []
    with decode_messages.captured() as messages, _opened(path, messages) as image:
        frames = getattr(image, "n_frames", 1)
        if frames > 1:
            notes.append(f"{frames} frames, using the first")
        if image.mode in ("RGB", "RGBA") and _decoded_from_16_bits(image):
            notes.append(f"16-bit {image.mode} reduced to 8 bits per channel (the high byte of each value kept)")
        image.load()
        image = _apply_orientation(image, notes)
        rgb = _to_rgb(image, notes)
    if messages:  # a damaged file can make libtiff complain once per row: keep the first few
        unique = list(dict.fromkeys(messages))
        more = f" (and {len(unique) - 3} more)" if len(unique) > 3 else ""
        notes.append("the decoder reported damage, the map may be wrong: " + "; ".join(unique[:3]) + more)
    return DecodedImage(rgb, notes)


def load_grey(path: Path, decoder: str = "pillow") -> np.ndarray:
    """Decode a mask or saliency map to an 8-bit grey (H, W) array, or raise InputError.

    Evaluation toolboxes decode differently, and on colour or 16-bit files that moves the 4th
    decimal, so the decoder is chosen to match the tool being reproduced: ``pillow`` is
    ``Image.open(path).convert('L')`` (eval-co-sod; ITU-R 601 luma, no EXIF rotation) and
    ``opencv`` is ``cv2.imread(path, cv2.IMREAD_GRAYSCALE)`` (PySODMetrics' scripts; its own luma
    rounding, 16-bit data divided by 256, EXIF rotation applied).
    """
    with decode_messages.captured() as messages, _opened(path, messages) as image:  # same checks for both
        if decoder != "opencv":
            image.load()
            return np.asarray(image.convert("L"))
    import cv2

    # imdecode rather than imread: imread cannot open non-ASCII paths on Windows.
    grey = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_GRAYSCALE)
    if grey is None:
        raise InputError("OpenCV cannot decode it (corrupt, or a format it does not read); re-export as PNG")
    return grey


def _decoded_from_16_bits(image: Image.Image) -> bool:
    """Whether Pillow reads this colour image from 16-bit samples (its raw mode says so before load)."""
    for tile in getattr(image, "tile", None) or ():
        raw_mode = tile.args if isinstance(tile.args, str) else (tile.args or ("",))[0]
        if isinstance(raw_mode, str) and ";16" in raw_mode:
            return True
    return False


@contextmanager
def _opened(path: Path, messages: list[str]) -> Iterator[Image.Image]:
    """Open a supported image; every way decoding can fail becomes one InputError naming the fix.

    The decoders raise many exception types on damaged data (``TypeError: Missing dimensions`` from
    a TIFF with a broken tag, for one), so anything raised while the file is open is the file's
    fault and becomes an InputError; ``messages`` (libtiff's own words) make the reason precise.
    """
    status, reason = _status(path)
    if status is None:
        raise InputError(reason)
    if not stat.S_ISREG(status.st_mode):
        raise InputError("not a regular file (a folder, FIFO or device); cosal reads image files")
    if status.st_size == 0:
        raise InputError("empty file (0 bytes)")
    try:
        with Image.open(path) as image:
            _check_supported(image)
            yield image
    except InputError:
        raise
    except Image.DecompressionBombError as exc:
        raise InputError(
            f"too large to decode safely ({first_line(exc)}); the limit is {MAX_IMAGE_PIXELS / 1e6:.0f} "
            "megapixels (decompression-bomb guard): downscale the image"
        ) from None
    except UnidentifiedImageError:
        raise InputError("not a readable image (corrupt, or not really JPEG/PNG/BMP/WebP/TIFF)") from None
    except OSError as exc:
        if exc.errno is not None:  # opening or reading the file failed, not the decoder
            raise InputError(unusable_reason(path, exc)) from None
        raise InputError(_corrupt_message(exc, messages)) from None
    except Exception as exc:
        raise InputError(_corrupt_message(exc, messages)) from None


def _corrupt_message(exc: Exception, messages: list[str]) -> str:
    errors = [message for message in messages if message.startswith("libtiff error")]
    detail = errors[0] if errors else first_line(exc)
    if not isinstance(exc, (OSError, SyntaxError, ValueError, EOFError)):
        detail = f"{type(exc).__name__}: {detail}"
    return f"truncated or corrupt image data ({detail}); re-export or re-copy the file"


def _check_supported(image: Image.Image) -> None:
    if image.format not in SUPPORTED_FORMATS:
        raise InputError(_unsupported_message(image.format or "unknown"))
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        raise InputError(
            f"{width}x{height} is {width * height / 1e6:.0f} megapixels, above the {MAX_IMAGE_PIXELS / 1e6:.0f} "
            "megapixel limit (decompression-bomb guard): downscale the image"
        )
    if width == 0 or height == 0:
        raise InputError(f"image has no pixels ({width}x{height})")


def _apply_orientation(image: Image.Image, notes: list[str]) -> Image.Image:
    try:
        oriented = ImageOps.exif_transpose(image)
    except Exception as exc:  # broken EXIF blocks come in many shapes
        notes.append(f"EXIF orientation unreadable ({first_line(exc)}), used as stored")
        return image
    return oriented if oriented is not None else image


def _to_rgb(image: Image.Image, notes: list[str]) -> Image.Image:
    """Every Pillow mode to 8-bit RGB, saying what was done (16-bit is rescaled, not clipped)."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        gray, how = _high_depth_to_uint8(np.asarray(image), mode)
        notes.append(f"{_mode_name(mode)} grayscale {how}")
        return Image.fromarray(gray).convert("RGB")
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        notes.append("palette image converted to RGB")
        if image.mode == "RGB":
            return image
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        alpha = np.asarray(rgba)[..., 3]
        if alpha.min() == 255:
            notes.append(f"{mode}: alpha channel is fully opaque, dropped")
            return rgba.convert("RGB")
        notes.append(f"{mode}: transparent areas composited on white")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode == "CMYK":
        notes.append("CMYK converted to RGB" + (" with its ICC profile" if image.info.get("icc_profile") else ""))
        return _cmyk_to_rgb(image)
    notes.append(f"{_mode_name(mode)} converted to RGB")
    return image.convert("RGB")


def _mode_name(mode: str) -> str:
    return {"L": "grayscale", "1": "1-bit", "I": "32-bit integer", "F": "floating-point"}.get(
        mode, "16-bit" if mode.startswith("I;16") else mode
    )


def _high_depth_to_uint8(values: np.ndarray, mode: str) -> tuple[np.ndarray, str]:
    """Map a 16-bit, 32-bit integer or float gray image to 8 bits by its *format's* range.

    The scale follows the pixel format, never the image content, so the same 16-bit value always
    gives the same 8-bit value. Only data outside its format's usual range is stretched, and the
    note says so.
    """
    with np.errstate(invalid="ignore"):  # a signalling NaN (damaged float data) warns when cast
        values = values.astype(np.float64)
    finite = np.isfinite(values)
    broken = "" if finite.all() else f" ({int((~finite).sum())} NaN or infinite values set to 0)"
    values = np.where(finite, values, 0.0)  # a damaged float image: no brightness rather than noise
    low, high = float(values.min()), float(values.max())
    if mode.startswith("I;16") or (mode == "I" and low >= 0 and high <= 65535):
        # 16-bit data (Pillow may open a 16-bit PNG as mode "I"): 65535 -> 255.
        scaled, how = values / 257.0, "rescaled from 16 to 8 bits"
    elif mode == "F" and low >= 0.0 and high <= 1.0:
        scaled, how = values * 255.0, "rescaled from [0, 1] to 8 bits"
    else:
        scaled = (values - low) * (255.0 / max(high - low, 1e-12))
        how = f"values {low:g}..{high:g} outside the format's range, stretched to 8 bits"
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8), how + broken


def _cmyk_to_rgb(image: Image.Image) -> Image.Image:
    profile = image.info.get("icc_profile")
    if profile:
        try:
            from io import BytesIO

            from PIL import ImageCms

            source = ImageCms.ImageCmsProfile(BytesIO(profile))
            return ImageCms.profileToProfile(image, source, ImageCms.createProfile("sRGB"), outputMode="RGB")
        except Exception:  # a broken profile falls back to the plain formula
            pass
    return image.convert("RGB")
