"""The numbers of ``drrn bench peers`` from its per-image records: cells, speeds and who dominates whom.

- ``cells``: per (model, set, scale), means over the images measured: PSNR, SSIM, the bicubic PSNR/SSIM of
  the *same* images (so ``db_over_bicubic`` is a paired difference), output Mpx and seconds per Mpx.
- ``points``: per (model, scale): seconds per output Mpx over every image it ran (sum of seconds / sum of
  Mpx, and the median of the per-image values) and dB over bicubic per set.
- ``dominance``: per peer point (peer, scale), each of our models at that scale compared on the sets both
  measured: the quality difference (mean of the per-set dB over bicubic, ours - peer) and the speed ratio
  (ours Mpx/s / peer Mpx/s). A peer point is dominated when one of ours is at least as good *and* at least as
  fast: at the peer's speed we have a model as good, and at its quality we are as fast.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from bench.report import fmt


def _mean(rows: list[dict], key: str) -> float:
    return float(np.mean([r[key] for r in rows]))


def aggregate(records: list[dict[str, Any]], models: list[tuple[str, str]]) -> dict[str, Any]:
    """``{"cells", "points", "dominance"}`` from ``records`` (one per model, image and scale);
    ``models``: ``[(name, kind)]`` in report order."""
    by_cell: dict[tuple, list[dict]] = defaultdict(list)
    by_point: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        by_cell[r["model"], r["set"], r["scale"]].append(r)
        by_point[r["model"], r["scale"]].append(r)
    kinds = dict(models)
    order = {name: i for i, (name, _) in enumerate(models)}
    cells = []
    for (model, set_name, s), rows in sorted(by_cell.items(), key=lambda kv: (order[kv[0][0]], kv[0][2])):
        mpx = sum(r["output_px"] for r in rows) / 1e6
        seconds = sum(r["seconds"] for r in rows)
        cells.append({
            "model": model, "set": set_name, "scale": s, "images": len(rows),
            "psnr": _mean(rows, "psnr"), "ssim": _mean(rows, "ssim"),
            "bicubic_psnr": _mean(rows, "bicubic_psnr"), "bicubic_ssim": _mean(rows, "bicubic_ssim"),
            "db_over_bicubic": _mean(rows, "psnr") - _mean(rows, "bicubic_psnr"),
            "output_mpx": mpx, "seconds": seconds, "s_per_mpx": seconds / mpx,
        })  # fmt: skip
    points = []
    for (model, s), rows in sorted(by_point.items(), key=lambda kv: (order[kv[0][0]], kv[0][1])):
        mpx = sum(r["output_px"] for r in rows) / 1e6
        seconds = sum(r["seconds"] for r in rows)
        per_image = [r["seconds"] / (r["output_px"] / 1e6) for r in rows]
        db = {c["set"]: c["db_over_bicubic"] for c in cells if c["model"] == model and c["scale"] == s}
        points.append({
            "model": model, "kind": kinds[model], "scale": s, "images": len(rows), "output_mpx": mpx,
            "s_per_mpx": seconds / mpx, "s_per_mpx_median": float(np.median(per_image)),
            "mpx_per_s": mpx / seconds, "db_over_bicubic": db,
            "db_over_bicubic_mean": float(np.mean(list(db.values()))),
        })  # fmt: skip
    return {"cells": cells, "points": points, "dominance": dominance(points)}


def dominance(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per peer point: each of our models at its scale, compared on their common sets."""
    ours = [p for p in points if p["kind"] == "ours"]
    out = []
    for peer in (p for p in points if p["kind"] == "peer"):
        versus = []
        for o in (o for o in ours if o["scale"] == peer["scale"]):
            common = sorted(set(o["db_over_bicubic"]) & set(peer["db_over_bicubic"]))
            if not common:
                continue
            dq = float(np.mean([o["db_over_bicubic"][k] - peer["db_over_bicubic"][k] for k in common]))
            speed = o["mpx_per_s"] / peer["mpx_per_s"]
            versus.append({"model": o["model"], "sets": common, "ddb": dq, "speed_ratio": speed,
                           "dominates": dq >= 0 and speed >= 1})  # fmt: skip
        out.append({
            "peer": peer["model"], "scale": peer["scale"], "versus": versus,
            "dominated_by": [v["model"] for v in versus if v["dominates"]],
        })  # fmt: skip
    return out


def render_peers(report: dict[str, Any]) -> str:
    """Markdown: one row per model and scale (PSNR / SSIM per set, dB over bicubic, speed), then the
    dominance lines and the machine-noise probe."""
    sets = report["sets"]
    cells = {(c["model"], c["set"], c["scale"]): c for c in report["cells"]}
    head = ["model", "scale", *[f"{s} PSNR / SSIM" for s in sets], "dB over bicubic (mean of sets)",
            "s per output Mpx", "output Mpx/s", "images"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    for p in report["points"]:
        row = [p["model"], f"×{p['scale']}"]
        counts = []
        for s in sets:
            c = cells.get((p["model"], s, p["scale"]))
            row.append(f"{c['psnr']:.2f} / {c['ssim']:.4f}" if c else "–")
            counts.append(str(c["images"]) if c else "–")
        measured = "+".join(s for s in sets if (p["model"], s, p["scale"]) in cells)
        row += [f"{p['db_over_bicubic_mean']:+.2f} ({measured})", fmt(p["s_per_mpx"]), fmt(p["mpx_per_s"]),
                "/".join(counts)]  # fmt: skip
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    for d in report["dominance"]:
        vs = "; ".join(f"{v['model']} {v['ddb']:+.2f} dB, {v['speed_ratio']:.3g}× speed" for v in d["versus"])
        verdict = ", ".join(d["dominated_by"]) or "none of ours"
        lines.append(f"- {d['peer']} ×{d['scale']}: dominated by {verdict} ({vs})")
    noise = report["noise"]
    lines.append(f"- machine noise: GEMM probe {min(noise['gflops']):.0f}–{max(noise['gflops']):.0f} GFLOP/s "
                 f"over the run (spread {noise['spread']:.0%})")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.peers_report docs/bench/peers.json``: print the markdown of a results file."""
    import argparse
    import json
    from pathlib import Path

    p = argparse.ArgumentParser(description="the markdown table of a `drrn bench peers` JSON")
    p.add_argument("results")
    print(render_peers(json.loads(Path(p.parse_args(argv).results).read_text())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
