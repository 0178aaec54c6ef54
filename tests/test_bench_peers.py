"""Smoke test of ``drrn bench peers``: the shipped fast model against OpenCV's dnn_superres models on crops of
two real Set5 images, through the command line. Asserts the JSON's structure and that the numbers are sane
(a trained model beats bicubic on a real photo), never a timing.

Needs ``../shared`` (images and the peers' model files) and opencv-contrib (the ``bench`` extra); skips with
the reason otherwise.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.options import model_sets
from drrn.cli import main
from drrn.errors import UserError

SIDE = 96  # divisible by 2 and 3: the modcropped ground truth keeps every pixel


@pytest.fixture(scope="module")
def peer_files(shared: Path) -> Path:
    cv2 = pytest.importorskip("cv2", reason="opencv-contrib-python-headless (the bench extra) not installed")
    if not hasattr(cv2, "dnn_superres"):
        pytest.skip("cv2 has no dnn_superres: install opencv-contrib-python-headless<5, not opencv-python")
    folder = shared / "reference" / "opencv-superres"
    if not (folder / "FSRCNN_x2.pb").is_file():
        pytest.skip(f"OpenCV dnn_superres model files not found in {folder}")
    return folder


@pytest.fixture(scope="module")
def fast_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository holding the shipped fast model (fp32 only: the CPU runs it)."""
    from drrn.paths import WEIGHTS_DIR
    from model_export.repository_build import build_model

    root = tmp_path_factory.mktemp("models")
    build_model(WEIGHTS_DIR / "fast.safetensors", root, name="fast", fp16=False)
    return root


def _crop_set(shared: Path, tmp: Path, name: str) -> Path:
    """A one-image 'set': the centre SIDE x SIDE crop of a Set5 image, as PNG."""
    (src,) = (shared / "datasets" / "Set5").glob(f"{name}*")
    img = np.asarray(Image.open(src).convert("RGB"))
    y, x = (img.shape[0] - SIDE) // 2, (img.shape[1] - SIDE) // 2
    folder = tmp / name
    folder.mkdir()
    Image.fromarray(img[y : y + SIDE, x : x + SIDE]).save(folder / f"{name}.png")
    return folder


def test_peers_quick(shared: Path, peer_files: Path, fast_repo: Path, tmp_path: Path) -> None:
    butterfly, bird = _crop_set(shared, tmp_path, "butterfly"), _crop_set(shared, tmp_path, "bird")
    out, png = tmp_path / "peers.json", tmp_path / "peers.png"
    argv = ["bench", "peers", "--quick", "--root", str(fast_repo), "--models", "bicubic,fast,FSRCNN,LapSRN",
            "--sets", f"{butterfly},{bird}", "--scales", "2,3", "--model-sets", "LapSRN=bird/bird",
            "--json", str(out), "--peers-plot", str(png)]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert report["schema"] == "drrn-bench-peers/1" and report["quick"] is True and report["complete"] is True
    assert report["threads"] == 2 and report["degradation"] == "matlab"
    assert report["set_images"] == {"butterfly": 1, "bird": 1}
    assert [m["name"] for m in report["models"]] == ["bicubic", "fast", "FSRCNN", "LapSRN"]
    assert [(s["model"], s["scale"]) for s in report["skipped"]] == [("LapSRN", 3)]  # no LapSRN_x3.pb

    cells = {(c["model"], c["set"], c["scale"]): c for c in report["cells"]}
    expected = {
        (m, st, s) for m in ("bicubic", "fast", "FSRCNN") for st in ("butterfly", "bird") for s in (2, 3)
    }
    assert set(cells) == expected | {("LapSRN", "bird", 2)}  # LapSRN restricted to the bird set
    for c in cells.values():
        assert 15 < c["psnr"] < 60 and 0 < c["ssim"] <= 1 and c["images"] == 1
        assert c["output_mpx"] == SIDE * SIDE / 1e6 and c["s_per_mpx"] > 0
    for st in ("butterfly", "bird"):
        for s in (2, 3):
            bicubic = cells["bicubic", st, s]
            assert bicubic["psnr"] == bicubic["bicubic_psnr"]  # the baseline is the paired reference itself
            assert cells["fast", st, s]["bicubic_psnr"] == bicubic["psnr"]  # same LR image for everyone
            assert cells["fast", st, s]["db_over_bicubic"] > 0.5  # a trained model on a real photo
        assert cells["FSRCNN", st, 2]["db_over_bicubic"] > 0  # the peers are real, working models too

    points = {(p["model"], p["scale"]): p for p in report["points"]}
    assert all(math.isfinite(p["mpx_per_s"]) and p["mpx_per_s"] > 0 for p in points.values())
    assert set(points["LapSRN", 2]["db_over_bicubic"]) == {"bird"}
    # the images every model ran: LapSRN (bird only) narrows x2; x3 has no LapSRN
    assert report["common_images"] == {"2": ["bird/bird"], "3": ["bird/bird", "butterfly/butterfly"]}
    assert points["fast", 2]["db_over_bicubic_common"] == pytest.approx(
        points["fast", 2]["db_over_bicubic"]["bird"]
    )
    peers = {(d["peer"], d["scale"]): d for d in report["dominance"]}
    assert set(peers) == {("FSRCNN", 2), ("FSRCNN", 3), ("LapSRN", 2)}
    (vs,) = peers["LapSRN", 2]["versus"]
    assert vs["model"] == "fast" and vs["sets"] == ["bird"]  # compared on the sets both ran only
    assert vs["ddb"] == pytest.approx(
        points["fast", 2]["db_over_bicubic"]["bird"] - points["LapSRN", 2]["db_over_bicubic"]["bird"]
    )
    assert peers["LapSRN", 2]["dominated_by"] == (
        ["fast"] if vs["ddb"] >= 0 and vs["speed_ratio"] >= 1 else []
    )
    assert len(report["images"]) == len(report["cells"])  # one image per cell here
    assert report["noise"]["gflops"] and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_peers_cv2_degradation_and_options(shared: Path, peer_files: Path) -> None:
    from bench.peers import _jobs, degrade_lr, set_folder

    gt = np.linspace(0, 1, 48 * 36).reshape(48, 36)
    for degradation in ("matlab", "cv2"):
        lr = degrade_lr(gt, 3, degradation)
        assert lr.shape == (16, 12) and lr.dtype == np.uint8
    assert not np.array_equal(degrade_lr(gt, 3, "matlab"), degrade_lr(gt, 3, "cv2"))  # antialiasing or not
    set5, cap = set_folder("Set5:2")
    assert set5.name == "Set5" and cap == 2
    jobs = _jobs([(set5, 2), (set_folder("Set14")[0], 3)])
    assert [f.name for f, _ in jobs] == ["Set5", "Set14", "Set5", "Set14", "Set14"]  # one from each in turn
    assert model_sets(["quality=Set5,Set14"]) == {"quality": {"Set5", "Set14"}}
    for bad in (["quality"], ["=Set5"]):
        with pytest.raises(UserError, match="MODEL=SET"):
            model_sets(bad)
    with pytest.raises(UserError, match="NAME or NAME:COUNT"):
        set_folder("Set5:two")
