"""Weight files (safetensors + metadata) and the restricted import of the public VDSR checkpoint."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from drrn.cli import main
from model_export.model import DRRN, DRRNConfig
from model_export.vdsr_import import ForeignPickleError, read_vdsr_state, restricted_pickle
from model_export.weights import WeightsError, WeightsMeta, load_weights, read_meta, save_weights
from tests.conftest import make_tiny_weights


def test_round_trip_keeps_tensors_and_metadata(tmp_path: Path) -> None:
    cfg = DRRNConfig(units=2, channels=8, batch_norm=True)
    model = DRRN(cfg)
    meta = WeightsMeta(config=cfg, scales=[2, 3], provenance={"who": "test"}, training={"steps": 3})
    save_weights(model, meta, tmp_path / "w.safetensors")
    loaded, got = load_weights(tmp_path / "w.safetensors")
    assert got.config == cfg and got.scales == [2, 3] and got.training == {"steps": 3}
    for k, v in model.state_dict().items():
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(loaded.state_dict()[k], v)
    assert not loaded.training  # loaded for inference


def _tamper(src: Path, dst: Path, **config_changes) -> Path:
    from safetensors import safe_open

    with safe_open(str(src), framework="pt") as fh:
        meta = dict(fh.metadata())
    cfg = read_meta(src).config
    meta["config"] = DRRNConfig(**{**cfg.__dict__, **config_changes}).to_json()
    save_file(load_file(str(src)), str(dst), metadata=meta)
    return dst


def test_mismatched_config_and_tensors_is_a_clear_error(tmp_path: Path) -> None:
    src = make_tiny_weights(tmp_path / "ok.safetensors")
    with pytest.raises(WeightsError, match="shape"):
        load_weights(_tamper(src, tmp_path / "c.safetensors", channels=16))
    with pytest.raises(WeightsError, match="unexpected tensors"):
        load_weights(_tamper(src, tmp_path / "u.safetensors", units=0))
    with pytest.raises(WeightsError, match="missing tensors"):
        load_weights(_tamper(src, tmp_path / "bn.safetensors", batch_norm=True))


def test_non_drrn_file_is_refused(tmp_path: Path) -> None:
    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(WeightsError, match="not a DRRN weight file"):
        load_weights(tmp_path / "other.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors at all")
    with pytest.raises(WeightsError, match="cannot read"):
        load_weights(tmp_path / "junk.safetensors")


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_restricted_unpickler_refuses_foreign_globals() -> None:
    payload = pickle.dumps({"model": _Evil()}, protocol=2)
    with pytest.raises(ForeignPickleError, match=r"refusing to load global .*print"):
        restricted_pickle.Unpickler(io.BytesIO(payload)).load()


def test_refuses_a_checkpoint_with_a_malicious_global(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"epoch": 1, "model": _Evil()}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(ForeignPickleError, match="not on the VDSR checkpoint allow-list"):
        read_vdsr_state(path)


def _vdsr_reference(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The original pytorch-vdsr forward written with plain torch ops from its state dict."""
    h = F.relu(F.conv2d(x, state["input.weight"], padding=1))
    i = 0
    while f"residual_layer.{i}.conv.weight" in state:
        h = F.relu(F.conv2d(h, state[f"residual_layer.{i}.conv.weight"], padding=1))
        i += 1
    return F.conv2d(h, state["output.weight"], padding=1) + x


def test_converted_vdsr_reproduces_the_original_network(shared: Path, tmp_path: Path, capsys) -> None:
    src = shared / "reference" / "vdsr" / "model_epoch_50.pth"
    if not src.is_file():
        pytest.skip(f"{src} is absent")
    dst = tmp_path / "vdsr.safetensors"
    assert main(["convert", "--from", "pytorch-vdsr", str(src), "-o", str(dst)]) == 0
    model, meta = load_weights(dst)
    assert meta.config == DRRNConfig(blocks=19, units=0, channels=64, batch_norm=False, bias=False)
    assert meta.provenance["source_sha256"]

    from imaging.protocol import prepare

    _, bicubic = prepare(shared / "datasets" / "Set5" / "butterfly.png", 3)
    x = torch.from_numpy(bicubic.astype(np.float32))[None, None]
    with torch.no_grad():
        ours = model(x)
        ref = _vdsr_reference(read_vdsr_state(src), x)
    diff = (ours - ref).abs().max().item()
    print(f"VDSR conversion max abs diff on butterfly x3: {diff:.2e}")
    assert diff <= 1e-5
