"""Typed options per method: what a user may set beyond the method's name, declared once.

Each method's card names an options dataclass. Its fields made with :func:`option` carry their
command-line flag and help text, so the command line builds its ``--help`` and its "does not apply
to method X" errors from these declarations, and the Python API takes the same names as keywords
(``cosal_cli.load("icnet", sism="gmr")``). This module imports no torch, so ``cosal --help`` stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from cosal_cli.errors import UsageError


def option(flag: str, help: str) -> Any:
    """A user-settable option: ``None`` means the method's default."""
    return field(default=None, metadata={"flag": flag, "help": help})


def check_choice(flag: str, value: str | None, allowed: tuple[str, ...]) -> None:
    """A usage error unless ``value`` (of ``flag``) is None (the default) or one of ``allowed``."""
    if value is not None and value not in allowed:
        choices = f"{', '.join(allowed[:-1])} or {allowed[-1]}"
        raise UsageError(f"{flag} must be {choices}, not {value!r}")


TTA_CHOICES = ("none", "flip")


@dataclass(frozen=True)
class MethodOptions:
    """Options every method takes; a method with its own options subclasses this (and calls
    ``super().__post_init__()`` from its own check)."""

    offline: bool = False  # not a user option: set by the loader, for weights a method fetches itself
    tta: str | None = option("--tta", "none (default) or flip: also run the group mirrored left to right and "
                             "average the two maps, mirrored back (test-time augmentation: twice the compute; "
                             "held-out S +0.003 to +0.010, see the README)")  # fmt: skip

    def __post_init__(self) -> None:
        check_choice("--tta", self.tta, TTA_CHOICES)
        if self.tta == "none":  # the default said out loud: the same maps, so the same bench label
            object.__setattr__(self, "tta", None)

    @property
    def flip(self) -> bool:
        """Whether the inference path averages each group's maps with those of the mirrored group."""
        return self.tta == "flip"

    @classmethod
    def declared(cls) -> dict[str, str]:
        """``{field name: flag}`` of the user-settable options."""
        return {item.name: item.metadata["flag"] for item in fields(cls) if "flag" in item.metadata}

    @classmethod
    def help_of(cls, name: str) -> str:
        return next(item.metadata["help"] for item in fields(cls) if item.name == name)

    def given(self) -> list[str]:
        """The flags of the options set to something other than the default."""
        return [flag for name, flag in self.declared().items() if getattr(self, name) is not None]


def tta_of(options: MethodOptions | None) -> str:
    """The test-time augmentation a run with ``options`` uses, by name (for summaries)."""
    return (options.tta if options is not None else None) or "none"


@dataclass(frozen=True)
class SismChoice:
    """``--sism NAME`` or ``--sism-dir DIR`` (at most one of them); both None: the method's default."""

    generator: str | None = None
    directory: Path | None = None

    def __post_init__(self) -> None:
        # Whether ``generator`` names a SISM generator is the registry's to say: the loader checks it.
        if self.generator is not None and self.directory is not None:
            raise UsageError("--sism and --sism-dir exclude each other: the SISMs come from one source")
        if self.directory is not None and not Path(self.directory).is_dir():
            raise UsageError(f"--sism-dir {self.directory}: no such folder (expected <DIR>/<group>/<stem>.png)")

    @property
    def given(self) -> bool:
        return self.generator is not None or self.directory is not None


@dataclass(frozen=True)
class SismOptions(MethodOptions):
    """Methods that consume single-image saliency maps (ICNet)."""

    sism: str | None = option("--sism", "the single-image saliency generator, sod or gmr (default: the one the "
                              "weights were trained with); SISMs are cached per image")  # fmt: skip
    sism_dir: Path | None = option("--sism-dir", "precomputed SISMs, DIR/<group>/<stem>.png, from any detector")
    subgroup: int | None = option("--subgroup", "run each group as sub-groups of N images (in name order). "
                                  "CHANGES the maps: the consensus is per sub-group; "
                                  "default: the whole group")  # fmt: skip

    def __post_init__(self) -> None:
        super().__post_init__()
        self.sism_choice  # noqa: B018  (validates --sism / --sism-dir now, not when the method runs)
        if self.subgroup is not None and self.subgroup < 1:
            raise UsageError(f"--subgroup must be at least 1, not {self.subgroup}")

    @property
    def sism_choice(self) -> SismChoice:
        return SismChoice(self.sism, None if self.sism_dir is None else Path(self.sism_dir))


OUTSIDER_HANDLING = ("dim", "keep")


@dataclass(frozen=True)
class OutsiderOptions(MethodOptions):
    """Methods that dim images whose ImageNet classes disagree with the group's (:mod:`cosal_cli.models.membership`)."""

    outsiders: str | None = option("--outsiders", "dim (default) or keep the maps of images whose ImageNet "
                                   "classes disagree with the group's consensus; keep gives every image "
                                   "its map as if it belonged")  # fmt: skip

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("--outsiders", self.outsiders, OUTSIDER_HANDLING)

    @property
    def dim_outsiders(self) -> bool:
        return self.outsiders != "keep"


@dataclass(frozen=True)
class SismOutsiderOptions(SismOptions, OutsiderOptions):
    """ICNet with cosal's weights: its SISM options and outsider dimming (both parents' checks run: SismOptions'
    ``super().__post_init__()`` reaches OutsiderOptions', then MethodOptions')."""


CSMG_BRANCHES = ("both", "pool3", "pool5")
CSMG_SCALES = ("multi", "single")


@dataclass(frozen=True)
class CsmgOptions(MethodOptions):
    """CSMG's ablations (paper, section 4.4), each a switch that ``cosal bench`` puts in the label."""

    smoothing: str | None = option("--smoothing", "on (default) or off: off is the mask-guided FCN alone, "
                                   "without stage 3's multi-scale label smoothing")  # fmt: skip
    branches: str | None = option("--branches", "both (default), pool3 or pool5: which masked branches feed the "
                                  "FCN; each choice has its own trained head")  # fmt: skip
    scales: str | None = option("--scales", "multi (default) or single: the SLIC scales of the label smoothing")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("--smoothing", self.smoothing, ("on", "off"))
        check_choice("--branches", self.branches, CSMG_BRANCHES)
        check_choice("--scales", self.scales, CSMG_SCALES)

    @property
    def smooth(self) -> bool:
        return self.smoothing != "off"

    @property
    def branch_choice(self) -> str:
        return self.branches or "both"

    @property
    def multi_scale(self) -> bool:
        return self.scales != "single"


GS_CO_CATEGORY = ("on", "off")
GS_POOLINGS = ("hlrbp", "average")


@dataclass(frozen=True)
class GsOptions(MethodOptions):
    """GS's ablations (paper, Table 1), each a switch to the head trained that way; ``cosal bench`` labels them."""

    co_category: str | None = option("--co-category", "on (default) or off: off is the head trained without the "
                                     "co-category loss (the paper's lambda = 0)")  # fmt: skip
    pooling: str | None = option("--pooling", "hlrbp (default) or average: the head with FC + average pooling "
                                 "in place of H-LRBP (the paper's baseline, Figure 2b)")  # fmt: skip

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("--co-category", self.co_category, GS_CO_CATEGORY)
        check_choice("--pooling", self.pooling, GS_POOLINGS)
        if self.co_category == "off" and self.pooling == "average":
            raise UsageError("--co-category off --pooling average: no head was trained with both ablations; "
                             "use one of them")  # fmt: skip

    @property
    def head_choice(self) -> tuple[str, str]:
        return self.co_category or "on", self.pooling or "hlrbp"
