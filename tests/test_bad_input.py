"""Nothing a user's folder holds can crash a batch, and every exit is machine-readable (issue 13).

Each test here failed before its fix: symlink loops and dangling links, a TIFF that makes Pillow raise
TypeError, unreadable folders and files, --json on every exit code, SIGTERM, the group being written
when a run is interrupted, a stray image beside group folders, an output folder inside the inputs,
decoder chatter under -q, empty stdin, a folder given twice and 16-bit RGB. The corrupt files are
small regression files under ``tests/data/bad_inputs/`` and ``tests/fuzz_regressions/`` (found by
``benchmarks/fuzz_inputs.py``).
"""

from __future__ import annotations

import _thread
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from cosal_cli import inference, io
from cosal_cli.cli import app

from .conftest import FAKE_MODULE, REPO, BrightnessMethod, SilentReporter
from .test_io import png_chunk

BAD_INPUTS = Path(__file__).parent / "data" / "bad_inputs"
FUZZ_REGRESSIONS = Path(__file__).parent / "fuzz_regressions"


def cosal(*args: str, stdin: str | None = None):
    return CliRunner().invoke(app, list(args), input=stdin)


def save(path: Path, size=(24, 16), colour=(200, 200, 200)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def detect_json(*args: str, stdin: str | None = None) -> tuple[object, dict]:
    result = cosal("detect", *args, "-m", "test-brightness", "--json", stdin=stdin)
    return result, json.loads(result.stdout)


# -- 1. symbolic links and special files -------------------------------------------------------


def test_symlink_loops_and_dangling_links_are_per_file_errors_not_a_crash(fake_method, tmp_path):
    group = tmp_path / "set" / "cats"
    save(group / "real.png")
    (group / "loop-a.jpg").symlink_to(group / "loop-b.jpg")
    (group / "loop-b.jpg").symlink_to(group / "loop-a.jpg")
    (group / "gone.jpg").symlink_to(tmp_path / "deleted.jpg")
    (group / "notes").symlink_to(tmp_path / "nowhere")  # not image-like: skipped with the others
    save(tmp_path / "set" / "dogs" / "d.png")
    (tmp_path / "set" / "self").symlink_to(tmp_path / "set" / "self")  # a folder-level loop
    result, summary = detect_json(str(tmp_path / "set"), "-o", str(tmp_path / "out"))
    assert result.exit_code == 1, result.output
    reasons = {Path(f["path"]).name: f["message"] for f in summary["failures"]}
    assert "symbolic link loop" in reasons["loop-a.jpg"] and "symbolic link loop" in reasons["loop-b.jpg"]
    assert "broken symbolic link" in reasons["gone.jpg"] and "deleted.jpg" in reasons["gone.jpg"]
    assert "symbolic link loop" in reasons["self"]
    assert (tmp_path / "out" / "cats" / "real.png").is_file() and (tmp_path / "out" / "dogs" / "d.png").is_file()


def test_a_fifo_named_like_an_image_is_reported_without_ever_being_opened(tmp_path):
    group = tmp_path / "g"
    save(group / "a.png")
    os.mkfifo(group / "pipe.jpg")  # opening it for reading would block forever
    os.mkfifo(group / "other-pipe")
    found = io.discover([group])
    assert [image.path.name for image in found.groups[0].images] == ["a.png"]
    assert ["pipe.jpg"] == [problem.path.name for problem in found.groups[0].problems]
    assert "not a regular file (a FIFO)" in found.groups[0].problems[0].message
    with pytest.raises(io.InputError, match="not a regular file"):
        io.load_rgb(group / "pipe.jpg")


def test_a_symlink_loop_given_as_the_path_is_named_as_a_loop(tmp_path):
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    found = io.discover([tmp_path / "loop"])
    assert found.groups == [] and "symbolic link loop" in found.problems[0].message


# -- 2. corrupt files that made Pillow raise something else than OSError -------------------------


def regression_files() -> list[Path]:
    folders = [folder for folder in (BAD_INPUTS, FUZZ_REGRESSIONS) if folder.is_dir()]
    return sorted(p for folder in folders for p in folder.iterdir() if p.suffix.lower() in io.IMAGE_SUFFIXES)


@pytest.mark.parametrize("path", regression_files(), ids=lambda p: p.name)
def test_regression_files_decode_or_raise_input_error_only(path):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # numpy's, on a signalling NaN in a float TIFF
            decoded = io.load_rgb(path)
    except io.InputError as exc:
        assert str(exc)
    else:
        assert decoded.rgb.mode == "RGB" and min(decoded.size) > 0


def test_tiff_whose_second_frame_lacks_dimensions_fails_alone_and_the_batch_goes_on(fake_method, tmp_path):
    for name in ("a", "b", "c"):
        save(tmp_path / "set" / name / "ok.png")
    shutil.copy(BAD_INPUTS / "tiff-second-frame-missing-dimensions.tif", tmp_path / "set" / "b" / "broken.tif")
    result, summary = detect_json(str(tmp_path / "set"), "-o", str(tmp_path / "out"))
    assert result.exit_code == 1, result.output
    assert [Path(f["path"]).name for f in summary["failures"]] == ["broken.tif"]
    assert "Missing dimensions" in summary["failures"][0]["message"]
    assert summary["counts"]["written"] == 3


# -- 3. unreadable folders and files -------------------------------------------------------------


def run_without_permission_bypass(code: str) -> subprocess.CompletedProcess:
    """Run Python so that file permissions apply: as root, without the capabilities that bypass them."""
    command = [sys.executable, "-c", code]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        assert setpriv, "the permission tests need setpriv (util-linux) when run as root"
        dropped = "-dac_override,-dac_read_search"
        command = [setpriv, f"--inh-caps={dropped}", f"--bounding-set={dropped}", *command]
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=300)


def test_an_unreadable_group_folder_and_file_are_named_and_readable_groups_run(tmp_path, monkeypatch):
    root = tmp_path / "set"
    for name in ("a", "locked", "z"):
        save(root / name / "1.png")
    save(root / "a" / "secret.png")
    os.chmod(root / "a" / "secret.png", 0o000)
    os.chmod(root / "locked", 0o000)
    monkeypatch.setenv("COSAL_HOME", str(tmp_path / "home"))  # gmr needs no weights, only a cache folder
    out = tmp_path / "out"
    code = (
        "import sys; from cosal_cli.cli import main; "
        f"sys.argv = ['cosal', 'detect', {str(root)!r}, '-m', 'gmr', '-o', {str(out)!r}, '--json', '-q']; main()"
    )
    try:
        result = run_without_permission_bypass(code)
    finally:
        os.chmod(root / "locked", 0o755)  # so that pytest can remove it
    assert result.returncode == 1, result.stderr
    summary = json.loads(result.stdout)
    reasons = {Path(f["path"]).name: f["message"] for f in summary["failures"]}
    assert "permission denied" in reasons["locked"] and "chmod" in reasons["locked"]
    assert "permission denied" in reasons["secret.png"]
    assert (out / "a" / "1.png").is_file() and (out / "z" / "1.png").is_file()


def test_bench_names_an_unreadable_mask_folder_and_scores_the_rest(tmp_path):
    for group in ("a", "b"):
        mask = np.zeros((16, 16), np.uint8)
        mask[4:12, 4:12] = 255
        for root in ("data/GroundTruth", "pred"):
            (tmp_path / root / group).mkdir(parents=True)
            Image.fromarray(mask).save(tmp_path / root / group / "x.png")
    os.chmod(tmp_path / "data" / "GroundTruth" / "b", 0o000)
    code = (
        "import sys; from cosal_cli.cli import main; "
        f"sys.argv = ['cosal', 'bench', '-d', {str(tmp_path / 'data')!r}, '--pred', {str(tmp_path / 'pred')!r}, "
        "'--json', '-q']; main()"
    )
    try:
        result = run_without_permission_bypass(code)
    finally:
        os.chmod(tmp_path / "data" / "GroundTruth" / "b", 0o755)
    assert result.returncode == 1, result.stderr
    assert "permission denied" in result.stderr and "GroundTruth/b" in result.stderr
    dataset = json.loads(result.stdout)["datasets"][0]
    assert dataset["methods"][0]["evaluated"] == 1


# -- 4 and 5. one JSON object for every exit code, SIGTERM included ------------------------------


class TroubleMethod(BrightnessMethod):
    """test-brightness, except in groups whose name asks for trouble."""

    def predict_group(self, images, sources=None):
        group = sources.group if sources else ""
        if group == "crash":
            raise TypeError("a bug in a method")
        if group == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises before this ends
        if group == "ctrl-c":
            raise KeyboardInterrupt
        return super().predict_group(images, sources)


@pytest.fixture
def trouble_method(fake_method, monkeypatch):
    monkeypatch.setattr(sys.modules[FAKE_MODULE], "Method", TroubleMethod)
    return fake_method


def test_an_unexpected_error_in_one_group_is_exit_5_and_the_other_groups_are_written(trouble_method, tmp_path):
    for name in ("alpha", "crash", "omega"):
        save(tmp_path / "set" / name / "1.png")
        save(tmp_path / "set" / name / "2.png")
    result, summary = detect_json(str(tmp_path / "set"), "-o", str(tmp_path / "out"))
    assert result.exit_code == 5 and summary["exit_code"] == 5
    assert summary["internal_errors"] == 1 and summary["counts"]["written"] == 4
    assert {Path(f["path"]).parent.name for f in summary["failures"]} == {"crash"}
    assert all(f["internal"] and "TypeError: a bug in a method" in f["message"] for f in summary["failures"])
    assert "Traceback" not in result.stderr and "--debug" in result.stderr
    debug = cosal("detect", str(tmp_path / "set"), "-m", "test-brightness", "-o", str(tmp_path / "o2"), "--debug")
    assert debug.exit_code == 5 and "Traceback" in debug.stderr and "predict_group" in debug.stderr


def test_sigterm_ends_the_run_with_143_a_summary_and_the_maps_so_far(trouble_method, tmp_path):
    for name in ("a", "sigterm", "z"):
        save(tmp_path / "set" / name / "1.png")
    result, summary = detect_json(str(tmp_path / "set"), "-o", str(tmp_path / "out"))
    assert result.exit_code == 143 and summary["exit_code"] == 143
    assert summary["interrupted"] and summary["signal"] == "SIGTERM"
    assert summary["counts"]["written"] == 1 and (tmp_path / "out" / "a" / "1.png").is_file()
    assert "rerun with --skip-existing" in result.stderr
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored after the command


def test_ctrl_c_is_130_with_json(trouble_method, tmp_path):
    save(tmp_path / "set" / "ctrl-c" / "1.png")
    result, summary = detect_json(str(tmp_path / "set"), "-o", str(tmp_path / "out"))
    assert result.exit_code == 130 and summary["exit_code"] == 130 and summary["signal"] == "SIGINT"


def test_usage_and_weight_errors_print_one_json_object_with_the_message(fake_method, tmp_path):
    save(tmp_path / "g" / "1.png")
    out = str(tmp_path / "out")
    unknown = cosal("detect", str(tmp_path / "g"), "-m", "no-such", "-o", out, "--json")
    assert unknown.exit_code == 2
    assert json.loads(unknown.stdout) == {
        "cosal_version": json.loads(unknown.stdout)["cosal_version"], "exit_code": 2,
        "error": json.loads(unknown.stdout)["error"],
    }  # fmt: skip
    assert "unknown method 'no-such'" in json.loads(unknown.stdout)["error"]
    parse_error = cosal("detect", str(tmp_path / "g"), "--batch-size", "0", "--json")
    assert parse_error.exit_code == 2 and "--batch-size" in json.loads(parse_error.stdout)["error"]

    cached = fake_method.read_bytes()
    fake_method.write_bytes(cached[:-1] + bytes([cached[-1] ^ 1]))
    corrupt = cosal("detect", str(tmp_path / "g"), "-m", "test-brightness", "-o", out, "--json")
    assert corrupt.exit_code == 4 and json.loads(corrupt.stdout)["exit_code"] == 4
    fake_method.unlink()
    missing = cosal("detect", str(tmp_path / "g"), "-m", "test-brightness", "-o", out, "--json", "--offline")
    assert missing.exit_code == 3 and "cosal weights pull" in json.loads(missing.stdout)["error"]


def test_a_crash_outside_any_group_is_exit_5_with_json(fake_method, tmp_path, monkeypatch):
    save(tmp_path / "g" / "1.png")

    def broken(*args, **kwargs):
        raise AttributeError("discovery bug")

    monkeypatch.setattr(io, "discover", broken)
    result = cosal("detect", str(tmp_path / "g"), "-m", "test-brightness", "--json")
    assert result.exit_code == 5
    assert "AttributeError: discovery bug" in json.loads(result.stdout)["error"]


def test_real_sigterm_to_a_cosal_process_exits_143_with_json(tmp_path):
    """A real `cosal detect` process, killed while it reads a FIFO on stdin (the pipe is never written)."""
    process = subprocess.Popen([sys.executable, "-m", "cosal_cli", "detect", "-", "--json", "-o", str(tmp_path / "o")],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)  # fmt: skip
    time.sleep(3)  # long enough to import and reach the stdin read
    process.terminate()
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr
    assert json.loads(stdout)["exit_code"] == 143


# -- 6. an interrupted run reports the group it was writing ---------------------------------------


def test_ctrl_c_while_a_group_is_written_finishes_it_then_exits_130(fake_method, tmp_path, monkeypatch):
    from cosal_cli.runners import local

    for index in range(5):
        save(tmp_path / "g" / f"{index}.png")
    written = []
    real_write = local.write_image

    def write_then_ctrl_c(encoded, *args):  # in a writer thread
        if len(written) == 3:
            _thread.interrupt_main()  # Ctrl-C arriving while the fourth map is written
        written.append(encoded.image)
        return real_write(encoded, *args)

    monkeypatch.setattr(local, "write_image", write_then_ctrl_c)
    result, summary = detect_json(str(tmp_path / "g"), "-o", str(tmp_path / "out"))
    assert result.exit_code == 130 and summary["interrupted"]
    # the group's maps were computed: all are written, whole, and counted
    assert summary["counts"]["written"] == 5 == len(list((tmp_path / "out" / "g").iterdir()))
    assert summary["groups"][0]["name"] == "g" and summary["groups"][0]["written"] == 5


def test_a_second_ctrl_c_stops_the_writer_after_its_image_and_counts_what_it_wrote(tmp_path):
    from cosal_cli.runners.local import _Run, _Writing, _Written
    from cosal_cli.runners.recorder import Recorder
    from cosal_cli.runners.summary import Summary

    images = [io.ImageFile(tmp_path / f"{index}.png", f"{index}.png") for index in range(3)]
    group = io.Group("g", tmp_path, images)

    class InterruptedOnce:  # a writer's future whose wait is interrupted once by a signal
        def __init__(self):
            self.calls = 0

        def result(self):
            self.calls += 1
            if self.calls == 1:
                raise KeyboardInterrupt
            return _Written([(images[0], "written", "")], None, 0.1)

    for already_stopping in (False, True):
        recorder = Recorder(Summary("m", "cpu", str(tmp_path)), SilentReporter(), tmp_path, io.SaveSpec())
        run = _Run(None, [], "error", recorder)
        run._writing = _Writing(group, recorder.new_report(group), 0.0, InterruptedOnce())
        with pytest.raises(KeyboardInterrupt):
            run._drain(interrupted=already_stopping)
        # a first Ctrl-C lets the group finish; one more, while the run is stopping, stops the writer
        assert run._stop.is_set() == already_stopping
        assert [report.written for report in recorder.summary.groups] == [1] and run._writing is None


# -- 7. a stray image beside group folders ---------------------------------------------------------


def test_a_folder_with_images_and_group_folders_asks_for_layout_and_the_others_run(fake_method, tmp_path):
    mixed = tmp_path / "mixed"
    save(mixed / "stray.jpg")
    for group in ("cats", "dogs"):
        for index in range(3):
            save(mixed / group / f"{index}.png")
    save(tmp_path / "plain" / "p.png")
    result, summary = detect_json(str(mixed), str(tmp_path / "plain"), "-o", str(tmp_path / "out"))
    assert result.exit_code == 1
    assert "--layout group" in summary["failures"][0]["message"] and "--layout groups" in result.stderr
    assert [g["name"] for g in summary["groups"]] == ["plain"]

    result, summary = detect_json(str(mixed), "--layout", "groups", "-o", str(tmp_path / "groups"))
    assert result.exit_code == 0 and [g["name"] for g in summary["groups"]] == ["cats", "dogs"]
    assert any("loose image" in notice and "stray.jpg" in notice for notice in summary["notices"])
    result, summary = detect_json(str(mixed), "--layout", "group", "-o", str(tmp_path / "group"))
    assert result.exit_code == 0 and [(g["name"], g["images"]) for g in summary["groups"]] == [("mixed", 1)]


# -- 8. an output folder among the inputs ----------------------------------------------------------


@pytest.mark.parametrize("where", ["the group itself", "inside the group", "the group's parent"])
def test_an_output_folder_that_puts_maps_among_the_photos_is_refused(fake_method, tmp_path, where):
    group = tmp_path / "photos" / "cats"
    save(group / "1.png")
    output = {"the group itself": group, "inside the group": group / "maps", "the group's parent": group.parent}[where]
    result, summary = detect_json(str(group), "-o", str(output))
    assert result.exit_code == 2 and "outside the input folders" in summary["error"]
    assert sorted(p.name for p in group.iterdir()) == ["1.png"]


# -- 9. decoder chatter under -q -------------------------------------------------------------------


def test_libtiff_and_pillow_warnings_become_notes_and_never_reach_stderr_under_quiet(fake_method, tmp_path, capfd):
    group = tmp_path / "g"
    group.mkdir()
    shutil.copy(BAD_INPUTS / "group4-bad-code-words.tif", group / "fax.tif")
    shutil.copy(BAD_INPUTS / "jpeg-exif-tag-past-end.jpg", group / "exif.jpg")
    quiet = cosal("detect", str(group), "-m", "test-brightness", "-o", str(tmp_path / "q"), "-q")
    captured = capfd.readouterr()
    assert quiet.exit_code == 0, quiet.output
    assert quiet.stderr == "" and "Fax4Decode" not in captured.err and "EXIF" not in captured.err
    loud, summary = detect_json(str(group), "-o", str(tmp_path / "loud"))
    notes = " ".join(summary["notices"])
    assert "Fax4Decode: Bad code word" in notes and "fax.tif" in notes
    assert "exif.jpg" in notes and "Truncated File Read" in notes


# -- 10. empty stdin, a folder given twice, 16-bit RGB ---------------------------------------------


def test_empty_stdin_is_a_usage_error(fake_method, tmp_path):
    result, summary = detect_json("-", "-o", str(tmp_path / "out"), stdin="\n  \n")
    assert result.exit_code == 2 and "read no paths from standard input" in summary["error"]


def test_a_folder_given_twice_is_processed_once(fake_method, tmp_path):
    save(tmp_path / "set" / "g" / "1.png")
    (tmp_path / "alias").symlink_to(tmp_path / "set" / "g")
    group = str(tmp_path / "set" / "g")
    paths = [group, group + "/", str(tmp_path / "alias"), str(tmp_path / "set")]
    result, summary = detect_json(*paths, "-o", str(tmp_path / "out"))
    assert result.exit_code == 0
    assert [g["name"] for g in summary["groups"]] == ["g"] and summary["counts"]["written"] == 1
    assert sum("given twice" in notice for notice in summary["notices"]) == 3


def test_16_bit_rgb_png_gets_a_note_like_16_bit_grayscale(tmp_path):
    rows = np.full((4, 5, 3), (65535, 1000, 257), dtype=">u2")
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)
    path = tmp_path / "deep-rgb.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 5, 4, 16, 2, 0, 0, 0))
                     + png_chunk(b"IDAT", zlib.compress(raw)) + png_chunk(b"IEND", b""))  # fmt: skip
    decoded = io.load_rgb(path)
    assert any("16-bit RGB reduced to 8 bits" in note for note in decoded.notes)
    assert np.asarray(decoded.rgb)[0, 0].tolist() == [255, 3, 1]


def test_nan_and_infinite_float_pixels_become_black_with_a_note(tmp_path):
    values = np.array([[0.0, 0.5, np.nan], [np.inf, -np.inf, 1.0]], dtype=np.float32)
    Image.fromarray(values, mode="F").save(tmp_path / "float.tif")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's "invalid value encountered in cast" came before the fix
        decoded = io.load_rgb(tmp_path / "float.tif")
    assert np.asarray(decoded.rgb)[..., 0].tolist() == [[0, 128, 0], [0, 0, 255]]
    assert any("3 NaN or infinite values set to 0" in note for note in decoded.notes)


# -- decoding never hangs: bombs are refused before any pixel is decoded ---------------------------


def png_with_size(width: int, height: int, pixels: bytes) -> bytes:
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + png_chunk(b"IDAT", pixels) + png_chunk(b"IEND", b""))  # fmt: skip


def test_a_zlib_bomb_png_is_refused_before_decoding(tmp_path):
    """20,000 x 20,000 grey pixels (400 MB) compressed into a few hundred KB."""
    compressor = zlib.compressobj(9)
    row = b"\x00" * 20_001
    body = b"".join(compressor.compress(row) for _ in range(20_000)) + compressor.flush()
    path = tmp_path / "bomb.png"
    path.write_bytes(png_with_size(20_000, 20_000, body))
    assert path.stat().st_size < 1_000_000
    started = time.perf_counter()
    with pytest.raises(io.InputError, match="decompression-bomb guard"):
        io.load_rgb(path)
    assert time.perf_counter() - started < 5  # refused from the header, not after inflating 400 MB


def test_huge_dimension_webp_and_tiff_headers_are_refused_before_decoding(tmp_path):
    # WebP VP8X: canvas 16384 x 16384 (stored minus one in 24 bits), no image data behind it.
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\x00\x00\x00\x00" + (16383).to_bytes(3, "little") * 2
    webp = tmp_path / "huge.webp"
    webp.write_bytes(b"RIFF" + struct.pack("<I", 4 + len(vp8x)) + b"WEBP" + vp8x)
    # TIFF: one strip of 100,000 x 100,000 8-bit grey pixels declared, 16 bytes present.
    entries = [(256, 4, 1, 100_000), (257, 4, 1, 100_000), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
               (273, 4, 1, 8), (277, 3, 1, 1), (278, 4, 1, 100_000), (279, 4, 1, 16)]  # fmt: skip
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *entry) for entry in entries) + b"\0" * 4
    tiff = tmp_path / "huge.tif"
    tiff.write_bytes(b"II*\x00" + struct.pack("<I", 24) + b"\0" * 16 + ifd)
    for path in (webp, tiff):
        started = time.perf_counter()
        with pytest.raises(io.InputError):
            io.load_rgb(path)
        assert time.perf_counter() - started < 5


def test_decode_errors_never_escape_as_other_exceptions_in_decode_group(tmp_path):
    group = tmp_path / "g"
    save(group / "ok.png")
    shutil.copy(BAD_INPUTS / "tiff-second-frame-missing-dimensions.tif", group / "bad.tif")
    found = io.discover([group])
    decoded = inference.decode_group(found.groups[0], 32)
    assert [image.path.name for image in decoded.images] == ["ok.png"]
    assert [problem.path.name for problem in decoded.problems] == ["bad.tif"]
    assert torch.from_numpy(decoded.pixels).shape == (1, 32, 32, 3)


def test_decoding_a_group_in_a_thread_pool_keeps_its_order_problems_and_notes(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    group = tmp_path / "g"
    group.mkdir()
    rng = np.random.default_rng(3)
    for index in range(7):
        Image.fromarray(rng.integers(0, 255, (40 + index, 50, 3), dtype=np.uint8)).save(group / f"{index}.png")
    shutil.copy(BAD_INPUTS / "tiff-second-frame-missing-dimensions.tif", group / "3b.tif")
    found = io.discover([group]).groups[0]
    alone = inference.decode_group(found, 32, keep_originals=True)
    with ThreadPoolExecutor(3) as pool:
        pooled = inference.decode_group(found, 32, keep_originals=True, pool=pool)
    assert [image.path.name for image in pooled.images] == [image.path.name for image in alone.images]
    assert [image.path.name for image in pooled.images][:4] == ["0.png", "1.png", "2.png", "3.png"]
    assert [problem.path.name for problem in pooled.problems] == ["3b.tif"] and pooled.notes == alone.notes
    assert np.array_equal(pooled.pixels, alone.pixels) and pooled.sizes == alone.sizes
    assert all(np.array_equal(a, b) for a, b in zip(pooled.originals, alone.originals))
