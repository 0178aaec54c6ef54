"""``drrn upscale`` error paths: each a one-line error and exit 2, with a tiny repository (no ../shared)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from drrn.cli import main


@pytest.fixture
def src(tmp_path: Path) -> Path:
    path = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(path)
    return path


@pytest.mark.parametrize(
    "args, message",
    [
        (["--scale", "2", "--model", "nope"], "unknown model 'nope'; valid names: fast, quality"),
        (["--scale", "9"], "scale"),
        (["--scale", "0.5"], "scale"),
        (["--scale", "2", "--model", "missing.onnx"], "model file not found"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(
    args: list[str], message: str, src: Path, tiny_repo: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "out.png"
    assert main(["upscale", str(src), str(out), *args, "--root", str(tiny_repo)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and err.startswith("drrn upscale: error:")
    assert not out.exists()


def test_bad_inputs_exit_2_with_one_line(src: Path, tiny_repo: Path, tmp_path: Path, capsys) -> None:
    text = tmp_path / "notes.png"
    text.write_text("not an image at all\n")
    for path, message in ((tmp_path / "absent.png", "absent.png"), (text, "image")):
        assert (
            main(["upscale", str(path), str(tmp_path / "o.png"), "--scale", "2", "--root", str(tiny_repo)])
            == 2
        )
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err
    assert (
        main(["upscale", str(src), str(tmp_path / "ok.png"), "--scale", "2", "--root", str(tiny_repo)]) == 0
    )
    assert Image.open(tmp_path / "ok.png").size == (20, 24)
