"""Shared fixtures: the real Go registry, skopeo, and a prebuilt GC scenario.

Keep this file small: helpers live in tests/support/.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.components import require_binary
from tests.support.goregistry import GoRegistry
from tests.support.images import OCILayout
from tests.support.scenario import Scenario, build_gc_scenario


@pytest.fixture
def skopeo() -> str:
    return require_binary("skopeo")


@pytest.fixture
def go_registry(tmp_path: Path) -> Iterator[GoRegistry]:
    """A running `docker-registry serve` over `tmp_path/root` (in-memory cache)."""
    require_binary("docker-registry")
    with GoRegistry(tmp_path / "root", cache="inmemory", workdir=tmp_path / "registry") as reg:
        yield reg


@pytest.fixture
def oci_layout(tmp_path: Path) -> OCILayout:
    return OCILayout(tmp_path / "layout")


@pytest.fixture(scope="session")
def built_scenario(tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    """The GC scenario, built once per session; tests use `scenario` (a copy)."""
    require_binary("docker-registry")
    require_binary("skopeo")
    base = tmp_path_factory.mktemp("scenario")
    with GoRegistry(base / "root", cache="inmemory", workdir=base / "registry") as reg:
        return build_gc_scenario(reg, base)


@pytest.fixture
def scenario(built_scenario: Scenario, tmp_path: Path) -> Scenario:
    """A private copy of the built scenario's storage root, free to modify."""
    return built_scenario.copy_to(tmp_path / "scenario-root")


@pytest.fixture
def scenario_root(scenario: Scenario) -> Path:
    return scenario.root
