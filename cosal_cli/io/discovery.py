"""Finding image groups on disk.

Nothing here raises for anything on disk: problems come back as :class:`Problem` values naming the
file, so the runner can report them and carry on with the rest of the batch.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TextIO

from cosal_cli.errors import UsageError
from cosal_cli.io.files import (
    SUPPORTED_FORMATS,
    _kind_of,
    _looks_like_image,
    _read_head,
    _status,
    _unsupported_message,
    unusable_reason,
)
from cosal_cli.io.outputs import KINDS, derived_name

#: Folder names (case-insensitive) that mark a dataset root in the standard layout (Image/<group>/).
DATASET_IMAGE_DIRS = {"image"}


@dataclass(frozen=True)
class Problem:
    """An input that could not be used, with a one-line reason that names the fix."""

    path: Path
    message: str
    group: str | None = None
    traceback: str | None = field(default=None, compare=False, repr=False)  # only for cosal's own errors

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass(frozen=True)
class ImageFile:
    path: Path
    output_name: str  # file name of the map, "<stem>.png" unless two inputs share a stem


@dataclass
class Group:
    name: str  # also the output sub-folder
    folder: Path
    images: list[ImageFile] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    from_files: bool = False  # image files given one by one (not a folder): ``folder`` is only their common parent


@dataclass
class Discovery:
    groups: list[Group] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)  # inputs that are not groups at all
    notices: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------
# Listing folders
# ----------------------------------------------------------------------------------------------


@dataclass
class _Listing:
    """What a folder holds, sorted by name; nothing in it can raise later."""

    images: list[Path] = field(default_factory=list)  # regular files whose content is a supported image
    problems: list[Problem] = field(default_factory=list)  # entries that look like images but cannot be used
    subfolders: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # hidden, non-image and other entries
    unreachable: list[Problem] = field(default_factory=list)  # other entries whose target cannot be seen

    @property
    def image_like(self) -> int:
        return len(self.images) + len(self.problems)


def _list_folder(folder: Path, group: str) -> _Listing | Problem:
    """Sort a folder's entries into images, unusable image-like files, sub-folders and the rest."""
    try:
        entries = sorted(folder.iterdir(), key=lambda p: p.name)
    except OSError as exc:
        return Problem(folder, "cannot list this folder: " + unusable_reason(folder, exc), group)
    listing = _Listing()
    for entry in entries:
        if entry.name.startswith("."):
            listing.skipped.append(entry.name)
            continue
        status, reason = _status(entry)
        if status is None:  # a broken link: a lost image in a group, or a lost group in a folder of groups
            problem = Problem(entry, reason, group)
            (listing.problems if _looks_like_image(entry) else listing.unreachable).append(problem)
        elif stat.S_ISDIR(status.st_mode):
            listing.subfolders.append(entry)
        elif not stat.S_ISREG(status.st_mode):  # FIFO, socket, device: never opened
            if _looks_like_image(entry):
                what = "a FIFO" if stat.S_ISFIFO(status.st_mode) else "a device or socket"
                listing.problems.append(Problem(entry, f"not a regular file ({what}); cosal reads image files", group))
            else:
                listing.skipped.append(entry.name)
        else:
            _sort_file(entry, status, listing, group)
    return listing


def _sort_file(entry: Path, status: os.stat_result, listing: _Listing, group: str) -> None:
    try:
        kind = _kind_of(_read_head(entry))
    except OSError as exc:
        listing.problems.append(Problem(entry, unusable_reason(entry, exc), group))
        return
    if kind in SUPPORTED_FORMATS:
        listing.images.append(entry)
    elif kind is not None:
        listing.problems.append(Problem(entry, _unsupported_message(kind), group))
    elif _looks_like_image(entry):
        message = "empty file (0 bytes)" if status.st_size == 0 else (
            "not an image: the content is not JPEG, PNG, BMP, WebP or TIFF (corrupt or misnamed)"
        )
        listing.problems.append(Problem(entry, message, group))
    else:
        listing.skipped.append(entry.name)


def _holds_images(folder: Path) -> bool:
    """Whether a sub-folder is a group or a dataset root: images directly inside, or an ``Image`` folder."""
    if folder.name.lower() in DATASET_IMAGE_DIRS:
        return True
    listing = _list_folder(folder, folder.name)
    return isinstance(listing, _Listing) and listing.image_like > 0


# ----------------------------------------------------------------------------------------------
# Discovery
# ----------------------------------------------------------------------------------------------

#: How a folder given on the command line is read: ``auto`` tells a group from a folder of groups by
#: whether it holds images, and refuses to guess when it holds both images and group folders.
LAYOUTS = ("auto", "group", "groups")


def read_paths(arguments: Iterable[str], stdin: TextIO | None = None) -> list[str]:
    """Expand ``-`` into the group paths read from stdin, one per line (blank lines ignored).

    A ``-`` that reads no path at all is a usage error: an empty pipe is almost always a mistake
    upstream (a ``find`` that matched nothing), and exiting 0 would hide it.
    """
    stdin = stdin if stdin is not None else sys.stdin
    paths: list[str] = []
    for argument in arguments:
        if argument == "-":
            lines = [line.rstrip("\r\n") for line in stdin if line.strip()]
            if not lines:
                raise UsageError("'-' read no paths from standard input; pipe group folders in, one per line")
            paths += lines
        else:
            paths.append(argument)
    return paths


def discover(paths: Iterable[str | Path], layout: str = "auto", group_name: str | None = None) -> Discovery:
    """Turn command-line paths into groups; never raises for anything on disk.

    A folder that holds images is one group. A folder that holds no images directly is a folder of
    groups: each sub-folder is a group (an empty one is reported). A dataset root in the standard
    layout (``Image/<group>/`` next to ``GroundTruth/``) is read through its ``Image`` folder. A
    folder holding both images and group folders is reported, naming ``--layout group|groups``,
    unless ``layout`` says which it is. A folder given twice is read once.

    Files given directly (``cosal detect a.jpg b.jpg``) form one more group, named ``group_name`` or
    after their common folder; a single file is a group of one, with a notice.
    """
    if layout not in LAYOUTS:
        raise UsageError(f"--layout must be one of {', '.join(LAYOUTS)}, not {layout!r}")
    found, files = Discovery(), []
    for raw in paths:
        path = Path(raw)
        status, reason = _status(path)
        if status is None:
            found.problems.append(Problem(path, reason))
        elif stat.S_ISDIR(status.st_mode):
            found.groups += _read_folder(path, layout, found)
        else:
            files.append(path)
    if files:
        found.groups.append(_group_of_files(files, group_name))
    elif group_name is not None:
        raise UsageError("--group names the group of image files given one by one, and no file was given")
    _drop_repeated_folders(found)
    _deduplicate_group_names(found)
    return found


def _read_folder(folder: Path, layout: str, found: Discovery) -> list[Group]:
    listing = _list_folder(folder, _group_name(folder))
    if isinstance(listing, Problem):
        found.problems.append(listing)
        return []
    if layout == "groups" or (layout == "auto" and not listing.image_like):
        if listing.image_like:
            names = [p.name for p in listing.images] + [p.path.name for p in listing.problems]
            found.notices.append(
                f"{folder}: --layout groups: skipped {len(names)} loose image(s) beside the group folders: "
                f"{abbreviate(names)}"
            )
        found.problems += [replace(problem, group=None) for problem in listing.unreachable]
        return _read_folder_of_groups(folder, listing.subfolders, found)
    if layout == "auto":
        group_folders = [sub for sub in listing.subfolders if _holds_images(sub)]
        if group_folders:
            found.problems.append(Problem(folder, _mixed_folder_message(listing.image_like, group_folders)))
            return []
    if not listing.image_like:
        found.problems.append(Problem(folder, "no images in this folder (--layout group)"))
        return []
    return [_group_from(folder, listing)]


def _group_of_files(files: list[Path], name: str | None) -> Group:
    """The files given one by one, as one group; a file given twice (or through a link) is read once."""
    unique: dict[tuple[int, int] | Path, Path] = {}
    for path in files:
        status, _ = _status(path)
        unique.setdefault((status.st_dev, status.st_ino) if status else path, path)
    parents = {os.path.abspath(path.parent) for path in unique.values()}
    folder = Path(os.path.commonpath(sorted(parents)))
    listing = _Listing()
    for path in unique.values():
        status, reason = _status(path)
        if status is None or not stat.S_ISREG(status.st_mode):
            listing.problems.append(Problem(path, reason or "not a regular file; cosal reads image files"))
            continue
        _sort_file(path, status, listing, name or "")
        if listing.skipped:  # given by name, so not skipped quietly: it is not an image
            listing.problems.append(Problem(path, "not an image (JPEG, PNG, BMP, WebP or TIFF)"))
            listing.skipped.clear()
    group = _group_from(folder, listing)
    group.from_files = True
    if name is not None or not group.name:  # files with no common folder but the root: "files"
        group.name = name or "files"
    group.problems = [replace(problem, group=group.name) for problem in group.problems]
    if len(unique) < len(files):
        group.notices.append(f"{group.name}: {len(files) - len(unique)} file(s) given more than once, read once")
    if len(group.images) == 1:
        group.notices.append(f"{group.name}: a group of one image: its co-saliency map is its saliency map "
                             "(there is no other image to share an object with)")  # fmt: skip
    return group


def _mixed_folder_message(images: int, group_folders: list[Path]) -> str:
    names = abbreviate([sub.name + "/" for sub in group_folders], 3)
    return (
        f"holds {images} image(s) and {len(group_folders)} sub-folder(s) with images ({names}), so it is not "
        "clear what the groups are; pass --layout group (this folder is one group, sub-folders ignored) or "
        "--layout groups (each sub-folder is a group, the loose images ignored)"
    )


def _read_folder_of_groups(folder: Path, subfolders: list[Path], found: Discovery) -> list[Group]:
    image_root = next((p for p in subfolders if p.name.lower() in DATASET_IMAGE_DIRS), None)
    if image_root is not None:
        found.notices.append(f"{folder}: dataset layout, reading the groups in {image_root}")
        listing = _list_folder(image_root, image_root.name)
        if isinstance(listing, Problem):
            found.problems.append(listing)
            return []
        subfolders = listing.subfolders
        found.problems += [replace(problem, group=None) for problem in listing.unreachable]
    if not subfolders:
        found.problems.append(Problem(folder, "empty: no images and no group folders"))
    groups = []
    for subfolder in subfolders:
        name = _group_name(subfolder)
        listing = _list_folder(subfolder, name)
        if isinstance(listing, Problem):
            found.problems.append(listing)
            continue
        if not listing.image_like:
            found.problems.append(Problem(subfolder, "empty group: no images in this folder", name))
            continue
        groups.append(_group_from(subfolder, listing))
    return groups


def _group_name(folder: Path) -> str:
    try:
        return folder.resolve().name or folder.absolute().name
    except (OSError, RuntimeError):  # a link loop on the way (Python < 3.13 raises RuntimeError)
        return folder.absolute().name


def _group_from(folder: Path, listing: _Listing) -> Group:
    group = Group(name=_group_name(folder), folder=folder, problems=listing.problems)
    group.images, collisions = assign_output_names(listing.images)
    group.notices = [f"{group.name}: {text}" for text in collisions]
    skipped = listing.skipped + [sub.name + "/" for sub in listing.subfolders]
    skipped += [f"{problem.path.name} (a broken link or unreadable)" for problem in listing.unreachable]
    if skipped:
        group.notices.append(
            f"{group.name}: skipped {len(skipped)} hidden, non-image or folder entries: {abbreviate(sorted(skipped))}"
        )
    return group


def _drop_repeated_folders(found: Discovery) -> None:
    """A folder reached twice (given twice, or also through its parent or a link) is one group."""
    seen: dict[tuple[int, int], Group] = {}
    kept = []
    for group in found.groups:
        status, _ = _status(group.folder)
        key = (status.st_dev, status.st_ino) if status and not group.from_files else (0, id(group))
        if key in seen:
            found.notices.append(f"{group.folder}: the same folder as {seen[key].folder}, given twice; read once")
            continue
        seen[key] = group
        kept.append(group)
    found.groups = kept


def abbreviate(names: list[str], limit: int = 5) -> str:
    """``a, b, c and 7 more``: the first ``limit`` names of a list for a one-line message."""
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def assign_output_names(paths: list[Path]) -> tuple[list[ImageFile], list[str]]:
    """Map names ``<stem>.png``; inputs sharing a stem keep them apart deterministically.

    The names of the other output kinds (``<stem>.mask.png`` ...) are kept apart too: an input
    ``a.mask.jpg`` never gets a map name that is the mask of an input ``a.jpg``.

    In name order, the first input of a stem gets ``<stem>.png`` and the others ``<file name>.png``
    (``a.jpg`` -> ``a.png``, ``a.png`` -> ``a.png.png``). Names are compared case-insensitively so
    the result is the same on case-insensitive file systems.
    """
    taken: set[str] = set()
    files, notices = [], []
    by_stem: dict[str, list[Path]] = {}
    for path in sorted(paths, key=lambda p: p.name):
        by_stem.setdefault(path.stem.casefold(), []).append(path)
    for path in sorted(paths, key=lambda p: p.name):
        for candidate in _name_candidates(path):
            # a name is free when neither it nor its mask, cut-out or overlay name (--save) is taken
            names = {derived_name(candidate, kind).casefold() for kind in KINDS}
            if not names & taken:
                taken |= names
                files.append(ImageFile(path, candidate))
                break
    # Announce every input involved in a clash: those sharing a stem, and any pushed off its natural
    # name by another input's fallback name (a.png -> a.png.png takes the name of an input a.png.png).
    involved = [f for f in files if len(by_stem[f.path.stem.casefold()]) > 1 or f.output_name != f"{f.path.stem}.png"]
    if involved:
        mapping = ", ".join(f"{f.path.name} -> {f.output_name}" for f in involved)
        notices.append(f"inputs share the stem of another input, so maps are named {mapping}")
    return files, notices


def _name_candidates(path: Path) -> Iterator[str]:
    yield f"{path.stem}.png"
    yield f"{path.name}.png"
    counter = 2
    while True:
        yield f"{path.name}~{counter}.png"
        counter += 1


def _deduplicate_group_names(found: Discovery) -> None:
    seen: set[str] = set()
    for group in found.groups:
        name, counter = group.name, 2
        while name.casefold() in seen:
            name, counter = f"{group.name}~{counter}", counter + 1
        if name != group.name:
            found.notices.append(f"{group.folder}: another group is also named {group.name!r}; its maps go to {name}/")
            group.name = name
        seen.add(name.casefold())
