"""Latency and throughput against concurrency, from a ``drrn bench service`` JSON.

Run:  python -m bench.plot docs/bench/service.json [-o docs/bench/latency_throughput.png]

Two panels sharing the x-axis (concurrency, log 2): left, p50 and p99 latency of all requests and the p50
of the smallest (64x64 x2) request (ms, log scale); right, delivered throughput as the service engine's
output Mpx/s over each window (what a CPU box's short windows measure far better than the few large
requests they complete) with the raw engine's ceiling as a line, its axis starting near the data so the
differences are visible. Uses matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def plot_latency_throughput(report: dict[str, Any], out: str | Path) -> Path:
    """Write the plot for ``report`` (a service results dict) to ``out``; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = [lv for lv in report["levels"] if lv["ok"] > 0]
    conc = [lv["concurrency"] for lv in levels]
    fig, (lat, thr) = plt.subplots(1, 2, figsize=(9, 3.6), dpi=120)
    for key, style in (("p50", "o-"), ("p99", "s--")):
        # a level with too few samples for its p99 (None) has no point, rather than its largest value
        pts = [(c, lv["latency_ms"][key]) for c, lv in zip(conc, levels, strict=True)]
        pts = [(c, y) for c, y in pts if y is not None]
        if pts:
            lat.plot(*zip(*pts, strict=True), style, label=f"{key}, all requests")
    small = [(c, lv["p50_ms_by_request"].get("crop64_x2")) for c, lv in zip(conc, levels, strict=True)]
    small = [(c, y) for c, y in small if y is not None]
    if small:  # the smallest request alone: how queueing behind big ones stretches a cheap request
        lat.plot(*zip(*small, strict=True), "^:", label="p50, 64x64 x2 only")
    lat.set_yscale("log")
    lat.set_ylabel("latency (ms)")
    lat.set_title("latency", fontsize=10)
    x = [lv.get("engine_output_mpx_per_s") or lv["output_mpx_per_s"] for lv in levels]
    thr.plot(conc, x, "o-", label="service (engine tile rate)")
    ceiling = (report.get("overhead") or {}).get("engine_output_mpx_per_s")
    if ceiling:
        thr.axhline(ceiling, color="grey", linestyle=":", label="raw engine ceiling")
    top = max([*x, ceiling or 0.0])
    thr.set_ylim(0.8 * min(x), 1.1 * top)
    thr.set_ylabel("output Mpx/s")
    thr.set_title("throughput", fontsize=10)
    for ax in (lat, thr):
        ax.set_xscale("log", base=2)
        ax.set_xticks(conc, [str(c) for c in conc])
        ax.set_xlabel("concurrent requests")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    model = report.get("model", {}).get("name") or "model"
    serving = report.get("serving", {})
    fig.suptitle(f"{model}: tile {serving.get('tile')}, max_batch {serving.get('max_batch')}, "
                 f"{report.get('machine', {}).get('cpu_count')} CPUs", fontsize=10)  # fmt: skip
    fig.tight_layout()
    return save_figure(fig, out)


def save_figure(fig: Any, out: Path | str) -> Path:
    """Write ``fig`` to ``out`` (parents created), close it and say so on stderr; the plots' one exit."""
    import matplotlib.pyplot as plt

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    print(f"wrote {out}", file=sys.stderr)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", help="JSON written by `drrn bench service --json`")
    p.add_argument("-o", "--output", default="docs/bench/latency_throughput.png")
    args = p.parse_args(argv)
    plot_latency_throughput(json.loads(Path(args.results).read_text()), args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
