"""``drrn convert --from mxnet``: the NDArray-list reader on files made here (every truncation point, flipped
header bytes), the converter's architecture checks, and, with ``../shared``, the public B1U25 weights:
parity with a plain-ops forward of the symbol JSON, ONNX parity, and the rectified-skips variant."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from drrn.cli import main
from model_export.model import DRRNConfig
from model_export.mxnet_import import (
    convert_mxnet,
    declared_shapes,
    read_symbol,
    symbol_forward,
    to_drrn,
)
from model_export.mxnet_params import MxnetFormatError, parse_ndarray_list, write_ndarray_list
from model_export.weights import load_weights


def _symbol(units: int, channels: int, rectified: bool = True) -> dict:
    """An MXNet graph of DRRN B1U{units} in the source's layout (in-place ReLU makes skips rectified)."""
    nodes: list[dict] = []

    def add(op: str, name: str, inputs: list[int], attrs: dict | None = None) -> int:
        nodes.append({"op": op, "name": name, "inputs": [[i, 0, 0] for i in inputs], "attrs": attrs or {}})
        return len(nodes) - 1

    def conv(x: int, w: int, k: int) -> int:
        pad = add("Pad", f"pad{k}", [x], {"mode": "constant", "pad_width": "(0, 0, 0, 0, 1, 1, 1, 1)"})
        return add("Convolution", f"conv{k}", [pad, w], {"no_bias": "True", "kernel": "(3, 3)"})

    c = channels
    data = add("null", "data", [])
    x = add("relu", "relu_in", [data]) if rectified else data
    w = [
        add("null", f"learned_{i}", [], {"__shape__": str(s)})
        for i, s in enumerate([(c, 1, 3, 3), (c, c, 3, 3), (c, c, 3, 3), (1, c, 3, 3)])
    ]
    h0 = conv(x, w[0], 0)
    skip = add("relu", "relu_h0", [h0]) if rectified else h0
    h = skip
    for u in range(units):
        r = conv(add("relu", f"ra{u}", [h]), w[1], 2 * u + 1)
        r = conv(add("relu", f"rb{u}", [r]), w[2], 2 * u + 2)
        h = add("broadcast_add", f"add{u}", [r, skip])
    out = conv(add("relu", "relu_out", [h]), w[3], 99)
    head = add("broadcast_add", "add_out", [out, x])
    return {"nodes": nodes, "arg_nodes": [], "heads": [[head, 0, 0]], "attrs": {}}


def _arrays(channels: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    c = channels
    shapes = {"arg:learned_0": (c, 1, 3, 3), "arg:learned_1": (c, c, 3, 3), "arg:learned_2": (c, c, 3, 3)}
    shapes["arg:learned_3"] = (1, c, 3, 3)
    return {k: (rng.standard_normal(s) * 0.2).astype(np.float32) for k, s in shapes.items()}


@pytest.fixture
def tiny_mxnet(tmp_path: Path) -> tuple[Path, Path]:
    """A B1U2 C4 model as ``tiny-0000.params`` + ``tiny-symbol.json``."""
    params, symbol = tmp_path / "tiny-0000.params", tmp_path / "tiny-symbol.json"
    params.write_bytes(write_ndarray_list(_arrays(4)))
    symbol.write_text(json.dumps(_symbol(2, 4)))
    return params, symbol


def test_reader_round_trip() -> None:
    arrays = _arrays(4)
    got = parse_ndarray_list(write_ndarray_list(arrays))
    assert list(got) == list(arrays)
    for k in arrays:
        np.testing.assert_array_equal(got[k], arrays[k])


def test_every_truncation_point_is_a_one_line_error() -> None:
    data = write_ndarray_list(_arrays(4))
    for cut in range(len(data)):
        with pytest.raises(MxnetFormatError) as info:
            parse_ndarray_list(data[:cut], "f")
        assert "\n" not in str(info.value) and str(info.value).startswith("f: ")
    with pytest.raises(MxnetFormatError, match="unexpected bytes after the last name"):
        parse_ndarray_list(data + b"\0", "f")


def _validated_header_offsets(data: bytes) -> list[int]:
    """Byte offsets of the list header and of each array's magic, storage, ndim, shape and dtype."""
    offsets, pos = list(range(24)), 24
    for _ in range(4):
        ndim = struct.unpack_from("<I", data, pos + 8)[0]
        shape = struct.unpack_from(f"<{ndim}q", data, pos + 12)
        offsets += range(pos, pos + 12 + 8 * ndim)
        dtype_at = pos + 12 + 8 * ndim + 8
        offsets += range(dtype_at, dtype_at + 4)
        pos = dtype_at + 4 + 4 * int(np.prod(shape))
    return offsets


def test_flipped_header_bytes_are_refused() -> None:
    data = write_ndarray_list(_arrays(4))
    offsets = _validated_header_offsets(data)
    assert len(offsets) > 24 + 4 * (12 + 32 + 4) - 1
    for off in offsets:
        for bit in (0, 3, 7):
            bad = bytearray(data)
            bad[off] ^= 1 << bit
            with pytest.raises(MxnetFormatError):
                parse_ndarray_list(bytes(bad), "f")


def test_convert_tiny_model_matches_its_graph(tiny_mxnet, tmp_path: Path) -> None:
    params, symbol = tiny_mxnet
    assert main(["convert", "--from", "mxnet", str(params), "-o", str(tmp_path / "t.safetensors")]) == 0
    model, meta = load_weights(tmp_path / "t.safetensors")
    assert meta.config == DRRNConfig(blocks=1, units=2, channels=4, rectified_skips=True)
    assert meta.provenance["license"] == "MIT" and "Yun_Yang" in meta.provenance["copyright"]
    graph = read_symbol(symbol)
    weights = {k.removeprefix("arg:"): torch.from_numpy(v) for k, v in _arrays(4).items()}
    x = torch.rand(2, 1, 23, 17) * 1.2 - 0.1
    with torch.no_grad():
        assert float((model(x) - symbol_forward(graph, weights, x)).abs().max()) <= 1e-6


def test_textbook_graph_converts_to_the_textbook_variant(tmp_path: Path) -> None:
    params, symbol = tmp_path / "t-0000.params", tmp_path / "t-symbol.json"
    params.write_bytes(write_ndarray_list(_arrays(4)))
    symbol.write_text(json.dumps(_symbol(3, 4, rectified=False)))
    meta = convert_mxnet(params, tmp_path / "t.safetensors")
    assert meta.config == DRRNConfig(blocks=1, units=3, channels=4, rectified_skips=False)


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda d: d[: len(d) // 2], "truncated"),
        (lambda d: b"\x13" + d[1:], "not an MXNet NDArray list"),
        (lambda d: d[:24] + b"\0\0\0\0" + d[28:], "NDArray V2 magic"),
    ],
)
def test_bad_files_exit_2_with_one_line(tiny_mxnet, tmp_path, capsys, corrupt, message) -> None:
    params, _ = tiny_mxnet
    params.write_bytes(corrupt(params.read_bytes()))
    assert main(["convert", "--from", "mxnet", str(params), "-o", str(tmp_path / "o.safetensors")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not (tmp_path / "o.safetensors").exists()


def test_arrays_that_disagree_with_the_graph_exit_2(tiny_mxnet, tmp_path, capsys) -> None:
    params, symbol = tiny_mxnet
    arrays = _arrays(4)
    arrays["arg:learned_1"] = arrays["arg:learned_1"][:, :3]
    params.write_bytes(write_ndarray_list(arrays))
    assert main(["convert", "--from", "mxnet", str(params), "-o", str(tmp_path / "o.safetensors")]) == 2
    assert (
        "learned_1 is float32(4, 3, 3, 3), the graph declares float32(4, 4, 3, 3)" in capsys.readouterr().err
    )
    renamed = {k.replace("learned_3", "learned_9"): v for k, v in _arrays(4).items()}
    params.write_bytes(write_ndarray_list(renamed))
    assert main(["convert", "--from", "mxnet", str(params), "-o", str(tmp_path / "o.safetensors")]) == 2
    assert "do not match graph weights" in capsys.readouterr().err
    symbol.write_text("{not json")
    params.write_bytes(write_ndarray_list(_arrays(4)))
    assert main(["convert", "--from", "mxnet", str(params), "-o", str(tmp_path / "o.safetensors")]) == 2
    assert "not an MXNet symbol JSON" in capsys.readouterr().err


# --- the public weights (../shared/reference/drrn-jt) -------------------------------------------------------


@pytest.fixture(scope="module")
def public(shared: Path, tmp_path_factory: pytest.TempPathFactory):
    src = shared / "reference" / "drrn-jt" / "DRRN-B1U25-0000.params"
    if not src.is_file():
        pytest.skip(f"{src} not found")
    out = tmp_path_factory.mktemp("b1u25") / "quality.safetensors"
    convert_mxnet(src, out)
    graph = read_symbol(src.with_name("DRRN-B1U25-symbol.json"))
    from model_export.mxnet_params import read_ndarray_list

    weights = {k.removeprefix("arg:"): torch.from_numpy(v) for k, v in read_ndarray_list(src).items()}
    return out, graph, weights


def _crops(shared: Path) -> list[np.ndarray]:
    """Bicubic-upscaled Y crops: Set5 butterfly, and two Set14 spots where bicubic overshoots below 0."""
    from imaging.protocol import prepare

    def bic(folder: str, name: str, s: int) -> np.ndarray:
        return prepare(shared / "datasets" / folder / f"{name}.png", s)[1]

    crops = [bic("Set5", "butterfly", 3)[:72, :88], bic("Set14", "ppt3", 4)[60:140, 330:410]]
    crops.append(bic("Set14", "bridge", 2)[-64:, 240:310])
    return [c.astype(np.float32) for c in crops]


def test_public_weights_architecture(public) -> None:
    out, graph, _ = public
    model, meta = load_weights(out)
    assert meta.config == DRRNConfig(blocks=1, units=25, channels=128, rectified_skips=True)
    assert meta.config.depth == 52 and sum(p.numel() for p in model.parameters()) == 297_216
    assert declared_shapes(graph)["learned_1"] == (128, 128, 3, 3)


def test_public_weights_parity_with_the_symbol_graph(public, shared: Path) -> None:
    out, graph, weights = public
    model, _ = load_weights(out)
    crops = _crops(shared)
    assert any(c.min() < 0 for c in crops), "the crops should exercise the rectified input"
    worst = 0.0
    for c in crops:
        x = torch.from_numpy(c)[None, None]
        with torch.no_grad():
            worst = max(worst, float((model(x) - symbol_forward(graph, weights, x)).abs().max()))
    print(f"B1U25 PyTorch module vs symbol graph on {len(crops)} real crops: max abs {worst:.2e}")
    assert worst <= 1e-5


def test_public_weights_onnx_parity(public, shared: Path, tmp_path: Path) -> None:
    import onnxruntime as ort

    from model_export.onnx_export import export_onnx

    out, graph, weights = public
    for precision in ("fp32", "fp16"):
        onnx_path = tmp_path / f"q.{precision}.onnx"
        export_onnx(out, onnx_path, fp16=precision == "fp16")
        sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        worst = 0.0
        for c in _crops(shared):
            x = c[None, None]
            with torch.no_grad():
                ref = symbol_forward(graph, weights, torch.from_numpy(x)).numpy()
            worst = max(worst, float(np.abs(sess.run(None, {"lr_bicubic": x})[0] - ref).max()))
        print(f"B1U25 ONNX {precision} vs symbol graph: max abs {worst:.2e}")
        assert worst <= (1e-5 if precision == "fp32" else 1 / 255)


def test_textbook_skips_score_below_bicubic(public, shared: Path) -> None:
    """The variant matters: the same weights with h0 (not ReLU(h0)) skips fall below bicubic."""
    from imaging.protocol import prepare, score

    _, _, weights = public
    # On this crop (measured): bicubic 37.94, rectified 39.58, textbook 37.70 dB.
    gt, bic = prepare(shared / "datasets" / "Set5" / "baby.png", 2)
    gt, bic = gt[:120, :120], bic[:120, :120]
    x = torch.from_numpy(bic.astype(np.float32))[None, None]
    psnr = {}
    for rectified in (True, False):
        model = to_drrn(DRRNConfig(blocks=1, units=25, channels=128, rectified_skips=rectified), weights)
        with torch.no_grad():
            psnr[rectified] = score(model(x)[0, 0].double().numpy(), gt, 2)[0]
    bicubic = score(bic, gt, 2)[0]
    print(f"baby x2 crop: bicubic {bicubic:.2f}, rectified {psnr[True]:.2f}, textbook {psnr[False]:.2f}")
    assert psnr[True] > bicubic + 1.0
    assert psnr[False] < bicubic
