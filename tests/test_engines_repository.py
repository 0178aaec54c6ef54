"""The model repository: building folders from weight files (real tiny exports) and reading their cards."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnxruntime as ort
import pytest
from conftest import make_tiny_weights

from drrn import contract as c
from drrn.cli import main
from drrn.errors import UserError
from engines.repository import ModelCard, ModelRepository, RepositoryError, UnknownModelError
from model_export.repository_build import (
    build_model,
    build_repository,
    card_document,
    is_up_to_date,
    serving_defaults,
    sha256_file,
)


def _meta(path: Path) -> dict[str, str]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(session.get_modelmeta().custom_metadata_map)


def test_build_writes_onnx_pair_and_card(tiny_repo: Path, tiny_weights: Path) -> None:
    folder = tiny_repo / "fast"
    assert sorted(p.name for p in folder.iterdir()) == sorted([c.REPO_ONNX, c.REPO_ONNX_FP16, c.REPO_CARD])
    card = ModelRepository(tiny_repo).card("fast")
    sha = sha256_file(tiny_weights)
    assert (card.format, card.name, card.architecture) == (c.CARD_FORMAT, "fast", "DRRN_B1U2_C8")
    assert card.config["units"] == 2 and card.config["channels"] == 8
    assert (card.depth, card.receptive_field, card.params, card.flops_per_pixel) == (6, 13, 1296, 4896)
    assert card.mflop_per_pixel == 0.0 and card.scales == [2, 3, 4]
    assert card.quality == {} and card.provenance == {"source": "tests"} and card.training == {}
    assert card.weights_sha256 == sha
    assert card.serving == {"tile": 384, "margin": 6} and (card.tile, card.margin) == (384, 6)
    assert card.files == {"fp32": c.REPO_ONNX, "fp16": c.REPO_ONNX_FP16}
    assert card.onnx_path(False) == folder / c.REPO_ONNX and card.onnx_path(True) == folder / c.REPO_ONNX_FP16
    for fp16, precision in ((False, "fp32"), (True, "fp16")):
        meta = _meta(card.onnx_path(fp16))
        assert meta[c.META_PRECISION] == precision and meta[c.META_WEIGHTS_SHA256] == sha
    quality = ModelRepository(tiny_repo).card("quality")
    assert quality.depth == 8 and quality.weights_sha256 != sha


def test_up_to_date_folders_are_skipped_and_stale_ones_rebuilt(tiny_weights: Path, tmp_path: Path) -> None:
    weights = tmp_path / "m.safetensors"
    shutil.copy(tiny_weights, weights)
    folder = build_model(weights, tmp_path / "repo", fp16=False)
    assert folder == tmp_path / "repo" / "m" and not (folder / c.REPO_ONNX_FP16).exists()
    assert is_up_to_date(weights, folder, fp16=False) and not is_up_to_date(weights, folder, fp16=True)
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert build_model(weights, tmp_path / "repo", fp16=False) == folder
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == stamps  # nothing rewritten
    doc = json.loads((folder / c.REPO_CARD).read_text())
    doc["serving"]["tile"] = 128  # a card from before the serving defaults changed: stale
    (folder / c.REPO_CARD).write_text(json.dumps(doc))
    assert not is_up_to_date(weights, folder, fp16=False)
    build_model(weights, tmp_path / "repo", fp16=False)
    assert ModelCard.from_folder(folder).serving == serving_defaults(6)

    make_tiny_weights(weights, seed=7)  # new weights under the same name: the folder is stale
    assert not is_up_to_date(weights, folder, fp16=False)
    build_model(weights, tmp_path / "repo", fp16=False)
    card = ModelCard.from_folder(folder)
    assert card.weights_sha256 == sha256_file(weights)
    assert _meta(card.onnx_path(False))[c.META_WEIGHTS_SHA256] == card.weights_sha256


def test_card_document_quality_and_serving_defaults(tmp_path: Path) -> None:
    from model_export.model import DRRN, DRRNConfig
    from model_export.weights import WeightsMeta, save_weights

    cfg = DRRNConfig(units=13, channels=4)  # depth 28: past the shallow-model tile
    evaluation = {"protocol": "drrn-matlab", "results": {"Set5": {"2": {"psnr": 30.0, "ssim": 0.9}}}}
    path = tmp_path / "deep.safetensors"
    save_weights(DRRN(cfg), WeightsMeta(config=cfg, evaluation=evaluation, training={"steps": 1}), path)
    doc = card_document(path, "deep", fp16=False)
    assert doc["quality"] == evaluation and doc["training"] == {"steps": 1}
    assert doc["serving"] == {"tile": 640, "margin": 28} and doc["files"] == {"fp32": c.REPO_ONNX}
    assert doc["mflop_per_pixel"] == round(cfg.flops_per_pixel() / 1e6, 2)
    assert serving_defaults(20) == {"tile": 384, "margin": 20}
    assert serving_defaults(24)["tile"] == 384 and serving_defaults(52) == {"tile": 640, "margin": 52}


def test_names_cards_and_api_dict(tiny_repo: Path) -> None:
    repo = ModelRepository(tiny_repo)
    (tiny_repo / "half-built").mkdir(exist_ok=True)  # no card yet: not a model
    assert repo.names() == ["fast", "quality"]
    assert [k.name for k in repo.cards()] == ["fast", "quality"]
    data = repo.card("quality").to_dict()
    assert "folder" not in data and str(tiny_repo) not in json.dumps(data)
    assert data["name"] == "quality" and data["serving"] == {"tile": 384, "margin": 8}


def test_unknown_name_lists_valid_names(tiny_repo: Path) -> None:
    with pytest.raises(UnknownModelError) as info:
        ModelRepository(tiny_repo).card("qualty")
    err = info.value
    assert isinstance(err, UserError) and err.name == "qualty" and err.valid == ["fast", "quality"]
    assert str(err) == "unknown model 'qualty'; valid names: fast, quality"


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (lambda d: "{not json", "not JSON"),
        (lambda d: {k: v for k, v in d.items() if k != "depth"}, "missing fields ['depth']"),
        (lambda d: d | {"format": "other/1"}, "format 'other/1'"),
        (lambda d: d | {"params": "1296"}, "params is str"),
        (lambda d: d | {"name": "slow"}, "differs from the folder name"),
        (lambda d: d | {"serving": {"tile": 10, "margin": 6}}, "2*margin < tile"),
        (lambda d: d | {"files": {"fp16": "x.onnx"}}, "no fp32 entry"),
    ],
)
def test_malformed_card_names_folder_and_problem(tiny_repo: Path, tmp_path: Path, edit, problem: str) -> None:
    shutil.copytree(tiny_repo / "fast", tmp_path / "fast")
    card_path = tmp_path / "fast" / c.REPO_CARD
    edited = edit(json.loads(card_path.read_text()))
    card_path.write_text(edited if isinstance(edited, str) else json.dumps(edited))
    with pytest.raises(RepositoryError) as info:
        ModelRepository(tmp_path).card("fast")
    msg = str(info.value)
    assert str(tmp_path / "fast") in msg and problem in msg and "\n" not in msg


@pytest.mark.parametrize("state", ["missing", "empty"])
def test_missing_or_empty_root_names_the_build_command(tmp_path: Path, state: str) -> None:
    root = tmp_path / "models"
    if state == "empty":
        root.mkdir()
    repo = ModelRepository(root)
    assert repo.names() == []
    for call in (lambda: repo.card("fast"), repo.cards):
        with pytest.raises(RepositoryError, match="make models") as info:
            call()
        assert str(root) in str(info.value)


def test_models_cli_build_and_list(tiny_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    weights_dir, root = tmp_path / "weights", tmp_path / "models"
    weights_dir.mkdir()
    shutil.copy(tiny_weights, weights_dir / "fast.safetensors")
    assert main(["models", "build", "--weights-dir", str(weights_dir), "--root", str(root)]) == 0
    assert "fast: built" in capsys.readouterr().out
    assert build_repository(weights_dir, root) == ["fast"]  # up to date: no export
    assert main(["models", "list", "--root", str(root), "--json"]) == 0
    (card,) = json.loads(capsys.readouterr().out)
    assert card["name"] == "fast" and card["architecture"] == "DRRN_B1U2_C8"
    assert main(["models", "list", "--root", str(root)]) == 0
    assert "DRRN_B1U2_C8" in capsys.readouterr().out
    assert main(["models", "list", "--root", str(tmp_path / "none")]) == 2
    assert "make models" in capsys.readouterr().err
    assert main(["models", "build", "--weights-dir", str(tmp_path / "none"), "--root", str(root)]) == 2


def test_onnx_metadata_card_matches_the_weights_card(tiny_repo: Path, tiny_weights: Path) -> None:
    from model_export.repository_build import onnx_card_document

    from_onnx = onnx_card_document(tiny_repo / "fast" / c.REPO_ONNX, "fast")
    from_weights = card_document(tiny_weights, "fast", fp16=False)
    assert from_onnx == from_weights
    with pytest.raises(UserError, match="fp16 export"):
        onnx_card_document(tiny_repo / "fast" / c.REPO_ONNX_FP16, "fast")


def test_fp16_parity_miss_gives_an_fp32_only_card_that_stays_up_to_date(
    tiny_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from model_export import onnx_export

    monkeypatch.setitem(onnx_export.TOLERANCE, "fp16", 0.0)  # every fp16 export now misses parity
    folder = build_model(tiny_weights, tmp_path, name="m")
    card = json.loads((folder / c.REPO_CARD).read_text())
    assert card["files"] == {"fp32": c.REPO_ONNX} and not (folder / c.REPO_ONNX_FP16).exists()
    assert card["export_version"] == c.EXPORT_VERSION
    assert is_up_to_date(tiny_weights, folder)  # so the next build is skipped, not redone and refailed
    calls = []
    monkeypatch.setattr(onnx_export, "export_onnx", lambda *a, **k: calls.append(a))
    build_model(tiny_weights, tmp_path, name="m")
    assert calls == []


def test_a_card_from_an_older_exporter_is_rebuilt(tiny_weights: Path, tmp_path: Path) -> None:
    folder = build_model(tiny_weights, tmp_path, name="m", fp16=False)
    card = json.loads((folder / c.REPO_CARD).read_text())
    assert is_up_to_date(tiny_weights, folder, fp16=False)
    (folder / c.REPO_CARD).write_text(json.dumps({**card, "export_version": c.EXPORT_VERSION - 1}))
    assert not is_up_to_date(tiny_weights, folder, fp16=False)
