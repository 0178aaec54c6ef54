"""Render the shipped model's card (``weights/MODEL_CARD.md``) from ``drrn eval`` JSON results.

Every measured number in the card comes from a JSON file written by ``drrn eval --json``; the paper's
columns are constants quoted from the paper (``../shared/DRRN.md``). Regenerate with::

    python -m evaluation.model_card --default docs/eval/eval-default.json \
        --vdsr docs/eval/eval-vdsr-onnx.json --log STAGE1.jsonl STAGE2.jsonl -o weights/MODEL_CARD.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from drrn.paths import DEFAULT_WEIGHTS
from evaluation.stamp import stamp_weights
from model_export.lineage import stages_of, totals

# (PSNR, SSIM) from the DRRN paper, Table: DRRN B1U9, and SRCNN's published PSNR (the acceptance floor).
PAPER_B1U9 = {
    "Set5": {"2": (37.66, 0.9588), "3": (33.93, 0.9222), "4": (31.58, 0.8814)},
    "Set14": {"2": (33.19, 0.9133), "3": (29.94, 0.8339), "4": (28.18, 0.7701)},
    "BSD100": {"2": (32.01, 0.8969), "3": (28.91, 0.7992), "4": (27.35, 0.7262)},
}
SRCNN_PSNR = {
    "Set5": {"2": 36.66, "3": 32.75, "4": 30.48},
    "Set14": {"2": 32.42, "3": 29.28, "4": 27.49},
    "BSD100": {"2": 31.36, "3": 28.41, "4": 26.90},
}


def _cell(r: dict | None, key: str = "psnr", skey: str = "ssim") -> str:
    return "n/a" if r is None else f"{r[key]:.2f} / {r[skey]:.4f}"


def quality_table(default: dict, vdsr: dict | None) -> str:
    """Markdown table: bicubic, VDSR (public weights, our eval), SRCNN floor, paper DRRN, ours."""
    lines = [
        "| set | scale | bicubic | VDSR (public weights) | SRCNN (paper) | DRRN B1U9 (paper) "
        "| **this model** |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, per_scale in default["results"].items():
        for s, r in per_scale.items():
            v = (vdsr or {}).get("results", {}).get(name, {}).get(s)
            paper = PAPER_B1U9.get(name, {}).get(s)
            paper_cell = "n/a" if paper is None else f"{paper[0]:.2f} / {paper[1]:.4f}"
            srcnn = SRCNN_PSNR.get(name, {}).get(s)
            lines.append(
                f"| {name} | x{s} | {_cell(r, 'bicubic_psnr', 'bicubic_ssim')} | {_cell(v)} | "
                f"{'n/a' if srcnn is None else f'{srcnn:.2f}'} | {paper_cell} | **{_cell(r)}** |"
            )
    return "\n".join(lines)


def validation_curve(logs: list[Path]) -> str:
    """Set5 PSNR against training steps from each stage's ``log.jsonl`` (``"eval"`` events), oldest first.

    Steps and minutes are cumulative: stage k starts where stage k-1's log ends.
    """
    rows = ["| stage | step | wall-clock (min) | Set5 x2 | Set5 x3 | Set5 x4 |", "|---|---|---|---|---|---|"]
    step0 = elapsed0 = 0.0
    for k, log in enumerate(logs, 1):
        events = [json.loads(line) for line in log.read_text().splitlines()]
        for e in events:
            if e.get("event") != "eval":
                continue
            p = {s: v["psnr"] for s, v in e["set5"].items()}
            rows.append(
                f"| {k} | {int(step0 + e['step']):,} | {(elapsed0 + e['elapsed_s']) / 60:.0f} "
                f"| {p['2']:.2f} | {p['3']:.2f} | {p['4']:.2f} |"
            )
        step0 += max((e["step"] for e in events if "step" in e), default=0)
        elapsed0 += max((e["elapsed_s"] for e in events if "elapsed_s" in e), default=0.0)
    return "\n".join(rows)


def stages_table(stages: list[dict]) -> str:
    """One row per training stage (see :mod:`model_export.lineage`), then the totals."""
    rows = [
        "| stage | recipe | command | steps x batch | patch / stride | wall-clock | hardware |",
        "|---|---|---|---|---|---|---|",
    ]
    for k, st in enumerate(stages, 1):
        hw = st.get("hardware", {})
        where = f"{hw.get('cpu', '?')}, {hw.get('cpu_count', '?')} cores" + (
            f", GPU {hw['gpu']}" if "gpu" in hw else " (CPU only)"
        )
        teacher = st.get("teacher")
        recipe = f"`{st['recipe']}`" + (f" (teacher `{teacher['spec']}`)" if teacher else "")
        rows.append(
            f"| {k} | {recipe} | `{st.get('command') or '?'}` | {st['steps']:,} x {st['batch']} "
            f"| {st['patch']} / {st['stride']} | {st['wall_clock_s'] / 60:.0f} min | {where} |"
        )
    tot = totals(stages)
    rows.append(
        f"| **total** | | | {tot['steps']:,} steps ({tot['patches_seen']:,} patches) | "
        f"| **{tot['wall_clock_s'] / 60:.0f} min** | |"
    )
    return "\n".join(rows)


def int8_note(default: dict, int8_json: Path | None) -> str:
    """What the CPU serves instead of the fp32 table: the int8 file's distance from it on every cell."""
    if int8_json is None:
        return ""
    int8 = json.loads(int8_json.read_text())["results"]
    deltas = [
        int8[name][s]["psnr"] - r["psnr"]
        for name, per in default["results"].items()
        for s, r in per.items()
        if s in int8.get(name, {})
    ]
    return (
        " With margin = depth, tiling is exact, so the service's tile size cannot change them. On the CPU"
        " the service runs the int8 file built from `weights/fast.int8.json`:"
        f" {min(deltas):+.3f} to {max(deltas):+.3f} dB from this table on the {len(deltas)} cells"
        f" (`{int8_json.as_posix()}`)."
    )


def render(
    default_json: Path,
    vdsr_json: Path | None,
    logs: list[Path] = (),
    weights: Path = DEFAULT_WEIGHTS,
    int8_json: Path | None = None,
) -> str:
    from drrn.paths import sha256_file
    from model_export.model import DRRN, count_params
    from model_export.weights import read_meta

    meta = read_meta(weights)
    default = json.loads(default_json.read_text())
    vdsr = json.loads(vdsr_json.read_text()) if vdsr_json and vdsr_json.is_file() else None
    cfg = meta.config
    stages = stages_of(meta)
    if stages and "teacher" not in stages[-1]:  # the last stage's summary predates recording the teacher
        stages[-1]["teacher"] = meta.provenance.get("teacher")
    val = meta.evaluation.get("set5_validation", {})
    return f"""# Model card: `weights/fast.safetensors` (the `fast` model)

| | |
|---|---|
| architecture | {cfg.name}: DRRN, B={cfg.blocks} recursive block, U={cfg.units} residual units, \
C={cfg.channels} channels, {"BN" if cfg.batch_norm else "no BN"}, {"bias" if cfg.bias else "no bias"}, \
shared weights, multi-path |
| depth / receptive field | {cfg.depth} conv layers / {cfg.receptive_field}x{cfg.receptive_field} px |
| parameters | {count_params(DRRN(cfg)):,} |
| FLOPs per output pixel | {cfg.flops_per_pixel():,} |
| scales | one model for x{", x".join(str(s) for s in meta.scales)} \
(and any real scale up to 4 in the service) |
| data | 291 images: T91 + BSD200 (`../shared/datasets`), Y channel, MATLAB bicubic degradation at \
x2/x3/x4 mixed, square patches (size/stride per stage below), random flips/rotations (8 dihedral transforms) |
| training | {len(stages)} stage(s), {totals(stages)["steps"]:,} steps, \
{totals(stages)["wall_clock_s"] / 60:.0f} min in all (table below) |
| Set5 validation at the end of training | {json.dumps(val.get("set5", {}))} |
| weights sha256 | `{sha256_file(weights)}` |

## Training stages

Each stage warm-starts from the previous stage's final weights (`--init`); recipes are in
`training/recipes/`. Recorded in the weight file's metadata (`training.stages`).

{stages_table(stages)}

## Quality (PSNR dB / SSIM on Y, the paper's MATLAB protocol, `drrn eval`)

Measured through the service's own tiled ONNX Runtime pipeline (`drrn eval --model default`); "VDSR" is the
public pytorch-vdsr checkpoint converted with `drrn convert` and evaluated the same way. SRCNN and DRRN
columns are the papers' published numbers. These are the fp32 model's scores.{int8_note(default, int8_json)}

{quality_table(default, vdsr)}

## Validation during training (Set5 PSNR, full-image fp32, same protocol)

{validation_curve(list(logs)) if logs else "(no training log given)"}

Reproduce: `drrn eval --model default --data ../shared/datasets/Set5 ../shared/datasets/Set14 \
../shared/datasets/BSD100 --scales 2 3 4 --json docs/eval/eval-default.json`.
"""


README_START = "<!-- model-table:start (generated: python -m evaluation.model_card --readme README.md …) -->"
README_END = "<!-- model-table:end -->"


def update_readme(readme: Path, default_json: Path, vdsr_json: Path | None) -> None:
    """Rewrite the quality table between the README's model-table markers (both must be present)."""
    text = readme.read_text(encoding="utf-8")
    if README_START not in text or README_END not in text:
        raise SystemExit(f"{readme}: markers {README_START!r} ... {README_END!r} not found")
    head, rest = text.split(README_START, 1)
    tail = rest.split(README_END, 1)[1]
    default = json.loads(default_json.read_text())
    vdsr = json.loads(vdsr_json.read_text()) if vdsr_json and vdsr_json.is_file() else None
    table = quality_table(default, vdsr)
    readme.write_text(f"{head}{README_START}\n{table}\n{README_END}{tail}", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--default", required=True, type=Path, help="drrn eval JSON of the default model")
    p.add_argument("--vdsr", type=Path, help="drrn eval JSON of the converted VDSR weights")
    p.add_argument("--log", type=Path, nargs="+", default=[], help="each stage's log.jsonl, oldest first")
    p.add_argument("--notes", type=Path, help="markdown appended as the card's training notes")
    p.add_argument("--int8", type=Path, help="drrn eval JSON of the int8 file the CPU serves")
    p.add_argument("--stamp", action="store_true", help="also write the eval summary into the weights")
    p.add_argument("--command", help="the training command, recorded in the weights' provenance")
    p.add_argument("--readme", type=Path, help="also rewrite the quality table in this README")
    p.add_argument("-o", "--output", type=Path, required=True)
    args = p.parse_args(argv)
    if args.stamp:
        stamp_weights(DEFAULT_WEIGHTS, [args.default], command=args.command)
    notes = "\n## Training notes\n\n" + args.notes.read_text() if args.notes else ""
    args.output.write_text(render(args.default, args.vdsr, args.log, int8_json=args.int8) + notes)
    if args.readme:
        update_readme(args.readme, args.default, args.vdsr)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
