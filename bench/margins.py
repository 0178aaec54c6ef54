"""``drrn bench margins``: what a tile margin below the model's depth costs in quality, measured.

Exact tiling needs a margin equal to the depth (20 for ``fast``, 52 for ``quality``), which on a small tile
computes several times the output pixels. A smaller margin changes only the pixels near tile seams, by an
amount that decays with the distance from the seam. This study measures that, per model, on the benchmark
sets under the paper's protocol:

- reference: the whole bicubic-upscaled Y in one engine call (no tiling at all);
- for each margin m (depth, depth/2, depth/4, ..., 8) at the model's serving tile: the service's tiled
  path (:func:`imaging.tiling.run_tiled`), then per cell (set x scale) the largest difference from the
  reference in 8-bit grey levels and the PSNR change (tiled - whole, mean over the set).

The recommended margin is the smallest m whose |ΔPSNR| <= 0.002 dB on every cell and whose largest
difference is <= 1 grey level (the issue's acceptance rule); ``computed_over_output_px`` per margin says
what it buys on a 1-Mpx output.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from bench.report import header, markdown_table, write_json

SCHEMA_VERSION = 1
MAX_DPSNR_DB, MAX_GREY_LEVELS = 0.002, 1


def default_margins(depth: int, tile: int) -> list[int]:
    """depth, depth/2, depth/4, ... down to 8 (and 8 itself), each leaving a core in ``tile``."""
    out, m = [], depth
    while m > 8:
        out.append(m)
        m //= 2
    out.append(min(8, depth))
    return sorted({m for m in out if 2 * m < tile}, reverse=True)


def _cells(folders: list[Path], scales: list[int]):
    from imaging.protocol import image_files, prepare

    for folder in folders:
        for path in image_files(folder):
            for s in scales:
                gt, bicubic = prepare(path, s)
                yield folder.name, s, path.stem, gt, bicubic.astype(np.float32)


def run_margins(
    model: str,
    data: list[str],
    scales: list[int],
    margins: list[int] | None = None,
    tile: int | None = None,
    json_out: str | None = None,
    quick: bool = False,
    root: Path | None = None,
) -> dict[str, Any]:
    """Measure, print the markdown table, write JSON (``drrn-bench-margins/1``)."""
    from engines.repository import ModelRepository
    from engines.resolver import open_card, resolve_card
    from imaging.protocol import quantize, score
    from imaging.tiling import plan_tiles, run_tiled

    card = ModelRepository(root).card(model) if root else resolve_card(model)
    # fp32: the study isolates what the margin costs (int8 rounding would blur it).
    engine = open_card(card, tile=tile, max_batch=8, providers="cpu", precision="fp32")
    tile = engine.tile
    margins = margins or default_margins(card.depth, tile)
    folders = [Path(d) for d in data]
    acc: dict[tuple[str, int, int | None], dict[str, Any]] = {}
    for set_name, s, stem, gt, bic in _cells(folders, scales):
        whole = engine.run(bic[None, None])[0, 0]
        whole_q = quantize(whole)
        ref = acc.setdefault((set_name, s, None), {"psnr": [], "max_grey": 0})
        ref["psnr"].append(score(whole, gt, s)[0])
        for m in margins:
            tiled = run_tiled(bic, engine.run, tile, m, engine.max_batch)
            diff = int(np.abs(quantize(tiled).astype(np.int16) - whole_q).max())
            cell = acc.setdefault((set_name, s, m), {"psnr": [], "max_grey": 0})
            cell["psnr"].append(score(tiled, gt, s)[0])
            cell["max_grey"] = max(cell["max_grey"], diff)
        print(f"margins: {set_name} x{s} {stem} done", file=sys.stderr)
        if quick:
            break
    rows = []
    for (set_name, s, m), cell in acc.items():
        if m is None:
            continue
        whole_psnr = float(np.mean(acc[set_name, s, None]["psnr"]))
        tiled_psnr = float(np.mean(cell["psnr"]))
        rows.append({
            "set": set_name, "scale": s, "margin": m, "images": len(cell["psnr"]),
            "whole_psnr": whole_psnr, "tiled_psnr": tiled_psnr, "dpsnr_db": tiled_psnr - whole_psnr,
            "max_grey_levels": cell["max_grey"],
        })  # fmt: skip
    out = 1024
    overhead = {m: plan_tiles(out, out, tile, m).computed_pixels / (out * out) for m in margins}
    ok = [
        m for m in margins
        if all(abs(r["dpsnr_db"]) <= MAX_DPSNR_DB and r["max_grey_levels"] <= MAX_GREY_LEVELS
               for r in rows if r["margin"] == m)
    ]  # fmt: skip
    report = {
        **header("margins", quick, SCHEMA_VERSION),
        "model": card.name, "architecture": card.architecture, "depth": card.depth, "tile": tile,
        "margins": margins, "rule": {"max_abs_dpsnr_db": MAX_DPSNR_DB, "max_grey_levels": MAX_GREY_LEVELS},
        "computed_over_output_px_1mpx": overhead, "recommended_margin": min(ok) if ok else None,
        "cells": rows,
    }  # fmt: skip
    print(render_margins(report))
    write_json(report, json_out)
    return report


def render_margins(report: dict[str, Any]) -> str:
    """Markdown: one row per set, scale and margin, then the recommendation."""
    cols = [
        ("set", "set"),
        ("scale", "scale"),
        ("margin", "margin"),
        ("whole_psnr", "whole-image PSNR"),
        ("dpsnr_db", "ΔPSNR (dB)"),
        ("max_grey_levels", "max |diff| (grey levels)"),
    ]
    table = markdown_table(report["cells"], cols)
    cost = ", ".join(f"m={m}: {v:.2f}×" for m, v in report["computed_over_output_px_1mpx"].items())
    return (
        f"{table}\n\nmodel {report['model']} (depth {report['depth']}), tile {report['tile']}; computed ÷ "
        f"output pixels on a 1-Mpx output: {cost}; recommended margin: {report['recommended_margin']}"
    )
