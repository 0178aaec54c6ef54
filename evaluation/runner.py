"""``drrn eval``: PSNR/SSIM of a model under the DRRN protocol, through the service's inference pipeline.

``--model`` is ``bicubic`` (the baseline only), ``default`` (the shipped weights, as the exported ONNX model
the service runs), a ``.safetensors`` weight file (PyTorch engine) or an ``.onnx`` file (ONNX Runtime, CPU).
Models run tile by tile exactly as the service runs them (:func:`imaging.tiling.run_tiled`), so the number
we publish is the number users get.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from drrn.errors import UserError
from evaluation.core import evaluate, markdown_table
from imaging.protocol import ImageReadError
from imaging.tiling import run_tiled

PROTOCOL = "drrn-matlab"


def make_sr_function(model: str, tile: int | None):
    """``None`` for bicubic, else ``sr(bicubic float64[H,W], scale) -> float32[H,W]`` via the pipeline."""
    if model == "bicubic":
        return None
    from engines.resolver import resolve_engine

    engine = resolve_engine(model, tile=tile)

    def sr(bicubic: np.ndarray, _scale: int) -> np.ndarray:
        return run_tiled(bicubic.astype(np.float32), engine.run, engine.tile, engine.depth, engine.max_batch)

    return sr


def run_eval(
    model: str,
    data: list[str],
    scales: list[int],
    tile: int | None = None,
    save_images: str | None = None,
    progress: bool = True,
) -> dict:
    """The JSON document ``drrn eval --json`` writes."""
    folders = [Path(d) for d in data]
    for f in folders:
        if not f.is_dir():
            raise UserError(f"dataset folder not found: {f}")
    bad = [s for s in scales if s < 2]
    if bad:
        raise UserError(f"scales must be integers >= 2, got {bad}")
    sr = make_sr_function(model, tile)
    try:
        results = evaluate(
            folders, scales, sr, progress=progress, save_dir=Path(save_images) if save_images else None
        )
    except (ImageReadError, ValueError, FileNotFoundError, OSError) as exc:
        raise UserError(str(exc)) from exc
    return {"protocol": PROTOCOL, "model": model, "scales": scales, "results": results}


def run_eval_cli(args: argparse.Namespace) -> int:
    doc = run_eval(args.model, args.data, args.scales, tile=args.tile, save_images=args.save_images)
    label = args.model if args.model in ("bicubic", "default") else Path(args.model).name
    print(markdown_table(doc["results"], label))
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(doc, indent=2))
    return 0
