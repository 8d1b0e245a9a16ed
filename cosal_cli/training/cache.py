"""Training a head from cached encoder outputs (``cosal train --cache-views N``).

The backbone is frozen, so what it computes for a given view of an image never changes. With
``--cache-views N`` the trainer renders N augmented views of every training image once (crop, flip
and, with ``--composite-fraction``, a pasted object of another group: composites are made at the
image level *before* caching), runs the frozen encoder on them once, and stores its outputs
(float16) and the targets in memory-mapped ``.npy`` files. Each epoch then takes, for every image,
one of its N views, and only the head runs forward and backward.

* Outsiders (``--outsider-fraction``) take a cached view of an image of another group, with an
  all-zero target, exactly as uncached batches do.
* Collaborative batches (``--collaborative-fraction``, GCoNet's group collaborative learning): with
  that probability a batch is also run with the consensus of a sub-group of *another* group, and
  all-zero targets: the group's object is absent from every image under that consensus. This needs
  the consensus as an input, which only cached training gives for free (its encoder outputs are
  at hand), so the option asks for ``--cache-views``.

The cache is written next to the head (``--cache-dir``), described by ``cache.json``, which is
written last: a cache whose ``cache.json`` is missing or describes other data, views or backbone is
rebuilt, one that matches is reused (a resumed run does not redo it).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cosal_cli.errors import UsageError
from cosal_cli.io import atomic_output
from cosal_cli.training.co_category import CoCategoryTargets
from cosal_cli.training.losses import deep_supervision
from cosal_cli.training.neighbours import nearest_neighbours, neighbour_batches
from cosal_cli.training.sampler import (
    ImageStore,
    SamplerSettings,
    TrainImage,
    by_group,
    epoch_batches,
    make_batch,
    render_view,
)

CACHE_FORMAT = "cosal-feature-cache/1"
RENDER_CHUNK = 4  # views per encoder pass: measured 2-3x faster per image on CPU than 16 (memory-bound)
_VIEW_STREAM = 7919  # keeps the views' random streams apart from the batches' ([seed, epoch, batch])


def check_network(network, method: str, settings: SamplerSettings, cache_views: int) -> None:
    """Usage errors for training options the network cannot serve."""
    if getattr(network, "neighbour_sub_group", 0) and not cache_views:
        raise UsageError(f"{method} picks its training sub-groups by neighbours among cached descriptors: "
                         "add --cache-views 1")  # fmt: skip
    if settings.collaborative_fraction > 0 and not hasattr(network, "consensus_from_cache"):
        raise UsageError(f"--collaborative-fraction: {method} has no group consensus to exchange; drop it")


class ImageBatches:
    """Batches decoded and augmented on the fly; the frozen encoder runs at every step."""

    def __init__(self, settings: SamplerSettings, train: Sequence[TrainImage], device: torch.device, autocast):
        self.settings, self.train, self.device, self.autocast = settings, train, device, autocast
        self.store = ImageStore(short_side=2 * settings.size)

    def epoch_batches(self, epoch: int) -> list[list[TrainImage]]:
        return epoch_batches(by_group(self.train), self.settings, epoch)

    def loss(self, network, batch: Sequence[TrainImage], epoch: int, index: int, loss_name: str) -> torch.Tensor:
        images, targets = make_batch(batch, self.store, self.settings, epoch, index, self.train)
        with self.autocast:
            outputs = network(images.to(self.device))
        return deep_supervision(loss_name, outputs, targets.to(self.device))


class CachedBatches:
    """Batches of cached views; only the head runs. See the module docstring."""

    def __init__(self, cache: FeatureCache, settings: SamplerSettings, device: torch.device, autocast,
                 neighbours: int = 0, categories: CoCategoryTargets | None = None):  # fmt: skip
        self.cache, self.settings, self.device, self.autocast = cache, settings, device, autocast
        self.categories = categories  # GS: each sub-group also classifies its group's common categories
        self.row_of = {item.image: row for row, item in enumerate(cache.images)}
        self.groups = by_group(cache.images)
        self.neighbours = neighbours  # > 0: sub-groups of that size, an anchor and its nearest neighbours (GWD)

    def epoch_batches(self, epoch: int) -> list[list[TrainImage]]:
        if not self.neighbours:
            return epoch_batches(self.groups, self.settings, epoch)
        return neighbour_batches(self.groups, self._nearest, self.settings.seed, epoch)

    @cached_property
    def _nearest(self) -> dict[str, list[list[int]]]:
        """Each image's ``neighbours - 1`` nearest in its group, by the descriptor of its first cached view."""
        descriptors, nearest = self.cache.arrays["descriptor"], {}
        for key, items in self.groups.items():
            rows = [self.row_of[item.image] * self.cache.views for item in items]
            group = torch.from_numpy(descriptors[rows].astype(np.float32))
            nearest[key] = nearest_neighbours(group, self.neighbours - 1).tolist()
        return nearest

    def loss(self, network, batch: Sequence[TrainImage], epoch: int, index: int, loss_name: str) -> torch.Tensor:
        rng = np.random.default_rng([self.settings.seed, epoch, index])
        rows, empty = [], []
        fraction = self.settings.outsider_fraction
        for position, item in enumerate(batch):
            outsider = position > 0 and fraction > 0 and rng.random() < fraction  # drawn as make_batch draws it
            source = self._other_image(item, rng) if outsider else item
            rows.append(self._view(source, rng))
            empty.append(source is not item)
        cached, targets = self.cache.read(rows, self.device)
        targets[torch.tensor(empty, device=self.device)] = 0.0
        size = targets.shape[-2:]
        with self.autocast:
            outputs = network.forward_from_cache(cached, size)
        loss = deep_supervision(loss_name, outputs, targets)
        if self.categories is not None:
            with self.autocast:
                loss = loss + self.categories.loss(network, cached, batch[0].group_key)
        collaborative = self.settings.collaborative_fraction
        if collaborative > 0 and rng.random() < collaborative and len(self.groups) > 1:
            foreign, _ = self.cache.read(self._other_sub_group(batch[0], len(batch), rng), self.device)
            with self.autocast:
                outputs = network.forward_from_cache(cached, size, network.consensus_from_cache(foreign))
            loss = loss + deep_supervision(loss_name, outputs, torch.zeros_like(targets))
        return loss

    def _view(self, item: TrainImage, rng: np.random.Generator) -> int:
        """The cache row of one of ``item``'s views, drawn at random."""
        return self.row_of[item.image] * self.cache.views + int(rng.integers(self.cache.views))

    def _other_image(self, item: TrainImage, rng: np.random.Generator) -> TrainImage:
        keys = [key for key in self.groups if key != item.group_key]
        if not keys:
            return item
        images = self.groups[keys[int(rng.integers(len(keys)))]]
        return images[int(rng.integers(len(images)))]

    def _other_sub_group(self, item: TrainImage, size: int, rng: np.random.Generator) -> list[int]:
        keys = [key for key in self.groups if key != item.group_key]
        images = self.groups[keys[int(rng.integers(len(keys)))]]
        chosen = rng.choice(len(images), size=min(size, len(images)), replace=False)
        return [self._view(images[i], rng) for i in chosen]


class FeatureCache:
    """``views`` cached views of each of ``images``: encoder outputs (float16) and targets (uint8)."""

    def __init__(self, folder: Path, images: Sequence[TrainImage], views: int):
        self.folder, self.images, self.views = folder, list(images), views
        self.arrays: dict[str, np.ndarray] = {}

    def read(self, rows: Sequence[int], device: torch.device) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The cached tensors of ``rows`` (in that order) and their targets (k, 1, S, S) in [0, 1]."""
        order = np.asarray(rows)
        tensors = {name: torch.from_numpy(array[order]).to(device)  # fancy indexing copies: contiguous
                   for name, array in self.arrays.items() if name != "targets"}  # fmt: skip
        targets = torch.from_numpy(self.arrays["targets"][order].astype(np.float32) / 255.0)[:, None]
        return tensors, targets.to(device)

    def open(self) -> None:
        names = json.loads((self.folder / "cache.json").read_text())["arrays"]
        self.arrays = {name: np.load(self.folder / f"{name}.npy", mmap_mode="r") for name in names}


def fingerprint(images: Sequence[TrainImage], views: int, settings: SamplerSettings, method: str, backbone: str,
                config: Mapping[str, Any]):  # fmt: skip
    """What the cached views depend on; a cache is reused only when all of it matches.

    ``config`` is the head's: what the network caches can depend on it (gwd caches pool4 when it tunes conv5).
    """
    listing = "\n".join(f"{item.group_key}/{item.stem}\t{item.image}\t{item.mask}" for item in images)
    batch_only = ("min_group", "max_group", "outsider_fraction", "collaborative_fraction")
    view_settings = {key: value for key, value in asdict(settings).items() if key not in batch_only}
    identity = {"format": CACHE_FORMAT, "method": method, "backbone_sha256": backbone, "views": views,
                "images": len(images), "images_sha256": hashlib.sha256(listing.encode()).hexdigest(),
                "view_settings": view_settings, "config": dict(config)}  # fmt: skip
    return json.loads(json.dumps(identity))  # as cache.json will hold it (tuples become lists)


def open_or_build(
    folder: Path,
    network,
    images: Sequence[TrainImage],
    views: int,
    settings: SamplerSettings,
    identity: dict[str, Any],
    notice: Callable[[str], None],
) -> FeatureCache:
    """The cache in ``folder`` if ``cache.json`` matches ``identity`` (:func:`fingerprint`); otherwise built
    there first."""
    cache = FeatureCache(folder, images, views)
    manifest = folder / "cache.json"
    if manifest.exists() and json.loads(manifest.read_text()).get("fingerprint") == identity:
        notice(f"using the feature cache in {folder} ({len(images) * views} views)")
    else:
        _build(cache, network, settings, identity, notice)
    cache.open()
    return cache


def _build(cache: FeatureCache, network, settings: SamplerSettings, identity: dict[str, Any], notice) -> None:
    folder, rows = cache.folder, len(cache.images) * cache.views
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cache.json").unlink(missing_ok=True)  # from here on the cache is incomplete
    store = ImageStore(short_side=2 * settings.size)
    groups = by_group(cache.images)
    others = {key: [item for other, items in groups.items() if other != key for item in items] for key in groups}
    arrays: dict[str, np.ndarray] = {}
    done = 0
    for chunk in _chunks(cache, groups, getattr(network, "cache_sub_group", 0), settings.seed):
        views = [_render(cache.images[row // cache.views], row, store, settings, others) for row in chunk]
        _store_chunk(chunk, views, network, arrays, folder, rows, notice)
        if (done + len(chunk)) // 2048 > done // 2048 or done + len(chunk) == rows:
            notice(f"feature cache: {done + len(chunk)}/{rows} views encoded")
        done += len(chunk)
    for array in arrays.values():
        array.flush()
    with atomic_output(folder / "cache.json") as temporary:
        temporary.write_text(json.dumps({"fingerprint": identity, "arrays": sorted(arrays)}, indent=1))


def _chunks(cache: FeatureCache, groups: dict[str, list[TrainImage]], sub_group: int, seed: int) -> list[list[int]]:
    """The rows encoded together: ``RENDER_CHUNK`` consecutive rows; or, for a network whose cached
    tensors depend on the sub-group around an image (CSMG's ADMM masks, ``cache_sub_group = k``),
    each group's images shuffled and cut into sub-groups of k to 2k - 1, one view index at a time."""
    rows = len(cache.images) * cache.views
    if not sub_group:
        return [list(range(start, min(start + RENDER_CHUNK, rows))) for start in range(0, rows, RENDER_CHUNK)]
    index_of = {item.image: index for index, item in enumerate(cache.images)}
    rng = np.random.default_rng([seed, _VIEW_STREAM])
    chunks = []
    for items in groups.values():
        for view in range(cache.views):
            order = [index_of[items[i].image] * cache.views + view for i in rng.permutation(len(items))]
            cuts = list(range(0, len(order), sub_group))
            if len(cuts) > 1 and len(order) - cuts[-1] < sub_group:
                cuts.pop()  # a short last sub-group joins the one before it
            chunks += [order[start:end] for start, end in zip(cuts, [*cuts[1:], len(order)])]
    return chunks


def _render(item: TrainImage, row: int, store: ImageStore, settings: SamplerSettings, others) -> tuple:
    rng = np.random.default_rng([settings.seed, _VIEW_STREAM, row])
    return render_view(item, store, settings, rng, others[item.group_key])


def _store_chunk(rows: list[int], views, network, arrays: dict[str, np.ndarray], folder: Path, total: int,
                 notice) -> None:  # fmt: skip
    images = torch.stack([image for image, _ in views])
    targets = torch.stack([target for _, target in views])
    device = next(network.head.parameters()).device
    with torch.no_grad():
        encoded = network.encode_for_cache(images.to(device))
    encoded = {name: tensor.to("cpu", torch.float16).numpy() for name, tensor in encoded.items()}
    encoded["targets"] = (targets[:, 0].numpy() * 255.0).round().astype(np.uint8)
    if not arrays:
        _check_space(folder, {name: value.nbytes // len(rows) for name, value in encoded.items()}, total)
        notice(f"building the feature cache in {folder}: {total} views")
        for name, value in encoded.items():
            arrays[name] = np.lib.format.open_memmap(
                folder / f"{name}.npy", mode="w+", dtype=value.dtype, shape=(total, *value.shape[1:])
            )
    for name, value in encoded.items():
        arrays[name][rows] = value


def _check_space(folder: Path, bytes_per_view: dict[str, int], rows: int) -> None:
    needed = sum(bytes_per_view.values()) * rows
    existing = sum(path.stat().st_size for path in folder.glob("*.npy"))  # rewritten in place
    free = shutil.disk_usage(folder).free + existing
    if needed > 0.95 * free:
        raise UsageError(
            f"--cache-views: the feature cache needs {needed / 2**30:.1f} GiB in {folder} but only "
            f"{free / 2**30:.1f} GiB is free; use fewer views, a smaller --size, or another --cache-dir"
        )
