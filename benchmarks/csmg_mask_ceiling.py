"""How far CSMG's stage 1 limits it: csmg with its own ADMM masks, with ground-truth masks in their place,
and with no guidance at all, beside ``sod``, on the held-out split and its composites.

    python benchmarks/csmg_mask_ceiling.py --data ../shared/data --split training/splits/shared-v2.yaml \\
        --composites eval/composites [--smoothing off,on] [--threads 2] [--json ceiling.json]

Stage 1 (the ADMM masks, which gate both of the FCN's branches) is swapped through
``MaskGuidedFcn.stage1`` for:

* ``admm``: the shipped stage 1 (the maps ``cosal detect -m csmg`` writes);
* ``ground-truth``: each image's own mask, resized to the network's input as the image is and averaged
  over relu5_3's 16 x 16 pixel cells. That is the best mask stage 1 could give at its resolution: an
  oracle no method has, so its row is a ceiling for any better stage 1 under the shipped head;
* ``none``: all-ones masks, the FCN without guidance (what the head makes of the image alone).

Everything else is the method's own inference path (the shipped head, stage 3 when ``--smoothing on``,
the maps resized to each image's size), scored as ``heldout_report.py`` scores (pysodmetrics, per image).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from heldout_report import COLUMNS, folder_groups, plain_groups, score
from PIL import Image

import cosal_cli
from cosal_cli import methods
from cosal_cli.api import Detector
from cosal_cli.io import load_grey
from cosal_cli.methods.loader import load_method

STAGE_ONE = ("admm", "ground-truth", "none")


def ground_truth_masks(masks: Sequence[np.ndarray], size: int, grid: tuple[int, int]) -> torch.Tensor:
    """(k, h, w) masks in [0, 1] on relu5_3's ``grid``: each (H, W) uint8 mask resized to the network's
    ``size`` x ``size`` input (bilinear, as its image is) and averaged over the grid's cells."""
    resized = [np.asarray(Image.fromarray(mask).resize((size, size), Image.BILINEAR), np.float32) for mask in masks]
    return F.adaptive_avg_pool2d(torch.from_numpy(np.stack(resized) / 255.0), grid)


class SwappedStageOne:
    """csmg with stage 1 replaced by ``stage_one``, predicting through :meth:`cosal_cli.api.Detector.predict`."""

    def __init__(self, stage_one: str, masks_of: dict[Path, Path], smoothing: str = "on"):
        if stage_one not in STAGE_ONE:
            raise ValueError(f"stage 1 is one of {STAGE_ONE}, not {stage_one!r}")
        options = methods.options_for("csmg", {"smoothing": smoothing})
        self.method = load_method("csmg", "cpu", offline=True, options=options)
        self.stage_one = stage_one
        self.masks_of = masks_of  # image path -> its ground-truth mask
        self.admm = self.method.network.stage1
        self.detector = Detector(self.method, (), {})  # the API's path: decoding, inference, resizing

    def predict(self, images: Sequence[Path], name: str = "group") -> list[np.ndarray]:
        self.method.network.stage1 = self._stage_one_for(images)
        return self.detector.predict(images, name)

    def _stage_one_for(self, images: Sequence[Path]):
        if self.stage_one == "admm":
            return self.admm
        masks = [load_grey(self.masks_of[Path(image)]) for image in images] if self.stage_one == "ground-truth" else []

        def swapped(relu5_3: torch.Tensor) -> torch.Tensor:
            if len(relu5_3) != len(images):  # the whole group at once, as predict_group asks for it
                raise ValueError(f"stage 1 was asked for {len(relu5_3)} masks of a {len(images)}-image group")
            if not masks:  # "none"
                return torch.ones(relu5_3.shape[0], *relu5_3.shape[-2:])
            return ground_truth_masks(masks, self.method.input_size, tuple(relu5_3.shape[-2:]))

        return swapped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, action="append", required=True)
    parser.add_argument("--split", type=Path, required=True)
    parser.add_argument("--composites", type=Path)
    parser.add_argument("--smoothing", default="off", help="stage 3 settings to run, comma-separated: off, on")
    parser.add_argument("--stage-one", default=",".join(STAGE_ONE), help="comma-separated, of: " + ", ".join(STAGE_ONE))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sets = {"plain": plain_groups(args.data, args.split)}
    if args.composites:
        sets["composites"] = folder_groups(args.composites)
    masks_of = {image: mask for groups in sets.values() for pairs in groups.values() for image, mask in pairs}
    rows = {"sod": cosal_cli.load("sod", device="cpu", offline=True)}
    for smoothing in args.smoothing.split(","):
        for stage_one in args.stage_one.split(","):
            rows[f"csmg, stage 1 {stage_one}, smoothing {smoothing}"] = SwappedStageOne(stage_one, masks_of, smoothing)
    report: dict[str, dict] = {}
    for row, detector in rows.items():
        for name, groups in sets.items():
            report.setdefault(row, {})[name] = score(detector, groups, set())
            print(row, name, report[row][name], flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    print(f"| row | set | {' | '.join(COLUMNS)} |\n|---|---|" + "---|" * len(COLUMNS))
    for row, results in report.items():
        for name, values in results.items():
            print(f"| {row} | {name} | {' | '.join(f'{values[key]:.3f}' for key in COLUMNS)} |")


if __name__ == "__main__":
    Image.init()
    main()
