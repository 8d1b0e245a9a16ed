"""Finding image groups on disk, decoding images safely, and writing maps atomically.

Nothing here raises for a bad image: problems come back as :class:`Problem` values naming the file,
so the pipeline can report them and carry on with the rest of the batch.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TextIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cosal_cli import decode_messages
from cosal_cli.errors import InputError, UsageError, first_line

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
    traceback: str | None = field(default=None, compare=False, repr=False)  # only for cosal's own errors

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
        return _kind_of(_read_head(path))
    except OSError:
        return None


def _read_head(path: Path, size: int = 32) -> bytes:
    """The first bytes of a file; non-blocking, so a FIFO that appears under an image name cannot hang us."""
    handle = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        return os.read(handle, size)
    finally:
        os.close(handle)


def _kind_of(head: bytes) -> str | None:
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


def _looks_like_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


# ----------------------------------------------------------------------------------------------
# Looking at paths without ever raising
# ----------------------------------------------------------------------------------------------


def _status(path: Path) -> tuple[os.stat_result | None, str]:
    """``(stat, "")`` with links followed, or ``(None, reason)`` naming why the path cannot be used."""
    try:
        return path.stat(), ""
    except OSError as exc:
        return None, unusable_reason(path, exc)


def unusable_reason(path: Path, exc: OSError) -> str:
    """A one-line reason, with the fix, for an OSError met while looking at or reading ``path``."""
    if exc.errno == errno.ELOOP:
        return "symbolic link loop (the link leads back to itself); remove or fix the link"
    if exc.errno in (errno.ENOENT, errno.ENOTDIR) and path.is_symlink():
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        return f"broken symbolic link: its target {target} does not exist; remove or fix the link"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied; give yourself read access (chmod u+r, and u+x for a folder) or leave it out"
    if exc.errno == errno.ENOENT:
        return "no such file or folder"
    return f"cannot read it ({exc.strerror or first_line(exc)}); check the disk or the path"


@dataclass
class _Listing:
    """What a folder holds, sorted by name; nothing in it can raise later."""

    images: list[Path] = field(default_factory=list)  # regular files whose content is a supported image
    problems: list[Problem] = field(default_factory=list)  # entries that look like images but cannot be used
    subfolders: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # hidden, non-image and other entries
    unreachable: list[Problem] = field(default_factory=list)  # other entries whose target cannot be seen

    @property
    def image_like(self) -> int:
        return len(self.images) + len(self.problems)


def _list_folder(folder: Path, group: str) -> _Listing | Problem:
    """Sort a folder's entries into images, unusable image-like files, sub-folders and the rest."""
    try:
        entries = sorted(folder.iterdir(), key=lambda p: p.name)
    except OSError as exc:
        return Problem(folder, "cannot list this folder: " + unusable_reason(folder, exc), group)
    listing = _Listing()
    for entry in entries:
        if entry.name.startswith("."):
            listing.skipped.append(entry.name)
            continue
        status, reason = _status(entry)
        if status is None:  # a broken link: a lost image in a group, or a lost group in a folder of groups
            problem = Problem(entry, reason, group)
            (listing.problems if _looks_like_image(entry) else listing.unreachable).append(problem)
        elif stat.S_ISDIR(status.st_mode):
            listing.subfolders.append(entry)
        elif not stat.S_ISREG(status.st_mode):  # FIFO, socket, device: never opened
            if _looks_like_image(entry):
                what = "a FIFO" if stat.S_ISFIFO(status.st_mode) else "a device or socket"
                listing.problems.append(Problem(entry, f"not a regular file ({what}); cosal reads image files", group))
            else:
                listing.skipped.append(entry.name)
        else:
            _sort_file(entry, status, listing, group)
    return listing


def _sort_file(entry: Path, status: os.stat_result, listing: _Listing, group: str) -> None:
    try:
        kind = _kind_of(_read_head(entry))
    except OSError as exc:
        listing.problems.append(Problem(entry, unusable_reason(entry, exc), group))
        return
    if kind in SUPPORTED_FORMATS:
        listing.images.append(entry)
    elif kind is not None:
        listing.problems.append(Problem(entry, _unsupported_message(kind), group))
    elif _looks_like_image(entry):
        message = "empty file (0 bytes)" if status.st_size == 0 else (
            "not an image: the content is not JPEG, PNG, BMP, WebP or TIFF (corrupt or misnamed)"
        )
        listing.problems.append(Problem(entry, message, group))
    else:
        listing.skipped.append(entry.name)


def _holds_images(folder: Path) -> bool:
    """Whether a sub-folder is a group or a dataset root: images directly inside, or an ``Image`` folder."""
    if folder.name.lower() in DATASET_IMAGE_DIRS:
        return True
    listing = _list_folder(folder, folder.name)
    return isinstance(listing, _Listing) and listing.image_like > 0


# ----------------------------------------------------------------------------------------------
# Discovery
# ----------------------------------------------------------------------------------------------

#: How a folder given on the command line is read: ``auto`` tells a group from a folder of groups by
#: whether it holds images, and refuses to guess when it holds both images and group folders.
LAYOUTS = ("auto", "group", "groups")


def read_paths(arguments: Iterable[str], stdin: TextIO | None = None) -> list[str]:
    """Expand ``-`` into the group paths read from stdin, one per line (blank lines ignored).

    A ``-`` that reads no path at all is a usage error: an empty pipe is almost always a mistake
    upstream (a ``find`` that matched nothing), and exiting 0 would hide it.
    """
    stdin = stdin if stdin is not None else sys.stdin
    paths: list[str] = []
    for argument in arguments:
        if argument == "-":
            lines = [line.rstrip("\r\n") for line in stdin if line.strip()]
            if not lines:
                raise UsageError("'-' read no paths from standard input; pipe group folders in, one per line")
            paths += lines
        else:
            paths.append(argument)
    return paths


def discover(paths: Iterable[str | Path], layout: str = "auto") -> Discovery:
    """Turn command-line paths into groups; never raises for anything on disk.

    A folder that holds images is one group. A folder that holds no images directly is a folder of
    groups: each sub-folder is a group (an empty one is reported). A dataset root in the standard
    layout (``Image/<group>/`` next to ``GroundTruth/``) is read through its ``Image`` folder. A
    folder holding both images and group folders is reported, naming ``--layout group|groups``,
    unless ``layout`` says which it is. A folder given twice is read once.
    """
    if layout not in LAYOUTS:
        raise UsageError(f"--layout must be one of {', '.join(LAYOUTS)}, not {layout!r}")
    found = Discovery()
    for raw in paths:
        path = Path(raw)
        status, reason = _status(path)
        if status is None:
            found.problems.append(Problem(path, reason))
        elif not stat.S_ISDIR(status.st_mode):
            found.problems.append(Problem(path, "not a folder; pass the folder that holds the group's images"))
        else:
            found.groups += _read_folder(path, layout, found)
    _drop_repeated_folders(found)
    _deduplicate_group_names(found)
    return found


def _read_folder(folder: Path, layout: str, found: Discovery) -> list[Group]:
    listing = _list_folder(folder, _group_name(folder))
    if isinstance(listing, Problem):
        found.problems.append(listing)
        return []
    if layout == "groups" or (layout == "auto" and not listing.image_like):
        if listing.image_like:
            names = [p.name for p in listing.images] + [p.path.name for p in listing.problems]
            found.notices.append(
                f"{folder}: --layout groups: skipped {len(names)} loose image(s) beside the group folders: "
                f"{abbreviate(names)}"
            )
        found.problems += [replace(problem, group=None) for problem in listing.unreachable]
        return _read_folder_of_groups(folder, listing.subfolders, found)
    if layout == "auto":
        group_folders = [sub for sub in listing.subfolders if _holds_images(sub)]
        if group_folders:
            found.problems.append(Problem(folder, _mixed_folder_message(listing.image_like, group_folders)))
            return []
    if not listing.image_like:
        found.problems.append(Problem(folder, "no images in this folder (--layout group)"))
        return []
    return [_group_from(folder, listing)]


def _mixed_folder_message(images: int, group_folders: list[Path]) -> str:
    names = abbreviate([sub.name + "/" for sub in group_folders], 3)
    return (
        f"holds {images} image(s) and {len(group_folders)} sub-folder(s) with images ({names}), so it is not "
        "clear what the groups are; pass --layout group (this folder is one group, sub-folders ignored) or "
        "--layout groups (each sub-folder is a group, the loose images ignored)"
    )


def _read_folder_of_groups(folder: Path, subfolders: list[Path], found: Discovery) -> list[Group]:
    subfolders = [p for p in subfolders if not p.name.startswith(".")]
    image_root = next((p for p in subfolders if p.name.lower() in DATASET_IMAGE_DIRS), None)
    if image_root is not None:
        found.notices.append(f"{folder}: dataset layout, reading the groups in {image_root}")
        listing = _list_folder(image_root, image_root.name)
        if isinstance(listing, Problem):
            found.problems.append(listing)
            return []
        subfolders = listing.subfolders
        found.problems += [replace(problem, group=None) for problem in listing.unreachable]
    if not subfolders:
        found.problems.append(Problem(folder, "empty: no images and no group folders"))
    groups = []
    for subfolder in subfolders:
        name = _group_name(subfolder)
        listing = _list_folder(subfolder, name)
        if isinstance(listing, Problem):
            found.problems.append(listing)
            continue
        if not listing.image_like:
            found.problems.append(Problem(subfolder, "empty group: no images in this folder", name))
            continue
        groups.append(_group_from(subfolder, listing))
    return groups


def _group_name(folder: Path) -> str:
    try:
        return folder.resolve().name or folder.absolute().name
    except (OSError, RuntimeError):  # a link loop on the way (Python < 3.13 raises RuntimeError)
        return folder.absolute().name


def _group_from(folder: Path, listing: _Listing) -> Group:
    group = Group(name=_group_name(folder), folder=folder, problems=listing.problems)
    group.images, collisions = assign_output_names(listing.images)
    group.notices = [f"{group.name}: {text}" for text in collisions]
    skipped = listing.skipped + [sub.name + "/" for sub in listing.subfolders]
    skipped += [f"{problem.path.name} (a broken link or unreadable)" for problem in listing.unreachable]
    if skipped:
        group.notices.append(
            f"{group.name}: skipped {len(skipped)} hidden, non-image or folder entries: {abbreviate(sorted(skipped))}"
        )
    return group


def _drop_repeated_folders(found: Discovery) -> None:
    """A folder reached twice (given twice, or also through its parent or a link) is one group."""
    seen: dict[tuple[int, int], Group] = {}
    kept = []
    for group in found.groups:
        status, _ = _status(group.folder)
        key = (status.st_dev, status.st_ino) if status else (0, id(group))
        if key in seen:
            found.notices.append(f"{group.folder}: the same folder as {seen[key].folder}, given twice; read once")
            continue
        seen[key] = group
        kept.append(group)
    found.groups = kept


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
