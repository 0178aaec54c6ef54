"""``drrn export``: graph contract, metadata, BN folding, and parity with PyTorch (the export checks
itself; these tests check that the check is real)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from drrn.cli import main
from drrn.paths import sha256_file
from model_export import onnx_export
from model_export.model import DRRN, DRRNConfig
from model_export.onnx_export import ExportParityError, export_onnx, read_onnx_metadata
from model_export.weights import WeightsMeta, load_weights, save_weights
from tests.conftest import make_tiny_weights
from tests.test_weights_and_vdsr import _tamper


def _real_images(shared_dir: Path | None) -> list[np.ndarray]:
    from model_export.cli_support import parity_images

    return parity_images() if shared_dir else []


def _randomise_bn(model: DRRN) -> None:
    """Trained-like BN statistics, so folding has something to fold."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.rand(c, generator=g) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(c, generator=g) * 0.2 - 0.1)


CASES = {
    "B1U9-C128": dict(units=9, channels=128),
    "B2U3-C16-BN-bias": dict(blocks=2, units=3, channels=16, batch_norm=True, bias=True),
    "B1U3-C16-NS-C-BN": dict(units=3, channels=16, batch_norm=True, share_weights=False, multi_path=False),
    "B5U0-C16-VDSR": dict(blocks=5, units=0, channels=16),
    "B1U3-C16-RS": dict(units=3, channels=16, rectified_skips=True),
    "B2U2-C16-RS-C": dict(blocks=2, units=2, channels=16, rectified_skips=True, multi_path=False),
}


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_parity(case: str, precision: str, tmp_path: Path) -> None:
    weights = make_tiny_weights(tmp_path / "w.safetensors", **dict(CASES[case]))
    if "batch_norm" in CASES[case]:
        model, meta = load_weights(weights)
        _randomise_bn(model)
        save_weights(model, meta, weights)
    from drrn.paths import shared_dir

    real = _real_images(shared_dir() if (shared_dir() / "datasets").is_dir() else None)
    report = export_onnx(weights, tmp_path / "m.onnx", fp16=precision == "fp16", real_images=real)
    print(f"{case} {precision}: max abs diff {report.max_abs_diff:.2e} over {len(report.cases)} cases")
    assert report.max_abs_diff <= onnx_export.TOLERANCE[precision]
    assert len(report.cases) == 3 + len(real)
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    assert not [n for n in graph.node if n.op_type == "BatchNormalization"], "BN must be folded"


def test_graph_contract_and_metadata(tmp_path: Path) -> None:
    weights = make_tiny_weights(tmp_path / "w.safetensors", units=3, channels=8)
    out = tmp_path / "m.onnx"
    export_onnx(weights, out)
    proto = onnx.load(str(out))
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    meta = read_onnx_metadata(out)
    cfg = DRRNConfig.from_dict(json.loads(meta["drrn.config"]))
    assert cfg == DRRNConfig(units=3, channels=8)
    assert int(meta["drrn.receptive_field"]) == cfg.receptive_field == 2 * cfg.depth + 1
    assert json.loads(meta["drrn.scales"]) == [2, 3, 4]
    assert meta["drrn.weights_sha256"] == sha256_file(weights)
    # Dynamic batch, height and width; output = input + residual inside the graph.
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((3, 1, 19, 41), dtype=np.float32)
    y = sess.run(None, {"lr_bicubic": x})[0]
    assert y.shape == x.shape and y.dtype == np.float32
    model, _ = load_weights(weights)
    with torch.no_grad():
        model.output.weight.zero_()
    save_weights(model, WeightsMeta(config=model.cfg), tmp_path / "zero.safetensors")
    export_onnx(tmp_path / "zero.safetensors", tmp_path / "zero.onnx")
    zero = ort.InferenceSession(str(tmp_path / "zero.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(zero.run(None, {"lr_bicubic": x})[0], x)


def test_fp16_model_keeps_float32_io(tmp_path: Path) -> None:
    weights = make_tiny_weights(tmp_path / "w.safetensors")
    export_onnx(weights, tmp_path / "h.onnx", fp16=True)
    proto = onnx.load(str(tmp_path / "h.onnx"))
    f32 = onnx.TensorProto.FLOAT
    assert proto.graph.input[0].type.tensor_type.elem_type == f32
    assert proto.graph.output[0].type.tensor_type.elem_type == f32
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in proto.graph.initializer)
    assert read_onnx_metadata(tmp_path / "h.onnx")["drrn.precision"] == "fp16"


def test_parity_failure_fails_the_export(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    weights = make_tiny_weights(tmp_path / "w.safetensors")
    monkeypatch.setitem(onnx_export.TOLERANCE, "fp16", 0.0)
    with pytest.raises(ExportParityError, match="differs from PyTorch"):
        export_onnx(weights, tmp_path / "bad.onnx", fp16=True)
    assert not (tmp_path / "bad.onnx").exists()
    assert not list(tmp_path.glob("*.partial"))


def test_export_refuses_mismatched_weights(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    good = make_tiny_weights(tmp_path / "w.safetensors")
    bad = _tamper(good, tmp_path / "bad.safetensors", channels=12)
    assert main(["export", str(bad), "-o", str(tmp_path / "bad.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert "tensors do not match config" in err and "\n" not in err
    assert not (tmp_path / "bad.onnx").exists()
