"""``drrn eval``: JSON shape, bicubic numbers through the CLI, backend agreement, repository models (card
tile and margin) and one-line user errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from drrn.cli import main


def _write_images(folder: Path, n: int = 2, size: tuple[int, int] = (72, 60)) -> Path:
    """Smooth-plus-texture RGB images: real structure for the model, no shared data needed."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0 : size[1], 0 : size[0]]
    for i in range(n):
        base = 128 + 90 * np.sin(xx / (5 + i)) * np.cos(yy / 7)
        rgb = np.stack([base, base[::-1], 255 - base], -1) + rng.normal(0, 6, (*base.shape, 3))
        Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(folder / f"img{i}.png")
    return folder


def test_bicubic_json_document(shared: Path, tmp_path: Path) -> None:
    out = tmp_path / "bicubic.json"
    args = f"eval --model bicubic --data {shared / 'datasets' / 'Set5'} --scales 2 4 --json {out}"
    assert main(args.split()) == 0
    doc = json.loads(out.read_text())
    assert doc["protocol"] == "drrn-matlab" and doc["model"] == "bicubic"
    r = doc["results"]["Set5"]
    assert set(r) == {"2", "4"} and r["2"]["images"] == 5
    assert round(r["2"]["psnr"], 2) == 33.66 and abs(r["2"]["ssim"] - 0.9299) <= 5e-4
    assert round(r["4"]["psnr"], 2) == 28.42 and abs(r["4"]["ssim"] - 0.8104) <= 5e-4
    assert r["2"]["psnr"] == r["2"]["bicubic_psnr"]


def test_safetensors_and_onnx_agree(tiny_weights: Path, tiny_onnx: Path, tmp_path: Path) -> None:
    data = _write_images(tmp_path / "imgs")
    docs = {}
    for model in (tiny_weights, tiny_onnx):
        out = tmp_path / f"{model.suffix}.json"
        args = f"eval --model {model} --data {data} --scales 2 3 --tile 32 --json {out}"
        assert main(args.split()) == 0
        docs[model.suffix] = json.loads(out.read_text())["results"]["imgs"]
    for s in ("2", "3"):
        a, b = docs[".safetensors"][s], docs[".onnx"][s]
        assert abs(a["psnr"] - b["psnr"]) <= 0.01
        assert a["psnr"] != a["bicubic_psnr"]  # the model really ran


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "drrn", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("case", ["missing", "empty", "unreadable"])
def test_bad_inputs_give_one_line_errors(case: str, tmp_path: Path) -> None:
    folder = tmp_path / "data"
    if case != "missing":
        folder.mkdir()
    if case == "unreadable":
        (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    proc = _run_cli("eval", "--model", "bicubic", "--data", str(folder))
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    # The progress bar shares stderr (carriage returns); the error itself is exactly one line.
    lines = [ln for ln in proc.stderr.replace("\r", "\n").splitlines() if "error" in ln]
    assert len(lines) == 1, proc.stderr
    err = lines[0][lines[0].index("drrn eval: error:") :]
    assert {"missing": "not found", "empty": "no images", "unreadable": "broken.png"}[case] in err


def test_repository_name_takes_tile_and_margin_from_its_card(
    tiny_repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data = _write_images(tmp_path / "imgs")
    base = f"eval --model quality --root {tiny_repo} --data {data} --scales 2"
    docs = {}
    for extra in ("", "--tile 32 --margin 4"):
        out = tmp_path / f"{len(extra)}.json"
        assert main(f"{base} --json {out} {extra}".split()) == 0
        docs[extra] = json.loads(out.read_text())
    assert "| quality" in capsys.readouterr().out  # the table is labelled with the model name
    card = docs[""]
    assert (card["model"], card["tile"], card["margin"]) == ("quality", 384, 8)  # the card's serving values
    assert (docs["--tile 32 --margin 4"]["tile"], docs["--tile 32 --margin 4"]["margin"]) == (32, 4)
    r = card["results"]["imgs"]["2"]
    assert r["psnr"] != r["bicubic_psnr"]


def test_model_errors_are_one_line(tiny_repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = _write_images(tmp_path / "imgs", n=1)
    for model, extra, expected in (
        ("slow", "", "unknown model 'slow'; valid names: fast, quality"),
        ("fast", "--tile 16 --margin 8", "margin 8 leaves no core in tile 16"),
        (str(tmp_path / "none.onnx"), "", "model file not found"),
    ):
        args = f"eval --model {model} --root {tiny_repo} --data {data} --scales 2 {extra}"
        assert main(args.split()) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("drrn eval: error:") and expected in err and "\n" not in err
