"""Where a training run starts: its checkpoint (head, optimiser state, loop position; safetensors, never
pickle), or with ``--init`` an existing head to fine-tune.

A checkpoint carries the fingerprint of the run that wrote it (``TrainSettings.fingerprint``); it is
resumed only by a run with the same settings, so a resumed run ends exactly where an uninterrupted
one would.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from cosal_cli.errors import UsageError
from cosal_cli.hub import sha256_file
from cosal_cli.models.heads import load_head, load_tensors, save_tensors

CHECKPOINT_FORMAT = "cosal-train-checkpoint/1"


@dataclass
class LoopState:
    epoch: int = 0  # epochs finished
    batch: int = 0  # batches finished within the current epoch
    step: int = 0  # optimiser steps in total
    images: int = 0
    seconds: float = 0.0
    best: dict[str, Any] | None = None  # {"epoch": n, **scores} of the kept head
    history: list[dict[str, Any]] = field(default_factory=list)
    epoch_loss: float = 0.0  # running sum of batch losses in the current epoch


def save_checkpoint(settings, network, optimiser: torch.optim.Optimizer, state: LoopState) -> None:
    tensors = {f"head.{name}": value for name, value in network.head.state_dict().items()}
    optimiser_state = optimiser.state_dict()
    for index, values in optimiser_state["state"].items():
        for key, value in values.items():
            tensors[f"optimiser.{index}.{key}"] = torch.as_tensor(value)
    save_tensors(
        settings.checkpoint,
        tensors,
        {
            "format": CHECKPOINT_FORMAT,
            "fingerprint": settings.fingerprint(),
            "state": asdict(state),
            "param_groups": optimiser_state["param_groups"],
        },
    )


def load_checkpoint(settings, network, optimiser, notice: Callable[[str], None]) -> LoopState:
    path = settings.checkpoint
    if not path.exists():
        raise UsageError(f"--resume: no checkpoint {path} (it is written next to --output while training)")
    saved = load_tensors(path)
    if saved.metadata.get("format") != CHECKPOINT_FORMAT:
        raise UsageError(f"{path} is not a cosal training checkpoint")
    current, written = json.loads(json.dumps(settings.fingerprint())), saved.metadata["fingerprint"]
    # both ways: a setting recorded only when given (--encoder-lr-scale) differs when either run lacks it
    differences = sorted(key for key in current.keys() | written.keys() if current.get(key) != written.get(key))
    if differences:
        raise UsageError(
            f"{path} was written by a run with different {', '.join(differences)}; "
            "resume with the same options, or delete the checkpoint to start over"
        )
    network.head.load_state_dict({k[5:]: v for k, v in saved.tensors.items() if k.startswith("head.")}, strict=True)
    per_parameter: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in saved.tensors.items():
        if name.startswith("optimiser."):
            _, index, key = name.split(".", 2)
            per_parameter.setdefault(int(index), {})[key] = value
    optimiser.load_state_dict({"state": per_parameter, "param_groups": saved.metadata["param_groups"]})
    state = LoopState(**saved.metadata["state"])
    notice(f"resuming {path}: epoch {state.epoch + 1}, batch {state.batch}, {state.step} steps done")
    return state


def load_initial_head(settings, network, hub, backbone) -> dict[str, Any] | None:
    """--init: fine-tune an existing head (a file, or a component such as the bundled icnet-head).

    The head must be the same method's, for the same backbone and with the same config, so that the
    result is still the head this run would have built; what it started from goes into the metadata.
    """
    if settings.init is None:
        return None
    path = Path(settings.init)
    if path.suffix != ".safetensors" and not path.exists():
        path = hub.resolve(settings.init, offline=settings.offline)  # a component id: its sha256 is verified
    elif not path.is_file():
        raise UsageError(f"--init {settings.init}: no such head file (give a .safetensors head or a component id)")
    try:
        head = load_head(path, settings.method)
    except ValueError as exc:
        raise UsageError(f"--init {settings.init}: {exc}") from None
    trained_for = head.metadata.get("backbone", {}).get("sha256")
    if trained_for != backbone.sha256:
        raise UsageError(f"--init {settings.init} was trained on another backbone than {backbone.id} ({trained_for})")
    added, prefixes = network.init_may_add() if hasattr(network, "init_may_add") else ({}, ())
    if {**getattr(network, "defaults", {}), **head.config, **added} != {**network.config, **added}:
        raise UsageError(
            f"--init {settings.init} has config {head.config}, this run builds {dict(network.config)}: "
            "pass the same method flags (for example --sism)"
        )
    # a module the run adds (gicd's tuned pyramid) keeps the weights it was built with
    missing, unexpected = network.head.load_state_dict(head.tensors, strict=not added)
    if unexpected or any(not name.startswith(prefixes) for name in missing):
        raise UsageError(f"--init {settings.init} does not match this head's weights: missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}")  # fmt: skip
    return {"from": settings.init, "sha256": sha256_file(path), "kept": head.metadata.get("validation", {}).get("kept")}
