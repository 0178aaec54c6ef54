"""Set5 PSNR against CPU-minutes of training, from runs' ``log.jsonl`` files, as a table and a PNG.

A warm-started run validates its ``--init`` weights at step 0 (minute 0); for runs from before that, pass
``--init`` here and the weights' stamped Set5 validation is used. Then one point per ``"eval"`` event::

    python -m training.curve runs/cpu-distill/log.jsonl --init weights/fast.safetensors \\
        --label "fast + distillation" -o docs/img/distill-curve.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

Point = tuple[float, dict[str, float]]  # (minutes, {scale: Set5 PSNR})


def read_curve(log: Path, init: Path | None = None) -> list[Point]:
    """``[(minutes, {"2": psnr, ...}), ...]`` from one run's log, oldest first; the init weights' stamped
    Set5 validation (when they carry one) is the point at minute 0."""
    evals = [row for row in map(json.loads, log.read_text().splitlines()) if row.get("event") == "eval"]
    points: list[Point] = []
    if init is not None and not any(row["step"] == 0 for row in evals):
        from model_export.weights import read_meta

        start = read_meta(init).evaluation.get("set5_validation", {}).get("set5", {})
        if start:
            points.append((0.0, {s: float(v["psnr"]) for s, v in start.items()}))
    for row in evals:
        seconds = row.get("train_s", row["elapsed_s"])  # older logs: validation time included
        points.append((seconds / 60, {s: float(v["psnr"]) for s, v in row["set5"].items()}))
    return points


def markdown(points: list[Point]) -> str:
    scales = sorted({s for _, p in points for s in p}, key=int)
    lines = ["| training minutes | " + " | ".join(f"Set5 x{s}" for s in scales) + " |"]
    lines.append("|---|" + "---|" * len(scales))
    for minutes, p in points:
        lines.append(
            f"| {minutes:.0f} | " + " | ".join(f"{p[s]:.3f}" if s in p else "" for s in scales) + " |"
        )
    return "\n".join(lines)


def plot(curves: dict[str, list[Point]], out: Path, title: str, xlabel: str) -> None:
    """One panel per scale, one line per run (matplotlib's Agg backend: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scales = sorted({s for pts in curves.values() for _, p in pts for s in p}, key=int)
    fig, axes = plt.subplots(1, len(scales), figsize=(4 * len(scales), 3.7), squeeze=False)
    for ax, s in zip(axes[0], scales, strict=True):
        for label, pts in curves.items():
            xs = [m for m, p in pts if s in p]
            ax.plot(xs, [p[s] for _, p in pts if s in p], marker="o", label=label)
        ax.set_title(f"Set5 x{s}")
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("PSNR (dB, Y)")
    # Below the panels, so it never hides a curve or the axis labels.
    fig.legend(
        *axes[0][0].get_legend_handles_labels(), loc="lower center", ncol=min(len(curves), 3), fontsize=8
    )
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("logs", nargs="+", type=Path, help="runs' log.jsonl files")
    p.add_argument("--init", nargs="*", type=Path, default=[], help="each run's --init weights (same order)")
    p.add_argument("--label", nargs="*", default=[], help="each run's legend label (same order)")
    p.add_argument("--title", default="Set5 validation against training time")
    p.add_argument("--xlabel", default="training minutes (wall clock, validation excluded)")
    p.add_argument("-o", "--output", type=Path, help="write the plot here (PNG)")
    args = p.parse_args(argv)
    curves = {}
    for i, log in enumerate(args.logs):
        init = args.init[i] if i < len(args.init) else None
        label = args.label[i] if i < len(args.label) else log.parent.name
        curves[label] = read_curve(log, init)
        print(f"{label}\n{markdown(curves[label])}\n")
    if args.output:
        plot(curves, args.output, args.title, args.xlabel)
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
