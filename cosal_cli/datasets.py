"""Benchmark datasets on disk: find them by name, pair images with masks, check they are complete.

None of the co-saliency benchmarks may be redistributed, so users download them and ``cosal bench``
reads them wherever they are, in any of the layouts the community's tools use:

* canonical (CoSOD3k toolbox and most evaluation code): ``<root>/<Dataset>/Image/<group>/<stem>.jpg``
  with ``<root>/<Dataset>/GroundTruth/<group>/<stem>.png``;
* CoCA's own: ``<root>/CoCA/image/<group>/`` with ``<root>/CoCA/binary/<group>/``;
* GICD / GCoNet: ``<root>/images/<Dataset>/<group>/`` with ``<root>/gts/<Dataset>/<group>/``;
* masks alone (enough to score predictions), e.g. eval-co-sod's ``<root>/gt/<Dataset>/<group>/``.

Names are matched case-insensitively (``iCoseg``/``iCoSeg``, ``Cosal2015``/``CoSal2015``), groups may
contain spaces, and images pair with masks by stem.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cosal_cli.errors import UsageError
from cosal_cli.io import IMAGE_SUFFIXES, Problem, abbreviate, unusable_reason

#: Folder names that hold images or masks, as spelled by the tools in the field (compared casefolded).
IMAGE_DIRS = ("image", "images", "img", "imgs")
MASK_DIRS = ("groundtruth", "gt", "gts", "binary", "mask", "masks")


@dataclass(frozen=True)
class DatasetInfo:
    """A published benchmark: its usual spelling, its size, and where to get it."""

    key: str
    name: str
    groups: int
    images: int
    source: str


KNOWN = {
    info.key: info
    for info in (
        DatasetInfo("icoseg", "iCoseg", 38, 643,
                    "the ICNet README's 'test-datasets-os' (github.com/blanclist/ICNet), or the original "
                    "chenlab.ece.cornell.edu/projects/touch-coseg/CMU_Cornell_iCoseg_dataset.zip"),
        DatasetInfo("msrc", "MSRC", 7, 233,
                    "the CoSOD3k README's download table (github.com/DengPingFan/CoSOD3K) or the ICNet "
                    "README's 'test-datasets-os' (github.com/blanclist/ICNet)"),
        DatasetInfo("cosal2015", "CoSal2015", 50, 2015,
                    "the ICNet README's 'test-datasets-os' (github.com/blanclist/ICNet) or the GCoNet+ "
                    "datasets folder (github.com/ZhengPeng7/GCoNet_plus)"),
        DatasetInfo("coca", "CoCA", 80, 1295, "the CoCA project page, zhaozhang.net/coca.html"),
        DatasetInfo("cosod3k", "CoSOD3k", 160, 3316, "dpfan.net/CoSOD3K (github.com/DengPingFan/CoSOD3K)"),
    )
}


@dataclass(frozen=True)
class Item:
    """One image of a group with its mask (``image`` is None when only masks were given)."""

    group: str
    stem: str
    mask: Path
    image: Path | None = None

    @property
    def key(self) -> str:
        return f"{self.group}/{self.stem}"


@dataclass
class DatasetGroup:
    name: str
    mask_dir: Path
    image_dir: Path | None
    items: list[Item] = field(default_factory=list)


@dataclass
class Dataset:
    name: str
    root: Path  # the folder found for the dataset
    layout: str  # "canonical", "gicd" or "masks-only"
    mask_root: Path
    image_root: Path | None
    info: DatasetInfo | None
    groups: list[DatasetGroup] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)  # images without masks, masks without images
    subset: str | None = None  # set when only part of the dataset is used (a split's held-out part)

    @property
    def items(self) -> list[Item]:
        return [item for group in self.groups for item in group.items]

    def validation(self) -> dict:
        """Group and image counts against the published ones (for known datasets)."""
        found = {"groups": len(self.groups), "images": len(self.items)}
        if self.info is None:
            return {"checked": False, "found": found, "ok": True, "message": ""}
        expected = {"groups": self.info.groups, "images": self.info.images}
        ok = found == expected
        message = "" if ok else (
            f"{self.info.name} has {expected['groups']} groups and {expected['images']} images with masks, "
            f"but {self.root} has {found['groups']} and {found['images']}: scores are not comparable with "
            f"published ones (get the full dataset from {self.info.source})"
        )
        return {"checked": True, "expected": expected, "found": found, "ok": ok, "message": message}


def known(name: str) -> DatasetInfo | None:
    return KNOWN.get(name.casefold())


# ----------------------------------------------------------------------------------------------
# Locating a dataset
# ----------------------------------------------------------------------------------------------


def locate(name: str, data_root: Path | None = None, require_images: bool = True) -> Dataset:
    """Find dataset ``name`` under ``data_root`` (or ``name`` itself as a folder) and pair its files.

    Raises UsageError, saying what was expected, what was found and where the dataset is published,
    when no layout matches.
    """
    if data_root is None:
        name, data_root = _split_layout_path(name)
    info = known(Path(name).name)
    tried: list[str] = []
    for root, layout, image_root, mask_root in _candidates(name, data_root, tried):
        if image_root is None and require_images:
            tried.append(f"{root} (masks but no images; images are needed to run a method)")
            continue
        # canonical: <root>/<Dataset>/GroundTruth; GICD: <root>/gts/<Dataset>
        folder_name = root.resolve().name if mask_root.parent == root else mask_root.name
        dataset = Dataset(
            name=info.name if info else folder_name,
            root=root, layout=layout, mask_root=mask_root, image_root=image_root, info=info,
        )  # fmt: skip
        _pair(dataset, require_images)
        if not dataset.groups:
            tried.append(f"{mask_root} (no group folders with masks)")
            continue
        return dataset
    raise UsageError(_not_found_message(name, data_root, info, tried, require_images))


def _split_layout_path(name: str) -> tuple[str, Path | None]:
    """A dataset's image or mask folder given directly, as (dataset name, root) of its layout.

    ``ROOT/gt/CoCA`` (eval-co-sod, GICD's ``gts``, ``images``) is dataset ``CoCA`` under ``ROOT``;
    ``ROOT/CoCA/GroundTruth`` (or ``binary``, ``Image``) is dataset ``CoCA`` under ``ROOT``. A folder that
    is a dataset folder itself (it holds an image or a mask folder) is left as it is.
    """
    path = Path(name)
    layout_dirs = IMAGE_DIRS + MASK_DIRS
    if not path.is_dir() or _child_of(path, layout_dirs) is not None:
        return name, None
    absolute = path.absolute()
    if absolute.parent.name.casefold() in layout_dirs:
        return absolute.name, absolute.parent.parent
    if absolute.name.casefold() in layout_dirs:
        return absolute.parent.name, absolute.parent.parent
    return name, None


def _candidates(name: str, data_root: Path | None, tried: list[str]):
    """(root, layout, image root, mask root) for every layout that fits, most specific first."""
    folders = []
    if data_root is None:
        folders.append(Path(name))
    else:
        child = _child(data_root, name)
        if child is not None:
            folders.append(child)
        if data_root.resolve().name.casefold() == Path(name).name.casefold():
            folders.append(data_root)  # --data-root may be the dataset folder itself
    for folder in folders:
        if not folder.is_dir():
            tried.append(f"{folder} (not a folder)")
            continue
        images, masks = _child_of(folder, IMAGE_DIRS), _child_of(folder, MASK_DIRS)
        if masks is not None:
            yield folder, "canonical" if images is not None else "masks-only", images, masks
        else:
            tried.append(f"{folder} (no {'/'.join(MASK_DIRS)} folder)")
    if data_root is not None and data_root.is_dir():
        # GICD / GCoNet: <root>/images/<name>/ and <root>/gts/<name>/
        images, masks = _child_of(data_root, IMAGE_DIRS), _child_of(data_root, MASK_DIRS)
        mask_root = _child(masks, name) if masks is not None else None
        image_root = _child(images, name) if images is not None else None
        if mask_root is not None:
            yield data_root, "gicd" if image_root is not None else "masks-only", image_root, mask_root


def _child(folder: Path | None, name: str) -> Path | None:
    """The sub-folder of ``folder`` called ``name``, ignoring case (an exact match wins)."""
    if folder is None or not folder.is_dir():
        return None
    exact = folder / name
    if exact.is_dir():
        return exact
    wanted = name.casefold()
    return next((p for p in sorted(folder.iterdir()) if p.is_dir() and p.name.casefold() == wanted), None)


def _child_of(folder: Path, names: tuple[str, ...]) -> Path | None:
    for name in names:
        found = _child(folder, name)
        if found is not None:
            return found
    return None


def _not_found_message(name, data_root, info, tried, require_images) -> str:
    label = info.name if info else name
    where = data_root if data_root is not None else Path(name)
    if data_root is not None and _child(data_root, name) is not None:
        where = _child(data_root, name)  # the dataset's folder exists: show what it holds instead
    lines = [f"cannot find dataset {label!r} {'under ' + str(data_root) if data_root else 'at ' + name}."]
    lines.append(
        "Expected one of: <root>/<Dataset>/Image/<group>/<stem>.jpg with"
        " <root>/<Dataset>/GroundTruth/<group>/<stem>.png"
        " (canonical); <root>/CoCA/image/ with <root>/CoCA/binary/ (CoCA); <root>/images/<Dataset>/<group>/ with"
        " <root>/gts/<Dataset>/<group>/ (GICD/GCoNet)"
        + ("" if require_images else "; or the mask folders alone (enough for --pred)")
        + "."
    )
    if tried:
        lines.append("Looked at: " + "; ".join(dict.fromkeys(tried)) + ".")
    if where.is_dir():
        entries = sorted(p.name + ("/" if p.is_dir() else "") for p in where.iterdir() if not p.name.startswith("."))
        lines.append(f"Found in {where}: {abbreviate(entries, 12) or 'nothing'}.")
    if info is not None:
        lines.append(f"{info.name} ({info.groups} groups, {info.images} images) is published at {info.source}.")
    elif data_root is not None:
        lines.append(f"Known datasets: {', '.join(i.name for i in KNOWN.values())}; or pass a dataset folder.")
    return " ".join(lines)


# ----------------------------------------------------------------------------------------------
# Pairing images and masks
# ----------------------------------------------------------------------------------------------


def _pair(dataset: Dataset, require_images: bool = True) -> None:
    """Fill the dataset's groups: masks by stem, each with its image when there are images.

    Images without masks are always reported (they cannot be scored). Masks without images are
    reported and left out when a method must run on the images; scoring given predictions needs
    only the masks, so then they stay.
    """
    image_groups = _listed(subfolders, dataset.image_root, dataset) if dataset.image_root is not None else {}
    for key, mask_dir in _listed(subfolders, dataset.mask_root, dataset).items():
        masks = _listed(files_by_stem, mask_dir, dataset)
        if not masks:
            continue
        image_dir = image_groups.pop(key, None)
        group = DatasetGroup(mask_dir.name, mask_dir, image_dir)
        images = _listed(files_by_stem, image_dir, dataset) if image_dir is not None else None
        if dataset.image_root is not None and image_dir is None and require_images:
            dataset.problems.append(Problem(mask_dir, "masks without an image folder of the same name", group.name))
            continue
        for stem_key, mask in sorted(masks.items()):
            image = images.pop(stem_key, None) if images is not None else None
            if image is None and image_dir is not None and require_images:
                dataset.problems.append(Problem(mask, f"mask without an image {image_dir}/{mask.stem}.*", group.name))
                continue
            group.items.append(Item(group.name, mask.stem, mask, image))
        for image in (images or {}).values():
            dataset.problems.append(
                Problem(image, f"image without a mask (expected {mask_dir}/{image.stem}.png)", group.name)
            )
        if group.items:
            dataset.groups.append(group)
    for image_dir in image_groups.values():
        dataset.problems.append(Problem(image_dir, f"image group without masks in {dataset.mask_root}", image_dir.name))


def _listed(lister, folder: Path, dataset: Dataset) -> dict[str, Path]:
    """``lister(folder)``, or nothing and a problem naming the folder when it cannot be listed."""
    try:
        return lister(folder)
    except OSError as exc:
        dataset.problems.append(Problem(folder, "cannot list this folder: " + unusable_reason(folder, exc)))
        return {}


def subfolders(folder: Path) -> dict[str, Path]:
    """Group folders by casefolded name (names may contain spaces; hidden folders are skipped)."""
    return {
        p.name.casefold(): p for p in sorted(folder.iterdir()) if p.is_dir() and not p.name.startswith(".")
    }


def files_by_stem(folder: Path) -> dict[str, Path]:
    """Image files of a folder by casefolded stem; with two files of one stem, PNG wins, then the name."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir(), key=lambda p: (p.suffix.lower() != ".png", p.name)):
        if path.name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue
        found.setdefault(path.stem.casefold(), path)
    return found
