"""End to end: a real ``drrn serve`` process on the shipped default model against ``drrn upscale``."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from bench.spawn import SpawnedService
from drrn.cli import main
from drrn.paths import DEFAULT_WEIGHTS
from imaging.color import rgb_to_ycbcr


@pytest.fixture(scope="module")
def default_onnx() -> Path:
    if not DEFAULT_WEIGHTS.is_file():
        pytest.skip(f"shipped weights {DEFAULT_WEIGHTS} not present")
    from bench.spawn import serve_model_path

    return serve_model_path("fast")


def test_served_png_matches_local_upscale(shared: Path, default_onnx: Path, tmp_path: Path) -> None:
    crop = Image.open(shared / "datasets" / "Set5" / "butterfly.png").convert("RGB").crop((96, 96, 160, 160))
    src = tmp_path / "crop.png"
    crop.save(src)
    with SpawnedService(model=default_onnx) as svc:
        r = httpx.post(
            f"{svc.url}/upscale?scale=4",
            content=src.read_bytes(),
            headers={"Content-Type": "image/png"},
            timeout=120,
        )
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "image/png"
        assert r.headers["x-request-id"] and "infer;dur=" in r.headers["server-timing"]
        info = httpx.get(f"{svc.url}/v1/model", timeout=10).json()
    served = Image.open(io.BytesIO(r.content))
    assert served.size == (256, 256) and served.mode == "RGB"

    out = tmp_path / "local.png"
    assert main(["upscale", str(src), str(out), "--scale", "4"]) == 0
    local = Image.open(out)
    y_served = rgb_to_ycbcr(np.asarray(served))[..., 0]
    y_local = rgb_to_ycbcr(np.asarray(local))[..., 0]
    np.testing.assert_array_equal(y_served, y_local)
    # The model really ran: the result is not the plain bicubic upscale.
    bicubic = np.asarray(crop.resize((256, 256), Image.Resampling.BICUBIC))
    assert np.abs(np.asarray(served).astype(int) - bicubic).mean() > 0.5
    assert info["receptive_field"] == 2 * info["depth"] + 1
