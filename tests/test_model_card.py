"""The model card is rendered from eval JSON, the weights' lineage and each stage's validation log."""

from __future__ import annotations

import json
from pathlib import Path

from evaluation.model_card import render, validation_curve
from model_export.model import DRRN, DRRNConfig
from model_export.weights import WeightsMeta, save_weights


def _stage(name: str, steps: int, minutes: float, patch: int) -> dict:
    return {
        "recipe": name, "command": f"drrn train --recipe {name}", "run": name, "steps": steps, "batch": 8,
        "patch": patch, "stride": 21, "patches_seen": 8 * steps, "wall_clock_s": 60.0 * minutes,
        "hardware": {"cpu": "x86_64", "cpu_count": 2}, "init_sha256": None,
    }  # fmt: skip


def _log(path: Path, evals: list[tuple[int, float, float]]) -> Path:
    lines = [
        {"event": "eval", "step": step, "elapsed_s": sec, "set5": {s: {"psnr": p + int(s)} for s in "234"}}
        for step, sec, p in evals
    ]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def test_curve_is_cumulative_across_stages(tmp_path: Path) -> None:
    one = _log(tmp_path / "1.jsonl", [(50, 600.0, 30.0), (100, 1200.0, 31.0)])
    two = _log(tmp_path / "2.jsonl", [(40, 300.0, 32.0)])
    rows = validation_curve([one, two]).splitlines()[2:]
    assert rows == [
        "| 1 | 50 | 10 | 32.00 | 33.00 | 34.00 |",
        "| 1 | 100 | 20 | 33.00 | 34.00 | 35.00 |",
        "| 2 | 140 | 25 | 34.00 | 35.00 | 36.00 |",
    ]


def test_card_lists_stages_totals_and_the_measured_table(tmp_path: Path) -> None:
    cfg = DRRNConfig(blocks=1, units=1, channels=4)
    stages = [_stage("cpu", 100, 20, 31), _stage("cpu-stage2", 40, 5, 48)]
    weights = tmp_path / "w.safetensors"
    save_weights(DRRN(cfg), WeightsMeta(config=cfg, training={"stages": stages, "steps": 40}), weights)
    result = {"psnr": 30.1234, "ssim": 0.9, "bicubic_psnr": 28.0, "bicubic_ssim": 0.8}
    eval_json = tmp_path / "eval.json"
    eval_json.write_text(json.dumps({"results": {"Set5": {"2": result}}}))

    card = render(eval_json, None, [_log(tmp_path / "1.jsonl", [(100, 1200.0, 30.0)])], weights=weights)
    assert "| 2 | `cpu-stage2` | `drrn train --recipe cpu-stage2` | 40 x 8 | 48 / 21 | 5 min |" in card
    assert "| **total** | | | 140 steps (1,120 patches) | | **25 min** | |" in card
    assert "| Set5 | x2 | 28.00 / 0.8000 | n/a | 36.66 | 37.66 / 0.9588 | **30.12 / 0.9000** |" in card


def test_readme_table_is_the_committed_eval(tmp_path: Path) -> None:
    """README's quality table is generated from docs/eval JSON: regenerating it changes nothing."""
    from drrn.paths import PROJECT_ROOT
    from evaluation.model_card import README_END, README_START, update_readme

    copy = tmp_path / "README.md"
    copy.write_text((PROJECT_ROOT / "README.md").read_text())
    evals = PROJECT_ROOT / "docs" / "eval"
    update_readme(copy, evals / "eval-default.json", evals / "eval-vdsr-onnx.json")
    assert copy.read_text() == (PROJECT_ROOT / "README.md").read_text()

    copy.write_text(f"intro\n{README_START}\nstale\n{README_END}\noutro\n")
    update_readme(copy, evals / "eval-default.json", None)
    text = copy.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "stale" not in text
    assert "| Set5 | x2 |" in text
