"""`cosal bench` end to end: finding datasets, scoring maps from any tool, running a method, reports.

Every dataset here is a few dozen small images and masks (seeded random blobs, 24 to 64 pixels)
written into ``tmp_path`` in one of the layouts the co-saliency tools use. Scores are checked against
PySODMetrics stepped by hand on the same files, read the way its evaluation scripts read them
(``cv2.imread(path, cv2.IMREAD_GRAYSCALE)``). Method runs use the test-only ``test-brightness``
method of conftest.py, so nothing needs a download or a GPU.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import py_sod_metrics as sod
import pytest
from PIL import Image
from typer.testing import CliRunner

from cosal_cli import datasets
from cosal_cli.bench import predictions_root
from cosal_cli.cli import app
from cosal_cli.errors import UsageError
from cosal_cli.metrics import evaluate_pair

# (image folder, mask folder) of each layout, relative to the data root.
LAYOUTS = {
    "canonical": ("{name}/Image/{group}", "{name}/GroundTruth/{group}"),
    "coca": ("{name}/image/{group}", "{name}/binary/{group}"),
    "gicd": ("images/{name}/{group}", "gts/{name}/{group}"),
    "masks-only": (None, "gt/{name}/{group}"),
    "masks-only-canonical": (None, "{name}/GroundTruth/{group}"),
}
METRICS = ("sm", "mae", "wfm", "adp_fm", "adp_em", "max_fm", "mean_fm", "max_em", "mean_em")
# PySODMetrics' Fmeasure (the class its own evaluation scripts step) warns that FmeasureV2 replaces it.
pytestmark = pytest.mark.filterwarnings("ignore:This class will be removed:UserWarning")


@pytest.fixture(autouse=True)
def _work_in_tmp_path(tmp_path, monkeypatch):
    """Relative paths (the default --output cosal-bench/, a --dataset name) resolve inside tmp_path."""
    monkeypatch.chdir(tmp_path)


# -- fixture builders ------------------------------------------------------------------------------


@dataclass
class Entry:
    group: str
    stem: str
    mask: Path
    image: Path | None


def blob(rng: np.random.Generator, shape: tuple[int, int], soft: bool = False) -> np.ndarray:
    """An 8-bit ellipse mask, binary (0/255) or with a soft grey rim."""
    height, width = shape
    rows, cols = np.mgrid[:height, :width]
    cy, cx = rng.uniform(0.3, 0.7) * height, rng.uniform(0.3, 0.7) * width
    ry, rx = rng.uniform(0.15, 0.35) * height, rng.uniform(0.15, 0.35) * width
    distance = np.sqrt(((rows - cy) / ry) ** 2 + ((cols - cx) / rx) ** 2)  # 1 on the rim
    value = np.clip((1.3 - distance) / 0.6, 0, 1) if soft else (distance <= 1).astype(float)
    return np.round(value * 255).astype(np.uint8)


def noisy_map(rng: np.random.Generator, mask: np.ndarray, shape: tuple[int, int] | None = None) -> np.ndarray:
    """A plausible saliency map of ``mask``: shifted, blurred, noisy, not spanning the full range."""
    target = np.roll(mask.astype(float) / 255, (int(rng.integers(-3, 4)), int(rng.integers(-3, 4))), axis=(0, 1))
    value = 0.6 * cv2.GaussianBlur(target, (0, 0), 1.5) + 0.4 * cv2.GaussianBlur(rng.random(mask.shape), (0, 0), 2)
    low, high = rng.uniform(0, 0.15), rng.uniform(0.7, 1.0)
    value = (value - value.min()) / (np.ptp(value) + 1e-12) * (high - low) + low
    out = np.round(value * 255).astype(np.uint8)
    if shape is not None and shape != out.shape:
        out = np.asarray(Image.fromarray(out).resize(shape[::-1], Image.NEAREST))
    return out


def save_grey(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode="L").save(path)
    return path


def save_photo(path: Path, mask: np.ndarray, rng: np.random.Generator) -> Path:
    """An RGB JPEG in which the masked object is brighter than the background."""
    path.parent.mkdir(parents=True, exist_ok=True)
    base = 40 + 150 * (mask[..., None] / 255) + rng.integers(0, 40, (*mask.shape, 3))
    Image.fromarray(base.clip(0, 255).astype(np.uint8), mode="RGB").save(path, quality=92)
    return path


def make_dataset(
    root: Path,
    layout: str = "canonical",
    groups: dict[str, int] | None = None,
    name: str = "Toy",
    seed: int = 0,
    soft: bool = False,
) -> list[Entry]:
    """Write ``groups`` ({group: number of images}) of random blobs under ``root`` in ``layout``."""
    rng = np.random.default_rng(seed)
    image_pattern, mask_pattern = LAYOUTS[layout]
    entries = []
    for group, count in (groups or {"a": 2, "b": 3}).items():
        for index in range(count):
            stem = f"{group.replace(' ', '_')}_{index:02d}"
            mask = blob(rng, (int(rng.integers(24, 65)), int(rng.integers(24, 65))), soft)
            mask_path = save_grey(root / mask_pattern.format(name=name, group=group) / f"{stem}.png", mask)
            image_path = None
            if image_pattern is not None:
                image_path = save_photo(root / image_pattern.format(name=name, group=group) / f"{stem}.jpg", mask, rng)
            entries.append(Entry(group, stem, mask_path, image_path))
    return entries


def write_predictions(folder: Path, entries: list[Entry], seed: int = 1, skip: tuple[str, ...] = ()) -> dict[str, Path]:
    """A prediction PNG per mask at ``folder/<group>/<stem>.png`` ("another tool"), by ``group/stem``."""
    rng = np.random.default_rng(seed)
    written = {}
    for entry in entries:
        key = f"{entry.group}/{entry.stem}"
        prediction = noisy_map(rng, read(entry.mask))
        if key not in skip:
            written[key] = save_grey(folder / entry.group / f"{entry.stem}.png", prediction)
    return written


def read(path: Path) -> np.ndarray:
    """A map or mask as PySODMetrics' scripts read it."""
    array = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    assert array is not None, path
    return array


def pysod_reference(pairs: list[tuple[np.ndarray, np.ndarray]]) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """PySODMetrics stepped over (prediction, mask) pairs: its summary numbers and averaged curves."""
    sm, mae, wfm, fm, em = sod.Smeasure(), sod.MAE(), sod.WeightedFmeasure(), sod.Fmeasure(), sod.Emeasure()
    for pred, gt in pairs:
        for metric in (sm, mae, wfm, fm, em):
            metric.step(pred=pred, gt=gt)
    f_results, e_results = fm.get_results()["fm"], em.get_results()["em"]
    scalars = {
        "sm": sm.get_results()["sm"],
        "mae": mae.get_results()["mae"],
        "wfm": wfm.get_results()["wfm"],
        "adp_fm": f_results["adp"],
        "adp_em": e_results["adp"],
    }
    curves = {"fm": np.asarray(f_results["curve"], float), "em": np.asarray(e_results["curve"], float)}
    return scalars, curves


def summary(scalars: dict[str, float], curves: dict[str, np.ndarray]) -> dict[str, float]:
    """The reported numbers: max and mean of the averaged F and E curves."""
    return {
        **{key: float(value) for key, value in scalars.items()},
        "max_fm": float(curves["fm"].max()),
        "mean_fm": float(curves["fm"].mean()),
        "max_em": float(curves["em"].max()),
        "mean_em": float(curves["em"].mean()),
    }


def reference_for(entries: list[Entry], predictions: dict[str, Path]) -> dict[str, float]:
    pairs = [(read(predictions[f"{e.group}/{e.stem}"]), read(e.mask)) for e in entries]
    return summary(*pysod_reference(pairs))


def assert_same_numbers(got: dict[str, float], expected: dict[str, float]) -> None:
    for key in METRICS:
        assert got[key] == pytest.approx(expected[key], abs=1e-6), key


def cosal(*args: str):
    return CliRunner().invoke(app, [str(arg) for arg in args])


def bench_json(*args: str, code: int = 0) -> dict:
    result = cosal("bench", *args, "--json")
    assert result.exit_code == code, result.output
    return json.loads(result.stdout)


def only_method(document: dict) -> dict:
    [dataset] = document["datasets"]
    [method] = dataset["methods"]
    return method


# -- finding datasets ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("layout", "expected_layout", "require_images"),
    [("canonical", "canonical", True), ("coca", "canonical", True), ("gicd", "gicd", True),
     ("masks-only", "masks-only", False), ("masks-only-canonical", "masks-only", False)],
)  # fmt: skip
def test_each_layout_is_found_with_its_groups_and_items(tmp_path, layout, expected_layout, require_images):
    entries = make_dataset(tmp_path, layout, {"bird": 2, "car": 3, "dog": 1})
    dataset = datasets.locate("Toy", tmp_path, require_images=require_images)
    assert dataset.layout == expected_layout
    assert dataset.name == "Toy"
    assert [group.name for group in dataset.groups] == ["bird", "car", "dog"]
    assert len(dataset.items) == len(entries) == 6
    assert {item.mask for item in dataset.items} == {entry.mask for entry in entries}
    assert {item.image for item in dataset.items} == {entry.image for entry in entries}
    assert not dataset.problems


@pytest.mark.parametrize(
    ("layout", "given", "require_images"),
    [("masks-only", "gt/Toy", False), ("gicd", "gts/Toy", True), ("gicd", "images/Toy", True),
     ("canonical", "Toy/GroundTruth", True), ("coca", "Toy/binary", True), ("coca", "Toy/image", True)],
)  # fmt: skip
def test_a_datasets_image_or_mask_folder_given_directly_is_read_in_its_layout(tmp_path, layout, given,
                                                                              require_images):  # fmt: skip
    entries = make_dataset(tmp_path, layout, {"bird": 2, "car": 1})
    dataset = datasets.locate(str(tmp_path / given), require_images=require_images)
    assert dataset.name == "Toy" and [group.name for group in dataset.groups] == ["bird", "car"]
    assert {item.mask for item in dataset.items} == {entry.mask for entry in entries}
    assert {item.image for item in dataset.items} == {entry.image for entry in entries}
    write_predictions(tmp_path / "pred", entries)
    method = only_method(bench_json("-d", tmp_path / given, "--pred", tmp_path / "pred"))
    assert method["evaluated"] == 3


def test_masks_alone_are_refused_when_a_method_needs_images(tmp_path):
    make_dataset(tmp_path, "masks-only")
    with pytest.raises(UsageError, match="masks but no images"):
        datasets.locate("Toy", tmp_path, require_images=True)


def test_dataset_can_be_a_folder_path_or_the_data_root_itself(tmp_path):
    entries = make_dataset(tmp_path / "data", "canonical", {"a": 2, "b": 2})
    by_path = datasets.locate(str(tmp_path / "data" / "Toy"))
    as_root = datasets.locate("toy", tmp_path / "data" / "Toy")
    for dataset in (by_path, as_root):
        assert dataset.layout == "canonical" and dataset.name == "Toy"
        assert dataset.root.resolve() == (tmp_path / "data" / "Toy").resolve()
        assert len(dataset.groups) == 2 and len(dataset.items) == 4
    write_predictions(tmp_path / "pred", entries)
    method = only_method(bench_json("--dataset", tmp_path / "data" / "Toy", "--pred", tmp_path / "pred"))
    assert method["evaluated"] == 4


def test_dataset_and_folder_names_are_case_insensitive(tmp_path):
    rng = np.random.default_rng(3)
    mask = blob(rng, (32, 40))
    save_photo(tmp_path / "iCoSeg" / "image" / "Dog" / "A1.JPG", mask, rng)
    save_grey(tmp_path / "iCoSeg" / "GroundTruth" / "dog" / "a1.png", mask)
    make_dataset(tmp_path, "canonical", {"x": 1}, name="Cosal2015")

    icoseg = datasets.locate("icoseg", tmp_path)
    assert icoseg.root.name == "iCoSeg" and icoseg.name == "iCoseg"  # the published spelling
    [item] = icoseg.items
    assert (item.group, item.image.name, item.mask.name) == ("dog", "A1.JPG", "a1.png")
    assert not icoseg.problems
    assert datasets.locate("cosal2015", tmp_path).root.name == "Cosal2015"
    assert datasets.locate("COSAL2015", tmp_path).name == "CoSal2015"


def test_group_names_with_spaces_work_end_to_end(tmp_path):
    entries = make_dataset(tmp_path / "data", "canonical", {"alarm clock": 3, "rubber duck toy": 2})
    predictions = write_predictions(tmp_path / "pred", entries)
    document = bench_json("--data-root", tmp_path / "data", "--dataset", "Toy", "--pred", tmp_path / "pred")
    method = only_method(document)
    assert document["datasets"][0]["groups"] == 2
    assert (method["evaluated"], method["missing"], method["failed"]) == (5, 0, 0)
    assert_same_numbers(method["metrics"], reference_for(entries, predictions))


def test_unpaired_files_are_problems_named_and_the_rest_is_scored(tmp_path):
    data = tmp_path / "data"
    entries = make_dataset(data, "canonical", {"a": 3, "b": 2})
    rng = np.random.default_rng(9)
    lonely_image = save_photo(data / "Toy" / "Image" / "a" / "no_mask.jpg", blob(rng, (30, 30)), rng)
    lonely_mask = save_grey(data / "Toy" / "GroundTruth" / "b" / "no_image.png", blob(rng, (30, 30)))
    orphan_group = data / "Toy" / "Image" / "orphan group"
    save_photo(orphan_group / "x.jpg", blob(rng, (30, 30)), rng)

    dataset = datasets.locate("Toy", data)
    problems = {problem.path: problem for problem in dataset.problems}
    assert set(problems) == {lonely_image, lonely_mask, orphan_group}
    assert "without a mask" in problems[lonely_image].message
    assert "mask without an image" in problems[lonely_mask].message
    assert "without masks" in problems[orphan_group].message
    assert len(dataset.items) == 5

    # Scoring given predictions needs no images, so there the image-less mask is expected too (and
    # has no prediction); images without masks are still problems.
    write_predictions(tmp_path / "pred", entries)
    result = cosal("bench", "--data-root", data, "--dataset", "Toy", "--pred", tmp_path / "pred", "--json")
    assert result.exit_code == 1, result.output
    document = json.loads(result.stdout)
    assert {Path(p["path"]) for p in document["datasets"][0]["problems"]} == {lonely_image, orphan_group}
    method = only_method(document)
    assert (method["expected"], method["evaluated"], method["missing_predictions"]) == (6, 5, ["b/no_image"])
    for name in ("no_mask.jpg", "orphan group", "b/no_image"):
        assert name in result.stderr


def test_a_partial_known_dataset_fails_validation_with_both_counts(tmp_path):
    make_dataset(tmp_path, "coca", {"Accordion": 2, "Banana": 3}, name="CoCA")
    check = datasets.locate("coca", tmp_path).validation()
    assert check["checked"] is True and check["ok"] is False
    assert check["expected"] == {"groups": 80, "images": 1295}
    assert check["found"] == {"groups": 2, "images": 5}
    assert "80 groups" in check["message"] and "1295 images" in check["message"]
    assert "has 2 and 5" in check["message"]

    make_dataset(tmp_path, "canonical", {"a": 1}, name="MyOwnSet")
    unknown = datasets.locate("MyOwnSet", tmp_path).validation()
    assert unknown["checked"] is False and unknown["ok"] is True


def test_a_complete_known_dataset_passes_validation(tmp_path, monkeypatch):
    small = datasets.DatasetInfo("coca", "CoCA", 2, 5, "nowhere")
    monkeypatch.setitem(datasets.KNOWN, "coca", small)  # a CoCA of 2 groups and 5 images
    make_dataset(tmp_path, "coca", {"Accordion": 2, "Banana": 3}, name="CoCA")
    check = datasets.locate("coca", tmp_path).validation()
    assert (check["checked"], check["ok"], check["message"]) == (True, True, "")


def test_dataset_not_found_says_what_was_expected_found_and_where_to_get_it(tmp_path):
    data = tmp_path / "data"
    (data / "CoCA_v2_unzipped").mkdir(parents=True)
    (data / "README.txt").write_text("downloads go here")
    with pytest.raises(UsageError) as caught:
        datasets.locate("coca", data)
    message = str(caught.value)
    for expected in ("<root>/<Dataset>/Image/<group>", "GroundTruth", "image/", "binary/", "<root>/gts/<Dataset>",
                     "CoCA_v2_unzipped/", "README.txt", "zhaozhang.net/coca.html", "80 groups, 1295 images"):
        assert expected in message, expected  # fmt: skip

    (tmp_path / "pred").mkdir()
    result = cosal("bench", "--data-root", data, "--dataset", "coca", "--pred", tmp_path / "pred")
    assert result.exit_code == 2
    assert "zhaozhang.net/coca.html" in result.stderr and "CoCA_v2_unzipped/" in result.stderr
    assert "Expected one of" in result.stderr


def test_dataset_folder_without_mask_folder_is_not_found(tmp_path):
    rng = np.random.default_rng(0)
    save_photo(tmp_path / "Toy" / "Images" / "g" / "1.jpg", blob(rng, (30, 30)), rng)
    save_grey(tmp_path / "Toy" / "Annotations" / "g" / "1.png", blob(rng, (30, 30)))
    with pytest.raises(UsageError) as caught:
        datasets.locate("Toy", tmp_path, require_images=False)
    message = str(caught.value)
    assert "no groundtruth/gt/gts/binary/mask/masks folder" in message
    assert "Known datasets: iCoseg" in message


# -- scoring maps from another tool ---------------------------------------------------------------


def test_scores_equal_pysodmetrics_run_by_hand(tmp_path):
    """The issue's "done" criterion: the same numbers as PySODMetrics on the same files."""
    entries = make_dataset(tmp_path / "data", "canonical", {"apple": 4, "bear": 3, "cup": 5}, seed=11, soft=True)
    predictions = write_predictions(tmp_path / "maps", entries, seed=12)
    document = bench_json("--data-root", tmp_path / "data", "--dataset", "Toy", "--pred", tmp_path / "maps")
    method = only_method(document)
    assert (method["expected"], method["evaluated"], method["resized"]) == (12, 12, 0)
    assert document["protocol"] == "pysodmetrics" and document["averaging"] == "image"
    assert document["exit_code"] == 0
    assert_same_numbers(method["metrics"], reference_for(entries, predictions))


def test_scores_equal_pysodmetrics_on_degenerate_maps_and_masks(tmp_path):
    """Empty and full masks, a one-pixel mask, constant and black maps, 1-bit and RGB mask files."""
    rng = np.random.default_rng(41)
    shape = (30, 44)
    mask = blob(rng, shape)
    one_pixel = np.zeros(shape, np.uint8)
    one_pixel[12, 20] = 255
    cases = {  # stem: (prediction, mask)
        "empty_mask": (noisy_map(rng, mask), np.zeros(shape, np.uint8)),
        "full_mask": (noisy_map(rng, mask), np.full(shape, 255, np.uint8)),
        "one_pixel": (noisy_map(rng, mask), one_pixel),
        "constant_map": (np.full(shape, 77, np.uint8), mask),
        "black_map": (np.zeros(shape, np.uint8), mask),
        "perfect_map": (mask.copy(), mask),
        "inverted_map": (255 - mask, mask),
    }
    folder = tmp_path / "data" / "Toy"
    for stem, (prediction, gt) in cases.items():
        save_grey(folder / "GroundTruth" / "odd" / f"{stem}.png", gt)
        save_grey(tmp_path / "pred" / "odd" / f"{stem}.png", prediction)
    Image.fromarray(mask > 128).save(folder / "GroundTruth" / "odd" / "one_bit_mask.png")  # mode "1"
    Image.fromarray(mask).convert("RGB").save(folder / "GroundTruth" / "odd" / "rgb_mask.png")
    for stem in ("one_bit_mask", "rgb_mask"):
        save_grey(tmp_path / "pred" / "odd" / f"{stem}.png", noisy_map(rng, mask))
    masks = sorted((folder / "GroundTruth" / "odd").iterdir())
    pairs = [(read(tmp_path / "pred" / "odd" / path.name), read(path)) for path in masks]
    method = only_method(bench_json("--data-root", tmp_path / "data", "-d", "Toy", "--pred", tmp_path / "pred"))
    assert method["evaluated"] == 9
    assert_same_numbers(method["metrics"], summary(*pysod_reference(pairs)))


@pytest.mark.parametrize("kind", ["16-bit", "colour"])
def test_scores_equal_pysodmetrics_on_16_bit_and_colour_maps(tmp_path, kind):
    entries = make_dataset(tmp_path / "data", "canonical", {"a": 3, "b": 3}, seed=3)
    rng = np.random.default_rng(4)
    pairs = []
    for entry in entries:
        mask = read(entry.mask)
        if kind == "16-bit":
            fine = noisy_map(rng, mask) / 255 + rng.uniform(0, 1 / 255, mask.shape)
            prediction = np.round(np.clip(fine, 0, 1) * 65535).astype(np.uint16)
        else:
            prediction = np.stack([noisy_map(rng, mask) for _ in range(3)], axis=-1)
        path = tmp_path / "pred" / entry.group / f"{entry.stem}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(path), prediction)
        pairs.append((read(path), mask))
    method = only_method(bench_json("--data-root", tmp_path / "data", "-d", "Toy", "--pred", tmp_path / "pred"))
    assert method["evaluated"] == 6
    assert_same_numbers(method["metrics"], summary(*pysod_reference(pairs)))


def test_missing_and_corrupt_predictions_are_named_counted_and_the_rest_scored(tmp_path):
    entries = make_dataset(tmp_path / "data", "canonical", {"a": 3, "b": 3})
    predictions = write_predictions(tmp_path / "pred", entries, skip=("a/a_01", "b/b_02"))
    corrupt = predictions.pop("b/b_00")
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n this is not the rest of a PNG")
    result = cosal("bench", "--data-root", tmp_path / "data", "--dataset", "Toy", "--pred", tmp_path / "pred", "--json")
    assert result.exit_code == 1, result.output
    method = only_method(json.loads(result.stdout))
    assert sorted(method["missing_predictions"]) == ["a/a_01", "b/b_02"]
    assert (method["expected"], method["evaluated"], method["missing"], method["failed"]) == (6, 3, 2, 1)
    [failure] = method["failures"]
    assert Path(failure["path"]) == corrupt and failure["group"] == "b"
    assert "a/a_01" in result.stderr and str(corrupt) in result.stderr
    scored = [e for e in entries if f"{e.group}/{e.stem}" in predictions]
    assert_same_numbers(method["metrics"], reference_for(scored, predictions))


def test_predictions_of_another_size_are_resized_like_cv2_and_counted(tmp_path):
    entries = make_dataset(tmp_path / "data", "canonical", {"a": 3, "b": 2}, seed=5)
    rng = np.random.default_rng(6)
    pairs = []
    for index, entry in enumerate(entries):
        mask = read(entry.mask)
        shape = (mask.shape[0] // 2 + 3, mask.shape[1] + 7) if index % 2 == 0 else mask.shape
        saved = read(save_grey(tmp_path / "pred" / entry.group / f"{entry.stem}.png", noisy_map(rng, mask, shape)))
        pairs.append((cv2.resize(saved, mask.shape[::-1], interpolation=cv2.INTER_LINEAR), mask))
    method = only_method(bench_json("--data-root", tmp_path / "data", "-d", "Toy", "--pred", tmp_path / "pred"))
    assert (method["resized"], method["evaluated"]) == (3, 5)
    assert_same_numbers(method["metrics"], summary(*pysod_reference(pairs)))


def test_predictions_may_sit_in_a_dataset_subfolder(tmp_path):
    entries = make_dataset(tmp_path / "data", "canonical", {"a": 2, "b": 2}, name="Cosal2015")
    predictions = write_predictions(tmp_path / "save_root" / "CoSal2015", entries)
    (tmp_path / "save_root" / "iCoseg").mkdir()  # another dataset's maps next to it
    dataset = datasets.locate("cosal2015", tmp_path / "data")
    assert predictions_root(tmp_path / "save_root", dataset) == tmp_path / "save_root" / "CoSal2015"
    assert predictions_root(tmp_path / "save_root" / "CoSal2015", dataset) == tmp_path / "save_root" / "CoSal2015"
    document = bench_json("--data-root", tmp_path / "data", "-d", "cosal2015", "--pred", tmp_path / "save_root")
    method = only_method(document)
    assert method["evaluated"] == 4 and method["missing"] == 0
    assert_same_numbers(method["metrics"], reference_for(entries, predictions))


def test_one_save_root_serves_several_datasets(tmp_path):
    first = make_dataset(tmp_path / "data", "gicd", {"a": 2, "b": 1}, name="iCoseg", seed=1)
    second = make_dataset(tmp_path / "data", "gicd", {"c": 3}, name="MSRC", seed=2)
    predictions = write_predictions(tmp_path / "GCoNet" / "iCoseg", first, seed=3)
    more = write_predictions(tmp_path / "GCoNet" / "MSRC", second, seed=4)
    document = bench_json("--data-root", tmp_path / "data", "-d", "icoseg", "-d", "msrc", "--pred", tmp_path / "GCoNet")
    scored = {d["name"]: d["methods"] for d in document["datasets"]}
    assert list(scored) == ["iCoseg", "MSRC"]
    assert [m["name"] for m in scored["iCoseg"]] == ["GCoNet"] and scored["MSRC"][0]["evaluated"] == 3
    assert_same_numbers(scored["iCoseg"][0]["metrics"], reference_for(first, predictions))
    assert_same_numbers(scored["MSRC"][0]["metrics"], reference_for(second, more))


def test_a_group_named_like_the_dataset_is_not_taken_for_a_dataset_folder(tmp_path):
    entries = make_dataset(tmp_path / "data", "canonical", {"toy": 2, "other": 1})
    write_predictions(tmp_path / "pred", entries)
    dataset = datasets.locate("Toy", tmp_path / "data")
    assert predictions_root(tmp_path / "pred", dataset) == tmp_path / "pred"


def test_group_average_is_the_mean_of_per_group_scores(tmp_path):
    entries = make_dataset(tmp_path / "data", "canonical", {"big": 6, "small": 1}, seed=21)
    predictions = write_predictions(tmp_path / "pred", entries, seed=22)
    # The lone image of the small group gets a poor map, so the two averagings must differ.
    small = next(e for e in entries if e.group == "small")
    save_grey(predictions["small/small_00"], 255 - read(small.mask))
    args = ("--data-root", tmp_path / "data", "-d", "Toy", "--pred", tmp_path / "pred")
    per_image = only_method(bench_json(*args))["metrics"]
    per_group = bench_json(*args, "--group-average")
    assert per_group["averaging"] == "group"

    groups = []
    for name in ("big", "small"):
        members = [e for e in entries if e.group == name]
        groups.append(pysod_reference([(read(predictions[f"{e.group}/{e.stem}"]), read(e.mask)) for e in members]))
    scalars = {key: float(np.mean([g[0][key] for g in groups])) for key in groups[0][0]}
    curves = {key: np.mean([g[1][key] for g in groups], axis=0) for key in ("fm", "em")}
    expected = summary(scalars, curves)
    got = only_method(per_group)["metrics"]
    assert_same_numbers(got, expected)
    for key in ("sm", "mae", "max_fm"):
        assert abs(got[key] - per_image[key]) > 1e-3, key


def test_eval_co_sod_protocol_scores_mae_on_the_raw_map_and_soft_mask(tmp_path):
    entries = make_dataset(tmp_path / "data", "canonical", {"a": 3, "b": 3}, seed=31, soft=True)
    predictions = write_predictions(tmp_path / "pred", entries, seed=32)
    args = ("--data-root", tmp_path / "data", "-d", "Toy", "--pred", tmp_path / "pred")
    pysod = only_method(bench_json(*args))["metrics"]
    document = bench_json(*args, "--protocol", "eval-co-sod")
    assert document["protocol"] == "eval-co-sod"
    eval_mae = only_method(document)["metrics"]["mae"]
    by_hand = np.mean(
        [np.abs(read(predictions[f"{e.group}/{e.stem}"]) / 255 - read(e.mask) / 255).mean() for e in entries]
    )
    assert eval_mae == pytest.approx(by_hand, abs=1e-6)
    assert abs(eval_mae - pysod["mae"]) > 1e-3


def test_unknown_protocol_is_a_usage_error(tmp_path):
    entries = make_dataset(tmp_path / "data")
    write_predictions(tmp_path / "pred", entries)
    result = cosal("bench", "--data-root", tmp_path / "data", "-d", "Toy", "--pred", tmp_path / "pred",
                   "--protocol", "matlab")  # fmt: skip
    assert result.exit_code == 2
    assert "pysodmetrics" in result.stderr and "eval-co-sod" in result.stderr


def test_report_writes_json_csvs_and_a_png(tmp_path):
    entries = make_dataset(tmp_path / "data", "canonical", {"a": 2, "b": 3, "c": 1})
    write_predictions(tmp_path / "one", entries, seed=1)
    write_predictions(tmp_path / "two", entries, seed=2)
    report = tmp_path / "report"
    printed = bench_json("--data-root", tmp_path / "data", "-d", "Toy", "--pred", tmp_path / "one",
                         "--pred", tmp_path / "two", "--report", report)  # fmt: skip
    assert sorted(p.name for p in report.iterdir()) == ["curves.png", "index.html", "index_files", "metrics.csv",
                                                        "metrics.json", "per_group.csv"]  # fmt: skip

    document = json.loads((report / "metrics.json").read_text())
    methods = document["datasets"][0]["methods"]
    assert [m["name"] for m in methods] == ["one", "two"]
    for written, shown in zip(methods, printed["datasets"][0]["methods"]):
        assert written["metrics"] == shown["metrics"]
        assert len(written["curves"]["thresholds"]) == 256
        assert len(written["curves"]["fm"]) == len(written["curves"]["precision"]) == 256
        assert set(written["per_group"]) == {"a", "b", "c"}
        assert {k: v["images"] for k, v in written["per_group"].items()} == {"a": 2, "b": 3, "c": 1}

    with open(report / "metrics.csv", newline="") as handle:
        header, *lines = list(csv.reader(handle))
    assert header[:6] == ["dataset", "method", "expected", "evaluated", "missing", "failed"]
    assert {"sm", "max_fm", "mean_fm", "adp_fm", "max_em", "mean_em", "adp_em", "mae", "wfm"} <= set(header)
    rows = [dict(zip(header, line)) for line in lines]
    assert [(row["method"], row["evaluated"]) for row in rows] == [("one", "6"), ("two", "6")]
    assert {row["dataset"] for row in rows} == {"Toy"}
    assert float(rows[0]["sm"]) == pytest.approx(methods[0]["metrics"]["sm"], abs=1e-6)
    with open(report / "per_group.csv", newline="") as handle:
        group_rows = list(csv.DictReader(handle))
    assert sorted((row["method"], row["group"]) for row in group_rows) == [
        (method, group) for method in ("one", "two") for group in ("a", "b", "c")
    ]
    with Image.open(report / "curves.png") as image:
        assert image.format == "PNG" and image.size[0] > 100
        image.verify()


def test_the_report_page_shows_the_table_the_curves_and_each_methods_worst_images_per_group(tmp_path):
    entries = make_dataset(tmp_path / "data", "canonical", {"a": 5, "b": 2})
    write_predictions(tmp_path / "one", entries, seed=1)
    write_predictions(tmp_path / "two", entries, seed=2)
    report = tmp_path / "report"
    printed = bench_json("--data-root", tmp_path / "data", "-d", "Toy", "--pred", tmp_path / "one",
                         "--pred", tmp_path / "two", "--report", report)  # fmt: skip
    page = (report / "index.html").read_text()
    assert "src='curves.png'" in page and page.count("<tr><td>Toy</td>") == 2
    assert f"{printed['datasets'][0]['methods'][0]['metrics']['sm']:.6f}"[:5] in page
    # group a: the 3 worst of 5 for each method; group b: both of 2; a row = photo, ground truth, both maps
    assert page.count("<h3>") == 4 and page.count("<tr><td class='name'>") == 3 + 3 + 2 + 2
    assert page.count(".photo.jpg' alt") == page.count(".gt.png' alt") == page.count(".one.png' alt") == 10
    scores = {}  # the rows of "a, one" are its three lowest S, lowest first
    for entry in entries:
        pred = np.asarray(Image.open(tmp_path / "one" / entry.group / f"{entry.stem}.png").convert("L"))
        scores[(entry.group, entry.stem)] = evaluate_pair(pred, np.asarray(Image.open(entry.mask).convert("L")))
    worst = sorted((stem for group, stem in scores if group == "a"), key=lambda s: scores[("a", s)].scalars["sm"])
    section = page.split("<h3>a, one</h3>")[1].split("</table>")[0]
    assert [row.split("</td>")[0] for row in section.split("<td class='name'>")[1:]] == worst[:3]
    assert "http" not in page and all((report / "index_files" / "Toy").rglob("*.png"))


def test_each_pred_folder_is_one_row_named_after_its_folder(tmp_path):
    entries = make_dataset(tmp_path / "data", "canonical", {"a": 2, "b": 2})
    write_predictions(tmp_path / "GICD", entries, seed=1)
    write_predictions(tmp_path / "runs" / "Toy", entries, seed=2)  # named like the dataset: "runs"
    write_predictions(tmp_path / "elsewhere" / "GICD", entries, seed=3)  # same folder name again
    document = bench_json("--data-root", tmp_path / "data", "-d", "Toy", "--pred", tmp_path / "GICD",
                          "--pred", tmp_path / "runs" / "Toy", "--pred", tmp_path / "elsewhere" / "GICD")  # fmt: skip
    methods = document["datasets"][0]["methods"]
    names = [m["name"] for m in methods]
    assert names[:2] == ["GICD", "runs"]
    assert len(set(names)) == 3 and names[2].startswith("GICD")
    assert all(m["evaluated"] == 4 for m in methods)
    assert len({m["metrics"]["sm"] for m in methods}) == 3  # three different sets of maps


def test_a_missing_pred_folder_is_a_usage_error(tmp_path):
    make_dataset(tmp_path / "data")
    result = cosal("bench", "--data-root", tmp_path / "data", "-d", "Toy", "--pred", tmp_path / "nowhere")
    assert result.exit_code == 2 and "nowhere" in result.stderr


# -- running a method ------------------------------------------------------------------------------


def test_method_maps_are_written_scored_and_reused_with_skip_existing(fake_method, tmp_path):
    entries = make_dataset(tmp_path / "data", "canonical", {"a": 2, "b": 3})
    out = tmp_path / "out"
    args = ("--method", "test-brightness", "--data-root", tmp_path / "data", "-d", "Toy", "--output", out,
            "--device", "cpu")  # fmt: skip
    first = only_method(bench_json(*args))
    maps = {f"{e.group}/{e.stem}": out / "test-brightness" / "Toy" / e.group / f"{e.stem}.png" for e in entries}
    assert all(path.is_file() for path in maps.values())
    assert first["name"] == "test-brightness"
    assert first["detect"]["counts"]["written"] == 5 and first["evaluated"] == 5
    assert_same_numbers(first["metrics"], reference_for(entries, maps))

    refused = cosal("bench", *args, "--json")
    assert refused.exit_code == 2 and "--skip-existing" in refused.stderr

    before = {key: (path.read_bytes(), path.stat().st_mtime_ns) for key, path in maps.items()}
    again = only_method(bench_json(*args, "--skip-existing"))
    assert again["detect"]["counts"]["skipped"] == 5 and again["detect"]["counts"]["written"] == 0
    assert {key: (path.read_bytes(), path.stat().st_mtime_ns) for key, path in maps.items()} == before
    # wF may differ in its last bits between runs on the same maps (cv2.distanceTransform's float32
    # output depends on where its buffer lands); every other number must be identical.
    assert again["metrics"] == first["metrics"]


def test_method_maps_pair_with_masks_whose_names_differ_in_case(fake_method, tmp_path):
    rng = np.random.default_rng(4)
    for stem in ("A1", "B2"):
        mask = blob(rng, (36, 28))
        save_photo(tmp_path / "data" / "Toy" / "Image" / "Dog" / f"{stem}.JPG", mask, rng)
        save_grey(tmp_path / "data" / "Toy" / "GroundTruth" / "dog" / f"{stem.lower()}.png", mask)
    method = only_method(bench_json("-m", "test-brightness", "--data-root", tmp_path / "data", "-d", "Toy",
                                    "-o", tmp_path / "out", "--device", "cpu"))  # fmt: skip
    assert (method["evaluated"], method["missing"]) == (2, 0)


def test_unknown_method_fails_before_any_dataset_is_read(fake_method, tmp_path, monkeypatch):
    make_dataset(tmp_path / "data")

    def no_reading(*args, **kwargs):
        raise AssertionError("the dataset was read")

    monkeypatch.setattr(datasets, "locate", no_reading)
    result = cosal("bench", "--method", "no-such-method", "--data-root", tmp_path / "data", "-d", "Toy",
                   "-o", tmp_path / "out")  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "no-such-method" in result.stderr and "test-brightness" in result.stderr
    assert not (tmp_path / "out").exists()


def test_skip_existing_and_overwrite_exclude_each_other(fake_method, tmp_path):
    make_dataset(tmp_path / "data")
    result = cosal("bench", "-m", "test-brightness", "--data-root", tmp_path / "data", "-d", "Toy",
                   "-o", tmp_path / "out", "--skip-existing", "--overwrite")  # fmt: skip
    assert result.exit_code == 2 and "exclude each other" in result.stderr
    assert not (tmp_path / "out").exists()


# -- --split: the held-out part only ---------------------------------------------------------------


def write_split(path: Path, body: str) -> Path:
    path.write_text("schema: 1\nname: toy-split\ndatasets:\n  toy:\n" + body)
    return path


def test_split_scores_and_runs_only_the_held_out_images(fake_method, tmp_path):
    from cosal_cli.splits import hash_fraction

    entries = make_dataset(tmp_path / "data", "canonical", {"a": 2, "b": 3, "c": 12})
    split = write_split(tmp_path / "split.yaml", "    held_out_groups: [b]\n    held_out_fraction: {c: 0.5}\n")
    chosen = [e for e in entries if e.group == "b" or (e.group == "c" and hash_fraction(f"c/{e.stem}") < 0.5)]
    assert 3 < len(chosen) < 15
    out = tmp_path / "out"
    document = bench_json("--method", "test-brightness", "--data-root", tmp_path / "data", "-d", "Toy",
                          "--split", split, "--output", out, "--device", "cpu")  # fmt: skip
    [dataset] = document["datasets"]
    assert dataset["name"] == "Toy@toy-split" and "toy-split" in dataset["subset"]
    assert (dataset["groups"], dataset["images"]) == (2, len(chosen))
    method = only_method(document)
    assert method["evaluated"] == len(chosen) and method["detect"]["counts"]["images"] == len(chosen)
    # Maps of a held-out part live apart from full-dataset maps (a group's maps depend on its images).
    maps = {f"{e.group}/{e.stem}": out / "test-brightness" / "Toy@toy-split" / e.group / f"{e.stem}.png"
            for e in chosen}  # fmt: skip
    assert sorted(out.rglob("*.png")) == sorted(maps.values())
    assert_same_numbers(method["metrics"], reference_for(chosen, maps))


def test_split_with_a_held_out_fraction_scores_predictions_of_that_part(tmp_path):
    from cosal_cli.splits import hash_fraction

    entries = make_dataset(tmp_path / "data", "canonical", {"a": 12})
    predictions = write_predictions(tmp_path / "pred", entries)
    split = write_split(tmp_path / "split.yaml", "    held_out_fraction: {a: 0.5}\n")
    chosen = [e for e in entries if hash_fraction(f"a/{e.stem}") < 0.5]
    assert 0 < len(chosen) < len(entries)
    method = only_method(bench_json("--pred", tmp_path / "pred", "--data-root", tmp_path / "data", "-d", "Toy",
                                    "--split", split))  # fmt: skip
    assert method["evaluated"] == len(chosen)
    assert_same_numbers(method["metrics"], reference_for(chosen, {f"a/{e.stem}": predictions[f"a/{e.stem}"]
                                                                  for e in chosen}))  # fmt: skip


def test_split_naming_an_unknown_group_or_not_the_dataset_is_a_usage_error(tmp_path):
    make_dataset(tmp_path / "data", "canonical", {"a": 2})
    write_predictions(tmp_path / "pred", make_dataset(tmp_path / "data", "canonical", {"a": 2}))
    typo = write_split(tmp_path / "typo.yaml", "    held_out_groups: [aa]\n")
    result = cosal("bench", "--pred", tmp_path / "pred", "--data-root", tmp_path / "data", "-d", "Toy", "--split", typo)
    assert result.exit_code == 2 and "aa" in result.stderr and "typo.yaml" in result.stderr
    other = tmp_path / "other.yaml"
    other.write_text("schema: 1\nname: other\ndatasets:\n  elsewhere:\n    held_out_groups: [a]\n")
    result = cosal(
        "bench", "--pred", tmp_path / "pred", "--data-root", tmp_path / "data", "-d", "Toy", "--split", other
    )
    assert result.exit_code == 2 and "says nothing about dataset 'Toy'" in result.stderr
