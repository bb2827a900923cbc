"""Experiment grids, instance generators, metrics and plots (may read and write files)."""

from __future__ import annotations

import subprocess
from pathlib import Path

__all__ = ["code_version"]


def code_version() -> str:
    """shoal's version plus the git commit it runs from (when run from a checkout): results
    files carry it so that every number can be traced to the code that produced it."""
    from shoal import __version__

    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent)
        commit = done.stdout.strip() if done.returncode == 0 else ""
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", ""
    if not commit:
        return __version__
    return f"{__version__}+{commit}{'.dirty' if dirty else ''}"
