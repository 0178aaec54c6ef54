"""The model tables in the README and the cards are hand-written; each measured cell in them must
be the committed ``drrn eval`` JSON it cites, rounded as printed. A cell with no JSON must say "not run"."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from drrn.paths import PROJECT_ROOT
from evaluation.stamp import summarize

EVALS = PROJECT_ROOT / "docs/eval"
SETS = ("Set5", "Set14", "BSD100")


def _cells(paths: list[Path], ensemble: int) -> dict[tuple[str, str], str]:
    _, results = summarize(paths, ensemble=ensemble)
    cells = {
        (s, k): f"{r['psnr']:.2f} / {r['ssim']:.4f}" for s, per in results.items() for k, r in per.items()
    }
    return cells


def _bicubic() -> dict[tuple[str, str], str]:
    doc = json.loads((EVALS / "eval-quality.json").read_text(encoding="utf-8"))
    return {
        (s, k): f"{r['bicubic_psnr']:.2f} / {r['bicubic_ssim']:.4f}"
        for s, per in doc["results"].items()
        for k, r in per.items()
    }


def _row(line: str) -> list[str]:
    return [c.strip().strip("*").strip() for c in line.strip().strip("|").split("|")]


def _expect(table: dict[tuple[str, str], str], key: tuple[str, str]) -> str:
    return table.get(key, "not run")


@pytest.fixture(scope="module")
def measured() -> dict[str, dict[tuple[str, str], str]]:
    return {
        "single": _cells([EVALS / "eval-quality.json"], 1),
        "ensemble": _cells(sorted(EVALS.glob("eval-quality-ens8-*.json")), 8),
        "stage1": _cells(sorted(EVALS.glob("eval-quality-ft-cpu*.json")), 1),
        "stage2": _cells(sorted(EVALS.glob("eval-quality-ft-gpu-*.json")), 1),
        "bicubic": _bicubic(),
    }


def test_card_table_is_the_committed_json(measured: dict) -> None:
    text = (PROJECT_ROOT / "weights/QUALITY_MODEL_CARD.md").read_text(encoding="utf-8")
    row_start = re.compile(r"\| (Set5|Set14|BSD100) \| x[234] \|")
    rows = [_row(line) for line in text.splitlines() if row_start.match(line)]
    quality_rows = [r for r in rows if len(r) == 7]
    assert len(quality_rows) == 9, "the card's quality table has one row per set and scale"
    for name, scale, bicubic, _independent, _paper, single, ensemble in quality_rows:
        key = (name, scale[1:])
        assert bicubic == measured["bicubic"][key], key
        assert single == measured["single"][key], key
        assert ensemble == _expect(measured["ensemble"], key), key


@pytest.mark.parametrize("name", SETS)
def test_readme_tables_are_the_committed_json(measured: dict, name: str) -> None:
    text = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
    head = f"| {name} | ×2 | ×3 | ×4 |"
    assert text.count(head) == 1, f"one README table headed {head!r}"
    lines = text.split(head, 1)[1].splitlines()[2:]
    rows = {r[0]: r[1:] for r in map(_row, lines[: next(i for i, x in enumerate(lines) if not x.strip())])}
    expected = {
        "this model, via `drrn eval`": measured["single"],
        "the same, ×8 self-ensemble": measured["ensemble"],
        "fine-tuning stage 1 (CPU, not shipped)": measured["stage1"],
        "fine-tuning stage 2 (H200, not shipped)": measured["stage2"],
    }
    for label, table in expected.items():
        assert rows[label] == [_expect(table, (name, s)) for s in "234"], label


def _fine(paths: list[Path]) -> dict[tuple[str, str], tuple[str, float]]:
    """``(set, scale) -> ("psnr / ssim" to 3 and 4 decimals, psnr)``, as the card's stage tables print."""
    out = {}
    for path in paths:
        for s, per in json.loads(path.read_text(encoding="utf-8"))["results"].items():
            for k, r in per.items():
                out[s, k] = (f"{r['psnr']:.3f} / {r['ssim']:.4f}", r["psnr"])
    return out


def _section_rows(card: str, heading: str) -> list[list[str]]:
    """The cells of each set-and-scale row (indented or not) of the tables under ``heading`` in ``card``,
    up to the next heading."""
    text = (PROJECT_ROOT / card).read_text(encoding="utf-8")
    section = text.split(heading, 1)[1].split("\n### ", 1)[0].split("\n## ", 1)[0]
    row_start = re.compile(r"\s*\| (Set5|Set14|BSD100) \| x[234] \|")
    return [_row(line) for line in section.splitlines() if row_start.match(line)]


@pytest.mark.parametrize(
    "heading, files",
    [("### Stage 1", ["eval-quality-ft-cpu*.json"]), ("### Stage 2", ["eval-quality-ft-gpu-*.json"])],
)
def test_card_stage_tables_are_the_committed_json(heading: str, files: list[str]) -> None:
    """Each fine-tuning stage's 9-cell table: the imported weights, the stage, and the change between (a
    cell with no JSON yet reads "not run", with no change)."""
    rows = _section_rows("weights/QUALITY_MODEL_CARD.md", heading)
    imported = _fine([EVALS / "eval-quality.json"])
    stage = _fine(sorted(p for pattern in files for p in EVALS.glob(pattern)))
    assert len(rows) == 9 and stage, "one row per set and scale"
    for name, scale, before, after, change in rows:
        key = (name, scale[1:])
        assert before == imported[key][0], key
        if key not in stage:
            assert (after, change) == ("not run", "n/a"), key
            continue
        assert after == stage[key][0], key
        assert float(change) == pytest.approx(round(stage[key][1] - imported[key][1], 3), abs=1e-9), key


def test_fast_card_distillation_control_table_is_the_committed_json() -> None:
    """The fast model's stage-5 table: stage 4, the control (no teacher) and the shipped distilled model,
    each from its committed JSON, and the two differences between them as printed (3 decimals)."""
    rows = _section_rows("weights/MODEL_CARD.md", "### Stage 5")
    stage4, control, shipped = (
        {key: psnr for key, (_, psnr) in _fine([EVALS / name]).items()}
        for name in ("eval-fast-stage4-fp32.json", "eval-fast-distill-control.json", "eval-default.json")
    )
    assert len({(row[0], row[1]) for row in rows}) == len(rows) == 9, "one row per set and scale"
    for name, scale, *cells in rows:
        key = (name, scale[1:])
        a, c, d = stage4[key], control[key], shipped[key]
        assert cells == [f"{a:.3f}", f"{c:.3f}", f"{d:.3f}", f"{c - a:+.3f}", f"{d - c:+.3f}"], key
