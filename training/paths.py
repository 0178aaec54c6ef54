"""Where training reads and writes: recipe paths relative to the checkout, and the patch cache root."""

from __future__ import annotations

import os
from pathlib import Path

from drrn.paths import PROJECT_ROOT


def resolve(path: str) -> Path:
    """``path`` as given when absolute, else relative to the project root (recipes' data folders)."""
    p = Path(path)
    return p if p.is_absolute() else PROJECT_ROOT / p


def cache_root() -> Path:
    """Where patch caches live: ``$DRRN_CACHE_DIR`` or ``cache/`` in the checkout."""
    return Path(os.environ.get("DRRN_CACHE_DIR") or PROJECT_ROOT / "cache")
