"""Tests for cosal_cli.io: group discovery, content sniffing, output naming, safe decoding, atomic writes.

Every fixture image is built in ``tmp_path`` with Pillow/numpy; nothing outside the test's own
temporary folder is read.
"""

from __future__ import annotations

import io
import os
import stat
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cosal_cli.errors import UsageError
from cosal_cli.io import (
    InputError,
    Problem,
    assign_output_names,
    atomic_output,
    discover,
    load_rgb,
    read_paths,
    sniff,
    write_map,
)

# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def make_image(path: Path, size=(16, 16), color=(200, 30, 30), mode="RGB", fmt=None, **save_args) -> Path:
    """Save a plain single-colour image at ``path`` (format from the suffix unless ``fmt`` is given)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path, format=fmt, **save_args)
    return path


def make_noise(path: Path, size=(64, 64), fmt=None, seed=0) -> Path:
    """Save a random RGB image (compresses badly, so the file has enough bytes to truncate)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format=fmt)
    return path


def make_group(folder: Path, names=("a.jpg", "b.png")) -> Path:
    for name in names:
        make_image(folder / name, fmt="PNG" if name.lower().endswith(".png") else "JPEG")
    return folder


def write_bytes(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_claiming_size(width: int, height: int) -> bytes:
    """A PNG whose IHDR (with a correct CRC) claims ``width`` x ``height`` 8-bit grayscale pixels."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 32))
        + png_chunk(b"IEND", b"")
    )


def pixels(decoded) -> np.ndarray:
    return np.asarray(decoded.rgb)


def names_in(found) -> list[str]:
    return [group.name for group in found.groups]


def image_names(group) -> list[str]:
    return [image.path.name for image in group.images]


def problem_for(problems: list[Problem], name: str) -> Problem:
    matches = [problem for problem in problems if problem.path.name == name]
    assert len(matches) == 1, f"expected one problem for {name}, got {problems}"
    return matches[0]


def current_umask() -> int:
    value = os.umask(0)
    os.umask(value)
    return value


# ----------------------------------------------------------------------------------------------
# Discovery
# ----------------------------------------------------------------------------------------------


def test_folder_with_images_is_one_group_named_after_it(tmp_path):
    folder = make_group(tmp_path / "cats", ["a.jpg", "b.png", "c.jpg"])
    found = discover([folder])
    assert names_in(found) == ["cats"]
    assert image_names(found.groups[0]) == ["a.jpg", "b.png", "c.jpg"]
    assert found.problems == []


def test_group_given_as_dot_is_named_after_the_real_folder(tmp_path, monkeypatch):
    folder = make_group(tmp_path / "dogs")
    monkeypatch.chdir(folder)
    found = discover(["."])
    assert names_in(found) == ["dogs"]


def test_folder_of_group_folders_gives_one_group_per_subfolder_sorted(tmp_path):
    root = tmp_path / "batch"
    for name in ["zebra", "apple", "mango"]:
        make_group(root / name)
    found = discover([root])
    assert names_in(found) == ["apple", "mango", "zebra"]
    assert all(len(group.images) == 2 for group in found.groups)
    assert found.problems == []


def test_dataset_root_reads_groups_from_image_folder_with_notice(tmp_path):
    root = tmp_path / "CoCA"
    for name in ["bird", "apple"]:
        make_group(root / "Image" / name, ["1.jpg", "2.jpg"])
        make_group(root / "GroundTruth" / name, ["1.png", "2.png"])
    found = discover([root])
    assert names_in(found) == ["apple", "bird"]
    assert all(group.folder.parent == root / "Image" for group in found.groups)
    assert all(image_names(group) == ["1.jpg", "2.jpg"] for group in found.groups)
    assert any("dataset layout" in notice and "Image" in notice for notice in found.notices)


def test_read_paths_expands_dash_from_stdin_and_ignores_blank_lines():
    stdin = io.StringIO("first/group\n\n   \nsecond group\r\n\nthird\n")
    assert read_paths(["before", "-", "after"], stdin=stdin) == [
        "before",
        "first/group",
        "second group",
        "third",
        "after",
    ]


def test_read_paths_without_dash_does_not_read_stdin():
    stdin = io.StringIO("should/not/appear\n")
    assert read_paths(["x", "y"], stdin=stdin) == ["x", "y"]
    assert stdin.read() == "should/not/appear\n"


def test_missing_path_is_a_problem_not_an_exception(tmp_path):
    missing = tmp_path / "nope"
    found = discover([missing])
    assert found.groups == []
    assert [problem.path for problem in found.problems] == [missing]
    assert "no such file or folder" in found.problems[0].message


def test_files_given_together_are_one_group_named_after_their_folder(tmp_path):
    folder = make_group(tmp_path / "holiday", names=("b.jpg", "a.png", "c.jpg"))
    found = discover([folder / "c.jpg", folder / "a.png"])
    assert names_in(found) == ["holiday"] and found.problems == []
    assert image_names(found.groups[0]) == ["a.png", "c.jpg"]  # only the files given, in name order
    assert found.groups[0].from_files and found.groups[0].notices == []


def test_a_single_file_is_a_group_of_one_with_a_notice(tmp_path):
    image = make_image(tmp_path / "photos" / "single.jpg")
    found = discover([image])
    assert names_in(found) == ["photos"] and image_names(found.groups[0]) == ["single.jpg"]
    assert "a group of one image: its co-saliency map is its saliency map" in found.groups[0].notices[0]


def test_files_and_folders_mixed_each_folder_its_group_and_the_files_one_more(tmp_path):
    good = make_group(tmp_path / "good")
    loose = [make_image(tmp_path / "x" / "p.jpg"), make_image(tmp_path / "y" / "q.png")]
    found = discover([good, *loose, loose[0]], group_name="loose")  # a file given twice is read once
    assert names_in(found) == ["good", "loose"]
    assert image_names(found.groups[1]) == ["p.jpg", "q.png"]
    assert any("given more than once" in note for note in found.groups[1].notices)


def test_a_given_file_that_is_not_an_image_is_a_problem_of_its_group(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    found = discover([make_image(tmp_path / "a.jpg"), text, tmp_path / "missing.jpg"], group_name="g")
    assert names_in(found) == ["g"] and image_names(found.groups[0]) == ["a.jpg"]
    assert "not an image" in problem_for(found.groups[0].problems, "notes.txt").message
    assert [problem.path.name for problem in found.problems] == ["missing.jpg"]


def test_group_name_without_files_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="--group names the group of image files"):
        discover([make_group(tmp_path / "g")], group_name="x")


def test_bad_paths_do_not_stop_good_groups(tmp_path):
    good = make_group(tmp_path / "good")
    found = discover([tmp_path / "missing", good])
    assert names_in(found) == ["good"]
    assert len(found.problems) == 1


def test_empty_subfolder_in_folder_of_groups_is_an_empty_group_problem(tmp_path):
    root = tmp_path / "batch"
    make_group(root / "full")
    (root / "hollow").mkdir()
    found = discover([root])
    assert names_in(found) == ["full"]
    problem = problem_for(found.problems, "hollow")
    assert "empty group" in problem.message
    assert problem.group == "hollow"


def test_completely_empty_folder_is_a_problem(tmp_path):
    empty = tmp_path / "nothing"
    empty.mkdir()
    found = discover([empty])
    assert found.groups == []
    assert "empty" in problem_for(found.problems, "nothing").message


def test_hidden_non_image_and_subfolder_entries_are_skipped_with_one_notice(tmp_path):
    folder = make_group(tmp_path / "cats", ["a.jpg"])
    write_bytes(folder / ".DS_Store", b"\x00\x00\x00\x01Bud1")
    (folder / "notes.txt").write_text("not a picture\n")
    make_group(folder / "extra", ["hidden_inside.jpg"])
    found = discover([folder], layout="group")  # a sub-folder with images makes auto ask (test_bad_input)
    group = found.groups[0]
    assert image_names(group) == ["a.jpg"]
    assert group.problems == []
    skip_notices = [notice for notice in group.notices if "skipped" in notice]
    assert len(skip_notices) == 1
    for name in (".DS_Store", "notes.txt", "extra/"):
        assert name in skip_notices[0]


def test_hidden_image_file_is_skipped(tmp_path):
    folder = make_group(tmp_path / "cats", ["a.jpg"])
    make_image(folder / "._a.jpg", fmt="JPEG")
    group = discover([folder]).groups[0]
    assert image_names(group) == ["a.jpg"]


def test_groups_with_the_same_folder_name_get_distinct_names_with_notice(tmp_path):
    first = make_group(tmp_path / "a" / "cats")
    second = make_group(tmp_path / "b" / "cats")
    found = discover([first, second])
    assert names_in(found) == ["cats", "cats~2"]
    assert found.groups[1].folder == second
    assert any("cats~2" in notice for notice in found.notices)


def test_group_names_differing_only_in_case_are_kept_apart(tmp_path):
    found = discover([make_group(tmp_path / "a" / "Cats"), make_group(tmp_path / "b" / "cats")])
    assert len({name.casefold() for name in names_in(found)}) == 2


# ----------------------------------------------------------------------------------------------
# Sniffing by content
# ----------------------------------------------------------------------------------------------


def test_png_saved_under_jpg_name_is_included(tmp_path):
    folder = tmp_path / "g"
    make_image(folder / "really_png.jpg", fmt="PNG")
    assert sniff(folder / "really_png.jpg") == "PNG"
    group = discover([folder]).groups[0]
    assert image_names(group) == ["really_png.jpg"]
    assert group.problems == []


def test_jpeg_without_extension_is_included(tmp_path):
    folder = tmp_path / "g"
    make_image(folder / "photo", fmt="JPEG")
    group = discover([folder]).groups[0]
    assert image_names(group) == ["photo"]
    assert group.images[0].output_name == "photo.png"


def test_text_file_named_jpg_is_not_an_image_problem(tmp_path):
    folder = make_group(tmp_path / "g", ["ok.png"])
    (folder / "x.jpg").write_text("this is text, not a JPEG\n")
    group = discover([folder]).groups[0]
    assert image_names(group) == ["ok.png"]
    problem = problem_for(group.problems, "x.jpg")
    assert "not an image" in problem.message
    assert problem.group == "g"


def test_zero_byte_png_is_empty_file_problem(tmp_path):
    folder = make_group(tmp_path / "g", ["ok.png"])
    write_bytes(folder / "y.png", b"")
    group = discover([folder]).groups[0]
    assert "empty file (0 bytes)" in problem_for(group.problems, "y.png").message


def test_gif_is_unsupported_image_type(tmp_path):
    folder = make_group(tmp_path / "g", ["ok.png"])
    make_image(folder / "anim.gif", mode="P", color=3)
    assert sniff(folder / "anim.gif") == "GIF"
    group = discover([folder]).groups[0]
    message = problem_for(group.problems, "anim.gif").message
    assert "unsupported image type" in message and "GIF" in message


def test_heic_ftyp_box_is_unsupported_image_type(tmp_path):
    folder = make_group(tmp_path / "g", ["ok.png"])
    write_bytes(folder / "phone.heic", struct.pack(">I", 24) + b"ftypheic" + b"\x00" * 4 + b"mif1heic" + b"\x00" * 16)
    assert sniff(folder / "phone.heic") == "HEIC"
    group = discover([folder]).groups[0]
    message = problem_for(group.problems, "phone.heic").message
    assert "unsupported image type" in message and "HEIC" in message
    assert image_names(group) == ["ok.png"]


def test_folder_with_only_unsupported_images_is_a_group_with_problems(tmp_path):
    folder = tmp_path / "g"
    make_image(folder / "only.gif", mode="P", color=1)
    found = discover([folder])
    assert names_in(found) == ["g"]
    assert found.groups[0].images == []
    assert len(found.groups[0].problems) == 1


def test_extensions_are_case_insensitive(tmp_path):
    folder = tmp_path / "g"
    make_image(folder / "upper.JPG", fmt="JPEG")
    make_image(folder / "mixed.PnG", fmt="PNG")
    (folder / "fake.JPEG").write_text("text")  # an upper-case image suffix still counts as "meant to be an image"
    group = discover([folder]).groups[0]
    assert image_names(group) == ["mixed.PnG", "upper.JPG"]
    assert "not an image" in problem_for(group.problems, "fake.JPEG").message


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [("JPEG", "JPEG"), ("PNG", "PNG"), ("BMP", "BMP"), ("WEBP", "WEBP"), ("TIFF", "TIFF"), ("GIF", "GIF")],
)
def test_sniff_recognises_formats_by_content(tmp_path, fmt, expected):
    path = make_image(
        tmp_path / "file.bin", mode="P" if fmt == "GIF" else "RGB", color=1 if fmt == "GIF" else (1, 2, 3), fmt=fmt
    )
    assert sniff(path) == expected


def test_sniff_returns_none_for_text_and_missing_files(tmp_path):
    (tmp_path / "t.jpg").write_text("hello")
    assert sniff(tmp_path / "t.jpg") is None
    assert sniff(tmp_path / "missing.png") is None


# ----------------------------------------------------------------------------------------------
# Output naming
# ----------------------------------------------------------------------------------------------


def output_names(paths: list[Path]) -> dict[str, str]:
    files, _ = assign_output_names(paths)
    return {image.path.name: image.output_name for image in files}


def test_plain_names_map_to_stem_png():
    assert output_names([Path("g/x.jpg"), Path("g/y.webp")]) == {"x.jpg": "x.png", "y.webp": "y.png"}


def test_shared_stem_is_kept_apart_deterministically_with_notice():
    forward = [Path("g/a.jpg"), Path("g/a.png")]
    files, notices = assign_output_names(forward)
    expected = {"a.jpg": "a.png", "a.png": "a.png.png"}
    assert {image.path.name: image.output_name for image in files} == expected
    assert output_names(list(reversed(forward))) == expected
    assert len(notices) == 1
    assert "a.jpg -> a.png" in notices[0] and "a.png -> a.png.png" in notices[0]


def test_shared_stem_in_a_discovered_group_gives_a_group_notice(tmp_path):
    folder = make_group(tmp_path / "g", ["a.jpg", "a.png"])
    group = discover([folder]).groups[0]
    assert {image.path.name: image.output_name for image in group.images} == {"a.jpg": "a.png", "a.png": "a.png.png"}
    assert any("share the stem" in notice for notice in group.notices)


def test_case_insensitive_stem_clash_is_kept_apart():
    names = output_names([Path("g/a.png"), Path("g/A.jpg")])
    assert len({name.casefold() for name in names.values()}) == 2
    assert output_names([Path("g/A.jpg"), Path("g/a.png")]) == names


def test_output_names_never_collide_casefolded():
    inputs = ["a.jpg", "a.png", "A.JPG", "a.png.png", "a.png.jpg", "A.PNG", "a.jpg.png", "b.tif", "B.tiff", "a"]
    paths = [Path("g") / name for name in inputs]
    files, _ = assign_output_names(paths)
    produced = [image.output_name for image in files]
    assert sorted(image.path.name for image in files) == sorted(inputs)
    assert len({name.casefold() for name in produced}) == len(produced)
    assert all(name.endswith(".png") for name in produced)
    assert output_names(list(reversed(paths))) == output_names(paths)


def test_every_input_whose_map_is_not_stem_png_is_named_in_a_notice():
    files, notices = assign_output_names([Path("g/a.jpg"), Path("g/a.png"), Path("g/a.png.png")])
    renamed = [image for image in files if image.output_name != f"{image.path.stem}.png"]
    assert [image.path.name for image in renamed] == ["a.png", "a.png.png"]
    for image in renamed:
        assert any(f"{image.path.name} -> {image.output_name}" in notice for notice in notices)


# ----------------------------------------------------------------------------------------------
# Decoding
# ----------------------------------------------------------------------------------------------


def test_rgb_jpeg_decodes_to_rgb_at_displayed_size(tmp_path):
    decoded = load_rgb(make_image(tmp_path / "a.jpg", size=(40, 24)))
    assert decoded.rgb.mode == "RGB"
    assert decoded.size == (40, 24)
    assert pixels(decoded).shape == (24, 40, 3)
    assert decoded.notes == []


def test_16bit_grayscale_png_is_rescaled_not_clipped(tmp_path):
    values = np.array([[0, 32896, 65535], [65535, 0, 32896]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")  # really a 16-bit image on disk
    decoded = load_rgb(path)
    assert decoded.rgb.mode == "RGB"
    out = pixels(decoded)
    np.testing.assert_array_equal(out[..., 0], [[0, 128, 255], [255, 0, 128]])
    np.testing.assert_array_equal(out[..., 0], out[..., 1])
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    assert any("16-bit" in note and "rescaled" in note for note in decoded.notes)


def test_16bit_values_zero_and_one_stay_dark(tmp_path):
    path = tmp_path / "binary16.png"
    Image.fromarray(np.array([[0, 1], [1, 0]], dtype=np.uint16)).save(path)
    out = pixels(load_rgb(path))
    assert out.max() <= 1  # 1/65535 of full scale is black; certainly not white


def test_16bit_rescaling_does_not_depend_on_image_content(tmp_path):
    dark, bright = tmp_path / "dark.png", tmp_path / "bright.png"
    Image.fromarray(np.array([[0, 200]], dtype=np.uint16)).save(dark)
    Image.fromarray(np.array([[200, 65535]], dtype=np.uint16)).save(bright)
    assert pixels(load_rgb(dark))[0, 1, 0] == pixels(load_rgb(bright))[0, 0, 0] == 1  # round(200 / 257)


def test_palette_image_becomes_rgb_with_note(tmp_path):
    image = Image.new("P", (16, 16), 0)
    image.putpalette([10, 20, 30, 200, 100, 50] + [0] * (256 * 3 - 6))
    image.paste(1, (8, 0, 16, 16))
    path = tmp_path / "pal.png"
    image.save(path)
    decoded = load_rgb(path)
    assert decoded.rgb.mode == "RGB"
    assert tuple(pixels(decoded)[0, 0]) == (10, 20, 30)
    assert tuple(pixels(decoded)[0, 15]) == (200, 100, 50)
    assert any("palette" in note for note in decoded.notes)


def test_palette_transparency_becomes_white_and_opaque_keeps_colour(tmp_path):
    image = Image.new("P", (16, 16), 0)
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 6))
    image.paste(1, (8, 0, 16, 16))
    path = tmp_path / "pal_t.png"
    image.save(path, transparency=0)  # palette index 0 (red) is fully transparent
    decoded = load_rgb(path)
    assert decoded.rgb.mode == "RGB"
    assert tuple(pixels(decoded)[0, 0]) == (255, 255, 255)
    assert tuple(pixels(decoded)[0, 15]) == (0, 0, 255)
    assert any("white" in note for note in decoded.notes)


def test_rgba_transparent_pixels_become_white_and_opaque_keep_colour(tmp_path):
    rgba = np.zeros((16, 16, 4), dtype=np.uint8)
    rgba[:, :8] = (255, 0, 0, 0)  # red, fully transparent
    rgba[:, 8:] = (0, 128, 0, 255)  # green, opaque
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba, "RGBA").save(path)
    decoded = load_rgb(path)
    assert decoded.rgb.mode == "RGB"
    assert tuple(pixels(decoded)[5, 2]) == (255, 255, 255)
    assert tuple(pixels(decoded)[5, 12]) == (0, 128, 0)
    assert any("transparent" in note and "white" in note for note in decoded.notes)


def test_fully_opaque_rgba_notes_alpha_dropped(tmp_path):
    path = make_image(tmp_path / "opaque.png", mode="RGBA", color=(12, 34, 56, 255))
    decoded = load_rgb(path)
    assert decoded.rgb.mode == "RGB"
    assert tuple(pixels(decoded)[0, 0]) == (12, 34, 56)
    assert any("alpha" in note and "dropped" in note for note in decoded.notes)


def test_cmyk_jpeg_becomes_rgb_with_note(tmp_path):
    image = Image.new("CMYK", (16, 16), (0, 0, 0, 0))  # white
    image.paste((255, 0, 0, 0), (8, 0, 16, 16))  # pure cyan
    path = tmp_path / "cmyk.jpg"
    image.save(path, quality=95)
    assert Image.open(path).mode == "CMYK"
    decoded = load_rgb(path)
    assert decoded.rgb.mode == "RGB"
    out = pixels(decoded).astype(int)
    assert np.all(np.abs(out[4, 2] - (255, 255, 255)) <= 8)
    assert np.all(np.abs(out[4, 13] - (0, 255, 255)) <= 8)
    assert any("CMYK" in note for note in decoded.notes)


def test_grayscale_l_is_replicated_to_rgb(tmp_path):
    decoded = load_rgb(make_image(tmp_path / "gray.png", mode="L", color=77))
    assert decoded.rgb.mode == "RGB"
    assert np.all(pixels(decoded) == 77)
    assert any("grayscale" in note for note in decoded.notes)


def test_one_bit_image_is_replicated_to_rgb(tmp_path):
    image = Image.new("1", (16, 16), 0)
    image.paste(1, (8, 0, 16, 16))
    path = tmp_path / "bits.png"
    image.save(path)
    decoded = load_rgb(path)
    assert decoded.rgb.mode == "RGB"
    assert tuple(pixels(decoded)[0, 0]) == (0, 0, 0)
    assert tuple(pixels(decoded)[0, 15]) == (255, 255, 255)
    assert any("1-bit" in note for note in decoded.notes)


def test_la_image_composites_transparency_on_white(tmp_path):
    la = np.zeros((16, 16, 2), dtype=np.uint8)
    la[:, :8] = (100, 0)  # transparent
    la[:, 8:] = (100, 255)  # opaque gray
    path = tmp_path / "la.png"
    Image.fromarray(la, "LA").save(path)
    decoded = load_rgb(path)
    assert decoded.rgb.mode == "RGB"
    assert tuple(pixels(decoded)[0, 0]) == (255, 255, 255)
    assert tuple(pixels(decoded)[0, 15]) == (100, 100, 100)
    assert any(note.startswith("LA") for note in decoded.notes)


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    image.paste((0, 0, 255), (20, 0, 40, 20))  # left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif, quality=95)
    decoded = load_rgb(path)
    assert decoded.size == (20, 40)
    out = pixels(decoded).astype(int)
    assert out[5, 10, 0] > 200 and out[5, 10, 2] < 60  # the stored left (red) is now on top
    assert out[35, 10, 2] > 200 and out[35, 10, 0] < 60  # the stored right (blue) is now at the bottom


def exif_with_unwritable_tag() -> bytes:
    """EXIF with Orientation 6 plus DocumentName stored as a RATIONAL (it should be ASCII)."""
    rational_at = 8 + 2 + 2 * 12 + 4
    entries = struct.pack(">HHII", 0x0112, 3, 1, 6 << 16) + struct.pack(">HHII", 0x010D, 5, 1, rational_at)
    ifd = struct.pack(">H", 2) + entries + struct.pack(">I", 0)
    return b"Exif\x00\x00MM\x00*" + struct.pack(">I", 8) + ifd + struct.pack(">II", 1, 2)


def test_broken_exif_still_decodes_and_says_so_if_not_rotated(tmp_path):
    path = make_image(tmp_path / "odd_exif.jpg", size=(40, 20), exif=exif_with_unwritable_tag())
    decoded = load_rgb(path)
    assert decoded.rgb.mode == "RGB"
    assert pixels(decoded).shape[2] == 3  # the image data is still usable after the file is closed
    assert decoded.size == (20, 40) or any("EXIF orientation unreadable" in note for note in decoded.notes)


def test_truncated_jpeg_raises_input_error(tmp_path):
    data = make_noise(tmp_path / "full.jpg", fmt="JPEG").read_bytes()
    cut = write_bytes(tmp_path / "cut.jpg", data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated or corrupt"):
        load_rgb(cut)


def test_truncated_png_raises_input_error(tmp_path):
    data = make_noise(tmp_path / "full.png", fmt="PNG").read_bytes()
    cut = write_bytes(tmp_path / "cut.png", data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated or corrupt"):
        load_rgb(cut)


def test_png_claiming_huge_size_is_refused_before_decoding(tmp_path):
    path = write_bytes(tmp_path / "bomb.png", png_claiming_size(20000, 20000))
    with pytest.raises(InputError, match="megapixel"):
        load_rgb(path)


def test_multi_frame_tiff_uses_first_frame_with_note(tmp_path):
    frames = [Image.new("RGB", (16, 16), color) for color in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    path = tmp_path / "stack.tif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    decoded = load_rgb(path)
    assert decoded.rgb.mode == "RGB"
    assert tuple(pixels(decoded)[0, 0]) == (255, 0, 0)
    assert any("3 frames" in note for note in decoded.notes)


def test_empty_file_raises_input_error(tmp_path):
    with pytest.raises(InputError, match="empty file"):
        load_rgb(write_bytes(tmp_path / "zero.png", b""))


def test_text_file_raises_input_error(tmp_path):
    path = tmp_path / "text.jpg"
    path.write_text("definitely not pixels\n" * 4)
    with pytest.raises(InputError, match="not a readable image"):
        load_rgb(path)


def test_gif_raises_unsupported_input_error(tmp_path):
    path = make_image(tmp_path / "a.gif", mode="P", color=2)
    with pytest.raises(InputError, match="unsupported image type GIF"):
        load_rgb(path)


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------


def test_write_map_writes_exact_8bit_grayscale_png(tmp_path):
    values = np.arange(256, dtype=np.uint8).reshape(16, 16)
    destination = tmp_path / "out" / "deep" / "map.png"
    write_map(values, destination)
    with Image.open(destination) as written:
        assert written.format == "PNG"
        assert written.mode == "L"
        np.testing.assert_array_equal(np.asarray(written), values)
    assert sorted(p.name for p in destination.parent.iterdir()) == ["map.png"]  # no temporary left


def test_failure_inside_atomic_output_leaves_no_files(tmp_path):
    folder = tmp_path / "out"
    destination = folder / "map.png"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_output(destination) as temporary:
            temporary.write_bytes(b"partial data")
            assert temporary.parent == folder and temporary.exists()
            raise RuntimeError("boom")
    assert not destination.exists()
    assert list(folder.iterdir()) == []


def test_existing_destination_is_replaced_only_on_success(tmp_path):
    destination = write_bytes(tmp_path / "map.png", b"old")
    with pytest.raises(RuntimeError):
        with atomic_output(destination) as temporary:
            temporary.write_bytes(b"new but failed")
            raise RuntimeError("interrupted")
    assert destination.read_bytes() == b"old"
    with atomic_output(destination) as temporary:
        temporary.write_bytes(b"new")
    assert destination.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map.png"]


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_written_file_respects_umask_not_0600(tmp_path, umask):
    previous = os.umask(umask)
    try:
        destination = tmp_path / "map.png"
        write_map(np.zeros((4, 4), dtype=np.uint8), destination)
        expected = 0o666 & ~current_umask()
    finally:
        os.umask(previous)
    mode = stat.S_IMODE(destination.stat().st_mode)
    assert mode == expected
    assert mode != 0o600


@pytest.mark.parametrize(
    "values",
    [
        np.zeros((8, 8), dtype=np.float32),
        np.zeros((8, 8), dtype=np.float64),
        np.zeros((8, 8, 3), dtype=np.uint8),
        np.zeros((8, 8, 1), dtype=np.uint8),
    ],
    ids=["float32", "float64", "rgb-3d", "hw1-3d"],
)
def test_write_map_refuses_float_and_3d_arrays(tmp_path, values):
    destination = tmp_path / "map.png"
    with pytest.raises(ValueError, match="uint8"):
        write_map(values, destination)
    assert list(tmp_path.iterdir()) == []
