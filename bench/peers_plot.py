"""Quality against speed, from a ``drrn bench peers`` JSON: one marker per model and scale.

Run:  python -m bench.peers_plot docs/bench/peers.json [-o docs/bench/peers.png]

Two panels with the same axes: y is dB above bicubic (paired: the same images), x is output Mpx/s on 2
threads over every image that model ran at that scale (log scale: the models span decades). Left: the
images *every* model ran (``common_images``), so a model limited to a few images by ``--model-sets`` is
compared with the others on exactly those. Right: the mean over the run's sets, for the models that ran on
all of them. Colour = model (ours filled, peers hollow), marker = scale. Up and to the right is better.
Uses matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from bench.plot import save_figure

MARKERS = {2: "o", 3: "s", 4: "^", 8: "D"}


def _panel(ax, points: list[dict[str, Any]], value, colours: dict[str, str], title: str) -> None:
    """``value(point)``: its y, or None to leave the point out of this panel."""
    for p in points:
        y = value(p)
        if y is None:
            continue
        ours = p["kind"] != "peer"
        ax.scatter(p["mpx_per_s"], y, marker=MARKERS.get(p["scale"], "x"), s=46, linewidths=1.4,
                   facecolors=colours[p["model"]] if ours else "none", edgecolors=colours[p["model"]],
                   zorder=3)  # fmt: skip
    ax.axhline(0, color="grey", linewidth=0.8, linestyle="--")  # bicubic itself
    ax.set_xscale("log")
    ax.set_xlabel("output Mpx/s, 2 threads (log)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)


def _common_title(report: dict[str, Any]) -> str:
    keys = sorted(set().union(*map(set, report["common_images"].values())))
    sets = sorted({k.split("/")[0] for k in keys})
    if len(keys) <= 3:
        return f"{', '.join(k.replace('/', ' ') for k in keys)}: every model"
    return f"{len(keys)} images of {', '.join(sets)} that every model ran"


def plot_peers(report: dict[str, Any], out: str | Path) -> Path:
    """Write the scatter for ``report`` (a peers results dict) to ``out``; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    points = [p for p in report["points"] if p["model"] != "bicubic"]
    names = list(dict.fromkeys(p["model"] for p in points))
    palette = plt.get_cmap("tab10").colors
    colours = {n: palette[i % len(palette)] for i, n in enumerate(names)}
    sets = report["sets"]
    panels = [(lambda p: p["db_over_bicubic_common"], _common_title(report))]
    if len(sets) > 1:

        def mean_of_sets(p: dict[str, Any]) -> float | None:
            db = p["db_over_bicubic"]
            return sum(db[s] for s in sets) / len(sets) if all(s in db for s in sets) else None

        panels.append((mean_of_sets, f"mean of {', '.join(sets)} (models that ran all)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(9, 4.2), dpi=120, sharey=True, squeeze=False)
    axes = axes[0]
    for ax, (value, title) in zip(axes, panels, strict=True):
        _panel(ax, points, value, colours, title)
    axes[0].set_ylabel("dB above bicubic (Y PSNR)")
    kinds = {p["model"]: p["kind"] for p in points}
    handles = [Line2D([], [], marker="o", linestyle="", markersize=7, color=colours[n],
                      markerfacecolor=colours[n] if kinds[n] != "peer" else "none",
                      label=n + ("" if kinds[n] != "peer" else " (OpenCV)")) for n in names]  # fmt: skip
    scales = sorted({p["scale"] for p in points})
    handles += [Line2D([], [], marker=MARKERS.get(s, "x"), linestyle="", color="grey", label=f"×{s}")
                for s in scales]  # fmt: skip
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=8, frameon=False)
    fig.suptitle(
        "Quality against speed on a CPU: ours (filled) and OpenCV dnn_superres (hollow)", fontsize=10
    )
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    return save_figure(fig, out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", help="JSON written by `drrn bench peers --json`")
    p.add_argument("-o", "--output", default="docs/bench/peers.png")
    args = p.parse_args(argv)
    plot_peers(json.loads(Path(args.results).read_text()), args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
