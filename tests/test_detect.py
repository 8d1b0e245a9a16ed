"""`cosal detect` end to end: files in, maps out, messages and exit codes.

Most tests run a small test-only method (the image's brightness times a gain read from a weight
file) so that they need no download; its weights are pre-seeded in a temporary cache and found
through a temporary manifest, exactly as real weights are. The last tests run the real csmg-mask.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from cosal_cli import methods
from cosal_cli.cli import app

from .conftest import EXAMPLES, detect_examples


def cosal(*args: str, stdin: str | None = None):
    return CliRunner().invoke(app, list(args), input=stdin)


def save(path: Path, size=(40, 30), colour=(200, 200, 200), mode="RGB", **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path, **options)
    return path


def read_map(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.mode == "L"
        return np.asarray(image)


def test_writes_one_map_per_image_at_the_original_size(fake_method, tmp_path):
    save(tmp_path / "g" / "white.png", (50, 20), (255, 255, 255))
    save(tmp_path / "g" / "grey.jpg", (31, 47), (128, 128, 128))
    out = tmp_path / "out"
    result = cosal("detect", str(tmp_path / "g"), "--method", "test-brightness", "-o", str(out))
    assert result.exit_code == 0, result.output
    white, grey = read_map(out / "g" / "white.png"), read_map(out / "g" / "grey.png")
    assert white.shape == (20, 50) and grey.shape == (47, 31)
    assert (white == 255).all()
    assert abs(int(np.median(grey)) - 128) <= 2


def test_image_files_given_together_are_one_group_and_a_single_file_is_a_group_of_one(fake_method, tmp_path):
    files = [save(tmp_path / "photos" / name, (20, 10), (255, 255, 255)) for name in ("a.jpg", "b.png", "c.jpg")]
    out = tmp_path / "out"
    result = cosal("detect", str(files[0]), str(files[2]), "--group", "pair", "-m", "test-brightness", "-o", str(out),
                   "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert sorted(path.name for path in (out / "pair").iterdir()) == ["a.png", "c.png"]
    result = cosal("detect", str(files[1]), "-m", "test-brightness", "-o", str(out), "--json")
    assert result.exit_code == 0, result.output
    assert read_map(out / "photos" / "b.png").shape == (10, 20)
    assert any("a group of one image" in note for note in json.loads(result.stdout)["notices"])
    # maps that would land beside the photos given (and could replace one) are refused
    result = cosal("detect", str(files[1]), "-m", "test-brightness", "-o", str(tmp_path))
    assert result.exit_code == 2 and "into its input folder" in result.output
    result = cosal("detect", str(files[1]), "--group", "a/b", "-m", "test-brightness", "-o", str(out))
    assert result.exit_code == 2 and "one folder name" in result.output


def test_exif_orientation_is_applied_to_the_input(fake_method, tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    save(tmp_path / "g" / "rotated.jpg", (60, 20), exif=exif)
    result = cosal("detect", str(tmp_path / "g"), "-m", "test-brightness", "-o", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    assert read_map(tmp_path / "out" / "g" / "rotated.png").shape == (60, 20)


def test_bad_inputs_are_reported_by_name_and_the_rest_of_the_batch_runs(fake_method, tmp_path):
    group = tmp_path / "mixed"
    good = save(group / "good.jpg")
    save(group / "gray.png", mode="L", colour=90)
    save(group / "palette.png", mode="P", colour=3)
    save(group / "cmyk.jpg", mode="CMYK", colour=(0, 0, 0, 0))
    save(group / "alpha.png", mode="RGBA", colour=(10, 20, 30, 0))
    Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16)).save(group / "deep.png")
    (group / "zero.jpg").write_bytes(b"")
    (group / "text.jpg").write_text("not really a jpeg")
    (group / "truncated.jpg").write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    save(group / "anim.gif", mode="P", colour=1)
    (group / "notes.txt").write_text("hello")
    (group / ".DS_Store").write_bytes(b"\0\0")
    out = tmp_path / "out"
    result = cosal("detect", str(group), "-m", "test-brightness", "-o", str(out), "--json")
    assert result.exit_code == 1, result.output
    summary = json.loads(result.stdout)
    failed = {Path(item["path"]).name for item in summary["failures"]}
    assert failed == {"zero.jpg", "text.jpg", "truncated.jpg", "anim.gif"}
    written = sorted(p.name for p in (out / "mixed").iterdir())
    assert written == ["alpha.png", "cmyk.png", "deep.png", "good.png", "gray.png", "palette.png"]
    assert (read_map(out / "mixed" / "alpha.png") == 255).all()  # transparent -> composited on white
    assert (read_map(out / "mixed" / "deep.png") == 255).all()  # 16-bit 65535 rescaled, not clipped
    for name in failed:
        assert name in result.stderr
    assert "notes.txt" in result.stderr and ".DS_Store" in result.stderr  # skipped with a notice
    assert summary["exit_code"] == 1 and summary["counts"]["failed"] == 4


def test_folder_of_groups_reports_an_empty_group_and_runs_the_others(fake_method, tmp_path):
    save(tmp_path / "set" / "a" / "1.png")
    save(tmp_path / "set" / "b" / "1.png")
    (tmp_path / "set" / "empty").mkdir()
    out = tmp_path / "out"
    result = cosal("detect", str(tmp_path / "set"), "-m", "test-brightness", "-o", str(out))
    assert result.exit_code == 1
    assert "empty group" in result.stderr
    assert (out / "a" / "1.png").is_file() and (out / "b" / "1.png").is_file()


def test_group_paths_can_come_from_stdin(fake_method, tmp_path):
    save(tmp_path / "a" / "x.png")
    save(tmp_path / "b" / "y.png")
    stdin = f"{tmp_path / 'a'}\n\n{tmp_path / 'b'}\n"
    result = cosal("detect", "-", "-m", "test-brightness", "-o", str(tmp_path / "out"), stdin=stdin)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "a" / "x.png").is_file() and (tmp_path / "out" / "b" / "y.png").is_file()


def test_same_stem_inputs_do_not_overwrite_each_other(fake_method, tmp_path):
    save(tmp_path / "g" / "a.jpg", colour=(255, 255, 255))
    save(tmp_path / "g" / "a.png", colour=(0, 0, 0))
    result = cosal("detect", str(tmp_path / "g"), "-m", "test-brightness", "-o", str(tmp_path / "out"))
    assert result.exit_code == 0
    assert (read_map(tmp_path / "out" / "g" / "a.png") > 250).all()
    assert (read_map(tmp_path / "out" / "g" / "a.png.png") < 5).all()
    assert "share the stem" in result.stderr


def test_existing_maps_need_skip_existing_or_overwrite(fake_method, tmp_path):
    for name in ("1.png", "2.png", "3.png"):
        save(tmp_path / "g" / name)
    out = tmp_path / "out"
    args = ["detect", str(tmp_path / "g"), "-m", "test-brightness", "-o", str(out), "--json"]
    assert cosal(*args).exit_code == 0
    refused = cosal(*args)
    assert refused.exit_code == 2 and "--skip-existing" in refused.stderr

    (out / "g" / "2.png").unlink()  # an interrupted run
    resumed = cosal(*args, "--skip-existing")
    assert resumed.exit_code == 0
    statuses = {Path(o["input"]).name: o["status"] for o in json.loads(resumed.stdout)["groups"][0]["outputs"]}
    assert statuses == {"1.png": "skipped", "2.png": "written", "3.png": "skipped"}

    complete = json.loads(cosal(*args, "--skip-existing").stdout)
    assert complete["counts"] == {"groups": 1, "images": 3, "written": 0, "skipped": 3, "failed": 0}
    assert json.loads(cosal(*args, "--overwrite").stdout)["counts"]["written"] == 3
    assert cosal(*args, "--overwrite", "--skip-existing").exit_code == 2


def test_groups_are_reported_in_input_order_when_some_are_skipped(fake_method, tmp_path):
    for name in ("a", "b", "c"):
        save(tmp_path / "set" / name / "1.png")
    out = tmp_path / "out"
    args = ["detect", str(tmp_path / "set"), "-m", "test-brightness", "-o", str(out), "--json", "--skip-existing"]
    save(out / "b" / "1.png")  # b is already done
    summary = json.loads(cosal(*args).stdout)
    counts = [(g["name"], g["written"], g["skipped"]) for g in summary["groups"]]
    assert counts == [("a", 1, 0), ("b", 0, 1), ("c", 1, 0)]


def test_unknown_method_and_bad_device_are_usage_errors(fake_method, tmp_path):
    save(tmp_path / "g" / "1.png")
    assert cosal("detect", str(tmp_path / "g"), "-m", "no-such-method").exit_code == 2
    assert cosal("detect", str(tmp_path / "g"), "-m", "test-brightness", "--device", "tpu").exit_code == 2
    if not torch.cuda.is_available():
        result = cosal("detect", str(tmp_path / "g"), "-m", "test-brightness", "--device", "cuda")
        assert result.exit_code == 2 and "no CUDA device" in result.stderr


def test_missing_weights_offline_exit_3_and_corrupt_weights_exit_4(fake_method, tmp_path):
    save(tmp_path / "g" / "1.png")
    args = ["detect", str(tmp_path / "g"), "-m", "test-brightness", "-o", str(tmp_path / "out")]
    cached = fake_method.read_bytes()
    fake_method.write_bytes(cached[:-1] + bytes([cached[-1] ^ 1]))
    corrupt = cosal(*args)
    assert corrupt.exit_code == 4 and "cosal weights pull test-gain" in corrupt.stderr
    fake_method.unlink()
    missing = cosal(*args, "--offline")
    assert missing.exit_code == 3 and "cosal weights pull test-gain" in missing.stderr
    assert not (tmp_path / "out").exists()


def test_quiet_prints_only_errors_and_json_stays_on_stdout(fake_method, tmp_path):
    save(tmp_path / "g" / "1.png")
    (tmp_path / "g" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (tmp_path / "g" / "readme.md").write_text("skip me")
    result = cosal("detect", str(tmp_path / "g"), "-m", "test-brightness", "-o", str(tmp_path / "o"), "-q", "--json")
    assert result.exit_code == 1
    assert json.loads(result.stdout)["counts"]["written"] == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and all(line.startswith("error:") for line in lines)


def test_no_temporary_files_are_left_next_to_the_maps(fake_method, tmp_path):
    for index in range(4):
        save(tmp_path / "g" / f"{index}.png")
    assert cosal("detect", str(tmp_path / "g"), "-m", "test-brightness", "-o", str(tmp_path / "o")).exit_code == 0
    assert sorted(p.name for p in (tmp_path / "o" / "g").iterdir()) == ["0.png", "1.png", "2.png", "3.png"]


def test_help_and_version_do_not_import_torch():
    code = "import sys; from cosal_cli.cli import app; print('torch' in sys.modules)"
    imported = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert imported.stdout.strip() == "False"
    version = subprocess.run(
        [sys.executable, "-m", "cosal_cli", "--version"], capture_output=True, text=True, check=False
    )
    assert version.returncode == 0 and version.stdout.startswith("cosal ")


def test_methods_lists_every_card_with_its_weights(fake_method):
    result = cosal("methods", "--json")
    assert result.exit_code == 0
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["test-brightness"]["weights"] == {"backbone": {"component": "test-gain", "cached": True}}


def test_every_registered_method_reads_the_roles_the_manifest_gives_it(real_hub):
    for name in methods.CARDS:
        assert set(methods.method_class(name).roles) == set(real_hub.manifest.roles(name)), name
        assert methods.method_class(name).name == name


# -- the real csmg-mask on the committed examples -------------------------------------------------


@pytest.mark.weights
def test_csmg_mask_highlights_the_common_object_of_the_examples(real_weights, real_hub, tmp_path, monkeypatch):
    real_weights("vgg16-imagenet")
    monkeypatch.setenv("COSAL_HOME", str(real_hub.home))
    monkeypatch.delenv("COSAL_MANIFEST", raising=False)
    summary, scores = detect_examples(tmp_path / "maps", "--method", "csmg-mask")
    assert summary["method"] == "csmg-mask"
    # Measured: 4.8x to 27x brighter on the cats than off them; an inverted map would be below 1.
    assert all(ratio > 3 for ratio, _ in scores.values()), scores
    # The sparse mask lights the cats' heads more than their bodies: measured AUC 0.61 to 0.95, mean 0.77.
    aucs = [value for _, value in scores.values()]
    assert min(aucs) > 0.55 and float(np.mean(aucs)) > 0.7, scores


@pytest.mark.weights
def test_csmg_mask_handles_a_group_of_one(real_weights, tmp_path):
    from cosal_cli.methods.csmg_mask import Method as CsmgMask

    method = CsmgMask({"backbone": real_weights("vgg16-imagenet")}, torch.device("cpu"))
    image = np.asarray(Image.open(next((EXAMPLES / "Image" / "cat").glob("*.jpg"))).resize((224, 224)))
    batch = torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float() / 255
    with torch.inference_mode():
        maps = method.predict_group(batch)
    assert maps.shape == (1, 14, 14) and float(maps.max()) == pytest.approx(1.0)


def test_the_progress_moves_per_image_and_says_what_the_run_is_doing(fake_method, tmp_path):
    from cosal_cli import io
    from cosal_cli.runners import local

    class Recorder:
        def __init__(self):
            self.events = []

        def notice(self, message):
            pass

        def problem(self, problem):
            self.events.append("problem")

        def advance(self, images):
            self.events.append(images)

        def doing(self, text):
            self.events.append(text)

        def group_done(self, report):
            self.events.append("done")

    for index in range(3):
        save(tmp_path / "g" / f"{index}.png")
    (tmp_path / "g" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    recorder = Recorder()
    local.run(io.discover([tmp_path / "g"]), "test-brightness", tmp_path / "out", reporter=recorder, device_spec="cpu")
    # half of each image when computed (this method does not count its chunks: at once), the image that
    # failed to decode, half of each image when written, then the failed image's share
    assert recorder.events == ["g: decoding", "g: computing 4 image(s)", 1.5, "problem", "g: writing", 0.5, 0.5, 0.5,
                               1.0, "done"]  # fmt: skip


def test_threads_sets_torchs_cpu_threads_and_the_summary_says_how_many(fake_method, tmp_path):
    save(tmp_path / "g" / "1.png")
    before = torch.get_num_threads()
    try:
        result = cosal("detect", str(tmp_path / "g"), "-m", "test-brightness", "-o", str(tmp_path / "o"), "--threads",
                       "1", "--json")  # fmt: skip
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["threads"] == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert cosal("detect", str(tmp_path / "g"), "-m", "test-brightness", "--threads", "0").exit_code == 2


def test_importing_cosal_makes_openmp_threads_sleep_and_keeps_torchvision_out():
    """OpenMP threads that spin at barriers stall beside another busy process (README "Speed"); torchvision
    pulls in torch._dynamo (1.4 s of start-up), which only gicd-official's co-classifier needs."""
    code = ("import os, sys; os.environ.pop('OMP_WAIT_POLICY', None); import cosal_cli; "
            "from cosal_cli.methods import gicd, icnet, sod; "
            "print(os.environ['OMP_WAIT_POLICY'], 'torchvision' in sys.modules)")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["PASSIVE", "False"]
