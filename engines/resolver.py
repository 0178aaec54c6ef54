"""Resolve a ``--model`` argument (``default``, ``*.onnx``, ``*.safetensors``) to an inference engine.

``default`` is the shipped weights as the service runs them: the exported ONNX model in ``artifacts/``.
It is a build artifact; when it is missing or older than the weights it is (re-)exported here, which needs
the ``train`` extra (torch). ONNX models run on ONNX Runtime's CPU provider, safetensors on PyTorch; both
implement :class:`engines.base.Engine`, so ``drrn upscale`` and ``drrn eval`` share the service's tiling
pipeline whatever the model.
"""

from __future__ import annotations

from pathlib import Path

from drrn.errors import UserError
from drrn.paths import ARTIFACTS, DEFAULT_WEIGHTS

DEFAULT_ONNX = ARTIFACTS / "default.onnx"


def ensure_default_onnx(weights: Path = DEFAULT_WEIGHTS, onnx_path: Path = DEFAULT_ONNX) -> Path:
    """The default ONNX model, exported (with its parity check) when missing or stale."""
    if not weights.is_file():
        raise UserError(f"shipped weights {weights} not found")
    if onnx_path.is_file() and onnx_path.stat().st_mtime >= weights.stat().st_mtime:
        return onnx_path
    try:
        from model_export.cli_support import run_export
    except ImportError as exc:  # serving-only install: no torch
        raise UserError(
            f"{onnx_path} is missing and exporting it needs torch; run `make default-onnx` "
            f"(or `drrn export {weights} -o {onnx_path}`) where the train extra is installed"
        ) from exc
    run_export(str(weights), str(onnx_path), fp16=False)
    return onnx_path


def resolve_engine(spec: str, tile: int | None = None, max_batch: int | None = None):
    """An :class:`engines.base.Engine` for ``spec``; tile and batch default to the service's settings."""
    from engines.ort_engine import OrtEngine, select_providers
    from service.settings import Settings

    defaults = Settings()
    tile = tile or defaults.tile
    max_batch = max_batch or defaults.max_batch
    if spec == "default":
        path = ensure_default_onnx()
    else:
        path = Path(spec)
        if not path.is_file():
            raise UserError(f"model file not found: {spec}")
    if path.suffix == ".onnx":
        return OrtEngine(
            path,
            tile=tile,
            max_batch=max_batch,
            providers=select_providers("cpu"),
            intra_op_threads=defaults.intra_op_threads,
            inter_op_threads=defaults.inter_op_threads,
            graph_optimization=defaults.graph_optimization,
        )
    if path.suffix == ".safetensors":
        from engines.torch_engine import TorchEngine
        from model_export.weights import WeightsError

        try:
            return TorchEngine(path, tile=tile, max_batch=max_batch)
        except WeightsError as exc:
            raise UserError(str(exc)) from exc
    raise UserError(f"unsupported model {spec!r}: expected default, bicubic, *.onnx or *.safetensors")
