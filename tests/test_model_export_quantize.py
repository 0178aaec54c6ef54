"""``drrn quantize``: static QDQ int8 of a real tiny export, calibrated on images made here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image

from drrn import contract as c
from drrn.cli import main
from model_export.onnx_export import read_onnx_metadata
from model_export.quantize import float_nodes


def test_quantize_tiny_model(tiny_onnx: Path, tmp_path: Path) -> None:
    calib = tmp_path / "calib"
    calib.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):  # smooth content, like photos
        small = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
        Image.fromarray(small).resize((120, 120), Image.Resampling.BICUBIC).save(calib / f"{i}.png")
    out = tmp_path / "tiny.int8.onnx"
    assert main(["quantize", str(tiny_onnx), "-o", str(out), "--calib", str(calib), "--count", "6"]) == 0

    q = onnx.load(str(out))
    ops = [n.op_type for n in q.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    assert read_onnx_metadata(out)[c.META_PRECISION] == "int8"
    assert read_onnx_metadata(out)[c.META_DEPTH] == read_onnx_metadata(tiny_onnx)[c.META_DEPTH]
    # the first conv, the skip sums and the output conv + global residual stay float
    kept = float_nodes(onnx.load(str(tiny_onnx)))
    assert kept[0].endswith("entry/Conv") and "/Add" in kept and "/output/Conv" in kept

    x = rng.random((2, 1, 40, 40), dtype=np.float32)
    f32 = ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"])
    i8 = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    y32, y8 = (s.run(None, {c.INPUT_NAME: x})[0] for s in (f32, i8))
    assert y8.shape == x.shape and y8.dtype == np.float32
    assert 0 < np.abs(y8 - y32).max() < 0.05  # quantised (not identical), yet close


def test_quantize_refuses_a_missing_model(tmp_path: Path, capsys) -> None:
    assert main(["quantize", str(tmp_path / "nope.onnx"), "-o", str(tmp_path / "o.onnx")]) == 2
    assert "model file not found" in capsys.readouterr().err


def _calib_folder(tmp_path: Path) -> Path:
    calib = tmp_path / "calib"
    calib.mkdir()
    rng = np.random.default_rng(1)
    for i in range(2):
        small = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
        Image.fromarray(small).resize((120, 120), Image.Resampling.BICUBIC).save(calib / f"{i}.png")
    return calib


def test_a_recipe_rebuilds_the_same_int8_model_and_makes_it_the_cpu_default(tmp_path: Path) -> None:
    """`drrn quantize --recipe` stores the calibration; `drrn models build` rebuilds the identical int8
    file from it with no calibration images, and the CPU then serves int8 unless told otherwise."""
    from engines.repository import ModelRepository
    from engines.resolver import open_card
    from model_export.repository_build import build_model, is_up_to_date
    from tests.conftest import make_tiny_weights

    weights = make_tiny_weights(tmp_path / "w" / "tiny.safetensors", seed=3)
    root = tmp_path / "models"
    build_model(weights, root, name="tiny", fp16=False)
    card = ModelRepository(root).card("tiny")
    assert "int8" not in card.files and card.precision_for("auto", on_cuda=False) == "fp32"

    made = tmp_path / "made.int8.onnx"
    recipe = weights.with_name("tiny.int8.json")
    args = ["quantize", str(card.onnx_path(False)), "-o", str(made), "--calib", str(_calib_folder(tmp_path))]
    assert main([*args, "--count", "4", "--recipe", str(recipe), "--cpu-default"]) == 0
    assert not is_up_to_date(weights, root / "tiny", fp16=False)  # a new recipe means a rebuild

    build_model(weights, root, name="tiny", fp16=False)
    card = ModelRepository(root).card("tiny")
    assert card.files["int8"] == c.REPO_ONNX_INT8 and card.serving["cpu_precision"] == "int8"
    x = np.random.default_rng(0).random((1, 1, 24, 24), dtype=np.float32)
    runs = {
        p: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
        for p in (made, card.folder / c.REPO_ONNX_INT8)
    }
    a, b = (s.run(None, {c.INPUT_NAME: x})[0] for s in runs.values())
    np.testing.assert_array_equal(a, b)  # the recipe reproduces the calibrated model exactly

    assert open_card(card, providers="cpu", max_batch=1).info()["precision"] == "int8"
    assert open_card(card, providers="cpu", max_batch=1, precision="fp32").info()["precision"] == "fp32"
    # the service benchmark times the file the service runs, not the fp32 one it was pointed at
    from bench.service_engine import served_file

    fp32 = card.onnx_path(False)
    assert served_file({"name": "tiny", "precision": "int8"}, fp32) == card.folder / c.REPO_ONNX_INT8
    assert served_file({"name": "tiny", "precision": "fp32"}, fp32) == fp32
    recipe.unlink()
    assert not is_up_to_date(weights, root / "tiny", fp16=False)  # ... and so does removing it


def test_a_recipe_for_other_weights_is_refused(tmp_path: Path) -> None:
    from drrn.errors import UserError
    from model_export.repository_build import build_model
    from tests.conftest import make_tiny_weights

    weights = make_tiny_weights(tmp_path / "w" / "a.safetensors", seed=4)
    other = make_tiny_weights(tmp_path / "w" / "b.safetensors", seed=5)
    build_model(other, tmp_path / "models", name="b", fp16=False)
    recipe = weights.with_name("a.int8.json")
    args = ["quantize", str(tmp_path / "models" / "b" / c.REPO_ONNX), "-o", str(tmp_path / "b.int8.onnx")]
    assert (
        main([*args, "--calib", str(_calib_folder(tmp_path)), "--count", "2", "--recipe", str(recipe)]) == 0
    )
    with pytest.raises(UserError, match="other weights"):
        build_model(weights, tmp_path / "models", name="a", fp16=False)


def test_calibration_refuses_images_too_small_to_crop(tmp_path: Path) -> None:
    """No image reaches the crop size: a clear error, not a loop that never ends."""
    from drrn.errors import UserError
    from model_export.quantize import calibration_crops

    Image.fromarray(np.full((40, 48, 3), 120, np.uint8)).save(tmp_path / "small.png")
    with pytest.raises(UserError, match="no calibration image yields a 96x96 crop"):
        calibration_crops([tmp_path], count=4, size=96)
