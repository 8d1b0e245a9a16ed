"""What ``cosal detect --save`` writes for each image: its map and, on request, a mask, a cut-out, an overlay.

Every kind goes beside the map, in the group's output folder, with its own suffix:

* ``map``: ``<stem>.png``, the 8-bit grayscale co-saliency map (what every run writes by default);
* ``mask``: ``<stem>.mask.png``, binary (0 or 255) at the threshold;
* ``cutout``: ``<stem>.cutout.png``, the photo as RGBA with the map as its alpha channel (with an
  explicit ``--threshold``, the mask: a hard edge);
* ``overlay``: ``<stem>.overlay.jpg``, the photo with the co-salient region tinted by the map and
  outlined at the mask's edge, for looking at.

Thresholds (:class:`Threshold`): a number in [0, 1] of the map's range, ``otsu`` (Otsu's threshold of
the map's histogram, scikit-image), or ``adaptive`` (the community's adaptive threshold: twice the
map's mean, at most 1; the default). A pixel is in the mask when its 8-bit value reaches the
threshold and is above 0, so an all-black map never gives an all-white mask.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from cosal_cli.errors import UsageError
from cosal_cli.io.writing import PNG_LEVEL

KINDS = ("map", "mask", "cutout", "overlay")
SUFFIXES = {"map": ".png", "mask": ".mask.png", "cutout": ".cutout.png", "overlay": ".overlay.jpg"}
THRESHOLD_RULES = ("adaptive", "otsu")
TINT = np.array([0, 200, 255], dtype=np.float32)  # cyan: rare in photos, visible on skin, sky and grass
OVERLAY_STRENGTH = 0.55  # the tint's weight where the map is 1
JPEG_QUALITY = 90


def derived_name(map_name: str, kind: str) -> str:
    """The file name of ``kind`` for the image whose map is ``map_name`` (``a.png`` -> ``a.mask.png``)."""
    return map_name.removesuffix(".png") + SUFFIXES[kind]


@dataclass(frozen=True)
class Threshold:
    rule: str  # "fixed", "adaptive" or "otsu"
    value: float = 0.0  # the fixed threshold in [0, 1]

    @classmethod
    def parse(cls, text: str) -> Threshold:
        if text in THRESHOLD_RULES:
            return cls(text)
        try:
            value = float(text)
        except ValueError:
            value = -1.0
        if not 0.0 <= value <= 1.0:
            raise UsageError(f"--threshold must be a number in [0, 1], otsu or adaptive, not {text!r}")
        return cls("fixed", value)

    def level(self, values: np.ndarray) -> int:
        """The 8-bit level (1 to 255) a pixel of ``values`` (uint8) must reach to be in the mask."""
        if self.rule == "fixed":
            level = self.value * 255.0
        elif self.rule == "adaptive":
            level = min(2.0 * float(values.mean()), 255.0)
        elif values.min() == values.max():  # Otsu needs two levels
            level = 256.0
        else:
            from skimage.filters import threshold_otsu

            level = float(threshold_otsu(values)) + 1.0  # skimage: foreground is strictly above
        return int(min(max(np.ceil(level), 1), 256))

    def mask(self, values: np.ndarray) -> np.ndarray:
        return values >= self.level(values)


@dataclass(frozen=True)
class SaveSpec:
    """The kinds to write and how masks are cut."""

    kinds: tuple[str, ...] = ("map",)
    threshold: Threshold = Threshold("adaptive")
    hard_alpha: bool = False  # cut-outs take the mask as alpha (an explicit --threshold), not the map

    @classmethod
    def parse(cls, save: str = "map", threshold: str | None = None) -> SaveSpec:
        kinds = tuple(dict.fromkeys(part.strip() for part in save.split(",") if part.strip()))
        unknown = [kind for kind in kinds if kind not in KINDS]
        if unknown or not kinds:
            raise UsageError(f"--save takes a comma-separated list of {', '.join(KINDS)}, not {save!r}")
        chosen = Threshold.parse(threshold) if threshold is not None else Threshold("adaptive")
        return cls(kinds, chosen, hard_alpha=threshold is not None)

    @property
    def needs_photo(self) -> bool:
        return "cutout" in self.kinds or "overlay" in self.kinds

    def paths(self, map_path: Path) -> dict[str, Path]:
        return {kind: map_path.with_name(derived_name(map_path.name, kind)) for kind in self.kinds}

    def encode(self, values: np.ndarray, photo: np.ndarray | None) -> dict[str, bytes]:
        """Every kind of one image, encoded in memory (kind -> file bytes; :meth:`paths` says where each
        goes): ``values`` its (H, W) uint8 map, ``photo`` its (H, W, 3) uint8 pixels at full size (needed
        for cut-outs and overlays). The CPU part of writing, which a runner can do away from the disk."""
        return {kind: encoded(*self.render(kind, values, photo)) for kind in self.kinds}

    def render(self, kind: str, values: np.ndarray, photo: np.ndarray | None) -> tuple[Image.Image, dict]:
        if kind == "map":
            return Image.fromarray(values), {"format": "PNG", "compress_level": PNG_LEVEL}
        if kind == "mask":
            return Image.fromarray(self.threshold.mask(values).astype(np.uint8) * 255), {"format": "PNG"}
        if photo is None or photo.shape[:2] != values.shape:
            raise ValueError(f"a {kind} needs the photo at the map's size {values.shape}")
        if kind == "cutout":
            alpha = self.threshold.mask(values).astype(np.uint8) * 255 if self.hard_alpha else values
            return Image.fromarray(np.dstack([photo, alpha]), mode="RGBA"), {"format": "PNG"}
        return Image.fromarray(overlay(photo, values, self.threshold.mask(values))), {
            "format": "JPEG", "quality": JPEG_QUALITY}  # fmt: skip


def encoded(image: Image.Image, options: dict) -> bytes:
    """``image`` saved with Pillow's ``options`` (format, quality ...) into bytes."""
    buffer = io.BytesIO()
    image.save(buffer, **options)
    return buffer.getvalue()


def overlay(photo: np.ndarray, values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The photo tinted where the map is bright (by its value) and outlined along the mask's edge."""
    from scipy import ndimage

    weight = (values.astype(np.float32) / 255.0 * OVERLAY_STRENGTH)[..., None]
    tinted = photo.astype(np.float32) * (1.0 - weight) + TINT * weight
    width = max(1, round(min(mask.shape) / 200))  # about 2 px on a 400 px photo
    edge = mask & ~ndimage.binary_erosion(mask, iterations=width, border_value=1)
    tinted[edge] = TINT
    return tinted.round().astype(np.uint8)
