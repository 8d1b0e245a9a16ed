"""A run's output folder: where each image's files go, what exists already, and writing encoded files.

Every runner applies the same policy: an output folder inside an input folder is refused, existing
outputs are refused (``error``), kept (``skip``: a resumed run) or replaced (``overwrite``), and every
file is written atomically, so a file at its final name is always a finished one.
"""

from __future__ import annotations

from pathlib import Path

from cosal_cli.errors import UsageError
from cosal_cli.io import Discovery, Group, ImageFile, SaveSpec
from cosal_cli.io.preview import thumbnail_paths
from cosal_cli.io.writing import write_bytes
from cosal_cli.runners.group import EncodedImage

EXISTING_POLICIES = ("error", "skip", "overwrite")
MAPS_ONLY = SaveSpec()  # what a run writes unless told otherwise (--save map)


def output_path(output_dir: Path, group: Group, image: ImageFile) -> Path:
    """Where an image's map goes; the other kinds of ``--save`` go beside it (:mod:`cosal_cli.io.outputs`)."""
    return output_dir / group.name / image.output_name


def check_outputs(discovery: Discovery, output_dir: Path, policy: str, save: SaveSpec = MAPS_ONLY) -> None:
    """Every check of the output folder a run makes before any work (see the two below)."""
    check_output_location(discovery, output_dir)
    check_existing(discovery, output_dir, policy, save)


def pending_groups(discovery: Discovery, output_dir: Path, existing: str, save: SaveSpec) -> list[Group]:
    """The groups with work to do, in input order."""
    return [group for group in discovery.groups if is_pending(group, output_dir, existing, save)]


def check_existing(discovery: Discovery, output_dir: Path, policy: str, save: SaveSpec = MAPS_ONLY) -> None:
    """With the default policy, refuse to run over existing outputs before any work is done."""
    if policy not in EXISTING_POLICIES:
        raise UsageError(f"existing-output policy must be one of {EXISTING_POLICIES}")
    if policy != "error":
        return
    existing = [
        path
        for group in discovery.groups
        for image in group.images
        for path in save.paths(output_path(output_dir, group, image)).values()
        if path.exists()
    ]
    if existing:
        raise UsageError(
            f"{len(existing)} map(s) already exist in {output_dir} (first: {existing[0]}); "
            "pass --skip-existing to resume or --overwrite to replace them"
        )


def check_output_location(discovery: Discovery, output_dir: Path) -> None:
    """Refuse an output folder that would put maps among a group's photos (the next run would read them)."""
    output = _resolved(output_dir)
    for group in discovery.groups:
        folder = _resolved(group.folder)
        maps = _resolved(output_dir / group.name)
        inside = output == folder or folder in output.parents or folder in maps.parents
        # Files given one by one are not listed again by the next run; only maps beside them could clash.
        if maps == folder or (inside and not group.from_files):
            raise UsageError(
                f"--output {output_dir} would write the maps of group {group.name} into its input folder "
                f"{group.folder}, where the next run would read them as images; choose an output folder "
                "outside the input folders"
            )


def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # a link loop: compare it as written
        return path.absolute()


def finished_images(group: Group, output_dir: Path, existing: str, save: SaveSpec) -> set[str]:
    """The output names of the group's images to leave alone: with ``skip``, those whose files all exist."""
    if existing != "skip":
        return set()
    return {image.output_name for image in group.images if finished(save.paths(output_path(output_dir, group, image)))}


def is_pending(group: Group, output_dir: Path, existing: str, save: SaveSpec) -> bool:
    """Whether a group has work: images, and (with ``skip``) at least one without all its files."""
    if not group.images:
        return False
    return existing != "skip" or len(finished_images(group, output_dir, existing, save)) < len(group.images)


def finished(paths: dict[str, Path]) -> bool:
    """An image is done when every kind asked for exists (each was written atomically)."""
    return all(path.exists() for path in paths.values())


def write_image(encoded: EncodedImage, output_dir: Path, group: Group, save: SaveSpec) -> tuple[str, str]:
    """Write one image's encoded files; its status (``written``, ``skipped`` or ``failed``) and the error."""
    if encoded.skipped:
        return "skipped", ""
    try:
        write_encoded(encoded, output_dir, group, save)
    except OSError as exc:
        return "failed", exc.strerror or str(exc)
    return "written", ""


def write_encoded(encoded: EncodedImage, output_dir: Path, group: Group, save: SaveSpec) -> dict[str, Path]:
    """Write one image's encoded files (and thumbnails) atomically; returns the paths of its ``--save`` kinds.
    Raises OSError naming nothing: the caller reports it against the image."""
    paths = save.paths(output_path(output_dir, group, encoded.image))
    for kind, data in encoded.files.items():
        write_bytes(data, paths[kind])
    if encoded.thumbnails:
        places = thumbnail_paths(output_dir, group.name, encoded.image.output_name)
        for kind, data in encoded.thumbnails.items():
            write_bytes(data, places[kind])
    return paths
