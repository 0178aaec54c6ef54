"""Stamp ``drrn eval --json`` summaries into a weight file's metadata, where ``card.json``,
``drrn model-info`` and ``GET /v1/models`` read them.

    python -m evaluation.stamp weights/quality.safetensors --single docs/eval/eval-quality.json \\
        --ensemble docs/eval/eval-quality-ens8-*.json

The single-pass cells become ``evaluation["results"]`` and the self-ensemble cells
``evaluation["ensemble"] = {"size": 8, "results": ...}``; each is ``{set: {scale: {"psnr", "ssim"}}}``,
PSNR in dB rounded to 0.01 and SSIM to 0.0001. One cell may come from one file only.

Stamping rewrites the file, so its hash and that of every ONNX export built from it change, and a
``drrn eval --journal`` still running on the model's export will refuse to resume: stamp after the last run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from drrn.errors import UserError


def _read(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable drrn eval JSON ({exc})") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("results"), dict) or "protocol" not in doc:
        raise UserError(f"{path}: not a drrn eval JSON (needs 'protocol' and 'results')")
    return doc


def summarize(paths: list[Path], ensemble: int) -> tuple[str, dict]:
    """``(protocol, {set: {scale: {"psnr", "ssim"}}})`` merged from eval JSONs that all ran with
    ``--ensemble ENSEMBLE`` under one protocol on one model. A cell in two files is an error, not a choice."""
    return _summarize(paths, ensemble)[:2]


def _summarize(paths: list[Path], ensemble: int) -> tuple[str, dict, str | None]:
    """:func:`summarize` and the ``--model`` the files evaluated."""
    protocols, models, cells = set(), set(), {}
    for path in paths:
        doc = _read(path)
        if doc.get("ensemble", 1) != ensemble:
            raise UserError(f"{path}: ran with --ensemble {doc.get('ensemble', 1)}, expected {ensemble}")
        protocols.add(doc["protocol"])
        models.add(doc.get("model"))
        for name, per_scale in doc["results"].items():
            for scale, r in per_scale.items():
                if (name, scale) in cells:
                    raise UserError(f"{path}: {name} x{scale} is also in {cells[name, scale][0]}")
                cells[name, scale] = (path, {"psnr": round(r["psnr"], 2), "ssim": round(r["ssim"], 4)})
    if len(protocols) != 1 or len(models) != 1:
        raise UserError(f"the files mix protocols {sorted(protocols)} or models {sorted(map(str, models))}")
    results: dict[str, dict] = {}
    for (name, scale), (_, cell) in sorted(cells.items()):
        results.setdefault(name, {})[scale] = cell
    return protocols.pop(), results, models.pop()


def stamp_weights(
    weights: Path, single: list[Path], ensemble: list[Path] | None = None, command: str | None = None
) -> dict:
    """Write the summaries (and the training command, into provenance) into ``weights``; returns the
    new ``evaluation`` metadata. Keys of the old one that this does not set are kept."""
    from model_export.weights import load_weights, save_weights

    protocol, results, evaluated = _summarize(single, ensemble=1)
    model, meta = load_weights(weights)
    evaluation = {**meta.evaluation, "protocol": protocol, "results": results}
    if ensemble:
        ens_protocol, ens_results, ens_evaluated = _summarize(ensemble, ensemble=8)
        if ens_protocol != protocol:
            raise UserError(f"single pass ran under {protocol!r}, the ensemble under {ens_protocol!r}")
        if ens_evaluated != evaluated:
            raise UserError(f"single pass evaluated {evaluated!r}, the ensemble {ens_evaluated!r}")
        evaluation["ensemble"] = {"size": 8, "results": ens_results}
    meta.evaluation = evaluation
    if command:
        meta.provenance["command"] = command
    save_weights(model, meta, weights)
    return evaluation


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("weights", type=Path, help="the .safetensors file to stamp (rewritten in place)")
    p.add_argument("--single", type=Path, nargs="+", required=True, help="single-pass drrn eval JSONs")
    p.add_argument("--ensemble", type=Path, nargs="*", default=[], help="drrn eval --ensemble 8 JSONs")
    p.add_argument("--command", help="the command that made the weights, recorded in their provenance")
    args = p.parse_args(argv)
    try:
        evaluation = stamp_weights(args.weights, args.single, args.ensemble, args.command)
    except UserError as exc:
        print(f"evaluation.stamp: {exc}", file=sys.stderr)
        return 2
    cells = sum(len(v) for v in evaluation["results"].values())
    ens = sum(len(v) for v in evaluation.get("ensemble", {}).get("results", {}).values())
    print(f"stamped {args.weights}: {cells} single-pass cells, {ens} ensemble cells")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
