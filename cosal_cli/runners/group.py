"""Processing one group, as pure functions: a decoded group in, its outcome and encoded files out.

:func:`process_group` touches no shared state and writes nothing: it returns the group's maps (still
low-resolution, brought to size one at a time when written), its failures, notices and timings.
:func:`encode_outputs` then brings each map to size, refines it and encodes the files ``--save`` and
``--preview`` ask for into bytes, one image at a time. Writing those bytes is the runner's job: the
local runner writes them behind the next group's computation; a cluster runner's workers send them to
the driver, which writes them.
Every way a group can go wrong ends up in the outcome, never as an exception: a group's inputs or
its size (an InputError, running out of memory) fail its images; anything else is cosal's own bug,
reported as an internal error (exit 5) with its traceback.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field

import torch

from cosal_cli.errors import InputError, first_line
from cosal_cli.inference import DecodedGroup, GroupMaps, infer, sources_of
from cosal_cli.io import Group, ImageFile, Problem, SaveSpec
from cosal_cli.io.preview import encode_thumbnails
from cosal_cli.methods.base import Method
from cosal_cli.refine import Refiner


@dataclass
class GroupOutcome:
    group: Group
    decoded: DecodedGroup
    maps: GroupMaps | None = None  # None when the group could not be predicted
    failures: list[Problem] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    internal_error: bool = False


def process_group(method: Method, refiners: Sequence[Refiner], group: Group, decoded: DecodedGroup) -> GroupOutcome:
    """Predict one decoded group; the outcome says what happened to each of its images."""
    outcome = GroupOutcome(group, decoded, notices=list(decoded.notes), failures=list(decoded.problems),
                           timings={"decode_s": decoded.seconds})  # fmt: skip
    if decoded.pixels is None:
        return outcome
    try:
        outcome.maps = infer(method, decoded, sources_of(group, decoded.images), refiners)
        outcome.timings.update(outcome.maps.seconds)
        outcome.notices += [f"{group.name}: {note}" for note in outcome.maps.notices]
    except (InputError, torch.OutOfMemoryError) as exc:  # the group's inputs or its size, not a bug
        hint = "; lower --batch-size (or use --subgroup where the method takes it)" if isinstance(
            exc, torch.OutOfMemoryError) else ""  # fmt: skip
        message = f"{method.name} failed on group {group.name}: {first_line(exc)}{hint}"
        outcome.failures += [Problem(image.path, message, group.name) for image in decoded.images]
    except Exception as exc:  # a bug in cosal or a library, never the input's fault: exit 5
        outcome.failures += internal_error_problems(group, exc, [image.path for image in decoded.images])
        outcome.internal_error = True
    return outcome


@dataclass
class EncodedImage:
    """One image's files, encoded: ``files`` maps each ``--save`` kind to its bytes, ``thumbnails`` each
    preview kind (empty without ``--preview``). A skipped image (its files all exist) has neither."""

    image: ImageFile
    files: dict[str, bytes] = field(default_factory=dict)
    thumbnails: dict[str, bytes] = field(default_factory=dict)
    skipped: bool = False


def keeps_photos(refiners: Sequence[Refiner], save: SaveSpec, preview: bool) -> bool:
    """Whether a group's full-size pixels must be kept after decoding: for refiners, cut-outs, overlays
    and the preview's thumbnails."""
    return bool(refiners) or save.needs_photo or preview


def encode_outputs(outcome: GroupOutcome, save: SaveSpec, preview: bool = False, skip: Collection[str] = (),
                   pool: Executor | None = None, stopped: Callable[[], bool] = lambda: False,
                   ) -> Iterator[EncodedImage]:  # fmt: skip
    """The encoded files of each image of a predicted group, in order (see :func:`encode_image`).

    With ``pool``, images are encoded in its threads (torch, Pillow and zlib release the GIL). Once
    ``stopped()`` is true no further image is begun, and the iteration ends after those already begun.
    """

    def one(index: int) -> EncodedImage | None:
        return None if stopped() else encode_image(outcome, index, save, preview, skip)

    indices = range(len(outcome.decoded.images))
    for encoded in pool.map(one, indices) if pool is not None else map(one, indices):
        if encoded is None:  # stopped: the images after this one were not begun either (FIFO)
            return
        yield encoded


def encode_image(outcome: GroupOutcome, index: int, save: SaveSpec, preview: bool = False,
                 skip: Collection[str] = ()) -> EncodedImage:  # fmt: skip
    """Image ``index``'s map brought to size and refined, and its files encoded; an image whose output
    name is in ``skip`` is not computed. Errors are cosal's own (the inputs were decoded): they propagate."""
    image = outcome.decoded.images[index]
    if image.output_name in skip:
        return EncodedImage(image, skipped=True)
    photo = outcome.decoded.originals[index] if save.needs_photo or preview else None
    values = outcome.maps.eight_bit(index)
    encoded = EncodedImage(image, save.encode(values, photo))
    if preview:
        encoded.thumbnails = encode_thumbnails(photo, values)
    return encoded


def internal_error_problems(group: Group, exc: BaseException, paths: list) -> list[Problem]:
    """One failure per path for an unexpected error in ``group``, carrying the traceback for --debug."""
    details = "".join(traceback.format_exception(exc))
    message = (
        f"internal error in group {group.name} ({type(exc).__name__}: {first_line(exc)}); the other groups "
        "are processed: rerun with --debug for the traceback and report it"
    )
    return [Problem(path, message, group.name, traceback=details) for path in paths or [group.folder]]
