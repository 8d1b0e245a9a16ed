"""Fuzz cosal's input handling: discovery and decoding of mutated images, then a sample through the CLI.

    .venv/bin/python benchmarks/fuzz_inputs.py --count 10000 [--seed 0] [--json-out report.json]

1. Seeds: the example JPEGs (examples/Image/*/) downscaled to 32-96 px and re-encoded as JPEG, PNG,
   WebP, BMP, TIFF, GIF and ICO in many modes (TIFF: raw, LZW, deflate, JPEG, packbits, group4,
   CMYK, multi-frame, 16-bit, float; PNG: 16-bit RGB, palette, RGBA ...).
2. ``--count`` mutated files made from them with a seeded RNG: byte flips (mostly in the first 300
   bytes, where headers live), truncations and header edits (dimensions set to 0 or huge, chunk and
   segment lengths, TIFF tag counts, types and values, IFD loops ...), 50 files per group folder.
   Special entries sit in folders of their own: symlink loops, dangling symlinks, folder loops,
   FIFOs, unreadable files and folders, zero-byte files, folders named *.jpg.
3. ``io.discover`` on every folder and ``io.load_rgb`` on every image it returns, in worker processes
   fed one item at a time; a watchdog kills a worker stuck for more than 10 s (a hang in C code
   cannot be interrupted in-process). The contract: ``discover`` never raises, ``load_rgb`` raises
   only ``io.InputError`` and returns an RGB image of positive size.
4. As root, ``chmod 000`` does not stop reads, so a sample of the folders is run again in a worker
   that drops to uid/gid 65534 after its imports (the venv's interpreter lives under /root, which
   65534 cannot reach, so a ``subprocess.run(user=65534)`` child could not even start).
5. A sample of ``--cli-sample`` files (all kinds, a few special entries, 12 group folders) through
   ``python -m cosal_cli.cli detect ... --json -q --method gmr``: exit code 0 or 1, one JSON object,
   every written map a mode-L PNG of the input's displayed size. When that run crashes or hangs,
   each group is run alone to tell which ones do.

Prints a table, writes the full report with ``--json-out``, and copies a few small crashers (one or
two per distinct exception) into tests/fuzz_regressions/ with a README saying what each triggers.
Exit code 0 when there are no crashes, hangs or wrong-size maps, 1 otherwise.
"""

from __future__ import annotations

import argparse
import io as bytes_io
import json
import logging
import multiprocessing
import os
import random
import re
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass
from multiprocessing.connection import wait
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

EXAMPLES = sorted((REPO / "examples" / "Image").glob("*/*.jpg"))
HANG_SECONDS = 10.0
FILES_PER_FOLDER = 50
WORKER_MEMORY = 4 << 30  # address-space cap per worker: a bogus huge size fails there, not on the machine
NOBODY = 65534
FORMATS = ("jpeg", "png", "webp", "bmp", "tiff", "gif", "ico")
EXTENSIONS = {"jpeg": ".jpg", "png": ".png", "webp": ".webp", "bmp": ".bmp", "tiff": ".tif", "gif": ".gif",
              "ico": ".ico"}  # fmt: skip
SPECIAL_KINDS = ("symlink-loop", "symlink-dangling", "symlink-dirloop", "symlink-ok", "fifo", "unreadable",
                 "unreadable-dir", "zero-byte", "dir-named-jpg")  # fmt: skip
# Values a header field is set to: nothing, the smallest, and sizes that overflow 16/31/32-bit maths.
EXTREMES = (0, 1, 0xFFFF, 0x10000, 100_000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF)
TIFF_TAGS = {256: "width", 257: "height", 258: "bps", 259: "compression", 262: "photometric",
             273: "strip-offsets", 274: "orientation", 277: "spp", 278: "rows-per-strip",
             279: "strip-bytecounts", 284: "planar", 317: "predictor", 320: "colormap",
             338: "extrasamples"}  # fmt: skip


# ----------------------------------------------------------------------------------------------
# Seeds: small re-encodings of the example images
# ----------------------------------------------------------------------------------------------


def _png_rgb16(rgb: Image.Image) -> bytes:
    """A 16-bit RGB PNG, written by hand because Pillow cannot save one."""
    values = np.asarray(rgb, dtype=np.uint16) * 257
    height, width = values.shape[:2]
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in values)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = bytes_io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _orientation_exif(value: int = 6) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = value  # 6: stored sideways, so the displayed size swaps width and height
    return exif


def seed_variants(rgb: Image.Image) -> dict[str, dict[str, bytes]]:
    """Every (format, variant) encoding of one small RGB image."""
    other = rgb.transpose(Image.Transpose.FLIP_LEFT_RIGHT)  # a second frame for multi-frame files
    grey16 = Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.uint16) * 257)
    floats = Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.float32) / 255.0)
    rgba = rgb.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgb.size))
    palette = rgb.quantize(64)
    variants = {
        "jpeg": {
            "rgb": lambda: _encode(rgb, "JPEG", quality=75),
            "progressive": lambda: _encode(rgb, "JPEG", quality=60, progressive=True, optimize=True),
            "grey": lambda: _encode(rgb.convert("L"), "JPEG"),
            "cmyk": lambda: _encode(rgb.convert("CMYK"), "JPEG"),
            "exif6": lambda: _encode(rgb, "JPEG", exif=_orientation_exif(6)),
            "444": lambda: _encode(rgb, "JPEG", subsampling=0, quality=90),
            "q5": lambda: _encode(rgb, "JPEG", quality=5),
        },
        "png": {
            "rgb": lambda: _encode(rgb, "PNG"),
            "rgba": lambda: _encode(rgba, "PNG"),
            "palette": lambda: _encode(palette, "PNG"),
            "palette-trns": lambda: _encode(palette, "PNG", transparency=0),
            "grey": lambda: _encode(rgb.convert("L"), "PNG"),
            "la": lambda: _encode(rgba.convert("LA"), "PNG"),
            "grey16": lambda: _encode(grey16, "PNG"),
            "rgb16": lambda: _png_rgb16(rgb),
            "1bit": lambda: _encode(rgb.convert("1"), "PNG"),
            "exif6": lambda: _encode(rgb, "PNG", exif=_orientation_exif(6)),
        },
        "webp": {
            "lossy": lambda: _encode(rgb, "WEBP", quality=70),
            "lossless": lambda: _encode(rgb, "WEBP", lossless=True),
            "rgba": lambda: _encode(rgba, "WEBP", quality=70),
            "animated": lambda: _encode(rgb, "WEBP", save_all=True, append_images=[other], duration=100),
            "exif6": lambda: _encode(rgb, "WEBP", exif=_orientation_exif(6)),
        },
        "bmp": {
            "rgb": lambda: _encode(rgb, "BMP"),
            "rgba": lambda: _encode(rgba, "BMP"),
            "palette": lambda: _encode(palette, "BMP"),
            "grey": lambda: _encode(rgb.convert("L"), "BMP"),
            "1bit": lambda: _encode(rgb.convert("1"), "BMP"),
        },
        "tiff": {
            "raw": lambda: _encode(rgb, "TIFF"),
            "lzw": lambda: _encode(rgb, "TIFF", compression="tiff_lzw"),
            "deflate": lambda: _encode(rgba, "TIFF", compression="tiff_adobe_deflate"),
            "jpeg": lambda: _encode(rgb, "TIFF", compression="jpeg", quality=70),
            "packbits": lambda: _encode(rgb, "TIFF", compression="packbits"),
            "group4": lambda: _encode(rgb.convert("1"), "TIFF", compression="group4"),
            "cmyk": lambda: _encode(rgb.convert("CMYK"), "TIFF", compression="tiff_lzw"),
            "multiframe": lambda: _encode(rgb, "TIFF", save_all=True, append_images=[other], compression="tiff_lzw"),
            "grey16": lambda: _encode(grey16, "TIFF"),
            "float": lambda: _encode(floats, "TIFF"),
            "palette": lambda: _encode(palette, "TIFF"),
            "orient6": lambda: _encode(rgb, "TIFF", tiffinfo={274: 6}),
        },
        "gif": {
            "palette": lambda: _encode(palette, "GIF"),
            "animated": lambda: _encode(palette, "GIF", save_all=True, append_images=[other.quantize(64)]),
            "trns": lambda: _encode(palette, "GIF", transparency=0),
        },
        "ico": {
            "png": lambda: _encode(rgba, "ICO", sizes=[(16, 16), (32, 32)]),
            "bmp": lambda: _encode(rgba, "ICO", sizes=[(16, 16), (32, 32)], bitmap_format="bmp"),
        },
    }
    return {fmt: {name: make() for name, make in table.items()} for fmt, table in variants.items()}


@dataclass(frozen=True)
class Seed:
    fmt: str
    variant: str
    source: str
    data: bytes


def make_seeds(rng: random.Random) -> list[Seed]:
    """Each example image at a random small size (32-96 px on each side), in every format variant."""
    seeds = []
    for path in EXAMPLES:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
        size = (rng.randint(32, 96), rng.randint(32, 96))
        small = rgb.resize(size, Image.Resampling.BILINEAR)
        for fmt, table in seed_variants(small).items():
            seeds += [Seed(fmt, variant, path.stem, data) for variant, data in table.items()]
    return seeds


# ----------------------------------------------------------------------------------------------
# Mutations
# ----------------------------------------------------------------------------------------------


def flip(data: bytearray, rng: random.Random, head: bool) -> str:
    """Overwrite 1-4 bytes: in the first 300 (headers) or anywhere."""
    limit = min(300, len(data)) if head else len(data)
    for _ in range(rng.randint(1, 4)):
        position = rng.randrange(limit)
        data[position] = rng.choice((0x00, 0xFF, data[position] ^ (1 << rng.randrange(8)), rng.randrange(256)))
    return "flip-head" if head else "flip-any"


def truncate(data: bytearray, rng: random.Random) -> str:
    how = rng.choice(("head", "any", "tail"))
    if how == "head":
        keep = rng.randint(1, max(1, min(300, len(data) - 1)))
    elif how == "any":
        keep = rng.randint(1, len(data) - 1)
    else:  # a copy cut off near the end, the most common real-world truncation
        keep = len(data) - rng.randint(1, min(16, len(data) - 1))
    del data[keep:]
    return f"trunc-{how}"


def _put(data: bytearray, fmt: str, offset: int, value: int) -> bool:
    """Write ``value`` (masked to the field's width) at ``offset`` if the field lies inside the data."""
    width = struct.calcsize(fmt)
    if offset < 0 or offset + width > len(data):
        return False
    bits = 8 * width
    value &= (1 << bits) - 1
    if fmt[-1].islower() and value >= 1 << (bits - 1):  # signed field: wrap into range
        value -= 1 << bits
    struct.pack_into(fmt, data, offset, value)
    return True


def _extreme(rng: random.Random) -> int:
    return rng.choice(EXTREMES + (rng.randrange(1 << 32),))


def edit_png(data: bytearray, rng: random.Random) -> str | None:
    chunks, position = [], 8
    while position + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[position : position + 8])
        chunks.append((position, length, kind))
        if kind == b"IEND" or length > len(data):
            break
        position += 12 + length
    if not chunks or chunks[0][2] != b"IHDR":
        return None
    if any(kind == b"eXIf" for _, _, kind in chunks) and rng.random() < 0.5:
        return edit_exif(data, rng)
    what = rng.choice(("width", "height", "depth", "colortype", "interlace", "chunk-len", "chunk-type"))
    target = chunks[0]
    if what in ("width", "height"):
        _put(data, ">I", 16 if what == "width" else 20, _extreme(rng))
    elif what in ("depth", "colortype", "interlace"):
        offset, values = {"depth": (24, (0, 1, 2, 4, 8, 16, 32, 255)), "colortype": (25, (0, 1, 2, 3, 4, 5, 6, 7, 255)),
                          "interlace": (28, (1, 2, 255))}[what]  # fmt: skip
        data[offset] = rng.choice(values)
    elif what == "chunk-len":
        target = rng.choice(chunks)
        _put(data, ">I", target[0], rng.choice((0, 1, target[1] - 1, target[1] + 1, 2 * target[1] + 7, 0x7FFFFFFF)))
        return f"hdr-{what}-{target[2].decode('latin-1')}"  # the CRC now sits elsewhere: no fix-up
    else:
        target = rng.choice(chunks)
        data[target[0] + 4 : target[0] + 8] = rng.choice((b"IDAT", b"IEND", b"PLTE", b"tRNS", b"IHDR", b"zzzz"))
    position, length, _ = target
    if rng.random() < 0.7 and position + 12 + length <= len(data):  # a right CRC gets the edit past the checksum
        checksum = zlib.crc32(bytes(data[position + 4 : position + 8 + length]))
        struct.pack_into(">I", data, position + 8 + length, checksum)
        return f"hdr-{what}-crcok"
    return f"hdr-{what}"


def _jpeg_segments(data: bytearray) -> list[tuple[int, int, int]]:
    """(marker, offset, length) of each segment up to the start of scan."""
    segments, position = [], 2
    while position + 4 <= len(data) and data[position] == 0xFF:
        marker = data[position + 1]
        if marker == 0xD8 or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
            position += 1 if marker == 0xFF else 2
            continue
        length = struct.unpack(">H", data[position + 2 : position + 4])[0]
        segments.append((marker, position, length))
        if marker == 0xDA:
            break
        position += 2 + length
    return segments


def edit_jpeg(data: bytearray, rng: random.Random) -> str | None:
    segments = _jpeg_segments(data)
    frames = [s for s in segments if 0xC0 <= s[0] <= 0xCF and s[0] not in (0xC4, 0xC8, 0xCC)]
    what = rng.choice(("height", "width", "components", "precision", "sampling", "segment-len"))
    if b"Exif\x00\x00" in data and rng.random() < 0.5:  # the EXIF orientation seeds: edit their EXIF half the time
        return edit_exif(data, rng)
    if what == "segment-len" and segments:
        marker, offset, length = rng.choice(segments)
        _put(data, ">H", offset + 2, rng.choice((0, 1, 2, length - 1, length + 1, 0xFFFF)))
        return f"hdr-len-{marker:02X}"
    if not frames:
        return None
    offset = frames[0][1]
    if what in ("height", "width"):
        _put(data, ">H", offset + (5 if what == "height" else 7), rng.choice((0, 1, 0xFFFF, rng.randrange(1 << 16))))
    elif what == "components":
        data[offset + 9] = rng.choice((0, 2, 4, 5, 255))
    elif what == "precision":
        data[offset + 4] = rng.choice((0, 12, 16, 255))
    elif offset + 11 < len(data):
        data[offset + 11] = rng.choice((0x00, 0x11, 0x44, 0x0F, 0xF0, 0xFF))
    return f"hdr-{what}"


def edit_bmp(data: bytearray, rng: random.Random) -> str | None:
    fields = {  # name: (struct format, offset, values); little-endian BITMAPINFOHEADER
        "width": ("<i", 18, EXTREMES + (-1, -0x80000000)),
        "height": ("<i", 22, EXTREMES + (-1, -0x80000000)),
        "bitcount": ("<H", 28, (0, 1, 2, 4, 8, 16, 24, 32, 64, 0xFFFF)),
        "compression": ("<I", 30, (0, 1, 2, 3, 4, 5, 6, 0xFFFFFFFF)),
        "offbits": ("<I", 10, (0, 14, len(data), 0xFFFFFFFF)),
        "headersize": ("<I", 14, (0, 12, 40, 52, 56, 64, 108, 124, 0xFFFFFFFF)),
        "colors-used": ("<I", 46, (0, 1, 256, 0xFFFFFFFF)),
        "planes": ("<H", 26, (0, 2)),
    }
    name = rng.choice(sorted(fields))
    fmt, offset, values = fields[name]
    return f"hdr-{name}" if _put(data, fmt, offset, rng.choice(values)) else None


def edit_gif(data: bytearray, rng: random.Random) -> str | None:
    what = rng.choice(("screen-width", "screen-height", "frame-width", "frame-height", "frame-left", "lzw-size"))
    if what.startswith("screen"):
        _put(data, "<H", 6 if what == "screen-width" else 8, rng.choice((0, 1, 0xFFFF, rng.randrange(1 << 16))))
        return f"hdr-{what}"
    position = 13 + (3 << ((data[10] & 7) + 1) if len(data) > 10 and data[10] & 0x80 else 0)
    while position < len(data) and data[position] == 0x21:  # skip extensions to the first image descriptor
        position += 2
        while position < len(data) and data[position]:
            position += data[position] + 1
        position += 1
    if position + 10 >= len(data) or data[position] != 0x2C:
        return None
    if what == "lzw-size":
        table = 3 << ((data[position + 9] & 7) + 1) if data[position + 9] & 0x80 else 0
        if position + 10 + table >= len(data):
            return None
        data[position + 10 + table] = rng.choice((0, 1, 12, 13, 255))
    else:
        offset = {"frame-left": 1, "frame-width": 5, "frame-height": 7}[what]
        _put(data, "<H", position + offset, rng.choice((0, 1, 0xFFFF, rng.randrange(1 << 16))))
    return f"hdr-{what}"


def edit_webp(data: bytearray, rng: random.Random) -> str | None:
    chunks, position = [], 12
    while position + 8 <= len(data):
        size = struct.unpack("<I", data[position + 4 : position + 8])[0]
        chunks.append((position, data[position : position + 4].decode("latin-1"), size))
        position += 8 + chunks[-1][2] + (chunks[-1][2] & 1)
    if not chunks:
        return None
    first_offset, first, _ = chunks[0]
    what = rng.choice(("riff-size", "chunk-size", "dims"))
    if any(kind == "EXIF" for _, kind, _ in chunks) and rng.random() < 0.5:
        return edit_exif(data, rng)
    if what == "riff-size":
        _put(data, "<I", 4, rng.choice((0, 4, len(data), 0xFFFFFFFF)))
        return "hdr-riff-size"
    if what == "chunk-size":
        offset, kind, size = rng.choice(chunks)
        _put(data, "<I", offset + 4, rng.choice((0, 1, size - 1, size + 1, 0x7FFFFFFF, 0xFFFFFFFF)))
        return f"hdr-size-{kind.strip()}"
    body = first_offset + 8
    if first == "VP8X":  # 24-bit canvas width-1 and height-1
        start = body + 4 + rng.choice((0, 3))
        data[start : start + 3] = rng.choice((0, 0xFFFFFF, rng.randrange(1 << 24))).to_bytes(3, "little")
    elif first == "VP8L":  # 14-bit width-1 and height-1 packed after the 0x2F signature
        _put(data, "<I", body + 1, rng.randrange(1 << 32) if rng.random() < 0.5 else 0xFFFFFFFF)
    elif first == "VP8 ":  # 14-bit width and height (plus 2 scale bits) after the start code
        _put(data, "<H", body + 6 + rng.choice((0, 2)), rng.choice((0, 1, 0x3FFF, 0xFFFF)))
    else:
        return None
    return f"hdr-dims-{first.strip()}"


def _tiff_ifd(data: bytearray, base: int) -> tuple[str, int, list[tuple[int, int, int, int]]] | None:
    """Byte order, offset of the first IFD and its entries as (entry offset, tag, type, count)."""
    if data[base : base + 2] not in (b"II", b"MM") or base + 8 > len(data):
        return None
    order = "<" if data[base : base + 2] == b"II" else ">"
    ifd = base + struct.unpack(order + "I", data[base + 4 : base + 8])[0]
    if ifd + 2 > len(data):
        return None
    count = struct.unpack(order + "H", data[ifd : ifd + 2])[0]
    entries = []
    for index in range(min(count, 100)):
        entry = ifd + 2 + 12 * index
        if entry + 12 > len(data):
            break
        tag, kind, number = struct.unpack(order + "HHI", data[entry : entry + 8])
        entries.append((entry, tag, kind, number))
    return order, ifd, entries


def edit_tiff(data: bytearray, rng: random.Random, base: int = 0, label: str = "hdr") -> str | None:
    """Edit the first IFD of the TIFF structure at ``base`` (a TIFF file, or the EXIF block of another format)."""
    parsed = _tiff_ifd(data, base)
    if parsed is None or not parsed[2]:
        return None
    order, ifd, entries = parsed
    by_tag = {tag: (entry, kind) for entry, tag, kind, _ in entries}
    what = rng.choice(("dims", "drop-tag", "tag-count", "tag-type", "tag-value", "ifd-count", "next-ifd", "ifd-offset"))
    if what == "dims" and (256 in by_tag or 257 in by_tag):
        tag = rng.choice([t for t in (256, 257) if t in by_tag])
        entry, kind = by_tag[tag]
        _put(data, order + ("H" if kind == 3 else "I"), entry + 8, _extreme(rng))
        return f"{label}-{TIFF_TAGS[tag]}"
    if what == "drop-tag":  # an unknown tag id in its place: the tag is gone, e.g. no ImageWidth
        entry, tag = rng.choice([(e, t) for e, t, _, _ in entries])
        _put(data, order + "H", entry, 0xFFFE)
        return f"{label}-drop-{TIFF_TAGS.get(tag, tag)}"
    if what == "tag-count":
        entry, tag, _, number = rng.choice(entries)
        _put(data, order + "I", entry + 4, rng.choice((0, 1, 2, number + 1, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF)))
        return f"{label}-count-{TIFF_TAGS.get(tag, tag)}"
    if what == "tag-type":
        entry, tag, _, _ = rng.choice(entries)
        _put(data, order + "H", entry + 2, rng.choice((0, 1, 2, 3, 4, 5, 7, 12, 13, 16, 17, 255)))
        return f"{label}-type-{TIFF_TAGS.get(tag, tag)}"
    if what == "tag-value":
        known = [(e, t, k) for e, t, k, _ in entries if t in TIFF_TAGS] or [(e, t, k) for e, t, k, _ in entries]
        entry, tag, kind = rng.choice(known)
        value = rng.choice((0, 1, 2, 3, 5, 7, 8, 16, 32, 0xFFFF, 0xFFFFFFFF, rng.randrange(1 << 32)))
        _put(data, order + ("H" if kind == 3 else "I"), entry + 8, value)
        return f"{label}-value-{TIFF_TAGS.get(tag, tag)}"
    if what == "ifd-count":
        _put(data, order + "H", ifd, rng.choice((0, 1, len(entries) - 1, len(entries) + 1, 0xFFFF)))
        return f"{label}-ifd-count"
    if what == "next-ifd":  # pointing back at itself makes an IFD loop
        position = ifd + 2 + 12 * len(entries)
        _put(data, order + "I", position, rng.choice((ifd - base, 8, 0xFFFFFFFF, rng.randrange(len(data)))))
        return f"{label}-next-ifd"
    _put(data, order + "I", base + 4, rng.choice((0, 1, 8, len(data), 0xFFFFFFFF, rng.randrange(1 << 32))))
    return f"{label}-ifd-offset"


def edit_exif(data: bytearray, rng: random.Random) -> str | None:
    """Edit the EXIF block (a small TIFF) inside a JPEG, WebP or PNG."""
    marker = data.find(b"Exif\x00\x00")
    if marker < 0:
        marker = data.find(b"eXIf") - 2  # PNG keeps the TIFF header right after the chunk type
        if marker < 0:
            return None
    base = marker + 6
    if rng.random() < 0.4:  # the orientation tag itself, with values outside 1..8
        parsed = _tiff_ifd(data, base)
        entries = [e for e in (parsed[2] if parsed else []) if e[1] == 274]
        if entries:
            _put(data, parsed[0] + "H", entries[0][0] + 8, rng.choice((0, 9, 0xFFFF)))
            return "exif-orientation"
    return edit_tiff(data, rng, base, "exif")


def edit_ico(data: bytearray, rng: random.Random) -> str | None:
    what = rng.choice(("count", "type", "width", "height", "bpp", "size", "offset"))
    if what in ("count", "type"):
        ok = _put(data, "<H", 4 if what == "count" else 2, rng.choice((0, 1, 2, 3, 255, 0xFFFF)))
        return f"hdr-{what}" if ok else None
    entry = 6 + 16 * rng.randrange(max(1, min(2, struct.unpack("<H", data[4:6])[0] if len(data) >= 6 else 1)))
    fmt, offset, values = {"width": ("B", 0, (0, 1, 255)), "height": ("B", 1, (0, 1, 255)),
                           "bpp": ("<H", 6, (0, 1, 32, 255, 0xFFFF)), "size": ("<I", 8, (0, 1, 0x7FFFFFFF, 0xFFFFFFFF)),
                           "offset": ("<I", 12, (0, 6, len(data), 0xFFFFFFFF))}[what]  # fmt: skip
    return f"hdr-entry-{what}" if _put(data, fmt, entry + offset, rng.choice(values)) else None


HEADER_EDITORS = {"jpeg": edit_jpeg, "png": edit_png, "webp": edit_webp, "bmp": edit_bmp, "tiff": edit_tiff,
                  "gif": edit_gif, "ico": edit_ico}  # fmt: skip


def edit_header(data: bytearray, fmt: str, rng: random.Random) -> str:
    """A format-aware header edit; a raw integer field in the first 64 bytes when the parse finds nothing."""
    try:
        label = HEADER_EDITORS[fmt](data, rng)
    except (IndexError, struct.error, ValueError):  # a structure already cut short by an earlier mutation
        label = None
    if label:
        return label
    if len(data) < 8:
        return flip(data, rng, head=True)
    offset = rng.randrange(0, min(64, len(data) - 4), 2)
    _put(data, rng.choice(("<I", ">I", "<H", ">H")), offset, _extreme(rng))
    return "hdr-int-field"


def mutate(seed: Seed, rng: random.Random) -> tuple[bytes, str]:
    """One mutated copy of a seed and the name of what was done (sometimes two mutations)."""
    data = bytearray(seed.data)
    operations = []
    for _ in range(2 if rng.random() < 0.1 else 1):
        choice = rng.choices(("flip-head", "flip-any", "truncate", "header"), weights=(25, 10, 20, 45))[0]
        if choice == "header":
            operations.append(edit_header(data, seed.fmt, rng))
        elif choice == "truncate" and len(data) > 2:
            operations.append(truncate(data, rng))
        else:
            operations.append(flip(data, rng, head=choice != "flip-any"))
    return bytes(data), "+".join(operations)


# ----------------------------------------------------------------------------------------------
# The corpus on disk
# ----------------------------------------------------------------------------------------------


@dataclass
class Entry:
    path: str
    kind: str  # a format, a special kind, or "companion" (a valid image beside a special entry)
    origin: str  # seed variant and mutation, or how the special entry was made
    folder: str  # the folder discovery is run on


def write_corpus(root: Path, seeds: list[Seed], count: int, rng: random.Random) -> tuple[list[Entry], list[str]]:
    """Mutated files, 50 per group folder, and the special-entry folders; returns entries and folders."""
    by_format = defaultdict(list)
    for seed in seeds:
        by_format[seed.fmt].append(seed)
    seed_dir = root / "seeds"
    seed_dir.mkdir(parents=True)
    for index, seed in enumerate(seeds):
        (seed_dir / f"{index:04d}-{seed.fmt}-{seed.variant}{EXTENSIONS[seed.fmt]}").write_bytes(seed.data)
    entries, folders = [], []
    for index in range(count):
        folder = root / "fuzz" / f"g{index // FILES_PER_FOLDER:04d}"
        if index % FILES_PER_FOLDER == 0:
            folder.mkdir(parents=True)
            folders.append(str(folder))
        fmt = FORMATS[index % len(FORMATS)]
        seed = rng.choice(by_format[fmt])
        data, operation = mutate(seed, rng)
        # One file in ten gets another image suffix: discovery must go by content, not by name.
        suffix = rng.choice((".jpg", ".png", ".tif", ".webp", ".bmp")) if rng.random() < 0.1 else EXTENSIONS[fmt]
        path = folder / f"{index:05d}-{fmt}-{seed.variant}-{operation.replace('+', '_')}{suffix}"
        path.write_bytes(data)
        entries.append(Entry(str(path), fmt, f"{seed.source} {seed.variant} {operation}", str(folder)))
    specials, special_folders = write_specials(root / "special", sorted(seed_dir.iterdir()), count, rng)
    return entries + specials, folders + special_folders


def write_specials(root: Path, seed_files: list[Path], count: int, rng: random.Random):
    """Each special kind a few times (2..6), each in a folder with two valid images beside it."""
    companions = [p for p in seed_files if "-jpeg-rgb" in p.name or "-png-rgb" in p.name]
    entries, folders = [], []
    for kind in SPECIAL_KINDS:
        for index in range(max(2, min(6, count // 1000))):
            folder = root / f"{kind}-{index}"
            nested = kind in ("unreadable-dir",) or (kind == "symlink-dirloop" and index % 2)
            group = folder / "g1" if nested else folder
            group.mkdir(parents=True)
            for companion in rng.sample(companions, 2):
                shutil.copyfile(companion, group / companion.name)
                entries.append(Entry(str(group / companion.name), "companion", kind, str(folder)))
            for path, origin in make_special(kind, index, folder, group, seed_files, rng):
                entries.append(Entry(str(path), kind, origin, str(folder)))
            folders.append(str(folder))
    return entries, folders


def make_special(kind: str, index: int, folder: Path, group: Path, seed_files: list[Path], rng: random.Random):
    """Create one special entry (two for a loop); yields (path, how it was made)."""
    if kind == "symlink-loop":
        os.symlink("loop-b.jpg", group / "loop-a.jpg")
        os.symlink("loop-a.jpg", group / "loop-b.jpg")
        yield group / "loop-a.jpg", "loop-a.jpg -> loop-b.jpg -> loop-a.jpg"
        yield group / "loop-b.jpg", "loop-b.jpg -> loop-a.jpg -> loop-b.jpg"
    elif kind == "symlink-dangling":
        target = "missing.jpg" if index % 2 == 0 else str(folder.parent / "gone" / "photo.png")
        os.symlink(target, group / "dangling.jpg")
        yield group / "dangling.jpg", f"dangling.jpg -> {target} (missing)"
    elif kind == "symlink-dirloop" and index % 2 == 0:
        os.symlink(".", group / "self.jpg")
        yield group / "self.jpg", "self.jpg -> . (the folder itself)"
    elif kind == "symlink-dirloop":  # a folder of groups with a link back to itself and one up
        os.symlink(".", folder / "loop")
        os.symlink("..", group / "up.jpg")
        yield folder / "loop", "loop -> . in a folder of groups"
        yield group / "up.jpg", "g1/up.jpg -> .. (back to the folder of groups)"
    elif kind == "symlink-ok":
        target = rng.choice(seed_files)
        os.symlink(target, group / "link.jpg")
        yield group / "link.jpg", f"link.jpg -> {target.name} (valid)"
    elif kind == "fifo":
        name = "pipe.jpg" if index % 2 == 0 else "pipe"
        os.mkfifo(group / name)
        yield group / name, f"FIFO named {name}"
    elif kind == "unreadable":
        source = rng.choice(seed_files)
        shutil.copyfile(source, group / ("locked" + source.suffix))
        os.chmod(group / ("locked" + source.suffix), 0)
        yield group / ("locked" + source.suffix), f"chmod 000 copy of {source.name}"
    elif kind == "unreadable-dir":
        locked = folder / "locked"
        locked.mkdir()
        shutil.copyfile(rng.choice(seed_files), locked / "inside.jpg")
        os.chmod(locked, 0)
        yield locked, "chmod 000 group folder in a folder of groups"
    elif kind == "zero-byte":
        name = ("empty.jpg", "empty.png", "empty.tif", "empty")[index % 4]
        (group / name).touch()
        yield group / name, f"0-byte {name}"
    else:  # dir-named-jpg
        inner = group / "folder.jpg"
        inner.mkdir()
        shutil.copyfile(rng.choice(seed_files), inner / "inside.jpg")
        yield inner, "folder named folder.jpg holding an image"


def restore_permissions(root: Path) -> None:
    """chmod 000 entries back to readable so the work folder can be removed (also when not root)."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            # Before os.walk descends into it: a 000 folder could not be listed otherwise.
            if not path.is_symlink() and path.exists() and (path.stat().st_mode & 0o777) == 0:
                os.chmod(path, 0o755 if path.is_dir() else 0o644)


# ----------------------------------------------------------------------------------------------
# Workers with a watchdog
# ----------------------------------------------------------------------------------------------


def _drop_privileges() -> None:
    """Become uid/gid 65534 (nobody), after every import: the interpreter's files are not readable then."""
    from PIL import Image as PilImage
    from PIL import ImageCms, ImageOps  # noqa: F401  (lazily imported by io; 65534 could not read them later)

    PilImage.init()
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


def _worker_main(connection, unprivileged: bool) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY, WORKER_MEMORY))
    logging.getLogger("PIL").setLevel(logging.CRITICAL)  # Pillow logs corrupt-TIFF details; outcomes say enough
    from cosal_cli import io

    if unprivileged:
        _drop_privileges()
    connection.send("ready")
    while True:
        task = connection.recv()
        if task is None:
            return
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = _run_task(io, task)
        # Warnings raised in cosal's own code (numpy casts of NaN ...) are not crashes but worth a look.
        ours = [w for w in caught if "cosal_cli" in w.filename]
        if ours:
            result["warnings"] = [
                f"{w.category.__name__}: {w.message} at {Path(w.filename).name}:{w.lineno}" for w in ours
            ]
        connection.send(result)


def _run_task(io, task: tuple[str, str]) -> dict:
    """Run one discovery or decode; anything but the contract's outcome is reported as a crash."""
    action, path = task
    try:
        if action == "discover":
            return {"status": "ok", **_discovery_json(io.discover([path]))}
        decoded = io.load_rgb(Path(path))
        if decoded.rgb.mode != "RGB" or min(decoded.size) <= 0:
            return {"status": "crash", "type": "BadResult", "message": f"mode {decoded.rgb.mode}, size {decoded.size}",
                    "where": "load_rgb result"}  # fmt: skip
        return {"status": "ok", "size": list(decoded.size)}
    except io.InputError as exc:
        if action == "decode":
            return {"status": "input_error", "message": str(exc)}
        return _crash(exc)  # discover must report problems as values, even InputError
    except BaseException as exc:  # noqa: BLE001  (any other exception, MemoryError included, is what we look for)
        return _crash(exc)


def _crash(exc: BaseException) -> dict:
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "cosal_cli" in f.filename]
    where = [f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in (ours[-1:] + frames[-1:])]
    message = (str(exc).strip() or type(exc).__name__).splitlines()[0][:300]
    return {"status": "crash", "type": type(exc).__name__, "message": message, "where": " <- ".join(reversed(where))}


def _discovery_json(found) -> dict:
    return {
        "images": [str(image.path) for group in found.groups for image in group.images],
        "problems": [[str(p.path), p.message] for p in found.problems + [p for g in found.groups for p in g.problems]],
        "groups": [group.name for group in found.groups],
    }


class WorkerPool:
    """Worker processes fed one task at a time; a task over ``limit`` seconds is a hang: kill, restart, go on."""

    def __init__(self, size: int, limit: float = HANG_SECONDS, unprivileged: bool = False):
        self.context = multiprocessing.get_context("spawn")  # no fork: a clean interpreter per worker
        self.limit, self.unprivileged = limit, unprivileged
        self.restarts = 0
        self.workers = [self._start() for _ in range(size)]

    def _start(self):
        parent, child = self.context.Pipe()
        process = self.context.Process(target=_worker_main, args=(child, self.unprivileged), daemon=True)
        process.start()
        child.close()
        if not parent.poll(120) or parent.recv() != "ready":
            raise RuntimeError("a fuzz worker did not start")
        return process, parent

    def _replace(self, index: int) -> None:
        process, connection = self.workers[index]
        process.kill()
        process.join()
        connection.close()
        self.restarts += 1
        self.workers[index] = self._start()

    def map(self, tasks: list[tuple[str, str]], progress: str = "") -> list[dict]:
        results: list[dict | None] = [None] * len(tasks)
        queue = iter(range(len(tasks)))
        busy: dict[int, tuple[int, float]] = {}  # worker index -> (task index, started)
        done, last_report = 0, time.perf_counter()
        while True:
            for index in range(len(self.workers)):
                if index not in busy:
                    task_index = next(queue, None)
                    if task_index is not None:
                        self.workers[index][1].send(tasks[task_index])
                        busy[index] = (task_index, time.perf_counter())
            if not busy:
                return results
            deadline = min(started for _, started in busy.values()) + self.limit
            waitables = {self.workers[i][1]: i for i in busy} | {self.workers[i][0].sentinel: i for i in busy}
            ready = wait(list(waitables), timeout=max(0.0, deadline - time.perf_counter()))
            finished = {waitables[item] for item in ready}
            for index in sorted(finished):
                task_index, started = busy.pop(index)
                results[task_index] = self._collect(index, started)
                done += 1
            now = time.perf_counter()
            for index, (task_index, started) in list(busy.items()):
                if now - started > self.limit:
                    busy.pop(index)
                    results[task_index] = {"status": "hang", "type": "hang", "where": "-",
                                           "message": f"no result in {self.limit:g} s"}  # fmt: skip
                    self._replace(index)
                    done += 1
            if progress and now - last_report > 30:
                print(f"  {progress}: {done}/{len(tasks)}", file=sys.stderr, flush=True)
                last_report = now

    def _collect(self, index: int, started: float) -> dict:
        process, connection = self.workers[index]
        try:
            if connection.poll():
                result = connection.recv()
                result["seconds"] = round(time.perf_counter() - started, 3)
                return result
        except (EOFError, OSError):
            pass
        process.join(5)  # the worker died under the task (a segfault, the memory cap, an abort)
        code = process.exitcode
        self._replace(index)
        return {"status": "crash", "type": "WorkerDied", "message": f"worker exited with code {code}", "where": "-"}

    def close(self) -> None:
        for process, connection in self.workers:
            try:
                connection.send(None)
            except OSError:
                pass
            process.join(5)
            if process.is_alive():
                process.kill()


# ----------------------------------------------------------------------------------------------
# In-process phase: discovery, then decoding of what discovery returned
# ----------------------------------------------------------------------------------------------


def run_discovery_and_decoding(pool: WorkerPool, folders: list[str], entries: list[Entry], phase: str) -> dict:
    """Outcome of every entry: discovery status (image / problem / skipped) and decode status."""
    discovered = pool.map([("discover", folder) for folder in folders], progress=f"{phase} discovery")
    outcome: dict[str, dict] = {}
    failures = []  # crashes and hangs, with where they happened
    images = []
    for folder, result in zip(folders, discovered):
        if result["status"] != "ok":
            failures.append({**result, "phase": f"{phase}-discover", "path": folder})
            continue
        images += [p for p in result["images"] if p not in outcome]
        for path in result["images"]:
            outcome[os.path.normpath(path)] = {"discovery": "image"}
        for path, message in result["problems"]:
            outcome.setdefault(os.path.normpath(path), {"discovery": "problem", "message": message})
    decoded = pool.map([("decode", path) for path in images], progress=f"{phase} decoding")
    for path, result in zip(images, decoded):
        outcome[os.path.normpath(path)].update(decode=result)
        if result["status"] in ("crash", "hang"):
            failures.append({**result, "phase": f"{phase}-decode", "path": path})
    crashed_folders = {f["path"] for f in failures if f["phase"].endswith("discover")}
    for entry in entries:
        default = "folder-failed" if entry.folder in crashed_folders else "skipped"
        outcome.setdefault(os.path.normpath(entry.path), {"discovery": default})
    return {"outcome": outcome, "failures": failures, "folders": len(folders), "images": len(images)}


def tally_by_kind(entries: list[Entry], outcome: dict[str, dict]) -> dict[str, Counter]:
    table: dict[str, Counter] = defaultdict(Counter)
    for entry in entries:
        state = outcome.get(os.path.normpath(entry.path), {})
        row = table[entry.kind]
        row["files"] += 1
        row[state.get("discovery", "skipped")] += 1
        if "decode" in state:
            status = state["decode"]["status"]
            row["decoded_ok" if status == "ok" else status] += 1
    return table


# ----------------------------------------------------------------------------------------------
# CLI phase
# ----------------------------------------------------------------------------------------------


def pick_cli_sample(entries: list[Entry], size: int, rng: random.Random) -> list[Entry]:
    """``size`` entries: one of several special kinds, the rest spread evenly over the formats."""
    wanted = ("symlink-dangling", "fifo", "symlink-loop", "zero-byte", "dir-named-jpg", "unreadable", "symlink-ok")
    specials = []
    for kind in wanted:
        candidates = [e for e in entries if e.kind == kind]
        named = [e for e in candidates if e.path.endswith((".jpg", ".png", ".tif"))]
        if candidates:
            specials.append((named or candidates)[0])
    per_format = (size - len(specials)) // len(FORMATS)
    sample = []
    for position, fmt in enumerate(FORMATS):
        pool = [e for e in entries if e.kind == fmt]
        extra = 1 if position < (size - len(specials)) % len(FORMATS) else 0
        sample += rng.sample(pool, min(len(pool), per_format + extra))
    rng.shuffle(sample)
    return specials + sample


def lay_out_cli_input(sample: list[Entry], root: Path, groups: int = 12) -> dict[str, Entry]:
    """Copies of the sample in ``groups`` group folders (special entries in different groups); copy -> entry."""
    copies = {}
    for index, entry in enumerate(sample):
        group = root / f"group{index % groups:02d}"
        group.mkdir(parents=True, exist_ok=True)
        source, target = Path(entry.path), group / Path(entry.path).name
        if entry.kind == "symlink-loop":
            os.symlink("loop-b.jpg", group / "loop-a.jpg")
            os.symlink("loop-a.jpg", group / "loop-b.jpg")
        elif source.is_symlink():
            os.symlink(os.readlink(source), target)
        elif entry.kind == "fifo":
            os.mkfifo(target)
        elif source.is_dir():
            shutil.copytree(source, target)
        elif entry.kind == "unreadable":
            shutil.copyfile(source, target)
            os.chmod(target, 0)
        else:
            shutil.copyfile(source, target)
        copies[os.path.normpath(target)] = entry
    return copies


def run_cli(arguments: list[str], output: Path, method: str, timeout: float) -> dict:
    """One `cosal detect` run: exit code, parsed JSON (or why not), and a traceback's last line if any."""
    command = [sys.executable, "-m", "cosal_cli.cli", "detect", *arguments, "-o", str(output), "--json", "-q",
               "--method", method]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "COLUMNS": "250"}  # unwrapped errors
    started = time.perf_counter()
    try:
        done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)
    except subprocess.TimeoutExpired:
        return {"status": "hang", "seconds": round(time.perf_counter() - started, 1), "timeout": timeout}
    run = {"returncode": done.returncode, "seconds": round(time.perf_counter() - started, 1)}
    if "Traceback (most recent call last)" in done.stderr or done.returncode not in (0, 1):
        lines = [line.strip() for line in done.stderr.strip().splitlines() if line.strip()]
        errors = [line for line in lines if re.match(r"^[A-Za-z_.]*(Error|Exception|Exit)\b", line)]
        return {**run, "status": "crash", "error": (errors or lines or ["(no stderr)"])[-1][:300]}
    try:
        summary = json.loads(done.stdout)
        assert isinstance(summary, dict) and summary.get("exit_code") == done.returncode
    except (ValueError, AssertionError):
        return {**run, "status": "bad-json", "error": done.stdout[:200]}
    return {**run, "status": "ok", "summary": summary}


def check_cli(pool: WorkerPool, copies: dict[str, Entry], root: Path, work: Path, method: str, timeout: float,
              decoded_in_process: dict[str, dict]) -> dict:  # fmt: skip
    """The whole sample in one run; if it crashes or hangs, every group alone, to see which ones do."""
    runs = {"all": run_cli([str(root)], work / "out-all", method, timeout)}
    if runs["all"]["status"] != "ok":
        for group in sorted(root.iterdir()):
            runs[group.name] = run_cli([str(group)], work / "out-groups", method, timeout / 3)
            runs[group.name]["specials"] = sorted(
                f"{e.kind}: {e.origin}"
                for p, e in copies.items()
                if e.kind in SPECIAL_KINDS and Path(p).parent == group
            )
    statuses: dict[str, str] = {}
    for name, run in runs.items():
        if run["status"] != "ok":  # say why its inputs have no map: the run itself crashed or hung
            group = root / name
            statuses.update({p: f"run-{run['status']}\t" for p in copies if name != "all" and Path(p).parent == group})
            continue
        for group in run["summary"]["groups"]:
            for output in group["outputs"]:
                statuses[os.path.normpath(output["input"])] = output["status"] + "\t" + output["output"]
    inputs = sorted(copies)
    expected = dict(zip(inputs, pool.map([("decode", path) for path in inputs])))
    wrong, not_written, written, failed = [], [], 0, 0
    for path in inputs:
        status, _, map_path = statuses.get(path, "missing\t").partition("\t")
        original = copies[path]
        if status == "written":
            written += 1
            problem = _map_problem(Path(map_path), expected[path])
            if problem:
                wrong.append({"input": path, "original": original.path, "kind": original.kind, "problem": problem})
        else:
            failed += status == "failed"
            in_process = decoded_in_process.get(os.path.normpath(original.path), {}).get("decode", {})
            if in_process.get("status") == "ok":
                not_written.append(
                    {"input": path, "original": original.path, "kind": original.kind, "cli_status": status}
                )
    return {
        "runs": {name: {k: v for k, v in run.items() if k != "summary"} for name, run in runs.items()},
        "inputs": len(inputs), "written": written, "failed": failed, "statuses": dict(Counter(
            statuses.get(p, "missing\t").partition("\t")[0] for p in inputs)),
        "wrong_size": wrong, "decoded_but_not_written": not_written,
        # the ones that matter: the run finished, yet an image that decodes got no map
        "decoded_but_not_written_in_finished_runs": [n for n in not_written if not n["cli_status"].startswith("run-")],
    }  # fmt: skip


def _map_problem(map_path: Path, expected: dict) -> str | None:
    """Why a written map is wrong: missing, not PNG mode L, or not the input's displayed size."""
    if not map_path.is_file():
        return "listed as written but missing"
    try:
        with Image.open(map_path) as image:
            mode, size, fmt = image.mode, image.size, image.format
    except Exception as exc:  # noqa: BLE001  (any failure to read a map is a finding, not a harness error)
        return f"unreadable map: {type(exc).__name__}"
    if fmt != "PNG" or mode != "L":
        return f"map is {fmt} mode {mode}"
    if expected.get("status") != "ok":
        return f"written, but load_rgb gives {expected.get('status')} in-process"
    if list(size) != expected["size"]:
        return f"map {size[0]}x{size[1]}, input displays as {expected['size'][0]}x{expected['size'][1]}"
    return None


# ----------------------------------------------------------------------------------------------
# Crashers and the report
# ----------------------------------------------------------------------------------------------


def signature(failure: dict) -> str:
    """Group failures by exception type and message, with numbers and paths taken out."""
    message = re.sub(r"/[^\s:'\"]+", "<path>", failure.get("message", ""))
    message = re.sub(r"\d+", "N", message)
    return f"{failure['phase']}: {failure.get('type', failure['status'])}: {message}"[:200]


def summarize_failures(failures: list[dict], kinds: dict[str, str]) -> list[dict]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for failure in failures:
        groups[signature(failure)].append(failure)
    summary = []
    for sig, items in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        first = items[0]
        summary.append({
            "signature": sig, "count": len(items), "status": first["status"], "type": first.get("type", "hang"),
            "message": first.get("message", ""), "where": first.get("where", ""), "phase": first["phase"],
            "kinds": dict(Counter(kinds.get(os.path.normpath(i["path"]), "-") for i in items)),
            "example": first["path"], "examples": [i["path"] for i in items[:50]],
        })  # fmt: skip
    return summary


def _slug(text: str, words: int = 5) -> str:
    return "-".join(re.findall(r"[a-z0-9]+", text.lower())[:words]) or "unknown"


def save_regressions(failures: list[dict], wrong: list[dict], entries: dict[str, Entry], target: Path,
                     found_on: str) -> list[dict]:  # fmt: skip
    """Add one or two small examples of each new distinct crasher to ``target``; rewrite its README.

    The folder is a growing corpus: crashers an earlier run saved stay (a fixed bug keeps its file as a
    regression test). Failures are told apart by exception type and message only (the same bug found
    in-process and as uid 65534 is one); CLI runs are left out, their causes are the in-process ones.
    """
    target.mkdir(parents=True, exist_ok=True)
    manifest_path = target / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"files": [], "not_files": []}
    known = {item["signature"] for item in manifest["files"] + manifest["not_files"]}
    distinct: dict[str, dict] = {}
    for failure in failures:
        key = failure["signature"].split(": ", 1)[1]
        if failure["phase"] != "cli-run" and key not in known:
            merged = distinct.setdefault(key, {**failure, "examples": []})
            merged["examples"] += failure["examples"]
    if wrong and "wrong-size map" not in known:
        distinct["wrong-size map"] = {"type": "WrongSize", "message": wrong[0]["problem"], "where": "cosal detect",
                                      "examples": [w["original"] for w in wrong]}  # fmt: skip
    added = []
    for key, failure in distinct.items():
        chosen = _smallest_distinct_files(failure["examples"], entries, 2)
        if not chosen:  # a symlink, FIFO or folder problem: described in the README, not copied
            folder = os.path.normpath(failure["examples"][0])
            made = sorted({e.origin for e in entries.values() if e.kind in SPECIAL_KINDS and e.folder == folder})
            manifest["not_files"].append({"signature": key, "made_by": "; ".join(made) or folder,
                                          "where": failure["where"], "found_on": found_on})  # fmt: skip
            continue
        for number, path in enumerate(chosen, 1):
            entry = entries.get(os.path.normpath(str(path)))
            trigger = "hang" if failure["type"] == "hang" else f"{failure['type']} {failure['message']}"
            name = f"{entry.kind if entry else 'file'}-{_slug(trigger)}-{number}{path.suffix}"
            shutil.copyfile(path, target / name)
            added.append({"file": name, "bytes": path.stat().st_size, "signature": key,
                          "triggers": f"{failure['type']}: {failure['message']}", "where": failure["where"],
                          "made_by": entry.origin if entry else str(path), "found_on": found_on})  # fmt: skip
    manifest["files"] += added
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    write_regression_readme(target, manifest)
    return added


def _smallest_distinct_files(examples: list[str], entries: dict[str, Entry], limit: int) -> list[Path]:
    """Up to ``limit`` regular files of at most 20 kB, smallest first, from different seed variants if possible."""
    files = [Path(p) for p in examples if Path(p).is_file() and not Path(p).is_symlink() and os.access(p, os.R_OK)]
    files = sorted((p for p in files if p.stat().st_size <= 20_000), key=lambda p: (p.stat().st_size, p.name))
    chosen, variants = [], set()
    for path in files:
        entry = entries.get(os.path.normpath(str(path)))
        variant = " ".join(entry.origin.split()[1:2]) if entry else path.name
        if variant not in variants or len(files) - files.index(path) <= limit - len(chosen):
            chosen.append(path)
            variants.add(variant)
        if len(chosen) == limit:
            break
    return chosen


def write_regression_readme(target: Path, manifest: dict) -> None:
    lines = [
        "# Fuzz regressions",
        "",
        "Written by `benchmarks/fuzz_inputs.py` (it adds to this folder, never removes): small inputs on which",
        "cosal's input handling broke its contract (`io.discover` never raises; `io.load_rgb` raises only",
        "`io.InputError`; no hangs; maps at the input's displayed size). Each file is a mutated 32-96 px",
        "re-encoding of an example image; `made by` is the source image, the seed variant and the mutations.",
        "`where` is the innermost cosal frame and the frame that raised, in the code named by `found on`.",
        "",
        "| file | bytes | triggers | where | made by | found on |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    lines += [f"| `{f['file']}` | {f['bytes']} | {f['triggers']} | {f['where']} | {f['made_by']} | {f['found_on']} |"
              for f in manifest["files"]]  # fmt: skip
    if manifest["not_files"]:
        lines += ["", "Found on entries that cannot be committed as files (symlinks, FIFOs, permissions); a test has",
                  "to rebuild them:", ""]  # fmt: skip
        lines += [f"- {n['signature']} at {n['where']} -- made by: {n['made_by']} ({n['found_on']})"
                  for n in manifest["not_files"]]  # fmt: skip
    (target / "README.md").write_text("\n".join(lines) + "\n")


def print_report(report: dict) -> None:
    columns = ("files", "image", "problem", "skipped", "folder-failed", "decoded_ok", "input_error", "crash", "hang")
    print(f"\n{'kind':<18}" + "".join(f"{c:>14}" for c in columns))
    for kind, row in report["by_kind"].items():
        print(f"{kind:<18}" + "".join(f"{row.get(c, 0):>14}" for c in columns))
    for item in report["cosal_warnings"].values():
        print(f"\nwarning from cosal code ({item['count']} files): {item['at']}; e.g. {item['example']}")
    print(f"\ncrash/hang signatures ({report['totals']['crashes']} crashes, {report['totals']['hangs']} hangs):")
    for item in report["failures"]:
        print(f"  {item['count']:>5} x {item['signature']}\n        where {item['where'] or '-'}; "
              f"kinds {item['kinds']}; e.g. {item['example']}")  # fmt: skip
    if report.get("unprivileged"):
        print(f"\nunprivileged (uid {NOBODY}) sample: {report['unprivileged']['by_kind']}")
    cli = report.get("cli")
    if cli:
        print(f"\nCLI sample: {cli['inputs']} inputs, {cli['statuses']}; {len(cli['wrong_size'])} wrong-size; "
              f"{len(cli['decoded_but_not_written'])} decoded in-process but got no map "
              f"({len(cli['decoded_but_not_written_in_finished_runs'])} of them in runs that finished)")  # fmt: skip
        for name, run in cli["runs"].items():
            print(f"  run {name}: {run}")
        for item in cli["wrong_size"][:10]:
            print(f"  wrong size: {item['original']}: {item['problem']}")
        for item in cli["decoded_but_not_written_in_finished_runs"][:10]:
            print(f"  not written: {item['original']} ({item['cli_status']})")
    print(f"\nregressions added: {[s['file'] for s in report['regressions']]}")
    print(f"wall time (s): {report['timings_s']}")
    print(f"exit code: {report['exit_code']}")


# ----------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--count", type=int, default=10_000, help="mutated files to make")
    parser.add_argument("--workdir", type=Path, help="where to build the corpus (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--json-out", type=Path, help="write the full report here")
    parser.add_argument("--method", default="gmr", help="method for the CLI sample (gmr needs no weights)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cli-sample", type=int, default=300)
    parser.add_argument("--cli-timeout", type=float, default=180.0, help="seconds for the whole-sample CLI run")
    parser.add_argument("--regressions", type=Path, default=REPO / "tests" / "fuzz_regressions")
    parser.add_argument("--no-regressions", action="store_true", help="do not touch tests/fuzz_regressions")
    parser.add_argument("--found-on", help="the code fuzzed, for the regressions README (default: git HEAD)")
    return parser.parse_args()


def main() -> int:
    args = parse_arguments()
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[name] = "1"  # the workers inherit it; numpy's BLAS pool would only compete for 2 cores
    rng = random.Random(args.seed)
    created = args.workdir is None or not args.workdir.exists()
    work = Path(tempfile.mkdtemp(prefix="cosal-fuzz-")) if args.workdir is None else args.workdir
    work.mkdir(parents=True, exist_ok=True)
    os.chmod(work, 0o755)  # uid 65534 must be able to enter it for the unprivileged sample
    timings, started = {}, time.perf_counter()
    try:
        tick = time.perf_counter()
        seeds = make_seeds(rng)
        entries, folders = write_corpus(work / "corpus", seeds, args.count, rng)
        timings["generate"] = time.perf_counter() - tick
        print(f"{len(seeds)} seeds, {len(entries)} entries in {len(folders)} folders under {work}", file=sys.stderr)

        tick = time.perf_counter()
        pool = WorkerPool(args.workers)
        main_run = run_discovery_and_decoding(pool, folders, entries, "in-process")
        timings["discover+decode"] = time.perf_counter() - tick

        unprivileged = None
        if os.geteuid() == 0:
            tick = time.perf_counter()
            unprivileged = run_unprivileged(folders, entries)
            timings["unprivileged"] = time.perf_counter() - tick

        cli = None
        if args.cli_sample:
            tick = time.perf_counter()
            candidates = [e for e in entries if e.kind != "companion"]
            sample = pick_cli_sample(candidates, args.cli_sample, random.Random(args.seed + 1))
            copies = lay_out_cli_input(sample, work / "cli" / "input")
            cli = check_cli(pool, copies, work / "cli" / "input", work / "cli", args.method, args.cli_timeout,
                            main_run["outcome"])  # fmt: skip
            timings["cli"] = time.perf_counter() - tick
        pool.close()
        report = build_report(args, entries, main_run, unprivileged, cli, timings, started)
        if not args.no_regressions:
            by_path = {os.path.normpath(e.path): e for e in entries}
            wrong = cli["wrong_size"] if cli else []
            found_on = args.found_on or code_version()
            report["regressions"] = save_regressions(report["failures"], wrong, by_path, args.regressions, found_on)
        report["timings_s"]["total"] = round(time.perf_counter() - started, 1)
        print_report(report)
        if args.json_out:
            args.json_out.write_text(json.dumps(report, indent=2) + "\n")
        return report["exit_code"]
    finally:
        if created and not args.keep:
            restore_permissions(work)
            shutil.rmtree(work, ignore_errors=True)
        elif args.keep:
            print(f"work folder kept: {work}", file=sys.stderr)


def code_version() -> str:
    """The commit fuzzed, marked when cosal_cli has uncommitted changes (read-only git calls)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        )
        diff = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "cosal_cli"], check=False, cwd=REPO)
        dirty = diff.returncode != 0
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.stdout.strip() + (" + uncommitted cosal_cli changes" if dirty else "")


def run_unprivileged(folders: list[str], entries: list[Entry]) -> dict:
    """The first folder of each special kind and two mutated folders again, as uid 65534."""
    chosen = [f for f in folders if "/special/" in f and f.endswith("-0")] + [f for f in folders if "/fuzz/" in f][:2]
    pool = WorkerPool(1, unprivileged=True)
    try:
        result = run_discovery_and_decoding(pool, chosen, [e for e in entries if e.folder in chosen], "unprivileged")
    finally:
        pool.close()
    return result


def _warning_summary(outcome: dict[str, dict]) -> dict[str, dict]:
    """Warnings from cosal's code while decoding: count and one example file each."""
    found: dict[str, dict] = {}
    for path, state in outcome.items():
        for text in state.get("decode", {}).get("warnings", []):
            warning_key = re.sub(r"at io.py:\d+", "at io.py", text)
            item = found.setdefault(warning_key, {"count": 0, "example": path, "at": text})
            item["count"] += 1
    return found


def build_report(args, entries, main_run, unprivileged, cli, timings, started) -> dict:
    kinds = {os.path.normpath(e.folder): "mutated-folder" for e in entries if e.kind in FORMATS}
    kinds |= {os.path.normpath(e.folder): e.kind for e in entries if e.kind in SPECIAL_KINDS}  # a special folder's kind
    kinds |= {os.path.normpath(e.path): e.kind for e in entries}
    failures = main_run["failures"] + (unprivileged["failures"] if unprivileged else [])
    for name, run in (cli["runs"].items() if cli else []):
        if run["status"] != "ok":
            failures.append({"status": run["status"],
                             "type": "hang" if run["status"] == "hang" else "CLI " + run["status"],
                             "message": run.get("error", f"no result in {run.get('timeout')} s")
                             + (f" [group holds {'; '.join(run['specials'])}]" if run.get("specials") else ""),
                             "where": f"cosal detect (exit {run.get('returncode', '-')})", "phase": "cli-run",
                             "path": name})  # fmt: skip
    crashes = sum(f["status"] not in ("hang",) for f in failures)
    hangs = sum(f["status"] == "hang" for f in failures)
    wrong = len(cli["wrong_size"]) if cli else 0
    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "seed": args.seed, "count": args.count, "pillow": Image.__version__, "method": args.method,
        "by_kind": {k: dict(v) for k, v in sorted(tally_by_kind(entries, main_run["outcome"]).items())},
        "totals": {"entries": len(entries), "folders": main_run["folders"], "images_decoded": main_run["images"],
                   "crashes": crashes, "hangs": hangs, "wrong_size": wrong},
        "failures": summarize_failures(failures, kinds),
        "input_error_messages": dict(Counter(
            re.sub(r"\d+", "N", s["decode"]["message"])[:120] for s in main_run["outcome"].values()
            if s.get("decode", {}).get("status") == "input_error").most_common(15)),
        "cosal_warnings": _warning_summary(main_run["outcome"]),
        "special_entries": {e.path: {"kind": e.kind, "origin": e.origin,
                                     **main_run["outcome"].get(os.path.normpath(e.path), {})}
                            for e in entries if e.kind in SPECIAL_KINDS},
        "unprivileged": None if unprivileged is None else {
            "by_kind": {k: dict(v) for k, v in tally_by_kind(
                [e for e in entries if os.path.normpath(e.path) in unprivileged["outcome"]],
                unprivileged["outcome"]).items()},
            "special_entries": {p: s for p, s in unprivileged["outcome"].items() if "/special/" in p}},
        "cli": cli,
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "regressions": [],
    }  # fmt: skip
    report["exit_code"] = 0 if crashes == hangs == wrong == 0 else 1
    return report


if __name__ == "__main__":
    sys.exit(main())
