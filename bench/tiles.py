"""``drrn bench tiles``: each model's tile size from a sweep, and the tiling overhead across image shapes.

Two parts, one run:

- **Overhead** (geometry only, no engine): computed pixels ÷ output pixels of
  :func:`imaging.tiling.plan_tiles` at each model's serving tile and margin, on outputs of 64², 256², 1024²
  and 4000² pixels at aspect ratios 1:1, 4:1, 16:1 and 1000:1, for the tiles the CPU runs (``fit``) and
  the ones CUDA runs (``uniform``).
- **Sweep** (the CPU engine at the service's precision, one thread pool, batch 1): for each tile size T,
  the seconds per output megapixel of a ``side x side`` output through :func:`imaging.tiling.run_tiled`
  (throughput at saturation: the engine is the bottleneck), and the seconds of one run of a full T*T tile,
  which is how long a small request can wait behind a large one (the counter-weight: a lone small request
  is one tile of its own size, whatever T is). The recommended T is the smallest within 3% of the least
  CPU time per output pixel (process CPU seconds: the work, which ranks tile sizes even on a busy box).
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any

import numpy as np

from bench.report import header, markdown_table, write_json

SCHEMA_VERSION = 1
ASPECTS = (1, 4, 16, 1000)
SIDES = (64, 256, 1024, 4000)
NEAR_BEST = 1.03


def overhead_grid(tile: int, margin: int, shape: str = "fit") -> list[dict[str, Any]]:
    """Computed ÷ output pixels for every (area, aspect) of the grid (``h x w``, ``w / h`` ~ aspect)."""
    from imaging.tiling import plan_tiles

    rows = []
    for side in SIDES:
        for aspect in ASPECTS:
            h = max(1, round(side / math.sqrt(aspect)))
            w = max(1, round(side * side / h))
            plan = plan_tiles(h, w, tile, margin, shape)
            rows.append({
                "output": f"{w}x{h}", "aspect": aspect, "side": side, "tiles": len(plan),
                "tile_shape": f"{plan.tile_w}x{plan.tile_h}",
                "computed_over_output": plan.computed_pixels / (h * w),
            })  # fmt: skip
    return rows


def _image(side: int) -> np.ndarray:
    """Smooth photo-like float32 luminance in [0, 1] (content does not change the speed)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:side, 0:side]
    smooth = 0.5 + 0.3 * np.sin(xx / 9.0) * np.cos(yy / 13.0)
    return np.clip(smooth + rng.normal(0, 0.03, (side, side)), 0, 1).astype(np.float32)


def sweep_model(card: Any, tiles: list[int], side: int, repeats: int) -> list[dict[str, Any]]:
    """One row per tile size: s/Mpx on a ``side``² output, and one full tile's run time (see the doc)."""
    from engines.resolver import open_card
    from imaging.tiling import plan_tiles, run_tiled

    img, rows = _image(side), []
    for t in tiles:
        if 2 * card.margin >= t:
            continue
        engine = open_card(card, tile=t, max_batch=1, providers="cpu")
        one = np.ascontiguousarray(_image(t)[None, None])
        engine.run(one)  # warm-up: arena and thread pool
        lone = min(_timed(engine.run, one)[0] for _ in range(repeats))
        whole, cpu = min(_timed(run_tiled, img, engine.run, t, card.margin, 1) for _ in range(repeats))
        plan = plan_tiles(side, side, t, card.margin)
        rows.append({
            "model": card.name, "precision": engine.info()["precision"], "tile": t, "margin": card.margin,
            "computed_over_output": plan.computed_pixels / side**2,
            "s_per_output_mpx": whole / (side**2 / 1e6),
            "cpu_s_per_output_mpx": cpu / (side**2 / 1e6),
            "one_tile_run_s": lone, "engine_s_per_computed_mpx": lone / (t * t / 1e6),
        })  # fmt: skip
        print(f"tiles: {card.name} T={t}: {rows[-1]['s_per_output_mpx']:.2f} s/Mpx", file=sys.stderr)
        engine.close()
    # Ranked by CPU time: the work per output pixel, which wall time only shows on a quiet machine.
    best = min(r["cpu_s_per_output_mpx"] for r in rows)
    for r in rows:
        r["within_3pct_of_best"] = r["cpu_s_per_output_mpx"] <= best * NEAR_BEST
    return rows


def _timed(fn: Any, *args: Any) -> tuple[float, float]:
    """``(wall seconds, CPU seconds of this process)`` of ``fn(*args)``. CPU time counts the work done
    whatever else the machine runs, so it ranks tile sizes even on a busy box (wall time is the truth on
    a quiet one)."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn(*args)
    return time.perf_counter() - t0, time.process_time() - c0


def run_tiles(
    models: list[str] | None,
    json_out: str | None,
    quick: bool = False,
    tiles: list[int] | None = None,
    side: int | None = None,
    root: Any = None,
) -> dict[str, Any]:
    """Measure, print markdown, write JSON (``drrn-bench-tiles/1``)."""
    from drrn.paths import MODELS_DIR
    from engines.repository import ModelRepository
    from engines.resolver import resolve_card

    repo = ModelRepository(root or MODELS_DIR)
    cards = [repo.card(n) if root else resolve_card(n) for n in models] if models else repo.cards()
    out: dict[str, Any] = {**header("tiles", quick, SCHEMA_VERSION), "models": {}}
    for card in cards:
        grid = overhead_grid(card.tile, card.margin)
        uniform = overhead_grid(card.tile, card.margin, "uniform")
        default_side = 128 if quick else (1024 if card.depth <= 24 else 512)
        sweep_tiles = tiles or ([card.tile] if quick else _default_tiles(card.depth))
        sweep = sweep_model(card, sweep_tiles, side or default_side, 1 if quick else 2)
        pick = min((r for r in sweep if r["within_3pct_of_best"]), key=lambda r: r["tile"])
        out["models"][card.name] = {
            "serving": {"tile": card.tile, "margin": card.margin},
            "overhead_fit": grid,
            "overhead_uniform": uniform,
            "worst_fit": max(r["computed_over_output"] for r in grid),
            "worst_uniform": max(r["computed_over_output"] for r in uniform),
            "sweep_side": side or default_side,
            "sweep": sweep,
            "recommended_tile": pick["tile"],
        }
        print(render_tiles(card.name, out["models"][card.name]))
    write_json(out, json_out)
    return out


def _default_tiles(depth: int) -> list[int]:
    return [128, 192, 256, 384, 512] if depth <= 24 else [256, 384, 512, 640]


def render_tiles(name: str, doc: dict[str, Any]) -> str:
    """Markdown: the sweep, then the worst overheads."""
    cols = [
        ("tile", "T"),
        ("precision", "precision"),
        ("computed_over_output", "computed ÷ output px"),
        ("s_per_output_mpx", "s per output Mpx"),
        ("cpu_s_per_output_mpx", "CPU s per output Mpx"),
        ("one_tile_run_s", "one T² tile (s)"),
        ("within_3pct_of_best", "within 3% of best"),
    ]
    return (
        f"### {name} (margin {doc['serving']['margin']}, sweep on a {doc['sweep_side']}² output)\n\n"
        + markdown_table(doc["sweep"], cols)
        + f"\n\nworst computed ÷ output over the grid: fit {doc['worst_fit']:.2f}, "
        f"uniform {doc['worst_uniform']:.2f}"
    )
