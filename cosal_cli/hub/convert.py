"""Converters: from a verified source file to the safetensors file cosal loads."""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cosal_cli.hub.manifest import Component

#: Converters turn a verified source file into a ``{name: tensor}`` state dict. They are named in
#: the manifest and imported only when a conversion runs (they pull in torch / onnx).
CONVERTERS: Mapping[str, str | None] = {
    "identity": None,  # the source already is the safetensors file cosal loads
    "keras-vgg16-onnx": "cosal_cli.models.vgg:convert_keras_vgg16_onnx",
    "torch-state-dict": "cosal_cli.models.convert:convert_torch_state_dict",
    "gicd-ginet": "cosal_cli.models.gicd:convert_ginet",
    "torchvision-vgg16": "cosal_cli.models.gicd:convert_co_classifier",
    "icnet": "cosal_cli.models.icnet:convert_icnet",
}


def load_converter(name: str) -> Callable[[Path], Mapping[str, Any]]:
    target = CONVERTERS[name]
    assert target is not None
    module_name, function = target.split(":")
    return getattr(importlib.import_module(module_name), function)


def write_safetensors(
    tensors: Mapping[str, Any], path: Path, component: Component, converter: str, extra: Mapping[str, str] | None = None
) -> None:
    from safetensors.torch import save_file

    # One metadata key holding sorted JSON: safetensors writes several keys in a random (hash map)
    # order, which would change the file's sha256 from run to run and break the pin.
    provenance = {"component": component.id, "converter": converter, "source": component.source.describe()}
    provenance.update(extra or {})
    metadata = {"cosal": json.dumps(provenance, sort_keys=True)}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
