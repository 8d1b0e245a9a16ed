"""Single-image saliency maps (SISMs): where ICNet-style methods get one saliency map per image.

Two kinds of source, chosen with ``--sism NAME`` or ``--sism-dir DIR``:

* a SISM generator method (``sod``, cosal's trained network, or ``gmr``, training-free), run on the
  method's 224 x 224 input (resized to the generator's own input size) and cached on disk per image;
* a folder of maps made by any salient-object detector (e.g. the EGNet maps of the ICNet release):
  ``<DIR>/<group>/<stem>.png``, read as the official test reads them (greyscale, bilinear to 224).

Every SISM is 8-bit, as a PNG is: a generator's map is rounded to 1/255 before use, so a map read
back from the cache, a fresh one and one written by ``cosal detect --method sod`` and passed with
``--sism-dir`` are the same map up to the resize. The cache lives in ``$COSAL_HOME/sism/<generator
fingerprint>/``; the fingerprint covers the generator's name, its weights' sha256 and cosal's
version, the key is the sha256 of the exact input pixels, so a cached map is never stale.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cosal_cli.errors import InputError
from cosal_cli.methods.base import GroupImages, SismChoice

__all__ = ["GroupImages", "SismChoice", "open_source", "predict_in_subgroups"]

SISM_SIZE = 224


class MissingSisms(InputError, ValueError):
    """A ``--sism-dir`` lacks maps for some images of a group (the group cannot run without them)."""


class GeneratorSisms:
    """SISMs from a single-image method, cached on disk per image when ``cache`` is a folder."""

    def __init__(self, method, cache: Path | None = None):
        self.method = method
        self.name = method.name
        self.cache = cache

    def __call__(self, images: torch.Tensor, sources: GroupImages | None = None, compute=None) -> torch.Tensor:
        """The images' SISMs, (N, 1, SISM_SIZE, SISM_SIZE). ``compute(indices)``, when given, makes the maps of
        the images not in the cache instead of the generator (a caller that already holds their features)."""
        cache = self._cache_for(images.device)
        keys = [hashlib.sha256(image.tobytes()).hexdigest() for image in _as_uint8(images)] if cache else []
        found = {i: cached for i, key in enumerate(keys) if (cached := self._read(cache, key)) is not None}
        missing = [i for i in range(len(images)) if i not in found]
        maps = torch.empty(len(images), 1, SISM_SIZE, SISM_SIZE, device=images.device)
        if missing:
            # the generator sees its own input size (gmr: 256), as `cosal detect --method NAME` would run it
            if compute is None:
                predicted = self.method.predict_group(_to_size(images[missing], self.method.input_size))
            else:
                predicted = compute(missing)
            fresh = _quantise(_to_size(predicted.float(), SISM_SIZE))
            for position, index in enumerate(missing):
                maps[index] = fresh[position]
                if cache:
                    self._write(cache, keys[index], fresh[position])
        for index, cached in found.items():
            maps[index] = cached.to(images.device)
        return maps

    def _cache_for(self, device: torch.device) -> Path | None:
        """The cache folder for maps computed now: maps made under bfloat16 autocast (``--precision bf16``)
        differ from float32 ones by a few 1/255, so they are kept apart."""
        if self.cache is None or not torch.is_autocast_enabled(device.type):
            return self.cache
        return self.cache.with_name(f"{self.cache.name}-{str(torch.get_autocast_dtype(device.type)).split('.')[-1]}")

    @staticmethod
    def _path(cache: Path, key: str) -> Path:
        return cache / key[:2] / f"{key}.png"

    def _read(self, cache: Path, key: str) -> torch.Tensor | None:
        from PIL import Image

        path = self._path(cache, key)
        try:
            with Image.open(path) as image:
                values = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
        except (OSError, ValueError):  # absent, or damaged by a crash of another tool: recompute
            return None
        if values.shape != (SISM_SIZE, SISM_SIZE):
            return None
        return torch.from_numpy(values)[None]

    def _write(self, cache: Path, key: str, sism: torch.Tensor) -> None:
        from cosal_cli.io import write_map

        try:
            write_map((sism[0] * 255.0).round().to(torch.uint8).cpu().numpy(), self._path(cache, key))
        except OSError:
            pass  # a read-only or full cache only costs the recomputation next time


class DirectorySisms:
    """SISMs precomputed by any detector: ``<root>/<group>/<stem>.png``."""

    def __init__(self, root: Path):
        self.root = root
        self.name = f"dir:{root}"

    def __call__(self, images: torch.Tensor, sources: GroupImages | None = None) -> torch.Tensor:
        from PIL import Image

        if sources is None:
            raise ValueError("SISMs from a folder need the images' group and file names")
        paths = [self.root / sources.group / f"{stem}.png" for stem in sources.stems]
        missing = [path for path in paths if not path.is_file()]
        if missing:
            names = ", ".join(path.name for path in missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise MissingSisms(
                f"{len(missing)} of {len(paths)} SISMs missing in {self.root / sources.group}: {names} "
                f"(make them with `cosal detect --method sod -o {self.root}`, or drop --sism-dir)"
            )
        maps = []
        for path in paths:
            with Image.open(path) as image:  # as ICNet's dataset.py: L, Resize([224, 224]), ToTensor
                grey = image.convert("L").resize((SISM_SIZE, SISM_SIZE), Image.BILINEAR)
            maps.append(torch.from_numpy(np.asarray(grey, dtype=np.float32) / 255.0)[None])
        maps = torch.stack(maps).to(images.device)
        return maps.flip(-1) if sources.mirrored else maps


def predict_in_subgroups(images: torch.Tensor, sources: GroupImages | None, subgroup: int | None, sisms,
                         network) -> torch.Tensor:  # fmt: skip
    """``network(images, sisms)`` (maps in [0, 1]) on the whole group, or on sub-groups of ``subgroup`` images.

    ICNet's consensus (the CSA weights) is computed over the images of one call, so a sub-group size
    changes the maps; the official test's default is the whole group, and so is cosal's.
    """
    size = subgroup or len(images)
    maps = []
    for start in range(0, len(images), size):
        part = images[start : start + size]
        part_sources = None if sources is None else replace(sources, stems=sources.stems[start : start + size])
        maps.append(network(part, sisms(part, part_sources)))
    return torch.cat(maps)


def open_source(choice: SismChoice, default: str, device: torch.device, batch_size: int, offline: bool = False,
                cache: bool = True):  # fmt: skip
    """The SISM source for ``choice`` (``default`` generator when none was given)."""
    from cosal_cli.methods.loader import load_method

    if choice.directory is not None:
        return DirectorySisms(choice.directory)
    name = choice.generator or default
    method = load_method(name, device, batch_size, offline)
    return GeneratorSisms(method, cache_folder(name) if cache else None)


def cache_folder(generator: str) -> Path:
    """``$COSAL_HOME/sism/<name>-<fingerprint>``: a new generator, new weights or a new cosal get a new folder."""
    from cosal_cli import __version__
    from cosal_cli.hub import WeightHub, cache_home

    hub = WeightHub()
    weights = {role: hub.manifest.component(component).sha256 for role, component in
               hub.manifest.roles(generator).items()}  # fmt: skip
    identity = json.dumps({"generator": generator, "weights": weights, "cosal": __version__, "size": SISM_SIZE},
                          sort_keys=True)  # fmt: skip
    return cache_home() / "sism" / f"{generator}-{hashlib.sha256(identity.encode()).hexdigest()[:16]}"


def _as_uint8(images: torch.Tensor) -> Sequence[np.ndarray]:
    """The exact 8-bit pixels the inference path decoded (images are uint8 / 255)."""
    return list(images.detach().mul(255.0).round().clamp(0, 255).to(torch.uint8).cpu().numpy())


def _to_size(maps: torch.Tensor, size: int) -> torch.Tensor:
    """(N, C, s, s) or (N, s, s) in [0, 1] to (N, C, size, size), bilinear."""
    maps = maps[:, None] if maps.ndim == 3 else maps
    if maps.shape[-1] != size or maps.shape[-2] != size:
        maps = F.interpolate(maps, size=(size, size), mode="bilinear", align_corners=False)
    return maps.clamp(0.0, 1.0)


def _quantise(maps: torch.Tensor) -> torch.Tensor:
    return maps.mul(255.0).round().div(255.0)
