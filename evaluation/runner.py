"""``drrn eval``: PSNR/SSIM of a model under the DRRN protocol, through the service's inference pipeline.

``--model`` is ``bicubic`` (the baseline only) or any spec of :mod:`engines.resolver`: a repository model
name (``fast``, ``quality``; ``default`` = ``fast``), a ``.safetensors`` weight file (PyTorch engine) or an
``.onnx`` file (ONNX Runtime, CPU). Models run tile by tile exactly as the service runs them
(:func:`imaging.tiling.run_tiled`); a repository model uses its card's serving tile and margin unless
``--tile``/``--margin`` say otherwise, so the number we publish is the number users get.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from drrn.errors import UserError
from drrn.paths import sha256_file
from evaluation.core import evaluate, markdown_table
from evaluation.journal import EvalJournal
from imaging.ensemble import ENSEMBLE_SIZES, self_ensemble
from imaging.protocol import ImageReadError
from imaging.tiling import run_tiled

PROTOCOL = "drrn-matlab"


def make_sr_function(
    model: str,
    tile: int | None,
    margin: int | None = None,
    root: Path | None = None,
    ensemble: int = 1,
    precision: str = "auto",
):
    """``(sr, tile, margin, model_file)``; ``sr`` is None for bicubic.

    Otherwise ``sr(bicubic float64[H,W], scale) -> float32[H,W]`` runs the tiled pipeline at that tile
    and margin (the card's, else the serving default tile and the model depth), averaged over
    ``ensemble`` dihedral transforms (1 or 8, :mod:`imaging.ensemble`). ``root``: the model repository
    (default ``artifacts/models``); ``precision``: which of a repository model's files (``auto`` = what
    the service runs on the CPU). ``model_file``: the file the engine loaded (None for bicubic).
    """
    if model == "bicubic":
        return None, None, None, None
    from engines.resolver import resolve_tiled

    engine, margin = resolve_tiled(
        model, root=root, tile=tile, margin=margin, providers="cpu", precision=precision
    )

    def tiled(x: np.ndarray) -> np.ndarray:
        return run_tiled(x, engine.run, engine.tile, margin, engine.max_batch)

    def sr(bicubic: np.ndarray, _scale: int) -> np.ndarray:
        return self_ensemble(bicubic.astype(np.float32), tiled, ensemble)

    model_file = getattr(engine, "model_path", None) or getattr(engine, "path", None)
    return sr, engine.tile, margin, model_file


def run_eval(
    model: str,
    data: list[str],
    scales: list[int],
    tile: int | None = None,
    save_images: str | None = None,
    progress: bool = True,
    margin: int | None = None,
    root: Path | None = None,
    ensemble: int = 1,
    precision: str = "auto",
    journal: str | None = None,
) -> dict:
    """The JSON document ``drrn eval --json`` writes; ``tile``/``margin`` None = the model's serving ones.

    ``journal``: a per-image record to resume from and append to (:mod:`evaluation.journal`)."""
    folders = [Path(d) for d in data]
    for f in folders:
        if not f.is_dir():
            raise UserError(f"dataset folder not found: {f}")
    bad = [s for s in scales if s < 2]
    if bad:
        raise UserError(f"scales must be integers >= 2, got {bad}")
    if journal and save_images:
        raise UserError("--journal cannot be combined with --save-images (resumed images would not be saved)")
    if ensemble not in ENSEMBLE_SIZES:
        raise UserError(f"--ensemble must be one of {ENSEMBLE_SIZES}, got {ensemble}")
    sr, tile, margin, model_file = make_sr_function(model, tile, margin, root, ensemble, precision)
    doc = {"protocol": PROTOCOL, "model": model, "scales": scales, "tile": tile, "margin": margin}
    doc["ensemble"], doc["precision"] = ensemble, precision
    record = None
    if journal:
        identity = doc | {"model_sha256": sha256_file(model_file) if model_file else None}
        del identity["scales"]  # one journal may grow scale by scale
        record = EvalJournal(Path(journal), identity)
    try:
        results = evaluate(
            folders,
            scales,
            sr,
            progress=progress,
            save_dir=Path(save_images) if save_images else None,
            journal=record,
        )
    except (ImageReadError, ValueError, FileNotFoundError, OSError) as exc:
        raise UserError(str(exc)) from exc
    return doc | {"results": results}


def run_eval_cli(args: argparse.Namespace) -> int:
    doc = run_eval(
        args.model,
        args.data,
        args.scales,
        tile=args.tile,
        margin=args.margin,
        root=Path(args.root) if args.root else None,
        save_images=args.save_images,
        ensemble=args.ensemble,
        precision=args.precision,
        journal=args.journal,
    )
    label = Path(args.model).name if args.model.endswith((".onnx", ".safetensors")) else args.model
    print(markdown_table(doc["results"], label))
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(doc, indent=2))
    return 0
