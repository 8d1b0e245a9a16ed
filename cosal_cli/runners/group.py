"""Processing one group, as a pure function: a decoded group in, its outcome out.

:func:`process_group` touches no shared state and writes nothing: it returns the group's maps (still
low-resolution, brought to size one at a time when written), its failures, notices and timings. The
local runner calls it in its own process; a cluster runner calls the same function in its workers.
Every way a group can go wrong ends up in the outcome, never as an exception: a group's inputs or
its size (an InputError, running out of memory) fail its images; anything else is cosal's own bug,
reported as an internal error (exit 5) with its traceback.
"""

from __future__ import annotations

import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from cosal_cli.errors import InputError, first_line
from cosal_cli.inference import DecodedGroup, GroupMaps, infer, sources_of
from cosal_cli.io import Group, Problem
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


def internal_error_problems(group: Group, exc: BaseException, paths: list) -> list[Problem]:
    """One failure per path for an unexpected error in ``group``, carrying the traceback for --debug."""
    details = "".join(traceback.format_exception(exc))
    message = (
        f"internal error in group {group.name} ({type(exc).__name__}: {first_line(exc)}); the other groups "
        "are processed: rerun with --debug for the traceback and report it"
    )
    return [Problem(path, message, group.name, traceback=details) for path in paths or [group.folder]]
