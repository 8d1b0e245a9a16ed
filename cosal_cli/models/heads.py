"""Trained heads: small safetensors files that carry what is needed to rebuild and trust them.

Only the trainable part of a method is saved (its backbone is a shared hub component). The
safetensors header holds string metadata; each entry here is JSON:

* ``format``: ``cosal-head/1``;
* ``method`` and ``config``: which network to build, with which hyper-parameters;
* ``backbone``: ``{"component": id, "sha256": ...}``, the frozen weights it was trained on top of;
* ``training``: data, split, epochs, seed, device, seconds, command line;
* ``validation``: held-out metrics of this head, per epoch and for the one kept;
* ``cosal_version``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cosal_cli.io import atomic_output
from cosal_cli.models.fcn_skip import SKIP_STRIDE

HEAD_FORMAT = "cosal-head/1"


@dataclass
class Head:
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, Any]

    @property
    def config(self) -> dict[str, Any]:
        return self.metadata.get("config", {})


def save_tensors(path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, Any]) -> None:
    """Write tensors with JSON metadata atomically (a crash never leaves a half-written file)."""
    from safetensors.torch import save_file

    plain = {name: tensor.detach().to("cpu").contiguous() for name, tensor in tensors.items()}
    header = {key: json.dumps(value, sort_keys=True) for key, value in metadata.items()}
    with atomic_output(path) as temporary:
        save_file(plain, str(temporary), metadata=header)


def load_tensors(path: Path, device: str | torch.device = "cpu") -> Head:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device=str(device)) as handle:
        header = handle.metadata() or {}
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 (safe_open is not iterable)
    try:
        metadata = {key: json.loads(value) for key, value in header.items()}
    except json.JSONDecodeError:
        raise ValueError(f"{path}: metadata is not cosal's (JSON values expected)") from None
    return Head(tensors, metadata)


def save_head(path: Path, state: Mapping[str, torch.Tensor], metadata: Mapping[str, Any]) -> None:
    save_tensors(path, state, {"format": HEAD_FORMAT, **metadata})


def load_head(path: Path, method: str, device: str | torch.device = "cpu") -> Head:
    """A head for ``method``; refuses files of another format or made for another method."""
    head = load_tensors(path, device)
    if head.metadata.get("format") != HEAD_FORMAT:
        raise ValueError(f"{path} is not a cosal head (format {head.metadata.get('format')!r}, expected {HEAD_FORMAT})")
    if head.metadata.get("method") != method:
        raise ValueError(f"{path} is a head for method {head.metadata.get('method')!r}, not {method!r}")
    zero_subnormals_(head.tensors.values())  # heads saved before training flushed them
    return head


def zero_subnormals_(tensors: Iterable[torch.Tensor]) -> None:
    """Set float32 values below the smallest normal number (about 1.2e-38) to zero, in place.

    Weight decay drives the weights of channels that get no gradient towards zero until they are subnormal
    (8 % of a csmg head trained with Adam's 5e-4), and CPU convolutions over them are many times slower
    (measured on 2 threads: a 3 x 3 convolution with 30 % of its weights subnormal, 16x; csmg's training,
    13 against 65 images/s). ``torch.set_flush_denormal`` only partly helped there (1.24 s -> 0.77 s a pass,
    against 0.08 s zeroed), so the values themselves go; their effect on any output is below float32's resolution.
    """
    with torch.no_grad():
        for tensor in tensors:
            if tensor.dtype == torch.float32:
                tensor.masked_fill_(tensor.abs() < torch.finfo(torch.float32).tiny, 0.0)


class FrozenBackboneNetwork(nn.Module):
    """Base of the networks ``cosal train`` learns: frozen pre-trained modules under a trainable ``head``.

    ``config`` is the head's hyper-parameters (``defaults`` overridden by the given ones, saved in the
    head file). Modules registered with :meth:`freeze` get no gradients and stay in eval mode
    whatever ``train()`` is called with, so their BatchNorm statistics and dropout never change.
    """

    #: The head's module that tunes part of the encoder when the config has ``tune_encoder`` (None: none can),
    #: and its learning rate / ``lr`` unless ``cosal train --encoder-lr-scale`` gives one.
    tuned_encoder: str | None = None
    tuned_encoder_lr_scale: float = 1.0

    def __init__(self, config: Mapping[str, Any] | None, defaults: Mapping[str, Any]):
        super().__init__()
        self.defaults = dict(defaults)  # what a head file saved before a key was added had, without saying it
        self.config = {**defaults, **(config or {})}
        self._frozen: list[str] = []

    def freeze(self, name: str, module: nn.Module) -> None:
        setattr(self, name, module.eval().requires_grad_(False))
        self._frozen.append(name)

    def input_layer(self) -> nn.Module:
        """The first layer of the first frozen module: every image of a group passes it when encoded."""
        frozen = getattr(self, self._frozen[0])
        return next(module for module in frozen.modules() if not list(module.children()))

    @property
    def tunes_encoder(self) -> bool:
        return bool(self.config.get("tune_encoder", False))

    @property
    def skips(self) -> bool:
        """Whether the head has FCN-8s's pool3 skip (:mod:`cosal_cli.models.fcn_skip`, gwd and csmg)."""
        return self.config.get("output_stride") == SKIP_STRIDE

    def parameter_groups(self, lr: float, encoder_lr_scale: float | None = None) -> list[dict[str, Any]]:
        """The optimiser's groups: the tuned part of the encoder (if any) learns at ``encoder_lr_scale``
        (default ``tuned_encoder_lr_scale``) times ``lr``, the rest of the head at ``lr``."""
        tuned = self.tuned_encoder if self.tunes_encoder else None
        rest = [param for name, param in self.head.named_parameters() if not (tuned and name.startswith(tuned + "."))]
        groups = [{"params": rest, "lr_scale": 1.0}]
        if tuned:
            scale = encoder_lr_scale or self.tuned_encoder_lr_scale
            groups.append({"params": list(getattr(self.head, tuned).parameters()), "lr_scale": scale})
        return [{**group, "lr": lr * group["lr_scale"]} for group in groups]

    def init_may_add(self) -> tuple[dict[str, Any], tuple[str, ...]]:
        """What an --init head may lack (config, and the prefixes of its weights): a head trained without the
        tuned part of the encoder, or without the pool3 skip, gets them as this network built them (the skip's
        score starts at zero, so the head's maps stay as they were)."""
        added, prefixes = {}, ()
        if self.tunes_encoder:
            added, prefixes = {"tune_encoder": True}, (self.tuned_encoder + ".",)
        if self.skips:
            added, prefixes = {**added, "output_stride": SKIP_STRIDE}, (*prefixes, "skip.")
        return added, prefixes

    def train(self, mode: bool = True) -> FrozenBackboneNetwork:
        super().train(mode)
        for name in self._frozen:
            getattr(self, name).eval()
        return self


def bilinear_kernel(size: int) -> torch.Tensor:
    """FCN's bilinear upsampling filter (1, 1, size, size) for a ConvTranspose2d of stride size/2."""
    factor = (size + 1) // 2
    centre = factor - 1 if size % 2 == 1 else factor - 0.5
    ramp = 1 - (torch.arange(size, dtype=torch.float32) - centre).abs() / factor
    return (ramp[:, None] * ramp[None, :])[None, None]


def interpolate_heads(start: Head, tuned: Head, alpha: float, sources: tuple[Any, Any]) -> Head:
    """WiSE-FT (Wortsman et al., CVPR 2022): ``(1 - alpha) * start + alpha * tuned``, weight by weight.

    ``tuned`` must be ``start`` fine-tuned (``cosal train --init``): the same format, method, backbone,
    config and tensors, so that the average of the two is a head of the same network. The result keeps ``tuned``'s
    metadata (its training and validation describe the fine-tuning, not the average, which is unvalidated)
    and records the interpolation: ``alpha`` and where the two heads came from (``sources``, in order).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], not {alpha}")
    for key in ("format", "method", "config", "backbone"):
        if start.metadata.get(key) != tuned.metadata.get(key):
            raise ValueError(f"the heads differ in {key}: {start.metadata.get(key)} against {tuned.metadata.get(key)}")
    shapes = {name: tuple(tensor.shape) for name, tensor in start.tensors.items()}
    if shapes != {name: tuple(tensor.shape) for name, tensor in tuned.tensors.items()}:
        raise ValueError("the heads' tensors differ in names or shapes")
    tensors = {
        name: ((1.0 - alpha) * value.double() + alpha * tuned.tensors[name].double()).to(value.dtype)
        if value.is_floating_point() else tuned.tensors[name]
        for name, value in start.tensors.items()
    }  # fmt: skip
    metadata = {**tuned.metadata, "interpolation": {"alpha": alpha, "start": sources[0], "tuned": sources[1]}}
    return Head(tensors, metadata)
