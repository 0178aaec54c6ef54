"""``drrn quantize``: static QDQ int8 of a real tiny export, calibrated on images made here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
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
