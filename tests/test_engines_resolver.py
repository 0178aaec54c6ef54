"""The one resolver: repository names, ONNX and safetensors paths, on-the-fly builds, and its errors."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import make_tiny_weights
from PIL import Image

from drrn import contract as c
from drrn.cli import main
from drrn.errors import UserError
from drrn.paths import PROJECT_ROOT
from engines.ort_engine import OrtEngine
from engines.repository import ModelRepository, RepositoryError, UnknownModelError
from engines.resolver import (
    model_name,
    open_card,
    resolve_card,
    resolve_engine,
    resolve_files,
    weights_for,
)

RNG = np.random.default_rng(0)
BATCH = RNG.random((2, 1, 32, 32), dtype=np.float32)


def test_name_opens_the_repository_model(tiny_repo: Path) -> None:
    engine = resolve_engine("quality", root=tiny_repo, max_batch=2)
    assert isinstance(engine, OrtEngine)
    assert engine.model_path == tiny_repo / "quality" / c.REPO_ONNX  # CPU: the fp32 file
    assert (engine.tile, engine.depth, engine.max_batch) == (384, 8, 2)  # tile from the card
    assert engine.run(BATCH).shape == BATCH.shape
    assert resolve_engine("quality", root=tiny_repo, tile=32).tile == 32


def test_default_is_fast(tiny_repo: Path) -> None:
    assert model_name("default") == "fast" and model_name("quality") == "quality"
    assert resolve_card("default", tiny_repo) == resolve_card("fast", tiny_repo)
    assert resolve_engine("default", root=tiny_repo).model_path == tiny_repo / "fast" / c.REPO_ONNX


def test_open_card_on_cpu_takes_fp32(tiny_repo: Path) -> None:
    card = ModelRepository(tiny_repo).card("fast")
    engine = open_card(card, providers="cpu", max_batch=1, intra_op_threads=1)
    assert engine.model_path == card.onnx_path(False) and engine.tile == card.tile
    assert engine.info()["precision"] == "fp32" and engine.providers == ["CPUExecutionProvider"]


def test_onnx_path(tiny_repo: Path) -> None:
    for fp16 in (False, True):
        path = ModelRepository(tiny_repo).card("fast").onnx_path(fp16)
        engine = resolve_engine(str(path))
        assert isinstance(engine, OrtEngine) and engine.model_path == path
        assert engine.tile == 384 and engine.depth == 6  # serving default for the depth in its metadata
    assert resolve_card(str(path), tiny_repo) is None


def test_safetensors_path_runs_on_torch_and_agrees(tiny_weights: Path, tiny_repo: Path) -> None:
    engine = resolve_engine(str(tiny_weights), tile=32, max_batch=2)
    assert type(engine).__name__ == "TorchEngine" and (engine.tile, engine.depth) == (32, 6)
    assert resolve_engine(str(tiny_weights)).tile == 384
    onnx = resolve_engine("fast", root=tiny_repo, tile=32, max_batch=2)
    np.testing.assert_allclose(engine.run(BATCH), onnx.run(BATCH), atol=1e-4)


def test_unknown_name_lists_valid_names(tiny_repo: Path) -> None:
    with pytest.raises(UnknownModelError) as info:
        resolve_engine("slow", root=tiny_repo)
    assert info.value.valid == ["fast", "quality"] and "valid names: fast, quality" in str(info.value)


@pytest.mark.parametrize("spec", ["missing.onnx", "missing.safetensors"])
def test_missing_file(spec: str, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="model file not found"):
        resolve_engine(str(tmp_path / spec))


@pytest.mark.parametrize("spec", ["weights/fast", "../fast", ".fast", ""])
def test_unsupported_spec(spec: str) -> None:
    with pytest.raises(UserError, match="unsupported model"):
        resolve_engine(spec)


def test_empty_repository_names_the_build_command(tmp_path: Path) -> None:
    with pytest.raises(RepositoryError, match="make models"):
        resolve_engine("fast", root=tmp_path / "models")


def test_missing_or_stale_name_is_built_on_first_use(tiny_weights: Path, tmp_path: Path) -> None:
    weights_dir, root = tmp_path / "weights", tmp_path / "models"
    weights_dir.mkdir()
    shutil.copy(tiny_weights, weights_dir / "fast.safetensors")
    card = resolve_card("default", root, weights_dir=weights_dir)
    assert card is not None and card.folder == root / "fast" and card.onnx_path(True).is_file()
    assert resolve_card("fast", root, weights_dir=weights_dir) == card  # up to date: no rebuild
    with pytest.raises(UnknownModelError) as info:
        resolve_card("quality", root, weights_dir=weights_dir)
    assert info.value.valid == ["fast"]
    make_tiny_weights(weights_dir / "fast.safetensors", seed=3)  # retrained: the folder is stale
    rebuilt = resolve_card("fast", root, weights_dir=weights_dir)
    assert rebuilt is not None and rebuilt.weights_sha256 != card.weights_sha256


NO_TORCH = textwrap.dedent(
    """
    import sys
    sys.modules["torch"] = None  # any `import torch` now raises ImportError
    from pathlib import Path
    from drrn.errors import UserError
    from engines.resolver import resolve_card, resolve_engine

    repo, weights_dir, empty = map(Path, sys.argv[1:4])
    assert resolve_engine("quality", root=repo).depth == 8
    assert resolve_card("fast", repo, weights_dir=weights_dir).name == "fast"  # up to date: no build
    try:
        resolve_card("fast", empty, weights_dir=weights_dir)
    except UserError as exc:
        print(exc)
    assert sys.modules["torch"] is None
    """
)


def test_without_torch_names_open_and_builds_say_make_models(tiny_repo: Path, tiny_weights: Path) -> None:
    fast_dir = tiny_repo.parent / "no-torch-weights"  # the weights tiny_repo's "fast" was built from
    fast_dir.mkdir(exist_ok=True)
    shutil.copy(tiny_weights, fast_dir / "fast.safetensors")
    args = [str(tiny_repo), str(fast_dir), str(tiny_repo.parent / "no-torch-empty")]
    proc = subprocess.run(
        [sys.executable, "-c", NO_TORCH, *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "needs torch" in proc.stdout and "`make models`" in proc.stdout


def test_resolve_files(tiny_repo: Path, tiny_weights: Path, tmp_path: Path) -> None:
    files = resolve_files("quality", root=tiny_repo)
    assert files.card is not None and files.weights is None  # an explicit root has no weights/
    assert (files.onnx, files.onnx_fp16) == (files.card.onnx_path(False), files.card.onnx_path(True))
    plain = resolve_files(str(tiny_weights))
    assert plain.weights == tiny_weights and plain.onnx is None and plain.card is None
    exported = resolve_files(str(tiny_weights), export=True, exports_root=tmp_path)
    assert exported.card is not None and exported.card.name.startswith("tiny-")
    assert exported.onnx == tmp_path / exported.card.name / c.REPO_ONNX and exported.onnx_fp16 is not None
    assert weights_for(str(tiny_weights)) == tiny_weights and weights_for("x.onnx") is None


def test_upscale_cli_with_a_repository_name(tiny_repo: Path, tmp_path: Path) -> None:
    src, out = tmp_path / "in.png", tmp_path / "out.png"
    Image.fromarray((RNG.random((20, 24, 3)) * 255).astype(np.uint8)).save(src)
    argv = ["upscale", str(src), str(out), "--scale", "2", "--model", "quality", "--root", str(tiny_repo)]
    assert main(argv) == 0
    assert Image.open(out).size == (48, 40)


def test_export_makes_any_onnx_a_repository_model(tiny_onnx: Path, tiny_repo: Path, tmp_path: Path) -> None:
    lone = resolve_files(str(tiny_onnx), export=True, exports_root=tmp_path)
    assert lone.card is not None and lone.card.name.startswith("tiny-") and lone.onnx_fp16 is None
    assert (
        lone.onnx == tmp_path / lone.card.name / c.REPO_ONNX
        and lone.onnx.read_bytes() == tiny_onnx.read_bytes()
    )
    assert (lone.card.depth, lone.card.architecture) == (6, "DRRN_B1U2_C8")
    inside = resolve_files(str(tiny_repo / "quality" / c.REPO_ONNX_FP16), export=True, exports_root=tmp_path)
    assert inside.card == ModelRepository(tiny_repo).card("quality")  # already a model: no copy
    assert sorted(p.name for p in tmp_path.iterdir()) == [lone.card.name]
