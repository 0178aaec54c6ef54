"""Shared fixtures: the ../shared data (skipping when absent) and small *real* exported models."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
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


@pytest.fixture(scope="session")
def tiny_repo(tiny_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository root with two tiny real models, fp32 + fp16 each (parity-checked exports):
    ``fast`` = the tiny weights (B1U2 C8, depth 6) and ``quality`` (B1U3 C8, depth 8)."""
    from model_export.repository_build import build_model

    root = tmp_path_factory.mktemp("models")
    quality = make_tiny_weights(tmp_path_factory.mktemp("weights") / "quality.safetensors", units=3, seed=1)
    build_model(tiny_weights, root, name="fast")
    build_model(quality, root, name="quality")
    return root


async def until(cond: Callable[[], bool]) -> None:
    """Yield to the loop until ``cond()``; the cap only turns a bug into a failure instead of a hang."""
    for _ in range(30_000):
        if cond():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("condition never became true")


@pytest.fixture(scope="session")
def tiny_runner(tiny_onnx: Path) -> tuple[Callable, int]:
    """``(run, depth)``: the tiny ONNX model on one CPU thread, ``run(float32[N,1,H,W]) -> same``."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(tiny_onnx), options, providers=["CPUExecutionProvider"])
    depth = int(session.get_modelmeta().custom_metadata_map["drrn.depth"])

    def run(batch: np.ndarray) -> np.ndarray:
        return session.run(["sr"], {"lr_bicubic": np.ascontiguousarray(batch, np.float32)})[0]

    return run, depth
