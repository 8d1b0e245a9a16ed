"""Generic weight-file converters used by the hub (model-specific ones live next to their model)."""

from __future__ import annotations

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
