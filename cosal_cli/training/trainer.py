"""The training loop of ``cosal train``: data from a split, batches, loss, validation, checkpoints.

What is trained is a method's head (:class:`cosal_cli.methods.base.TrainableMethod`) on its frozen
hub backbone. The run is reproducible: the head's initialisation comes from ``seed`` and every
batch from a generator seeded by (seed, epoch, batch), so on the CPU the same command gives the same
head, and a run resumed from its checkpoint ends exactly where an uninterrupted one would.

Files (for ``--output sod-head.safetensors``):

* ``sod-head.safetensors``: the best head so far by held-out S-measure, with metadata
  (:mod:`cosal_cli.models.heads`), rewritten atomically whenever validation improves;
* ``sod-head.checkpoint.safetensors``: head, optimiser state and loop position, written every
  ``checkpoint_every`` batches, at each epoch end and on Ctrl-C; ``--resume`` continues from it.
"""

from __future__ import annotations

import math
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from cosal_cli import __version__, datasets, inference, methods, metrics
from cosal_cli.errors import UsageError
from cosal_cli.io import Group, ImageFile, load_grey
from cosal_cli.models.heads import load_tensors, save_head, save_tensors, zero_subnormals_
from cosal_cli.splits import Split
from cosal_cli.training import cache, checks, co_category
from cosal_cli.training.checkpoints import LoopState, load_checkpoint, load_initial_head, save_checkpoint
from cosal_cli.training.co_category import CoCategoryTargets
from cosal_cli.training.sampler import SamplerSettings, TrainImage, by_group

#: Held-out metrics reported after each epoch; the first one picks the head that is kept.
VALIDATION_METRICS = ("sm", "max_fm", "mean_em", "mae")


@dataclass
class TrainSettings:
    method: str
    data: list[Path]
    split: Split
    output: Path
    epochs: int = 4
    lr: float = 1e-3
    sampler: SamplerSettings = field(default_factory=SamplerSettings)
    val_limit: int = 24  # held-out images per group validated after each epoch (0: all of them)
    per_group: int = 0  # training images per group (0: all of them); a quick run on a slow machine
    checkpoint_every: int = 50
    device: str = "auto"
    precision: str = "auto"  # bf16 autocast or fp32; auto: bf16 on CUDA, fp32 on the CPU
    resume: bool = False
    offline: bool = False
    config: dict[str, Any] = field(default_factory=dict)  # the head's hyper-parameters (icnet: {"sism": ...})
    cache_views: int = 0  # > 0: train from that many cached views per image (training/cache.py)
    cache_dir: Path | None = None  # where the feature cache lives (default: next to the output)
    init: str | None = None  # a head file or bundled component to start from, instead of the seeded initialisation
    encoder_lr_scale: float | None = None  # --tune-encoder: the tuned part's rate / lr (None: the model's)

    @property
    def checkpoint(self) -> Path:
        return self.output.with_name(self.output.name.removesuffix(".safetensors") + ".checkpoint.safetensors")

    @property
    def cache_folder(self) -> Path:
        return self.cache_dir or self.output.with_name(self.output.name.removesuffix(".safetensors") + ".cache")

    def fingerprint(self) -> dict[str, Any]:
        """What must not change between a run and its resumption."""
        return {
            "method": self.method,
            "data": [str(path.resolve()) for path in self.data],
            "split_sha256": self.split.sha256,
            "epochs": self.epochs,
            "lr": self.lr,
            "sampler": asdict(self.sampler),
            "val_limit": self.val_limit,
            "per_group": self.per_group,
            "config": self.config,
            "cache_views": self.cache_views,
            "init": self.init,
            # only when set, so that checkpoints written before the flag still resume
            **({"encoder_lr_scale": self.encoder_lr_scale} if self.encoder_lr_scale is not None else {}),
        }


class TrainReporter(Protocol):
    def notice(self, message: str) -> None: ...
    def epoch_start(self, epoch: int, epochs: int, batches: int, done: int) -> None: ...
    def step(self, images: int, loss: float) -> None: ...
    def validation_start(self, images: int) -> None: ...
    def validated(self, epoch: int, scores: dict[str, float], kept: bool) -> None: ...


@dataclass
class TrainData:
    train: list[TrainImage]
    held_out: dict[str, list[TrainImage]]  # group key -> the images validated after each epoch
    summary: list[dict[str, Any]]
    co_category: dict[str, Any] | None = None  # GS: the co-category supervision (co_category.describe())


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------


def collect_data(roots: Sequence[Path], split: Split, val_limit: int, per_group: int = 0) -> TrainData:
    """Training images (at most ``per_group`` per group) and (at most ``val_limit`` per group) held-out
    images of every dataset root."""
    train: list[TrainImage] = []
    held_out: list[TrainImage] = []
    summary = []
    for root in roots:
        dataset = datasets.locate(str(root))
        split.check_groups(dataset.name, [group.name for group in dataset.groups])
        counts = {"train": 0, "held-out": 0}
        for group in dataset.groups:
            for item in group.items:
                assert item.image is not None  # locate() pairs images when require_images is on
                image = TrainImage(dataset.name, group.name, item.stem, item.image, item.mask)
                part = split.part(dataset.name, group.name, item.stem)
                (train if part == "train" else held_out).append(image)
                counts[part] += 1
        summary.append({"dataset": dataset.name, "groups": len(dataset.groups), **counts})
    if not train:
        raise UsageError(f"split {split.name!r} leaves no training images in {', '.join(map(str, roots))}")
    if per_group:
        train = [image for items in _evenly_spaced(train, per_group).values() for image in items]
        for entry in summary:
            entry["train_used"] = sum(1 for image in train if image.dataset == entry["dataset"])
    return TrainData(train, _evenly_spaced(held_out, val_limit), summary)


def _evenly_spaced(images: list[TrainImage], limit: int) -> dict[str, list[TrainImage]]:
    """``limit`` images per group, evenly spaced in stem order (all of them when 0)."""
    subset = {}
    for key, items in by_group(images).items():
        if limit and len(items) > limit:
            items = [items[i] for i in np.linspace(0, len(items) - 1, limit).round().astype(int)]
        subset[key] = items
    return subset


# ----------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------


def train(settings: TrainSettings, reporter: TrainReporter) -> dict[str, Any]:
    """Train, validate after every epoch, keep the best head; returns the kept head's metadata."""
    from cosal_cli.hub import WeightHub
    from cosal_cli.methods.loader import resolve_device

    method_class = checks.trainable_method(settings.method)
    checks.check_settings(method_class, settings)
    device = resolve_device(settings.device)
    hub = WeightHub()
    backbone_id = hub.manifest.roles(settings.method)["backbone"]
    backbone = hub.manifest.component(backbone_id)
    data = collect_data(settings.data, settings.split, settings.val_limit, settings.per_group)
    _report_data(data, settings, reporter)

    categories = _co_category(method_class, settings, data, hub, device)
    torch.manual_seed(settings.sampler.seed)  # the head's initialisation
    network = method_class.build_network(hub.resolve(backbone_id, offline=settings.offline), _network_config(
        method_class, settings, categories))  # fmt: skip
    initial = load_initial_head(settings, network, hub, backbone)
    network = network.to(device)
    method_class.prepare_training(network, device, settings.offline)
    groups = _parameter_groups(network, settings.lr, settings.encoder_lr_scale)
    optimiser = torch.optim.Adam(groups, weight_decay=method_class.weight_decay)
    state = _start_state(settings, network, optimiser, reporter)

    validator = _Validator(method_class, data.held_out, device)
    autocast = _autocast(settings.precision, device)
    source = _batch_source(settings, network, data.train, backbone, device, autocast, reporter, categories)
    schedule = [source.epoch_batches(epoch) for epoch in range(settings.epochs)]
    total_steps = sum(len(batches) for batches in schedule)
    started = time.perf_counter() - state.seconds
    try:
        while state.epoch < settings.epochs:
            batches = schedule[state.epoch]
            reporter.epoch_start(state.epoch + 1, settings.epochs, len(batches), state.batch)
            network.train()
            while state.batch < len(batches):
                batch = batches[state.batch]
                _set_lr(optimiser, settings.lr, state.step, total_steps)
                loss_value = _step(optimiser, source.loss(network, batch, state.epoch, state.batch, method_class.loss))
                state.step += 1
                state.batch += 1
                state.images += len(batch)
                state.epoch_loss += loss_value
                state.seconds = time.perf_counter() - started
                reporter.step(len(batch), loss_value)
                if state.batch % settings.checkpoint_every == 0:
                    save_checkpoint(settings, network, optimiser, state)
            _finish_epoch(settings, network, validator, state, len(batches), backbone, data, reporter, device)
            state.seconds = time.perf_counter() - started
            save_checkpoint(settings, network, optimiser, state)
    except KeyboardInterrupt:
        state.seconds = time.perf_counter() - started
        save_checkpoint(settings, network, optimiser, state)
        reporter.notice(f"interrupted; saved {settings.checkpoint}: run the same command with --resume to continue")
        raise
    return _finalise(settings, state, initial)


def _finalise(settings: TrainSettings, state: LoopState, initial: dict[str, Any] | None) -> dict[str, Any]:
    """Record the whole validation history in the kept head (it was saved before the later epochs ran)."""
    head = load_tensors(settings.output)
    metadata = dict(head.metadata)
    metadata["validation"] = {**metadata["validation"], "history": state.history}
    metadata["training"] = {**metadata["training"], "epochs_run": state.epoch, "seconds_total": round(state.seconds, 1)}
    if initial is not None:
        metadata["training"]["init"] = initial
    save_tensors(settings.output, head.tensors, metadata)
    return metadata


def _report_data(data, settings: TrainSettings, reporter: TrainReporter) -> None:
    for entry in data.summary:
        used = f" ({entry['train_used']} used, --per-group {settings.per_group})" if "train_used" in entry else ""
        reporter.notice(f"{entry['dataset']}: {entry['train']} training{used} and {entry['held-out']} held-out images")


def _start_state(settings: TrainSettings, network, optimiser, reporter: TrainReporter) -> LoopState:
    """A fresh loop, or the checkpoint's with --resume; a checkpoint left without --resume is refused."""
    if settings.resume:
        return load_checkpoint(settings, network, optimiser, reporter.notice)
    if settings.checkpoint.exists():
        raise UsageError(
            f"{settings.checkpoint} exists from an earlier run: add --resume to continue it, or delete it to start over"
        )
    return LoopState()


def _co_category(method_class, settings: TrainSettings, data: TrainData, hub, device) -> CoCategoryTargets | None:
    """GS's co-category targets (``--co-category``), recorded in the data summary of the head's metadata."""
    if not method_class.co_category_loss:
        return None
    categories = co_category.for_training(settings.config.get("co_category"), data.train, hub, device,
                                          settings.cache_folder, settings.offline)  # fmt: skip
    data.co_category = categories.describe() if categories else {"source": "off"}
    return categories


def _network_config(method_class, settings: TrainSettings, categories: CoCategoryTargets | None) -> dict[str, Any]:
    """The head's config: the method's flags, and for GS the co-category source and label count it was built for."""
    if not method_class.co_category_loss:
        return settings.config
    source, labels = (categories.source, len(categories.labels)) if categories else ("off", 0)
    return {**settings.config, "co_category": source, "categories": labels}


def _autocast(precision: str, device: torch.device):
    """bf16 autocast for the forward passes (the weights, gradients and Adam stay float32), or none."""
    bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def _batch_source(settings: TrainSettings, network, train_images, backbone, device, autocast, reporter, categories):
    """Where the batches' losses come from: images augmented on the fly, or the feature cache."""
    cache.check_network(network, settings.method, settings.sampler, settings.cache_views)
    if not settings.cache_views:
        return cache.ImageBatches(settings.sampler, train_images, device, autocast)
    identity = cache.fingerprint(train_images, settings.cache_views, settings.sampler, settings.method, backbone.sha256,
                                 network.config)  # fmt: skip
    features = cache.open_or_build(
        settings.cache_folder, network, train_images, settings.cache_views, settings.sampler, identity, reporter.notice
    )
    return cache.CachedBatches(features, settings.sampler, device, autocast, getattr(network, "neighbour_sub_group", 0),
                               categories)  # fmt: skip


def _step(optimiser: torch.optim.Optimizer, loss: torch.Tensor) -> float:
    """One optimiser step on one sub-group's loss; returns it."""
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    optimiser.step()
    zero_subnormals_(param for group in optimiser.param_groups for param in group["params"])
    return loss.detach().item()


def _set_lr(optimiser: torch.optim.Optimizer, base: float, step: int, total: int) -> None:
    """Cosine decay from ``base`` to 1 % of it over the whole run (a pure function of the step)."""
    lr = base * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(step, total) / max(total, 1))))
    for group in optimiser.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def _parameter_groups(network, lr: float, encoder_lr_scale: float | None) -> list[dict[str, Any]]:
    """The head's parameters, in the groups the network asks for (each with its ``lr_scale``)."""
    if hasattr(network, "parameter_groups"):
        return network.parameter_groups(lr, encoder_lr_scale)
    return [{"params": list(network.head.parameters()), "lr": lr, "lr_scale": 1.0}]


def _finish_epoch(settings, network, validator, state, batches, backbone, data, reporter, device) -> None:
    reporter.validation_start(validator.images)
    scores = validator.run(network)
    entry = {"epoch": state.epoch + 1, "loss": round(state.epoch_loss / max(batches, 1), 5), **scores}
    state.history.append(entry)
    kept = state.best is None or scores["sm"] > state.best["sm"]
    state.epoch += 1
    state.batch = 0
    state.epoch_loss = 0.0
    if kept:
        state.best = entry
        metadata = _head_metadata(settings, state, backbone, data, device, network.config)
        save_head(settings.output, network.head.state_dict(), metadata)
    reporter.validated(state.epoch, scores, kept)


def _head_metadata(settings, state: LoopState, backbone, data: TrainData, device, config) -> dict[str, Any]:
    return {
        "method": settings.method,
        "config": dict(config),
        "backbone": {"component": backbone.id, "sha256": backbone.sha256},
        "training": {
            "data": data.summary,
            "split": {"name": settings.split.name, "file": settings.split.path.name, "sha256": settings.split.sha256},
            "epochs": state.epoch,
            "epochs_planned": settings.epochs,
            "steps": state.step,
            "images_seen": state.images,
            "lr": settings.lr,
            "per_group": settings.per_group,
            **({"co_category": data.co_category} if data.co_category else {}),
            "loss": methods.method_class(settings.method).loss,
            "sampler": asdict(settings.sampler),
            "device": str(device),
            "seconds": round(state.seconds, 1),
            "command": shlex.join(["cosal", *sys.argv[1:]]),
            "torch": torch.__version__,
        },
        "validation": {"kept": state.best, "history": state.history, "images_per_group": settings.val_limit},
        "cosal_version": __version__,
    }


# ----------------------------------------------------------------------------------------------
# Validation: the method's own prediction path, scored with bench's metrics
# ----------------------------------------------------------------------------------------------


class _Validator:
    def __init__(self, method_class, held_out: dict[str, list[TrainImage]], device: torch.device):
        self.method_class = method_class
        self.held_out = held_out
        self.device = device
        self._decoded: dict[str, tuple[Any, list[np.ndarray]]] | None = None

    @property
    def images(self) -> int:
        return sum(len(items) for items in self.held_out.values())

    def run(self, network: torch.nn.Module) -> dict[str, float]:
        method = self.method_class.from_network(network, self.device)
        accumulator = metrics.MetricAccumulator("pysodmetrics")
        network.eval()
        try:
            for key, (decoded, masks) in self._decode(method.input_size).items():
                maps = inference.infer(method, decoded)  # the path `cosal detect` takes, so the same maps
                for index, mask in enumerate(masks):
                    accumulator.add(key, metrics.evaluate_pair(maps.eight_bit(index), mask))
        finally:
            network.train()
        summary = accumulator.summary()
        return {name: round(float(summary[name]), 5) for name in VALIDATION_METRICS}

    def _decode(self, size: int) -> dict[str, tuple[Any, list[np.ndarray]]]:
        if self._decoded is None:
            self._decoded = {}
            for key, items in self.held_out.items():
                group = Group(key, items[0].image.parent, [ImageFile(item.image, item.stem) for item in items])
                decoded = inference.decode_group(group, size)
                if decoded.problems:
                    raise UsageError(decoded.problems[0].message)
                self._decoded[key] = (decoded, [load_grey(item.mask) for item in items])
        return self._decoded
