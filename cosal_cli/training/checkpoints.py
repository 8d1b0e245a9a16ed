"""Training checkpoints: the head, the optimiser state and the loop position, in safetensors (never pickle).

A checkpoint carries the fingerprint of the run that wrote it (``TrainSettings.fingerprint``); it is
resumed only by a run with the same settings, so a resumed run ends exactly where an uninterrupted
one would.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from cosal_cli.errors import UsageError
from cosal_cli.models.heads import load_tensors, save_tensors

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
    differences = sorted(
        key for key, value in settings.fingerprint().items()
        if json.loads(json.dumps(value)) != saved.metadata["fingerprint"].get(key)
    )  # fmt: skip
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
