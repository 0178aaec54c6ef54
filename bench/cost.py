"""``drrn bench cost``: what one 1-megapixel output costs with each served model, at its serving defaults.

For every model in the repository (or ``--model NAME``), in one process and one run: a 256x256 RGB photo-like
input upscaled x4 (a 1024x1024 = 1.05 Mpx output) through :func:`inference.pipeline.upscale_bytes`, with
the model card's tile and margin and the service's batch size, after one warm-up request. Also the
tiles computed per output pixel (the tiling overhead) and the effective GFLOP/s: model FLOPs per output
pixel x output pixels / time, i.e. useful work only, so margins count as waste. The machine's float32
GEMM peak is measured in the same run (:mod:`bench.peak`) to put that number on a scale. ``ensembles``
(e.g. 1 and 8) measures each model also with the geometric self-ensemble (``/upscale?ensemble=8``: 8x the
tiles through the same engine, plus the transforms and the average) and gives its cost as a ratio to the
single pass measured in the same run.
"""

from __future__ import annotations

import io
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bench.report import header, markdown_table, write_json

if TYPE_CHECKING:
    from engines.repository import ModelCard

SCHEMA_VERSION = 1
SIDE, SCALE = 256, 4


def _photo(side: int, seed: int = 0) -> bytes:
    """A smooth photo-like RGB PNG (low-frequency noise): realistic content for the codec and the net."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (side // 16, side // 16, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((side, side), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def measure_model(
    card: ModelCard, repeats: int, max_batch: int | None, side: int = SIDE, ensemble: int = 1
) -> dict[str, Any]:
    """Seconds for the ``side * 4`` squared output with ``card``'s model, averaged over ``ensemble``
    dihedral transforms (median of ``repeats`` after a warm-up request)."""
    from engines.resolver import open_card
    from imaging.tiling import plan_tiles
    from inference.pipeline import ImageLimits, upscale_bytes

    engine = open_card(card, max_batch=max_batch, providers="cpu")  # None: the service's CPU default
    max_batch = engine.max_batch
    tile, margin = card.tile, card.margin
    data = _photo(side)
    out = side * SCALE
    limits = ImageLimits(max_upload_bytes=1 << 26, max_input_pixels=1 << 24, max_output_pixels=1 << 24)
    # Warm-up on a small input: the ORT arena and thread pool are set up, without paying a full run.
    upscale_bytes(_photo(32), SCALE, engine.run, limits, tile, margin, max_batch, ensemble)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        upscale_bytes(data, SCALE, engine.run, limits, tile, margin, max_batch, ensemble)
        times.append(time.perf_counter() - t0)
    seconds = float(np.median(times))
    plan = plan_tiles(out, out, tile, margin)
    mpx = out * out / 1e6
    return {
        "model": card.name,
        "ensemble": ensemble,
        "architecture": card.architecture,
        "mflop_per_pixel": card.mflop_per_pixel,
        "tile": tile,
        "margin": margin,
        "precision": engine.info()["precision"],
        "max_batch": max_batch,
        "tiles": len(plan),
        "tile_shape": list(plan.tile_shape),
        "computed_over_output_px": plan.computed_pixels / (out * out),
        "output_mpx": mpx,
        "seconds": seconds,
        "seconds_per_mpx": seconds / mpx,
        "effective_gflops": card.flops_per_pixel * out * out / seconds / 1e9,
        "times_s": times,
    }


def run_cost(
    models: list[str] | None,
    json_out: str | None,
    quick: bool = False,
    root: Path | None = None,
    repeats: int = 1,
    ensembles: tuple[int, ...] = (1,),
) -> dict[str, Any]:
    """Measure each model (default: every shipped model, or every model of ``root``), print a table,
    write JSON. ``quick``: a 64x64 input (a smoke run), not the 1-Mpx headline. ``ensembles``: 1 and/or 8,
    each model measured at each (1 first, so the others' ``cost_vs_single`` is a same-run ratio)."""
    from bench.peak import gemm_numpy_gflops, gemm_ort_int8_gops
    from drrn.paths import WEIGHTS_DIR
    from engines.repository import ModelRepository
    from engines.resolver import resolve_card
    from imaging.ensemble import ENSEMBLE_SIZES

    # before resolving the cards, which may export a stale model: a bad option fails at once
    if not ensembles or not set(ensembles) <= set(ENSEMBLE_SIZES):
        raise ValueError(f"ensembles must be among {ENSEMBLE_SIZES}, got {ensembles}")
    if root is not None:
        repo = ModelRepository(root)
        cards = [repo.card(n) for n in models or repo.names()]
    else:  # the shipped weights; resolve_card builds a missing or stale repository entry on first use
        names = models or sorted(p.stem for p in WEIGHTS_DIR.glob("*.safetensors"))
        cards = [resolve_card(n) for n in names]
    rows = []
    for card in cards:
        single = None
        for ensemble in sorted(set(ensembles)):
            print(f"cost: {card.name}, ensemble {ensemble} ...", file=sys.stderr)
            row = measure_model(card, repeats, max_batch=None, side=64 if quick else SIDE, ensemble=ensemble)
            if ensemble == 1:
                single = row["seconds"]
            row["cost_vs_single"] = None if single is None else row["seconds"] / single
            rows.append(row)
    n = 512 if quick else 2048
    peak = gemm_numpy_gflops(n=n)
    int8_peak = gemm_ort_int8_gops(n=n) if any(r["precision"] == "int8" for r in rows) else None
    for r in rows:
        # Efficiency: useful work (model FLOPs on output pixels only) against the peak of the arithmetic the
        # model runs in: the int8 GEMM peak for an int8 model (~4x the float32 one with VNNI).
        r["peak"] = int8_peak if r["precision"] == "int8" else peak
        r["efficiency_vs_gemm_peak"] = r["effective_gflops"] / r["peak"]
    report = {
        **header("cost", quick, SCHEMA_VERSION),
        "gemm_peak_gflops": peak,
        "int8_gemm_peak_gops": int8_peak,
        "input": f"{64 if quick else SIDE}x{64 if quick else SIDE} x{SCALE}",
        "models": rows,
    }
    print(render_cost(report))
    write_json(report, json_out)
    return report


def render_cost(report: dict[str, Any]) -> str:
    """Markdown: one row per model."""
    cols = [
        ("model", "model"),
        ("ensemble", "ensemble"),
        ("cost_vs_single", "× single pass"),
        ("mflop_per_pixel", "MFLOP/px"),
        ("tile", "tile"),
        ("margin", "margin"),
        ("computed_over_output_px", "computed ÷ output px"),
        ("seconds", "s per output (see input)"),
        ("seconds_per_mpx", "s/Mpx"),
        ("effective_gflops", "useful GFLOP/s"),
        ("precision", "precision"),
        ("efficiency_vs_gemm_peak", "efficiency (÷ GEMM peak of its precision)"),
    ]
    return markdown_table(report["models"], cols)
