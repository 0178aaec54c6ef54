"""Latency against throughput across concurrency levels, from a ``drrn bench service`` JSON.

Run:  python -m bench.plot docs/bench/service.json [-o docs/bench/latency_throughput.png]

x: output Mpx/s (the service engine's tile rate over the window x the mix's output px per tile, which a
CPU box's short windows measure far better than the few large requests they complete); y: p50 and p99
latency (ms, log scale); each point is labelled with its concurrency. The knee of the curve is the
service's useful capacity: past it, more concurrency only adds queueing delay. Uses matplotlib's Agg
backend (no display needed).
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
    x = [lv.get("engine_output_mpx_per_s") or lv["output_mpx_per_s"] for lv in levels]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for key, style in (("p50", "o-"), ("p99", "s--")):
        y = [lv["latency_ms"][key] for lv in levels]
        ax.plot(x, y, style, label=f"{key} latency")
    small = [(xi, lv["p50_ms_by_request"].get("crop64_x2")) for lv, xi in zip(levels, x, strict=True)]
    small = [(xi, y) for xi, y in small if y is not None]
    if small:  # the smallest request alone: how queueing behind big ones stretches a cheap request
        ax.plot(*zip(*small, strict=True), "^:", label="p50 of 64x64 x2 requests")
    for lv, xi in zip(levels, x, strict=True):
        ax.annotate(f"c={lv['concurrency']} (n={lv['ok']})", (xi, lv["latency_ms"]["p50"]),
                    textcoords="offset points", xytext=(4, -12), fontsize=8)  # fmt: skip
    ov = report.get("overhead") or {}
    ax.set_xlim(0, 1.1 * max([*x, ov.get("engine_output_mpx_per_s") or 0.0]))
    ax.set_yscale("log")
    ax.set_xlabel("throughput (output Mpx/s)")
    ax.set_ylabel("latency (ms)")
    model = report.get("model", {}).get("name") or "model"
    serving = report.get("serving", {})
    ax.set_title(f"{model}: tile {serving.get('tile')}, max_batch {serving.get('max_batch')}, "
                 f"{report.get('machine', {}).get('cpu_count')} CPUs", fontsize=10)  # fmt: skip
    ov = report.get("overhead")
    if ov:
        ax.axvline(ov["engine_output_mpx_per_s"], color="grey", linestyle=":", label="raw engine")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
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
