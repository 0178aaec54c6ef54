"""imaging.color / imaging.resize against MATLAB's own outputs and an independent loop-based port.

The .mat oracles (shared/reference/matlab) hold MATLAB rgb2ycbcr/imresize/ycbcr2rgb results on Set5
images; the loop-based reference below re-derives MATLAB's bicubic algorithm pixel by pixel so that
non-integer scales (1/3, 2.5) and explicit output sizes are checked too.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from imaging.color import rgb_to_ycbcr, ycbcr_to_rgb
from imaging.resize import imresize, resize_weights

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
MATLAB_DIR = SHARED / "reference" / "matlab"
MAT_FILES = sorted(MATLAB_DIR.glob("*.mat")) if MATLAB_DIR.is_dir() else []


def _scale_of(path: Path) -> int:
    # Files are named <image>_GT_x<s>.mat.
    return int(path.stem.rsplit("_x", 1)[1])


@pytest.fixture(params=MAT_FILES or [None], ids=lambda p: p.stem if p else "missing")
def oracle(request):
    if request.param is None:
        pytest.skip(f"MATLAB oracle files not found under {MATLAB_DIR} (shared/ is absent on this checkout)")
    scipy_io = pytest.importorskip("scipy.io", reason="scipy is needed to read the .mat oracles")
    mat = scipy_io.loadmat(str(request.param))
    return _scale_of(request.param), mat


# ---------------------------------------------------------------- MATLAB oracle ----------------------


def test_gt_y_float_path(oracle):
    _, mat = oracle
    gt = mat["im_gt"]
    y = rgb_to_ycbcr(gt.astype(np.float64) / 255.0)[..., 0] * 255.0
    np.testing.assert_allclose(y, mat["im_gt_y"], rtol=0, atol=1e-6)


def test_gt_y_uint8_path_is_rounded_float_path(oracle):
    _, mat = oracle
    y8 = rgb_to_ycbcr(mat["im_gt"])[..., 0]
    assert y8.dtype == np.uint8
    # MATLAB's uint8 path rounds half away from zero; im_gt_y is the unrounded value of the same sum.
    expected = np.floor(mat["im_gt_y"] + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(y8, expected)


def test_low_and_bicubic_y(oracle):
    s, mat = oracle
    gt_y = mat["im_gt_y"] / 255.0
    low = imresize(gt_y, 1 / s)
    h, w = gt_y.shape
    assert low.shape == (math.ceil(h / s), math.ceil(w / s)) == mat["im_l_y"].shape
    np.testing.assert_allclose(low * 255.0, mat["im_l_y"], rtol=0, atol=1e-6)
    up = imresize(low, s)
    assert up.shape == gt_y.shape
    np.testing.assert_allclose(up * 255.0, mat["im_b_y"], rtol=0, atol=1e-6)


def test_three_channel_resize_and_ycbcr2rgb(oracle):
    s, mat = oracle
    ycc = rgb_to_ycbcr(mat["im_gt"].astype(np.float64) / 255.0)
    low_ycc = imresize(ycc, 1 / s)
    np.testing.assert_allclose(low_ycc, mat["im_l_ycbcr"], rtol=0, atol=1e-8)
    # im_l = ycbcr2rgb(im_l_ycbcr) * 255: exercises the inverse including MATLAB's clip to [0, 1].
    np.testing.assert_allclose(ycbcr_to_rgb(mat["im_l_ycbcr"]) * 255.0, mat["im_l"], rtol=0, atol=1e-6)
    up_rgb = ycbcr_to_rgb(imresize(low_ycc, s)) * 255.0
    np.testing.assert_allclose(up_rgb, mat["im_b"], rtol=0, atol=1e-6)


# ---------------------------------------------------------------- independent loop reference --------


def _ref_cubic(t: float) -> float:
    t = abs(t)
    if t <= 1:
        return 1.5 * t**3 - 2.5 * t**2 + 1
    if t <= 2:
        return -0.5 * t**3 + 2.5 * t**2 - 4 * t + 2
    return 0.0


def _ref_mirror(j: int, n: int) -> int:
    """Symmetric padding of a 0-based index: -1 -> 0, -2 -> 1, n -> n-1, n+1 -> n-2, ..."""
    j %= 2 * n
    return j if j < n else 2 * n - 1 - j


def _ref_resize_line(line: list[float], out_len: int, scale: float) -> list[float]:
    n = len(line)
    shrink = scale < 1
    half_width = 2 / scale if shrink else 2.0
    out = []
    for i in range(out_len):
        # Centre of output pixel i in 0-based input coordinates (pixel-centre alignment).
        centre = (i + 0.5) / scale - 0.5
        num = den = 0.0
        for j in range(math.floor(centre - half_width) - 1, math.ceil(centre + half_width) + 2):
            d = centre - j
            wt = scale * _ref_cubic(scale * d) if shrink else _ref_cubic(d)
            num += wt * line[_ref_mirror(j, n)]
            den += wt
        out.append(num / den)
    return out


def _ref_imresize(img: np.ndarray, out_shape: tuple[int, int], scales: tuple[float, float], rounding=False):
    x = np.array(img, dtype=np.float64)
    order = [0, 1] if scales[0] <= scales[1] else [1, 0]
    for axis in order:
        moved = np.moveaxis(x, axis, 0)
        res = np.empty((out_shape[axis], *moved.shape[1:]))
        for idx in np.ndindex(*moved.shape[1:]):
            col = [float(v) for v in moved[(slice(None), *idx)]]
            res[(slice(None), *idx)] = _ref_resize_line(col, out_shape[axis], scales[axis])
        x = np.moveaxis(res, 0, axis)
        if rounding:
            x = np.floor(np.clip(x, 0, 255) + 0.5)
    return x


@pytest.mark.parametrize("scale", [1 / 3, 2.5, 0.5, 2, 3, 1 / 4, 0.7])
@pytest.mark.parametrize("shape", [(13, 17), (9, 6, 2)])
def test_matches_loop_reference(scale, shape):
    rng = np.random.default_rng(42)
    img = rng.random(shape)
    out = imresize(img, scale)
    expected_hw = (math.ceil(shape[0] * scale), math.ceil(shape[1] * scale))
    assert out.shape == expected_hw + shape[2:]
    assert out.dtype == np.float64
    ref = _ref_imresize(img, expected_hw, (scale, scale))
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("out_shape", [(5, 23), (30, 7), (13, 40), (1, 1)])
def test_output_shape_uses_per_dimension_scales(out_shape):
    rng = np.random.default_rng(7)
    img = rng.random((13, 17))
    out = imresize(img, output_shape=out_shape)
    scales = (out_shape[0] / 13, out_shape[1] / 17)
    np.testing.assert_allclose(out, _ref_imresize(img, out_shape, scales), rtol=0, atol=1e-12)


@pytest.mark.parametrize("scale", [1 / 3, 2.5, 0.5])
def test_uint8_rounds_after_each_pass(scale):
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, size=(11, 14), dtype=np.uint8)
    out = imresize(img, scale)
    assert out.dtype == np.uint8
    hw = (math.ceil(11 * scale), math.ceil(14 * scale))
    ref = _ref_imresize(img, hw, (scale, scale), rounding=True)
    np.testing.assert_array_equal(out, ref.astype(np.uint8))


@pytest.mark.parametrize("scale", [1 / 3, 2.5, 0.5, 4])
def test_constant_image_stays_constant(scale):
    img = np.full((12, 19), 0.37)
    out = imresize(img, scale)
    np.testing.assert_allclose(out, 0.37, rtol=0, atol=1e-14)
    assert np.all(imresize(np.full((12, 19, 3), 200, np.uint8), scale) == 200)


def test_float32_is_preserved_and_close():
    rng = np.random.default_rng(5)
    img = rng.random((40, 31))
    out32 = imresize(img.astype(np.float32), 2.5)
    assert out32.dtype == np.float32
    np.testing.assert_allclose(out32, imresize(img, 2.5), rtol=0, atol=1e-5)


def test_round_trip_on_smooth_image():
    # 48x60 is divisible by 3 and gives whole sizes at x2.5, so the sampling grids line up on the way
    # back and a smooth image is recovered almost exactly away from the borders.
    yy, xx = np.mgrid[0:48, 0:60] / 60.0
    img = 0.5 + 0.25 * np.sin(2 * np.pi * xx) * np.cos(np.pi * yy)
    for scale in (2.5, 1 / 3, 2):
        back = imresize(imresize(img, scale), output_shape=img.shape)
        assert back.shape == img.shape
        interior = (slice(6, -6), slice(6, -6))
        assert np.abs(back - img)[interior].max() < 1e-3
        assert np.abs(back - img).max() < 0.05


def test_weights_are_cached_normalised_and_read_only():
    w, idx = resize_weights(100, 200, 2.0)
    assert resize_weights(100, 200, 2.0)[0] is w
    assert w.shape == idx.shape == (200, 4)  # all-zero taps of the 6-tap window are dropped
    np.testing.assert_allclose(w.sum(axis=1), 1.0, rtol=0, atol=1e-15)
    assert idx.min() == 0 and idx.max() == 99
    with pytest.raises(ValueError):
        w[0, 0] = 1.0


def test_identity_and_bad_arguments():
    img = np.arange(12.0).reshape(3, 4)
    same = imresize(img, 1)
    np.testing.assert_array_equal(same, img)
    assert same is not img
    with pytest.raises(ValueError):
        imresize(img)
    with pytest.raises(ValueError):
        imresize(img, 2, output_shape=(6, 8))
    with pytest.raises(ValueError):
        imresize(img, -1)
    with pytest.raises(ValueError):
        imresize(np.zeros((2, 2, 2, 2)), 2)
    with pytest.raises(TypeError):
        imresize(img.astype(bool), 2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint8])
@pytest.mark.parametrize("resize", [{"scale": 2}, {"scale": 3}, {"scale": 1 / 3}, {"output_shape": (61, 23)}])
def test_window_is_bit_identical_to_slicing_the_whole_result(dtype, resize):
    rng = np.random.default_rng(7)
    img = rng.random((37, 29, 2)) * 255
    img = img.astype(dtype)
    whole = imresize(img, **resize)
    h, w = whole.shape[:2]
    windows = [
        (slice(None), slice(None)),
        (slice(0, 1), slice(w - 1, w)),  # corners: mirrored taps
        (slice(h // 3, h // 3 + 7), slice(None)),  # a band, as the service cuts it
        (slice(-5, None), slice(2, w // 2)),
    ]
    for rows, cols in windows:
        part = imresize(img, **resize, window=(rows, cols))
        assert part.dtype == whole.dtype
        np.testing.assert_array_equal(part, whole[rows, cols])
        assert not np.may_share_memory(part, img)


def test_window_reads_only_the_input_it_needs():
    img = np.zeros((40, 40), np.float32)
    img[:, 30:] = np.nan  # columns a left window of a x2 upscale never reads
    part = imresize(img, 2, window=(slice(None), slice(0, 40)))
    assert np.isfinite(part).all()
    ident = imresize(img, 1, window=(slice(2, 4), slice(0, 3)))
    np.testing.assert_array_equal(ident, img[2:4, 0:3])
    for bad in [
        (slice(0, 10, 2), slice(None)),
        (slice(5, 5), slice(None)),
        (slice(None),),
        (),
        (0, slice(None)),
    ]:
        with pytest.raises(ValueError):
            imresize(img, 2, window=bad)
