"""Fixtures shared by the whole suite."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def anchors_dir() -> Path:
    """The reference data in ../shared/anchors (or $SHOAL_ANCHORS); missing data is a failure, not a skip."""
    path = Path(os.environ.get("SHOAL_ANCHORS", REPO_ROOT.parent / "shared" / "anchors"))
    if not path.is_dir():
        pytest.fail(f"reference data not found at {path}: clone beside ../shared or set SHOAL_ANCHORS")
    return path


@pytest.fixture(scope="session")
def fixture_repository_path(tmp_path_factory) -> Path:
    """A repository holding the random-feature `fixture` family (built once per session, ~2 s).

    Tests must not modify it; copy it with `shutil.copytree` first (see `writable_repository`).
    """
    from shoal.zoo.fixture import build_fixture_family
    from shoal.zoo.repository import ModelRepository

    root = tmp_path_factory.mktemp("fixture-repo")
    build_fixture_family(ModelRepository(root))
    return root


@pytest.fixture()
def writable_repository(fixture_repository_path, tmp_path):
    """A private copy of the fixture repository that a test may change."""
    import shutil

    from shoal.zoo.repository import ModelRepository

    root = tmp_path / "repo"
    shutil.copytree(fixture_repository_path, root)
    return ModelRepository(root)
