"""The geometric self-ensemble (one implementation: imaging.ensemble), alone and through the service's
pipeline with a real tiny model."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from imaging.ensemble import dihedral, self_ensemble, undo_dihedral
from imaging.protocol import quantize
from imaging.resize import imresize
from imaging.tiling import run_tiled
from inference.pipeline import ImageError, ImageLimits, count_tiles, prepare, tile_load, upscale_bytes
from inference.request_params import parse_ensemble


def test_the_8_transforms_are_distinct_and_undo_exactly() -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    seen = set()
    for k in range(8):
        y = dihedral(x, k)
        assert y.shape == ((4, 3) if k % 2 else (3, 4))
        seen.add(y.tobytes() + bytes(y.shape))
        np.testing.assert_array_equal(undo_dihedral(y, k), x)
    assert len(seen) == 8
    with pytest.raises(ValueError):
        dihedral(x, 8)


def test_self_ensemble_averages_the_undone_outputs() -> None:
    x = np.random.default_rng(0).random((5, 7)).astype(np.float32)
    np.testing.assert_array_equal(self_ensemble(x, lambda a: a, 8), x)  # equivariant: unchanged
    # a function that is not equivariant (adds a ramp along the width): the 8 ramps average out
    ramp = lambda a: a + np.linspace(0, 1, a.shape[1], dtype=np.float32)[None, :]  # noqa: E731
    out = self_ensemble(x, ramp, 8)
    assert np.allclose(out - x, 0.5, atol=1e-6)
    assert np.array_equal(self_ensemble(x, ramp, 1), ramp(x))
    with pytest.raises(ValueError, match="ensemble size"):
        self_ensemble(x, ramp, 4)


def test_parse_ensemble() -> None:
    limits = ImageLimits()
    assert (
        parse_ensemble(None, limits) == 1
        and parse_ensemble("8", limits) == 8
        and parse_ensemble("1", limits) == 1
    )
    for bad in ("2", "x", "8.0", "-8"):
        with pytest.raises(ImageError) as info:
            parse_ensemble(bad, limits)
        assert info.value.status == 422 and info.value.code == "bad_ensemble"


@pytest.mark.parametrize("tile", [32, 128])
def test_pipeline_ensemble_matches_the_eval_ensemble(tiny_runner, tile: int) -> None:
    """?ensemble=8 in the service = imaging.ensemble over the tiled model, as ``drrn eval --ensemble 8``,
    bit for bit, with tiles smaller than the output (32) and larger (128: one tile per transform, of the
    output's shape or its transpose, so no transform runs on padding)."""
    run, depth = tiny_runner
    margin, scale = depth, 2
    grey = np.random.default_rng(1).integers(0, 256, (23, 30), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(grey, "L").save(buf, "PNG")
    limits = ImageLimits()
    png8 = upscale_bytes(buf.getvalue(), scale, run, limits, tile, margin, 4, ensemble=8)
    png1 = upscale_bytes(buf.getvalue(), scale, run, limits, tile, margin, 4)
    got8 = np.asarray(Image.open(io.BytesIO(png8)))
    bic = imresize(grey.astype(np.float32) / 255, output_shape=(46, 60)).astype(np.float32)
    want8 = quantize(self_ensemble(bic, lambda x: run_tiled(x, run, tile, margin, 4), 8))
    assert got8.shape == (46, 60)
    np.testing.assert_array_equal(got8, want8)  # the same tiles, so the same numbers
    assert not np.array_equal(got8, np.asarray(Image.open(io.BytesIO(png1))))  # the ensemble did something
    if tile == 32:  # 8 transforms: 4 upright + 4 turned plans
        assert count_tiles((60, 46), tile, margin, 8) == 4 * count_tiles(
            (60, 46), tile, margin
        ) + 4 * count_tiles((46, 60), tile, margin)
    else:  # one tile per transform: 46x60 upright, 60x46 for the quarter turns (not 60x60 or 128x128)
        assert tile_load((60, 46), tile, margin, 8) == (8, 46 * 60)
        groups = prepare(buf.getvalue(), scale, limits, tile, margin, ensemble=8).tiles
        assert [g.shape for g in groups] == [(4, 1, 46, 60), (4, 1, 60, 46)]
        square = io.BytesIO()
        Image.fromarray(grey[:23, :23], "L").save(square, "PNG")
        (group,) = prepare(square.getvalue(), scale, limits, tile, margin, ensemble=8).tiles
        assert group.shape == (8, 1, 46, 46)  # one shape, one group


def test_ensemble_has_its_own_output_limit(tiny_runner) -> None:
    run, depth = tiny_runner
    buf = io.BytesIO()
    Image.new("L", (40, 40), 100).save(buf, "PNG")
    limits = ImageLimits(max_ensemble_output_pixels=79 * 79)
    with pytest.raises(ImageError) as info:
        upscale_bytes(buf.getvalue(), 2, run, limits, 32, depth, 4, ensemble=8)
    assert info.value.status == 422 and info.value.code == "output_too_large_for_ensemble"
    assert info.value.limit == {"name": "max_ensemble_output_pixels", "value": 79 * 79}
    upscale_bytes(buf.getvalue(), 2, run, limits, 32, depth, 4)  # the plain request is fine
