"""Finding image groups on disk, decoding images safely, and writing maps atomically.

Nothing here raises for a bad image: problems come back as :class:`Problem` values naming the file,
so the pipeline can report them and carry on with the rest of the batch.
"""

from __future__ import annotations

import os
import sys
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cosal_cli.errors import first_line

#: Pillow format names cosal decodes (MPO is the multi-picture JPEG many cameras write).
SUPPORTED_FORMATS = {"JPEG", "MPO", "PNG", "BMP", "WEBP", "TIFF"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
#: Pillow refuses images above twice its MAX_IMAGE_PIXELS (about 179 megapixels) as decompression
#: bombs; we keep that limit and turn its error into a per-file message.
MAX_IMAGE_PIXELS = 2 * Image.MAX_IMAGE_PIXELS if Image.MAX_IMAGE_PIXELS else 178_956_970
#: Folder names (case-insensitive) that mark a dataset root in the standard layout (Image/<group>/).
DATASET_IMAGE_DIRS = {"image"}


@dataclass(frozen=True)
class Problem:
    """An input that could not be used, with a one-line reason that names the fix."""

    path: Path
    message: str
    group: str | None = None

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass(frozen=True)
class ImageFile:
    path: Path
    output_name: str  # file name of the map, "<stem>.png" unless two inputs share a stem


@dataclass
class Group:
    name: str  # also the output sub-folder
    folder: Path
    images: list[ImageFile] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)


@dataclass
class Discovery:
    groups: list[Group] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)  # inputs that are not groups at all
    notices: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------
# Content sniffing
# ----------------------------------------------------------------------------------------------


def sniff(path: Path) -> str | None:
    """Image type from the first bytes, or None; names unsupported types too (GIF, HEIC ...)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(32)
    except OSError:
        return None
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith(b"BM") and len(head) >= 26:
        return "BMP"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1"):
            return "HEIC"
        if brand in (b"avif", b"avis"):
            return "AVIF"
    if head.startswith(b"\x00\x00\x00\x0cjP  ") or head.startswith(b"\xff\x4f\xff\x51"):
        return "JPEG 2000"
    if head.startswith(b"8BPS"):
        return "PSD"
    return None


def _is_candidate(path: Path) -> bool:
    return not path.name.startswith(".") and path.is_file() and (
        path.suffix.lower() in IMAGE_SUFFIXES or sniff(path) is not None
    )


def _has_images(folder: Path) -> bool:
    try:
        return any(_is_candidate(entry) for entry in folder.iterdir())
    except OSError:
        return False


# ----------------------------------------------------------------------------------------------
# Discovery
# ----------------------------------------------------------------------------------------------


def read_paths(arguments: Iterable[str], stdin: TextIO | None = None) -> list[str]:
    """Expand ``-`` into the group paths read from stdin, one per line (blank lines ignored)."""
    stdin = stdin if stdin is not None else sys.stdin
    paths: list[str] = []
    for argument in arguments:
        if argument == "-":
            paths += [line.rstrip("\r\n") for line in stdin if line.strip()]
        else:
            paths.append(argument)
    return paths


def discover(paths: Iterable[str | Path]) -> Discovery:
    """Turn command-line paths into groups.

    A folder that holds images is one group. A folder that holds no images directly is a folder of
    groups: each sub-folder is a group (an empty one is reported). A dataset root in the standard
    layout (``Image/<group>/`` next to ``GroundTruth/``) is read through its ``Image`` folder.
    """
    found = Discovery()
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            found.problems.append(Problem(path, "no such file or folder"))
        elif not path.is_dir():
            found.problems.append(Problem(path, "not a folder; pass the folder that holds the group's images"))
        elif _has_images(path):
            found.groups.append(_scan_group(path))
        else:
            found.groups += _scan_folder_of_groups(path, found)
    _deduplicate_group_names(found)
    return found


def _scan_folder_of_groups(folder: Path, found: Discovery) -> list[Group]:
    subfolders = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    image_root = next((p for p in subfolders if p.name.lower() in DATASET_IMAGE_DIRS), None)
    if image_root is not None:
        found.notices.append(f"{folder}: dataset layout, reading the groups in {image_root}")
        subfolders = sorted(p for p in image_root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not subfolders:
        found.problems.append(Problem(folder, "empty: no images and no group folders"))
    groups = []
    for subfolder in subfolders:
        group = _scan_group(subfolder)
        if not group.images and not group.problems:
            found.problems.append(Problem(subfolder, "empty group: no images in this folder", group.name))
            continue
        groups.append(group)
    return groups


def _scan_group(folder: Path) -> Group:
    group = Group(name=folder.resolve().name, folder=folder)
    images: list[Path] = []
    skipped: list[str] = []
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if entry.name.startswith("."):
            skipped.append(entry.name)
            continue
        if entry.is_dir():
            skipped.append(entry.name + "/")
            continue
        kind = sniff(entry)
        looks_like_image = entry.suffix.lower() in IMAGE_SUFFIXES
        if kind in SUPPORTED_FORMATS:
            images.append(entry)
        elif kind is not None:
            group.problems.append(Problem(entry, _unsupported_message(kind), group.name))
        elif looks_like_image:
            message = "empty file (0 bytes)" if entry.stat().st_size == 0 else (
                "not an image: the content is not JPEG, PNG, BMP, WebP or TIFF (corrupt or misnamed)"
            )
            group.problems.append(Problem(entry, message, group.name))
        else:
            skipped.append(entry.name)
    group.images, collisions = assign_output_names(images)
    group.notices = [f"{group.name}: {text}" for text in collisions]
    if skipped:
        group.notices.append(
            f"{group.name}: skipped {len(skipped)} hidden, non-image or folder entries: {abbreviate(skipped)}"
        )
    return group


def abbreviate(names: list[str], limit: int = 5) -> str:
    """``a, b, c and 7 more``: the first ``limit`` names of a list for a one-line message."""
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _unsupported_message(kind: str) -> str:
    return (
        f"unsupported image type {kind}; cosal reads JPEG, PNG, BMP, WebP and TIFF: "
        "convert it first (for example to PNG)"
    )


def assign_output_names(paths: list[Path]) -> tuple[list[ImageFile], list[str]]:
    """Map names ``<stem>.png``; inputs sharing a stem keep them apart deterministically.

    In name order, the first input of a stem gets ``<stem>.png`` and the others ``<file name>.png``
    (``a.jpg`` -> ``a.png``, ``a.png`` -> ``a.png.png``). Names are compared case-insensitively so
    the result is the same on case-insensitive file systems.
    """
    taken: set[str] = set()
    files, notices = [], []
    by_stem: dict[str, list[Path]] = {}
    for path in sorted(paths, key=lambda p: p.name):
        by_stem.setdefault(path.stem.casefold(), []).append(path)
    for path in sorted(paths, key=lambda p: p.name):
        for candidate in _name_candidates(path):
            if candidate.casefold() not in taken:
                taken.add(candidate.casefold())
                files.append(ImageFile(path, candidate))
                break
    # Announce every input involved in a clash: those sharing a stem, and any pushed off its natural
    # name by another input's fallback name (a.png -> a.png.png takes the name of an input a.png.png).
    involved = [f for f in files if len(by_stem[f.path.stem.casefold()]) > 1 or f.output_name != f"{f.path.stem}.png"]
    if involved:
        mapping = ", ".join(f"{f.path.name} -> {f.output_name}" for f in involved)
        notices.append(f"inputs share the stem of another input, so maps are named {mapping}")
    return files, notices


def _name_candidates(path: Path) -> Iterator[str]:
    yield f"{path.stem}.png"
    yield f"{path.name}.png"
    counter = 2
    while True:
        yield f"{path.name}~{counter}.png"
        counter += 1


def _deduplicate_group_names(found: Discovery) -> None:
    seen: set[str] = set()
    for group in found.groups:
        name, counter = group.name, 2
        while name.casefold() in seen:
            name, counter = f"{group.name}~{counter}", counter + 1
        if name != group.name:
            found.notices.append(f"{group.folder}: another group is also named {group.name!r}; its maps go to {name}/")
            group.name = name
        seen.add(name.casefold())


# ----------------------------------------------------------------------------------------------
# Decoding
# ----------------------------------------------------------------------------------------------


class InputError(Exception):
    """A single image cannot be used; the message is the reason and the fix."""


@dataclass
class DecodedImage:
    rgb: Image.Image  # mode RGB, EXIF orientation applied
    notes: list[str]

    @property
    def size(self) -> tuple[int, int]:
        return self.rgb.size


def load_rgb(path: Path) -> DecodedImage:
    """Decode ``path`` to an 8-bit RGB image in display orientation, or raise InputError."""
    notes: list[str] = []
    with _opened(path) as image:
        frames = getattr(image, "n_frames", 1)
        if frames > 1:
            notes.append(f"{frames} frames, using the first")
        image.load()
        image = _apply_orientation(image, notes)
        rgb = _to_rgb(image, notes)
    return DecodedImage(rgb, notes)


def load_grey(path: Path, decoder: str = "pillow") -> np.ndarray:
    """Decode a mask or saliency map to an 8-bit grey (H, W) array, or raise InputError.

    Evaluation toolboxes decode differently, and on colour or 16-bit files that moves the 4th
    decimal, so the decoder is chosen to match the tool being reproduced: ``pillow`` is
    ``Image.open(path).convert('L')`` (eval-co-sod; ITU-R 601 luma, no EXIF rotation) and
    ``opencv`` is ``cv2.imread(path, cv2.IMREAD_GRAYSCALE)`` (PySODMetrics' scripts; its own luma
    rounding, 16-bit data divided by 256, EXIF rotation applied).
    """
    with _opened(path) as image:  # the same checks and messages for both decoders
        if decoder != "opencv":
            image.load()
            return np.asarray(image.convert("L"))
    import cv2

    # imdecode rather than imread: imread cannot open non-ASCII paths on Windows.
    grey = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_GRAYSCALE)
    if grey is None:
        raise InputError("OpenCV cannot decode it (corrupt, or a format it does not read); re-export as PNG")
    return grey


@contextmanager
def _opened(path: Path) -> Iterator[Image.Image]:
    """Open a supported image; every way decoding can fail becomes one InputError naming the fix."""
    if path.stat().st_size == 0:
        raise InputError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
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
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InputError(f"truncated or corrupt image data ({first_line(exc)}); re-export or re-copy the file") from None


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
    values = values.astype(np.float64)
    low, high = float(values.min()), float(values.max())
    if mode.startswith("I;16") or (mode == "I" and low >= 0 and high <= 65535):
        # 16-bit data (Pillow may open a 16-bit PNG as mode "I"): 65535 -> 255.
        scaled, how = values / 257.0, "rescaled from 16 to 8 bits"
    elif mode == "F" and low >= 0.0 and high <= 1.0:
        scaled, how = values * 255.0, "rescaled from [0, 1] to 8 bits"
    else:
        scaled = (values - low) * (255.0 / max(high - low, 1e-12))
        how = f"values {low:g}..{high:g} outside the format's range, stretched to 8 bits"
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8), how


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


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


@contextmanager
def atomic_output(destination: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``destination``; rename it into place only on success.

    An interrupted or failed write leaves no file at ``destination`` (and removes the temporary),
    so a later ``--skip-existing`` run never mistakes a truncated file for a finished one.
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".tmp", dir=destination.parent)
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(temporary, destination)
    finally:
        temporary.unlink(missing_ok=True)


def write_map(values: np.ndarray, destination: Path) -> None:
    """Write an 8-bit grayscale PNG atomically; ``values`` is (H, W) uint8."""
    if values.dtype != np.uint8 or values.ndim != 2:
        raise ValueError(f"maps are written as (H, W) uint8, got {values.dtype} {values.shape}")
    with atomic_output(destination) as temporary:
        Image.fromarray(values).save(temporary, format="PNG")
