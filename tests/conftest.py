"""Shared fixtures: the ../shared data (skipping when absent) and small *real* exported models."""

from __future__ import annotations

from pathlib import Path

import pytest

from drrn.paths import shared_dir


@pytest.fixture(scope="session")
def shared() -> Path:
    """``../shared``; tests needing it skip with a reason on a checkout without it."""
    path = shared_dir()
    if not (path / "datasets").is_dir():
        pytest.skip(f"../shared datasets not found at {path} (fresh clone without shared data)")
    return path


def make_tiny_weights(path: Path, units: int = 2, channels: int = 8, seed: int = 0, **cfg) -> Path:
    """A small real DRRN weight file whose residual has a trained-like magnitude (std ~0.02).

    Untrained MSRA-initialised nets output residuals of std ~1, which no trained SR model does; scaling the
    output conv keeps fp16/tiling tolerances meaningful without training.
    """
    import torch

    from model_export.model import DRRN, DRRNConfig
    from model_export.weights import WeightsMeta, save_weights

    torch.manual_seed(seed)
    config = DRRNConfig(blocks=cfg.pop("blocks", 1), units=units, channels=channels, **cfg)
    model = DRRN(config)
    with torch.no_grad():
        model.output.weight.mul_(0.02)
    save_weights(model, WeightsMeta(config=config, provenance={"source": "tests"}), path)
    return path


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """B1U2, 8 channels: depth 6, receptive field 13."""
    return make_tiny_weights(tmp_path_factory.mktemp("weights") / "tiny.safetensors")


@pytest.fixture(scope="session")
def tiny_onnx(tiny_weights: Path) -> Path:
    """The tiny weights exported to fp32 ONNX (parity-checked by the export itself)."""
    from model_export.onnx_export import export_onnx

    out = tiny_weights.with_suffix(".onnx")
    export_onnx(tiny_weights, out)
    return out
