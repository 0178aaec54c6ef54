"""Where the project finds its shipped weights and the shared datasets. Pure functions, no I/O at import."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_WEIGHTS = PROJECT_ROOT / "weights" / "default.safetensors"
ARTIFACTS = PROJECT_ROOT / "artifacts"


def shared_dir() -> Path:
    """``../shared`` next to the checkout, or ``$DRRN_SHARED``."""
    return Path(os.environ.get("DRRN_SHARED", PROJECT_ROOT.parent / "shared"))


def datasets_dir() -> Path:
    return shared_dir() / "datasets"
