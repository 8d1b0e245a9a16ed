"""Generic weight-file converters used by the hub (model-specific ones live next to their model)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch


def convert_torch_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A PyTorch checkpoint (bare state dict or ``{'state_dict': ...}``) as plain tensors.

    Loaded with ``weights_only=True``: a checkpoint that needs unpickling of arbitrary objects
    is refused rather than executed.
    """
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise ValueError(f"{path} is not a state dict of tensors")
    return {str(key): value for key, value in checkpoint.items()}


def load_state_dict_file(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path), device=str(device))


def check_state_dict(state: Mapping[str, torch.Tensor], model: torch.nn.Module, source: str) -> dict[str, torch.Tensor]:
    """``state`` ready for ``model.load_state_dict(strict=True)``, or ValueError with a readable diff.

    A leading ``module.`` (DataParallel) is stripped. The error names the file, then the missing keys,
    the unexpected keys and the shape mismatches, a few of each with the counts, so a user can tell a
    wrong file (nothing matches) from a different version (a few keys differ).
    """
    from cosal_cli.io import abbreviate

    if state and all(key.startswith("module.") for key in state):
        state = {key.removeprefix("module."): value for key, value in state.items()}
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(
        f"{key} {tuple(state[key].shape)} (expected {expected[key]})"
        for key in set(expected) & set(state)
        if tuple(state[key].shape) != expected[key]
    )
    problems = [
        f"{len(items)} {what}: {abbreviate(items, 4)}"
        for what, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes))
        if items
    ]
    if problems:
        matched = len(set(expected) & set(state)) - len(shapes)
        raise ValueError(
            f"{source} does not fit {type(model).__name__} ({matched} of {len(expected)} keys match): "
            + "; ".join(problems)
        )
    return dict(state)
