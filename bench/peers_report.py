"""The numbers of ``drrn bench peers`` from its per-image records: cells, speeds and who dominates whom.

- ``cells``: per (model, set, scale), means over the images measured: PSNR, SSIM, the bicubic PSNR/SSIM of
  the *same* images (so ``db_over_bicubic`` is a paired difference), output Mpx and seconds per Mpx.
- ``points``: per (model, scale): seconds per output Mpx over every image it ran (sum of seconds / sum of
  Mpx, and the median of the per-image values), dB over bicubic per set, and ``db_over_bicubic_common``:
  the mean over ``common_images[scale]``, the images *every* model at that scale ran.
- ``dominance``: per peer point (peer, scale), each of our models at that scale compared on the images both
  ran (a model limited to a few images is never credited with the easier mean of a subset): the quality
  difference (per set, mean of ours - peer PSNR; then the mean over sets) and the speed ratio (ours Mpx/s /
  peer Mpx/s over those images, with the spread of the per-image ratios). A peer point is dominated when
  one of ours is at least as good *and* at least as fast: at the peer's speed we have a model as good, and
  at its quality we are as fast.
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
    common = _common_images(by_point)
    points = []
    for (model, s), rows in sorted(by_point.items(), key=lambda kv: (order[kv[0][0]], kv[0][1])):
        mpx = sum(r["output_px"] for r in rows) / 1e6
        seconds = sum(r["seconds"] for r in rows)
        per_image = [r["seconds"] / (r["output_px"] / 1e6) for r in rows]
        db = {c["set"]: c["db_over_bicubic"] for c in cells if c["model"] == model and c["scale"] == s}
        shared = [r["psnr"] - r["bicubic_psnr"] for r in rows if _key(r) in common[s]]
        points.append({
            "model": model, "kind": kinds[model], "scale": s, "images": len(rows), "output_mpx": mpx,
            "s_per_mpx": seconds / mpx, "s_per_mpx_median": float(np.median(per_image)),
            "mpx_per_s": mpx / seconds, "db_over_bicubic": db,
            "db_over_bicubic_mean": float(np.mean(list(db.values()))),
            "db_over_bicubic_common": float(np.mean(shared)) if shared else None,
        })  # fmt: skip
    return {
        "cells": cells,
        "common_images": {str(s): sorted(v) for s, v in common.items()},
        "points": points,
        "dominance": dominance(records, kinds),
    }


def _key(r: dict[str, Any]) -> str:
    return f"{r['set']}/{r['image']}"


def _common_images(by_point: dict[tuple, list[dict]]) -> dict[int, set[str]]:
    """Per scale, the ``SET/IMAGE`` keys every model at that scale ran."""
    out: dict[int, set[str]] = {}
    for (_, s), rows in by_point.items():
        keys = {_key(r) for r in rows}
        out[s] = out[s] & keys if s in out else keys
    return out


def _versus(ours: list[dict], peer: list[dict]) -> dict[str, Any] | None:
    """Ours against a peer at one scale, on the images both ran (paired per image)."""
    p_by = {_key(r): r for r in peer}
    pairs = [(o, p_by[_key(o)]) for o in ours if _key(o) in p_by]
    if not pairs:
        return None
    per_set: dict[str, list[float]] = defaultdict(list)
    for o, p in pairs:
        per_set[o["set"]].append(o["psnr"] - p["psnr"])
    ddb = float(np.mean([np.mean(v) for v in per_set.values()]))
    speed = sum(p["seconds"] for _, p in pairs) / sum(o["seconds"] for o, _ in pairs)  # same pixels
    ratios = [p["seconds"] / o["seconds"] for o, p in pairs]
    return {
        "model": ours[0]["model"], "sets": sorted(per_set), "images": len(pairs), "ddb": ddb,
        "speed_ratio": speed, "speed_ratio_p10": float(np.percentile(ratios, 10)),
        "speed_ratio_p90": float(np.percentile(ratios, 90)), "dominates": ddb >= 0 and speed >= 1,
    }  # fmt: skip


def dominance(records: list[dict[str, Any]], kinds: dict[str, str]) -> list[dict[str, Any]]:
    """One entry per peer point: each of our models at its scale, compared on the images both ran."""
    by_point: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        by_point[r["model"], r["scale"]].append(r)
    out = []
    for (peer, s), peer_rows in by_point.items():
        if kinds[peer] != "peer":
            continue
        versus = [
            _versus(rows, peer_rows) for (m, s2), rows in by_point.items() if kinds[m] == "ours" and s2 == s
        ]
        versus = sorted((v for v in versus if v is not None), key=lambda v: list(kinds).index(v["model"]))
        out.append({"peer": peer, "scale": s, "versus": versus,
                    "dominated_by": [v["model"] for v in versus if v["dominates"]]})  # fmt: skip
    order = list(kinds)
    return sorted(out, key=lambda d: (order.index(d["peer"]), d["scale"]))


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
            part = c and c["images"] < report["set_images"].get(s, 0)
            row.append(
                f"{c['psnr']:.2f} / {c['ssim']:.4f}" + (f" ({c['images']} img)" if part else "") if c else "–"
            )
            counts.append(str(c["images"]) if c else "–")
        measured = "+".join(s for s in sets if (p["model"], s, p["scale"]) in cells)
        row += [f"{p['db_over_bicubic_mean']:+.2f} ({measured})", fmt(p["s_per_mpx"]), fmt(p["mpx_per_s"]),
                "/".join(counts)]  # fmt: skip
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    for d in report["dominance"]:
        vs = "; ".join(
            f"{v['model']} {v['ddb']:+.2f} dB, {v['speed_ratio']:.3g}× the speed (per image "
            f"{v['speed_ratio_p10']:.3g}–{v['speed_ratio_p90']:.3g}, {v['images']} images)"
            for v in d["versus"]
        )
        verdict = ", ".join(d["dominated_by"]) or "none of ours"
        lines.append(f"- {d['peer']} ×{d['scale']}: dominated by {verdict} ({vs})")
    noise = report["noise"]
    lines.append(f"- machine noise: GEMM probe {min(noise['gflops']):.0f}–{max(noise['gflops']):.0f} GFLOP/s "
                 f"over the run (spread {noise['spread']:.0%})")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.peers_report docs/bench/peers.json [--rewrite]``: print the markdown of a results
    file; ``--rewrite`` first recomputes its cells, points and dominance from its per-image records (after a
    change to this module: the measurements themselves are never touched)."""
    import argparse
    import json
    from pathlib import Path

    from bench.report import write_json

    p = argparse.ArgumentParser(description="the markdown table of a `drrn bench peers` JSON")
    p.add_argument("results")
    p.add_argument("--rewrite", action="store_true", help="recompute the summaries from the records")
    args = p.parse_args(argv)
    report = json.loads(Path(args.results).read_text())
    if args.rewrite:
        report.update(aggregate(report["images"], [(m["name"], m["kind"]) for m in report["models"]]))
        write_json(report, args.results)
    print(render_peers(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
