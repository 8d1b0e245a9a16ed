"""`cosal detect --save map,mask,cutout,overlay` and `--threshold`: what each kind holds, where it goes,
atomic writes and resuming."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from cosal_cli.errors import UsageError
from cosal_cli.io import SaveSpec, Threshold, assign_output_names
from cosal_cli.io.outputs import TINT, overlay

from .test_detect import cosal, save


def ramp(height: int = 20, width: int = 30) -> np.ndarray:
    """A map rising left to right: 0 in the first column, 255 in the last."""
    return np.tile(np.linspace(0, 255, width).round().astype(np.uint8), (height, 1))


def test_thresholds_fixed_adaptive_and_otsu():
    values = ramp()
    assert Threshold.parse("0.5").level(values) == 128
    assert Threshold.parse("adaptive").level(values) == int(np.ceil(2 * values.mean()))
    assert Threshold.parse("1").mask(values).sum() == 20  # only the last column reaches 255
    two_levels = np.zeros((10, 10), np.uint8)
    two_levels[:, 6:] = 200
    two_levels[:, :6] = 30
    assert Threshold.parse("otsu").mask(two_levels).tolist() == (two_levels == 200).tolist()
    black = np.zeros((5, 5), np.uint8)
    for rule in ("0", "adaptive", "otsu"):  # an all-black map never gives a white mask
        assert not Threshold.parse(rule).mask(black).any()
    for bad in ("1.5", "-0.1", "half", ""):
        with pytest.raises(UsageError, match="--threshold must be"):
            Threshold.parse(bad)


def test_save_kinds_are_parsed_and_named_beside_the_map(tmp_path):
    spec = SaveSpec.parse("overlay, mask,overlay")
    assert spec.kinds == ("overlay", "mask") and spec.needs_photo and not spec.hard_alpha
    assert {kind: path.name for kind, path in spec.paths(tmp_path / "a.png").items()} == {
        "overlay": "a.overlay.jpg", "mask": "a.mask.png"}  # fmt: skip
    assert not SaveSpec.parse("map,mask").needs_photo
    for bad in ("maps", "map,alpha", ","):
        with pytest.raises(UsageError, match="--save takes"):
            SaveSpec.parse(bad)


def test_cutouts_carry_the_map_or_with_a_threshold_the_mask_as_alpha():
    photo = np.full((20, 30, 3), 77, np.uint8)
    values = ramp()
    soft, _ = SaveSpec.parse("cutout").render("cutout", values, photo)
    hard, _ = SaveSpec.parse("cutout", "0.5").render("cutout", values, photo)
    soft, hard = np.asarray(soft), np.asarray(hard)
    assert soft.shape == (20, 30, 4) and (soft[..., :3] == 77).all()
    assert (soft[..., 3] == values).all()
    assert set(np.unique(hard[..., 3])) == {0, 255} and (hard[..., 3] == np.where(values >= 128, 255, 0)).all()


def test_the_overlay_tints_by_the_map_and_outlines_the_mask():
    photo = np.full((40, 40, 3), 100, np.uint8)
    values = np.zeros((40, 40), np.uint8)
    values[10:30, 10:30] = 255
    result = overlay(photo, values, values > 0)
    assert (result[:8] == 100).all()  # no map, no tint
    assert (result[20, 20] != 100).any() and (result[20, 20] != TINT).any()  # tinted, the photo still shows
    assert (result[10, 20] == TINT).all() and (result[29, 15] == TINT).all()  # the edge


def test_an_input_never_takes_the_name_of_another_inputs_mask(tmp_path):
    files, notices = assign_output_names([tmp_path / "a.mask.jpg", tmp_path / "a.png"])
    names = {file.path.name: file.output_name for file in files}
    assert names["a.mask.jpg"] == "a.mask.png" and names["a.png"] == "a.png.png"  # not a.png: its mask clashes
    assert notices


def test_detect_writes_every_kind_at_the_photo_size_and_resumes_a_missing_one(fake_method, tmp_path):
    save(tmp_path / "g" / "white.png", (50, 20), (255, 255, 255))
    save(tmp_path / "g" / "grey.jpg", (31, 47), (128, 128, 128))
    out = tmp_path / "out"
    arguments = ("detect", str(tmp_path / "g"), "-m", "test-brightness", "-o", str(out), "--json",
                 "--save", "map,mask,cutout,overlay")  # fmt: skip
    result = cosal(*arguments)
    assert result.exit_code == 0, result.output
    names = sorted(path.name for path in (out / "g").iterdir())
    assert names == ["grey.cutout.png", "grey.mask.png", "grey.overlay.jpg", "grey.png",
                     "white.cutout.png", "white.mask.png", "white.overlay.jpg", "white.png"]  # fmt: skip
    for stem, size in (("white", (50, 20)), ("grey", (31, 47))):
        modes = {kind: Image.open(out / "g" / f"{stem}{suffix}") for kind, suffix in
                 (("map", ".png"), ("mask", ".mask.png"), ("cutout", ".cutout.png"), ("overlay", ".overlay.jpg"))}
        assert {kind: image.size for kind, image in modes.items()} == dict.fromkeys(modes, size)
        assert [image.mode for image in modes.values()] == ["L", "L", "RGBA", "RGB"]
    entry = json.loads(result.stdout)["groups"][0]["outputs"][0]
    assert set(entry["files"]) == {"map", "mask", "cutout", "overlay"}

    assert cosal(*arguments).exit_code == 2  # every kind counts as an existing output
    (out / "g" / "grey.mask.png").unlink()
    result = cosal(*arguments, "--skip-existing")
    assert result.exit_code == 0, result.output
    counts = json.loads(result.stdout)["counts"]
    assert (counts["written"], counts["skipped"]) == (1, 1) and (out / "g" / "grey.mask.png").exists()
    assert not [path for path in (out / "g").iterdir() if path.name.startswith(".")]  # no temporary left
