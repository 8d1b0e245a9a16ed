"""Finding image groups on disk, decoding images safely, and writing maps atomically.

Nothing here raises for a bad image: problems come back as :class:`Problem` values naming the file,
so the runner can report them and carry on with the rest of the batch.

The package splits that by job: :mod:`.files` (content sniffing and path checks that never raise),
:mod:`.discovery` (groups from command-line paths), :mod:`.decoding` (images to RGB or grey arrays),
:mod:`.writing` (atomic output) and :mod:`.outputs` (what ``--save`` writes: maps, masks, cut-outs, overlays).
"""

from __future__ import annotations

from cosal_cli.errors import InputError
from cosal_cli.io.decoding import MAX_IMAGE_PIXELS, DecodedImage, load_grey, load_rgb
from cosal_cli.io.discovery import (
    DATASET_IMAGE_DIRS,
    LAYOUTS,
    Discovery,
    Group,
    ImageFile,
    Problem,
    abbreviate,
    assign_output_names,
    discover,
    read_paths,
)
from cosal_cli.io.files import IMAGE_SUFFIXES, SUPPORTED_FORMATS, sniff, unusable_reason
from cosal_cli.io.outputs import KINDS, SaveSpec, Threshold, derived_name
from cosal_cli.io.writing import atomic_output, write_map

__all__ = [
    "DATASET_IMAGE_DIRS",
    "IMAGE_SUFFIXES",
    "KINDS",
    "LAYOUTS",
    "MAX_IMAGE_PIXELS",
    "SUPPORTED_FORMATS",
    "DecodedImage",
    "Discovery",
    "Group",
    "ImageFile",
    "InputError",
    "Problem",
    "SaveSpec",
    "Threshold",
    "abbreviate",
    "assign_output_names",
    "atomic_output",
    "derived_name",
    "discover",
    "load_grey",
    "load_rgb",
    "read_paths",
    "sniff",
    "unusable_reason",
    "write_map",
]
