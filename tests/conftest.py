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
