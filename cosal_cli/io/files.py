"""Looking at files without ever raising: what an image file holds, and why a path cannot be used."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from cosal_cli.errors import first_line

#: Pillow format names cosal decodes (MPO is the multi-picture JPEG many cameras write).
SUPPORTED_FORMATS = {"JPEG", "MPO", "PNG", "BMP", "WEBP", "TIFF"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


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


def _unsupported_message(kind: str) -> str:
    return (
        f"unsupported image type {kind}; cosal reads JPEG, PNG, BMP, WebP and TIFF: "
        "convert it first (for example to PNG)"
    )
