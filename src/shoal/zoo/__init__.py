"""On-disk model repository, registration with validation, and the built-in demo family.

The default repository is `$SHOAL_REPO` if set, else `~/.cache/shoal/repo`; every command that
takes `--repo` uses it, so `shoal zoo build-demo` followed by `shoal zoo list` just works.
"""

from __future__ import annotations

import os
from pathlib import Path

from shoal.zoo.repository import ModelRepository, inspect_model

__all__ = ["DEMO_FAMILY", "ModelRepository", "default_repository_path", "inspect_model"]

DEMO_FAMILY = "demo"


def default_repository_path() -> Path:
    """Where commands look when `--repo` is not given."""
    return Path(os.environ.get("SHOAL_REPO") or "~/.cache/shoal/repo").expanduser()
