"""Glue between ``drrn export`` and :mod:`model_export.onnx_export`: parity images and user errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from drrn.errors import UserError
from drrn.paths import datasets_dir


def parity_images(limit: int = 2, scale: int = 3) -> list[np.ndarray]:
    """Real bicubic-upscaled Y images (``float32[H, W]`` in [0, 1]) from Set5, when ``../shared`` exists."""
    from imaging.protocol import prepare

    folder = datasets_dir() / "Set5"
    if not folder.is_dir():
        return []
    paths = sorted(folder.glob("*.png"))[:limit]
    # Crops keep the check quick while staying real content, borders included.
    return [prepare(p, scale)[1][:96, :128].astype(np.float32) for p in paths]


def run_export(weights: str, output: str, fp16: bool) -> int:
    from model_export.onnx_export import ExportParityError, export_onnx
    from model_export.weights import WeightsError

    if not Path(weights).is_file():
        raise UserError(f"weights file not found: {weights}")
    try:
        report = export_onnx(weights, output, fp16=fp16, real_images=parity_images())
    except (WeightsError, ExportParityError) as exc:
        raise UserError(str(exc)) from exc
    print(
        f"wrote {output} ({report.precision}); parity max abs diff {report.max_abs_diff:.2e} "
        f"<= {report.tolerance:g} over {len(report.cases)} cases"
    )
    return 0
