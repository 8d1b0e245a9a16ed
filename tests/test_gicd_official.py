"""`cosal weights import gicd` and the `gicd-official` method, on official-format files made here.

The official files cannot be downloaded, so the fixtures write files in their format: a randomly
initialised ``GINet().state_dict()`` saved as ``gicd_ginet.pth`` and a random torchvision
``vgg16(weights=None).state_dict()`` saved as ``vgg16-397923af.pth``. A random co-classifier cannot
have the sha256 the shipped manifest pins, so most tests use a test manifest holding the shipped
gicd entries with the co-classifier pinned to the fixture file; one test checks that the shipped pin
refuses it. The two 560 MB files are written once per module and imported once into a shared cache
(``imported``) that tests only read; a test that changes a cache works on its own copy.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image, ImageOps
from safetensors import safe_open
from torchvision.models import vgg16
from typer.testing import CliRunner

from cosal_cli.cli import app
from cosal_cli.hub import ImportSource, load_manifest, parse_manifest, sha256_file
from cosal_cli.models.gicd import GICD, GINet

REPO = Path(__file__).resolve().parents[1]
SHIPPED_MANIFEST = REPO / "weights_manifest.yaml"
EXAMPLE_GROUP = REPO / "examples" / "Image" / "cat-pairs"
PINNED_CO_CLASSIFIER = "397923af8e79cdbb6a7127f12361acd7a2f83e06b05044ddf496e83de57a5bf0"
GINET_ID, CO_ID = "gicd-official-ginet", "vgg16-torchvision-imagenet"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Official:
    ginet: Path  # gicd_ginet.pth
    co_classifier: Path  # vgg16-397923af.pth (random weights: not the published file)
    manifest: Path  # the shipped gicd entries, the co-classifier pinned to the fixture file


@dataclass(frozen=True)
class Imported:
    home: Path
    stdout: str
    output: str


def files_under(root: Path) -> list[str]:
    if not root.exists():
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def link_copy(source: Path, destination: Path) -> None:
    """A copy of the shared imported cache made of hard links (files are replaced, never written in place)."""
    try:
        shutil.copytree(source, destination, copy_function=os.link)
    except OSError:
        shutil.rmtree(destination, ignore_errors=True)
        shutil.copytree(source, destination)


def flip_middle_byte(path: Path) -> None:
    """Corrupt one byte of a private copy of ``path`` (never of a file shared through a hard link)."""
    private = path.with_name(path.name + ".copy")
    shutil.copyfile(path, private)
    private.replace(path)
    with open(path, "r+b") as handle:
        handle.seek(path.stat().st_size // 2)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0xFF]))


def make_test_manifest(path: Path, co_classifier: Path) -> Path:
    """The shipped gicd-official entries, the co-classifier's source pin replaced by the fixture file's."""
    shipped = yaml.safe_load(SHIPPED_MANIFEST.read_text())
    components = {cid: shipped["components"][cid] for cid in (GINET_ID, CO_ID)}
    source = components[CO_ID]["source"]["import"]
    assert source["sha256"] == PINNED_CO_CLASSIFIER  # the entry being replaced is the real pin
    source.update(sha256=sha256_file(co_classifier), size=co_classifier.stat().st_size)
    methods = {"gicd-official": shipped["methods"]["gicd-official"]}
    path.write_text(yaml.safe_dump({"schema": 1, "components": components, "methods": methods}))
    return path


@pytest.fixture(scope="module")
def official(tmp_path_factory) -> Iterator[Official]:
    folder = tmp_path_factory.mktemp("official")
    torch.manual_seed(0)
    ginet = GINet()
    for module in ginet.modules():  # the default init gives near-constant maps; widen it so outputs differ
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.normal_(module.weight, std=(2.0 / (module.in_channels * 9)) ** 0.5)
    torch.save(ginet.state_dict(), folder / "gicd_ginet.pth")
    del ginet
    torch.save(vgg16(weights=None).state_dict(), folder / "vgg16-397923af.pth")
    co_classifier = folder / "vgg16-397923af.pth"
    manifest = make_test_manifest(folder / "manifest.yaml", co_classifier)
    yield Official(folder / "gicd_ginet.pth", co_classifier, manifest)
    shutil.rmtree(folder, ignore_errors=True)  # 1 GB; the suite's later modules need the disk


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch, tmp_path):
    """An empty cosal cache and an empty torch hub cache per test; no offline switches from the caller."""
    for name in ("COSAL_MANIFEST", "COSAL_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("COSAL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))


@pytest.fixture
def home(tmp_path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def cosal(monkeypatch):
    """``cosal(*args, manifest=...)``: run the CLI; a manifest given stays in COSAL_MANIFEST for the test."""

    def run(*args, manifest: Path | None = None):
        if manifest is not None:
            monkeypatch.setenv("COSAL_MANIFEST", str(manifest))
        return CliRunner().invoke(app, [str(arg) for arg in args])

    return run


@pytest.fixture(scope="module")
def imported(official, tmp_path_factory) -> Iterator[Imported]:
    """Both files imported through the CLI, once, into a cache that tests only read."""
    home = tmp_path_factory.mktemp("imported-home")
    env = {
        "COSAL_HOME": str(home),
        "COSAL_MANIFEST": str(official.manifest),
        "TORCH_HOME": str(tmp_path_factory.mktemp("torch-empty")),
    }
    args = ["weights", "import", "gicd", str(official.ginet), "--co-classifier", str(official.co_classifier), "--json"]
    result = CliRunner().invoke(app, args, env=env)
    assert result.exit_code == 0, result.output
    yield Imported(home, result.stdout, result.output)
    shutil.rmtree(home, ignore_errors=True)  # 1 GB of imported safetensors


@pytest.fixture
def use_imported(imported, monkeypatch, official) -> Path:
    monkeypatch.setenv("COSAL_HOME", str(imported.home))
    monkeypatch.setenv("COSAL_MANIFEST", str(official.manifest))
    return imported.home


@pytest.fixture
def small_group(tmp_path) -> Path:
    group = tmp_path / "pair"
    group.mkdir()
    for image in sorted(EXAMPLE_GROUP.iterdir())[:2]:
        shutil.copy(image, group / image.name)
    return group


# ----------------------------------------------------------------------------------------------
# Import, then detect
# ----------------------------------------------------------------------------------------------


def test_import_converts_both_files_and_records_them(imported, official):
    report = json.loads(imported.stdout)
    assert report["exit_code"] == 0 and report["errors"] == []
    assert report["methods"]["gicd-official"]["ready"] is True
    assert "gicd-official is ready" in imported.output
    records = {row["component"]: row for row in report["imported"]}
    assert set(records) == {GINET_ID, CO_ID}
    assert files_under(imported.home) == sorted(
        f"imported/{cid}{ext}" for cid in records for ext in (".json", ".safetensors")
    )
    for cid, source in ((GINET_ID, official.ginet), (CO_ID, official.co_classifier)):
        record = records[cid]
        converted = imported.home / "imported" / f"{cid}.safetensors"
        assert record["path"] == str(converted) and str(converted) in imported.output
        assert record["source_sha256"] == sha256_file(source) and record["source_sha256"] in imported.output
        assert record["source_size"] == source.stat().st_size and record["source_path"] == str(source.resolve())
        assert record["sha256"] == sha256_file(converted) and record["size"] == converted.stat().st_size
        assert record["imported_at"].endswith("Z") and record["cosal_version"]
        assert json.loads((imported.home / "imported" / f"{cid}.json").read_text()) == {
            key: value for key, value in record.items() if key != "found_in"
        }
        with safe_open(str(converted), "pt") as handle:
            provenance = json.loads(handle.metadata()["cosal"])
            original = torch.load(source, map_location="cpu", weights_only=True)
            assert set(handle.keys()) == set(original)
            assert len(original) == (92 if cid == GINET_ID else 32)
            assert all(torch.equal(handle.get_tensor(key), value) for key, value in original.items())
        assert provenance["source_file"] == source.name and provenance["source_sha256"] == record["source_sha256"]


def test_cli_import_then_detect_writes_maps_of_the_original_sizes(cosal, use_imported, small_group, tmp_path):
    result = cosal("detect", small_group, "--method", "gicd-official", "-o", tmp_path / "maps", "--device", "cpu",
                   "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["method"] == "gicd-official" and summary["counts"]["written"] == 2
    for image in sorted(small_group.iterdir()):
        with Image.open(image) as source:
            size = ImageOps.exif_transpose(source).size
        with Image.open(tmp_path / "maps" / "pair" / f"{image.stem}.png") as written:
            assert written.mode == "L" and written.size == size
            values = np.asarray(written)
        assert values.min() >= 0 and values.max() <= 255 and values.std() > 0  # random weights: only not constant


def test_method_equals_a_direct_gicd_computation(use_imported, official):
    from cosal_cli.methods.loader import load_method

    method = load_method("gicd-official", torch.device("cpu"), batch_size=1)  # two chunks: the consensus spans both
    images = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    got = method.predict_group(images)

    model = GICD(chunk=2)  # loaded straight from the official-format files, not through the import
    model.ginet.load_state_dict(torch.load(official.ginet, map_location="cpu", weights_only=True), strict=True)
    state = torch.load(official.co_classifier, map_location="cpu", weights_only=True)
    model.co_classifier.load_state_dict(state, strict=True)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        want = model.eval().predict_group((images - mean) / std)

    assert got.shape == want.shape == (2, 224, 224)
    assert want.std() > 1e-3  # maps that vary, so the comparison can tell weights apart
    assert torch.allclose(got, want, atol=1e-5, rtol=0), (got - want).abs().max()


def test_onnxruntime_runs_the_explicit_gim_and_gives_the_torch_maps(cosal, use_imported, official, tmp_path):
    """The graphs (consensus, gim with the VGG classifier's gradient written out) against torch's autograd GIM."""
    group = tmp_path / "cats"
    group.mkdir()
    for image in sorted(EXAMPLE_GROUP.iterdir())[:3]:
        shutil.copy(image, group / image.name)
    maps = {}
    for backend in ("torch", "onnxruntime"):
        out = tmp_path / backend
        result = cosal("detect", group, "-m", "gicd-official", "-o", out, "--backend", backend, "--batch-size", "2",
                       "--json")  # fmt: skip
        assert result.exit_code == 0, result.output
        maps[backend] = [np.asarray(Image.open(path), dtype=int) for path in sorted(out.rglob("*.png"))]
    assert len(maps["onnxruntime"]) == 3 and all(m.std() > 0 for m in maps["torch"])
    assert max(int(np.abs(a - b).max()) for a, b in zip(maps["torch"], maps["onnxruntime"])) <= 2

    result = cosal("export", "-m", "gicd-official", "-o", tmp_path / "export", "--json")
    assert result.exit_code == 0, result.output
    description = json.loads(result.stdout)
    assert [entry["graph"] for entry in description["files"]] == ["consensus", "gim"]
    assert description["weights"]["co_classifier"]["sha256"] == sha256_file(
        use_imported / "imported" / f"{CO_ID}.safetensors"
    )


def test_verify_of_the_intact_import_is_ok(cosal, use_imported):
    result = cosal("weights", "verify", "gicd-official", "--json")
    assert result.exit_code == 0, result.output
    assert {row["id"]: row["state"] for row in json.loads(result.stdout)} == {GINET_ID: "ok", CO_ID: "ok"}
    listing = {row["id"]: row for row in json.loads(cosal("weights", "list", "--json").stdout)}
    assert listing[GINET_ID]["cached"] and listing[GINET_ID]["source"] == "import:gicd gicd_ginet.pth"
    assert listing[GINET_ID]["sha256"] == sha256_file(use_imported / "imported" / f"{GINET_ID}.safetensors")


# ----------------------------------------------------------------------------------------------
# What the import accepts and refuses
# ----------------------------------------------------------------------------------------------


def test_a_module_prefixed_checkpoint_imports(cosal, official, home, tmp_path):
    state = torch.load(official.ginet, map_location="cpu", weights_only=True)
    prefixed = tmp_path / "gicd_ginet.pth"
    torch.save({f"module.{key}": value for key, value in state.items()}, prefixed)
    result = cosal("weights", "import", "gicd", prefixed, manifest=official.manifest)
    assert result.exit_code == 0, result.output
    assert f"imported {GINET_ID}" in result.output
    assert (
        "gicd-official is not ready yet" in result.output
        and "--co-classifier PATH/TO/vgg16-397923af.pth" in result.output
    )
    with safe_open(str(home / "imported" / f"{GINET_ID}.safetensors"), "pt") as handle:
        assert set(handle.keys()) == set(state)
        assert torch.equal(handle.get_tensor("dslayer1.predlayer.0.weight"), state["dslayer1.predlayer.0.weight"])


def test_a_state_dict_wrapper_is_unwrapped(cosal, official, home, tmp_path):
    state = torch.load(official.ginet, map_location="cpu", weights_only=True)
    wrapped = tmp_path / "checkpoint.pth"
    torch.save({"epoch": 30, "state_dict": state}, wrapped)
    result = cosal("weights", "import", "gicd", wrapped, manifest=official.manifest)
    assert result.exit_code == 0, result.output
    with safe_open(str(home / "imported" / f"{GINET_ID}.safetensors"), "pt") as handle:
        assert set(handle.keys()) == set(state)
    assert cosal("weights", "verify", GINET_ID).exit_code == 0


def test_the_co_classifier_given_as_path_fails_with_the_key_diff_and_leaves_nothing(cosal, official, home):
    result = cosal("weights", "import", "gicd", official.co_classifier, manifest=official.manifest)
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert str(official.co_classifier) in message
    assert "vgg16-397923af.pth does not fit GINet (0 of 92 keys match)" in message
    assert (
        "92 missing keys: backbone.classifier.0.bias" in message and "32 unexpected keys: classifier.0.bias" in message
    )
    assert "PATH must be gicd_ginet.pth" in message
    assert files_under(home) == []


def test_a_pickle_holding_an_object_is_refused_without_running_it(cosal, official, home, tmp_path):
    marker = tmp_path / "code-ran"
    evil = tmp_path / "gicd_ginet.pth"
    torch.save({"backbone.conv1.conv1_1.weight": torch.zeros(1), "extra": _RunsCode(str(marker))}, evil)
    result = cosal("weights", "import", "gicd", evil, manifest=official.manifest)
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert "weights_only=True" in message and "_mark_as_run" in message and str(evil) in message
    assert "Please use" not in message  # torch's advice to load it anyway is not passed on
    assert not marker.exists()
    assert files_under(home) == []


def _mark_as_run(path: str) -> None:
    Path(path).write_text("unpickling ran code")


class _RunsCode:
    """Unpickling this calls ``_mark_as_run``: what a malicious checkpoint would do."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (_mark_as_run, (self.path,))


@pytest.mark.parametrize(
    ("kind", "says"),
    [
        ("missing", "does not exist"),
        ("folder", "is a folder, not a file"),
        ("empty", "it is empty or truncated"),
        ("not-a-checkpoint", "it is not a PyTorch checkpoint (torch.load(weights_only=True): Unsupported operand"),
        ("not-tensors", "is not a state dict of tensors"),
        ("safetensors", "it is not a PyTorch checkpoint"),
    ],
)
def test_a_file_that_is_not_a_checkpoint_is_a_usage_error(cosal, official, home, tmp_path, kind, says):
    from safetensors.torch import save_file

    path = tmp_path / "gicd_ginet.pth"
    if kind == "folder":
        path.mkdir()
    elif kind == "empty":
        path.touch()
    elif kind == "not-a-checkpoint":
        path.write_text("<html>404 not found</html>")
    elif kind == "not-tensors":
        torch.save({"backbone.conv1.conv1_1.weight": [1.0, 2.0]}, path)
    elif kind == "safetensors":  # an already converted file is not what the import takes
        save_file({"backbone.conv1.conv1_1.weight": torch.zeros(64, 3, 3, 3)}, str(path))
    result = cosal("weights", "import", "gicd", path, manifest=official.manifest)
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert str(path) in message and says in message
    assert files_under(home) == []


def test_the_shipped_pin_refuses_another_co_classifier(cosal, official, home):
    result = cosal("weights", "import", "gicd", "--co-classifier", official.co_classifier, manifest=SHIPPED_MANIFEST)
    assert result.exit_code == 4, result.output
    message = " ".join(result.output.split())
    assert sha256_file(official.co_classifier) in message and PINNED_CO_CLASSIFIER in message
    assert "is not the published vgg16-397923af.pth (https://download.pytorch.org/models/vgg16-397923af.pth)" in message
    assert "gicd-official needs exactly that file" in message
    assert files_under(home) == []


def test_a_pinned_sha256_alone_refuses_a_file_of_any_size(cosal, official, home, tmp_path):
    data = yaml.safe_load(official.manifest.read_text())
    source = data["components"][CO_ID]["source"]["import"]
    del source["size"]
    source["sha256"] = "0" * 64
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(yaml.safe_dump(data))
    result = cosal("weights", "import", "gicd", "--co-classifier", official.co_classifier, manifest=manifest)
    assert result.exit_code == 4, result.output
    assert "0" * 64 in result.output and sha256_file(official.co_classifier) in result.output
    assert files_under(home) == []


def test_the_co_classifier_is_found_in_torch_hub_cache(cosal, official, home, tmp_path):
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"  # TORCH_HOME is tmp_path / "torch"
    checkpoints.mkdir(parents=True)
    try:
        os.link(official.co_classifier, checkpoints / "vgg16-397923af.pth")
    except OSError:
        shutil.copy(official.co_classifier, checkpoints / "vgg16-397923af.pth")
    result = cosal("weights", "import", "gicd", official.ginet, "--json", manifest=official.manifest)
    assert result.exit_code == 0, result.output
    assert f"imported {CO_ID} from {checkpoints / 'vgg16-397923af.pth'} (found in torch's hub cache)" in result.output
    report = json.loads(result.stdout)
    assert {row["component"]: row["found_in"] for row in report["imported"]} == {
        GINET_ID: None,
        CO_ID: "torch's hub cache",
    }
    assert report["methods"]["gicd-official"]["ready"] is True
    verify = cosal("weights", "verify", "gicd-official")
    assert verify.exit_code == 0, verify.output


def test_import_needs_a_file_and_a_known_importer(cosal, official, home):
    no_file = cosal("weights", "import", "gicd", manifest=official.manifest)
    assert no_file.exit_code == 2 and "name at least one file" in no_file.output
    unknown = cosal("weights", "import", "gconet", official.ginet, manifest=official.manifest)
    assert unknown.exit_code == 2 and "unknown importer 'gconet'; known: gicd" in unknown.output
    assert files_under(home) == []


# ----------------------------------------------------------------------------------------------
# Before the import, and after tampering
# ----------------------------------------------------------------------------------------------


def test_before_the_import_detect_exits_3_with_the_import_command(cosal, small_group, tmp_path, home):
    result = cosal("detect", small_group, "-m", "gicd-official", "-o", tmp_path / "maps", manifest=SHIPPED_MANIFEST)
    assert result.exit_code == 3, result.output
    message = " ".join(result.output.split())
    assert "`cosal weights import gicd PATH/TO/gicd_ginet.pth`" in message
    assert "`cosal weights import gicd --co-classifier PATH/TO/vgg16-397923af.pth`" in message
    assert "https://download.pytorch.org/models/vgg16-397923af.pth" in message
    assert str(tmp_path / "torch" / "hub" / "checkpoints") in message
    assert not (tmp_path / "maps").exists()


def test_before_the_import_the_weights_commands_say_to_import(cosal, home, monkeypatch):
    pull = cosal("weights", "pull", "gicd-official", manifest=SHIPPED_MANIFEST)
    assert pull.exit_code == 3, pull.output
    assert "cosal never downloads them" in pull.output and "cosal weights import gicd" in pull.output
    pull_all = cosal("weights", "pull", "--all", "--offline")  # the quick start's `pull --all` must not fail on them
    assert f"skipped {GINET_ID}" in pull_all.output and f"skipped {CO_ID}" in pull_all.output
    assert "cosal never downloads" not in pull_all.output
    path = cosal("weights", "path", CO_ID)
    assert path.exit_code == 3 and "--co-classifier PATH/TO/vgg16-397923af.pth" in path.output
    verify = cosal("weights", "verify", "gicd-official")
    assert verify.exit_code == 3 and verify.stdout.startswith(f"missing {GINET_ID}")
    listing = {row["id"]: row for row in json.loads(cosal("weights", "list", "--json").stdout)}
    assert listing[CO_ID]["cached"] is False and listing[CO_ID]["size"] is None
    assert listing[CO_ID]["import_command"] == "cosal weights import gicd --co-classifier PATH/TO/vgg16-397923af.pth"
    monkeypatch.setenv("COLUMNS", "300")  # a table row per component
    table = [line for line in cosal("weights", "list").output.splitlines() if CO_ID in line]
    assert len(table) == 1 and " import " in table[0] and "not imported" in table[0]  # the command: in --json
    cards = {row["name"]: row for row in json.loads(cosal("methods", "--json").stdout)}
    weights = cards["gicd-official"]["weights"]
    assert weights["ginet"] == {"component": GINET_ID, "source": "import", "cached": False,
                                "import": "cosal weights import gicd PATH/TO/gicd_ginet.pth"}  # fmt: skip
    assert "Gradient-Induced Co-Saliency Detection" in cards["gicd-official"]["paper"]
    assert files_under(home) == []


def test_a_tampered_import_is_corrupt_for_verify_and_detect(cosal, imported, official, home, small_group, tmp_path):
    link_copy(imported.home, home)
    flip_middle_byte(home / "imported" / f"{GINET_ID}.safetensors")
    verify = cosal("weights", "verify", manifest=official.manifest)
    assert verify.exit_code == 4, verify.output
    assert verify.stdout.startswith(f"corrupt {GINET_ID}") and f"ok {CO_ID}" in verify.stdout
    detect = cosal("detect", small_group, "-m", "gicd-official", "-o", tmp_path / "maps")
    assert detect.exit_code == 4, detect.output
    assert "import them again with `cosal weights import gicd PATH/TO/gicd_ginet.pth`" in detect.output
    assert not (tmp_path / "maps").exists()


def test_a_missing_import_record_means_not_imported(cosal, imported, official, home):
    link_copy(imported.home, home)
    (home / "imported" / f"{CO_ID}.json").unlink()
    result = cosal("weights", "verify", CO_ID, manifest=official.manifest)
    assert result.exit_code == 3, result.output
    assert result.stdout.startswith(f"missing {CO_ID}")


# ----------------------------------------------------------------------------------------------
# The manifest's `import` source
# ----------------------------------------------------------------------------------------------


def test_the_shipped_manifest_declares_the_gicd_imports():
    manifest = load_manifest(SHIPPED_MANIFEST)
    assert manifest.roles("gicd-official") == {"ginet": GINET_ID, "co_classifier": CO_ID}
    ginet, co_classifier = manifest.component(GINET_ID), manifest.component(CO_ID)
    assert ginet.source == ImportSource(importer="gicd", option="PATH", file="gicd_ginet.pth", converter="gicd-ginet")
    assert (co_classifier.source.option, co_classifier.source.file) == ("--co-classifier", "vgg16-397923af.pth")
    assert (co_classifier.source.sha256, co_classifier.source.size) == (PINNED_CO_CLASSIFIER, 553433881)
    assert co_classifier.source.converter == "torchvision-vgg16"
    assert ginet.size is ginet.sha256 is co_classifier.size is co_classifier.sha256 is None


def _import_entry(**source) -> dict:
    spec = {"importer": "gicd", "option": "PATH", "file": "gicd_ginet.pth", "converter": "gicd-ginet", **source}
    return {"description": "x", "licence": "x", "format": "safetensors", "source": {"import": spec}}


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({**_import_entry(), "sha256": "a" * 64, "size": 10}, "has no size or sha256 of its own"),
        (_import_entry(converter="identity"), "name the 'converter'"),
        (_import_entry(converter="pickle"), "unknown converter"),
        (_import_entry(option="--Co classifier"), "'option'"),
        (_import_entry(file="../gicd_ginet.pth"), "'file'"),
        (_import_entry(sha256="ABC"), "'sha256'"),
    ],
    ids=["component-pin", "identity", "unknown-converter", "bad-option", "path-as-file", "bad-sha256"],
)
def test_manifest_rejects_bad_import_entries(entry, message):
    from cosal_cli.errors import ManifestError

    with pytest.raises(ManifestError, match=message):
        parse_manifest({"schema": 1, "components": {"imported": entry}}, Path("m.yaml"))


def test_manifest_rejects_two_components_on_one_option():
    from cosal_cli.errors import ManifestError

    data = {"schema": 1, "components": {"one": _import_entry(), "two": _import_entry()}}
    with pytest.raises(ManifestError, match="both take the PATH file"):
        parse_manifest(data, Path("m.yaml"))


def test_fetched_components_still_need_their_own_pin():
    from cosal_cli.errors import ManifestError

    entry = {
        "description": "x",
        "licence": "x",
        "format": "safetensors",
        "source": {"bundled": {"path": "w.safetensors"}},
    }
    with pytest.raises(ManifestError, match="'size'"):
        parse_manifest({"schema": 1, "components": {"head": entry}}, Path("m.yaml"))


def test_bf16_runs_the_official_network_and_its_gradient_under_autocast(cosal, use_imported, small_group, tmp_path):
    maps = {}
    for precision in ("fp32", "bf16"):
        result = cosal("detect", small_group, "--method", "gicd-official", "-o", tmp_path / precision, "--device",
                       "cpu", "--precision", precision, "--json")  # fmt: skip
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["precision"] == precision
        written = sorted((tmp_path / precision).rglob("*.png"))
        maps[precision] = [np.asarray(Image.open(path), dtype=float) for path in written]
    differences = [np.abs(a - b).mean() for a, b in zip(maps["fp32"], maps["bf16"])]
    assert len(differences) == 2 and 0 < max(differences) < 8, differences
