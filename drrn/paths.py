"""Where the project finds its shipped weights, its model repository and the shared datasets.

Pure constants and functions, no I/O at import.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
WEIGHTS_DIR = PROJECT_ROOT / "weights"  # the shipped models: weights/<name>.safetensors
DEFAULT_MODEL = "fast"  # what `--model default` names
DEFAULT_WEIGHTS = WEIGHTS_DIR / f"{DEFAULT_MODEL}.safetensors"
ARTIFACTS = PROJECT_ROOT / "artifacts"
MODELS_DIR = ARTIFACTS / "models"  # the model repository: <name>/{model.onnx, model.fp16.onnx, card.json}
EXPORTS_DIR = ARTIFACTS / "exports"  # a repository of ad-hoc weight files exported for ONNX runs (cache)


def shared_dir() -> Path:
    """``../shared`` next to the checkout, or ``$DRRN_SHARED``."""
    return Path(os.environ.get("DRRN_SHARED", PROJECT_ROOT.parent / "shared"))


def datasets_dir() -> Path:
    return shared_dir() / "datasets"


def sha256_file(path: Path | str) -> str:
    """Hex sha256 of a file's bytes (weights, exports, sources: their identity in cards and metadata)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()
