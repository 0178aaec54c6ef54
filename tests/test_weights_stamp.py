"""``evaluation.stamp`` writes drrn eval summaries into weights; the shipped ones carry the committed JSON."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from drrn.errors import UserError
from drrn.paths import PROJECT_ROOT
from evaluation.stamp import stamp_weights, summarize
from model_export.model import DRRN, DRRNConfig
from model_export.weights import WeightsMeta, load_weights, save_weights


def _eval_json(path: Path, cells: dict, ensemble: int = 1, protocol: str = "drrn-matlab") -> Path:
    results = {
        name: {str(s): {"psnr": p, "ssim": q, "bicubic_psnr": 1.0, "images": 5} for s, (p, q) in per.items()}
        for name, per in cells.items()
    }
    doc = {"protocol": protocol, "model": "m", "ensemble": ensemble, "results": results}
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    cfg = DRRNConfig(blocks=1, units=2, channels=4)
    torch.manual_seed(0)
    path = tmp_path / "w.safetensors"
    save_weights(DRRN(cfg), WeightsMeta(config=cfg, provenance={"license": "MIT"}), path)
    return path


def test_stamp_merges_files_and_keeps_the_tensors(tmp_path: Path, weights: Path) -> None:
    before, _ = load_weights(weights)
    single = _eval_json(tmp_path / "s.json", {"Set5": {2: (37.6234, 0.959345)}, "Set14": {2: (33.18, 0.914)}})
    ens_a = _eval_json(tmp_path / "a.json", {"Set5": {2: (37.786, 0.95996)}}, ensemble=8)
    ens_b = _eval_json(tmp_path / "b.json", {"Set5": {3: (34.1157, 0.92578)}}, ensemble=8)

    stamp_weights(weights, [single], [ens_a, ens_b], command="drrn convert ...")

    after, meta = load_weights(weights)
    assert meta.evaluation == {
        "protocol": "drrn-matlab",
        "results": {
            "Set14": {"2": {"psnr": 33.18, "ssim": 0.914}},
            "Set5": {"2": {"psnr": 37.62, "ssim": 0.9593}},
        },
        "ensemble": {
            "size": 8,
            "results": {"Set5": {"2": {"psnr": 37.79, "ssim": 0.96}, "3": {"psnr": 34.12, "ssim": 0.9258}}},
        },
    }
    assert meta.provenance == {"license": "MIT", "command": "drrn convert ..."}
    for (name, a), (_, b) in zip(before.state_dict().items(), after.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.parametrize(
    "case, message",
    [
        ("overlap", "Set5 x2 is also in"),
        ("single_is_ensemble", "ran with --ensemble 8, expected 1"),
        ("ensemble_is_single", "ran with --ensemble 1, expected 8"),
        ("protocols", "mix protocols"),
        ("models", "single pass evaluated 'm', the ensemble 'other'"),
        ("not_eval", "not a drrn eval JSON"),
    ],
)
def test_bad_summaries_are_refused_and_leave_the_file(
    tmp_path: Path, weights: Path, case: str, message: str
) -> None:
    s = _eval_json(tmp_path / "s.json", {"Set5": {2: (37.0, 0.9)}})
    e = _eval_json(tmp_path / "e.json", {"Set5": {2: (37.1, 0.9)}}, ensemble=8)
    other = _eval_json(tmp_path / "o.json", {"Set5": {3: (34.0, 0.9)}}, ensemble=8)
    doc = json.loads(other.read_text())
    other.write_text(json.dumps({**doc, "model": "other"}), encoding="utf-8")
    not_eval = tmp_path / "list.json"
    not_eval.write_text("[]", encoding="utf-8")
    single, ensemble = {
        "overlap": ([s], [e, _eval_json(tmp_path / "e2.json", {"Set5": {2: (37.2, 0.9)}}, ensemble=8)]),
        "single_is_ensemble": ([e], []),
        "ensemble_is_single": ([s], [s]),
        "protocols": (
            [s, _eval_json(tmp_path / "p.json", {"Set14": {2: (33.0, 0.9)}}, protocol="other")],
            [],
        ),
        "not_eval": ([s, not_eval], []),
        "models": ([s], [other]),
    }[case]
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    with pytest.raises(UserError, match=message):
        stamp_weights(weights, single, ensemble)
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == digest


def test_cli_exits_2_with_one_line(tmp_path: Path, weights: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{", encoding="utf-8")
    res = subprocess.run(
        [sys.executable, "-m", "evaluation.stamp", str(weights), "--single", str(bad)],
        capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=120, check=False,
    )  # fmt: skip
    assert res.returncode == 2
    assert res.stderr.startswith("evaluation.stamp: ") and res.stderr.count("\n") == 1, res.stderr


def test_shipped_quality_weights_carry_the_published_table() -> None:
    """What GET /v1/models reports for the quality model is the committed docs/eval JSON."""
    _, meta = load_weights(PROJECT_ROOT / "weights/quality.safetensors")
    protocol, single = summarize([PROJECT_ROOT / "docs/eval/eval-quality.json"], ensemble=1)
    assert meta.evaluation["protocol"] == protocol
    assert meta.evaluation["results"] == single
    assert sum(len(v) for v in single.values()) == 9, "one cell per set and scale"
    ensemble_files = sorted((PROJECT_ROOT / "docs/eval").glob("eval-quality-ens8-*.json"))
    ens_protocol, ens = summarize(ensemble_files, ensemble=8)
    assert ens_protocol == protocol
    assert meta.evaluation["ensemble"] == {"size": 8, "results": ens}
    assert sum(len(v) for v in ens.values()) == 9, "the x8 column is complete"
