"""Unit tests for imaging.metrics, imaging.crop and imaging.color (no shared data needed)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from imaging.color import rgb_to_ycbcr, ycbcr_to_rgb
from imaging.crop import modcrop, shave
from imaging.metrics import psnr, ssim

# ---------------------------------------------------------------- psnr ----------------------------


def test_psnr_identical_is_inf():
    a = np.arange(100, dtype=np.uint8).reshape(10, 10)
    assert psnr(a, a) == math.inf


def test_psnr_known_value():
    a = np.zeros((8, 8), np.uint8)
    b = np.full((8, 8), 10, np.uint8)  # MSE 100, RMSE 10; uint8 must not wrap around
    assert psnr(a, b) == pytest.approx(20 * math.log10(25.5), abs=1e-12)
    assert psnr(b, a) == pytest.approx(28.130803608679, abs=1e-9)
    c = a.copy()
    c[0, 0] = 255  # one pixel off by 255 -> MSE = 255^2 / 64 -> PSNR = 10*log10(64)
    assert psnr(a, c) == pytest.approx(10 * math.log10(64), abs=1e-12)
    assert psnr(a / 255.0, c / 255.0, peak=1.0) == pytest.approx(10 * math.log10(64), abs=1e-12)


def test_psnr_shape_mismatch():
    with pytest.raises(ValueError):
        psnr(np.zeros((4, 4)), np.zeros((4, 5)))


# ---------------------------------------------------------------- ssim ----------------------------


def _ssim_direct(a: np.ndarray, b: np.ndarray) -> float:
    """Non-separable reference: full 11x11 window from fspecial's formula, explicit windows."""
    x = np.arange(11) - 5.0
    win = np.exp(-(x[:, None] ** 2 + x[None, :] ** 2) / (2 * 1.5**2))
    win /= win.sum()
    a = a.astype(np.float64)
    b = b.astype(np.float64)

    def filt(img):
        return np.einsum("ijkl,kl->ij", sliding_window_view(img, (11, 11)), win)

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu1, mu2 = filt(a), filt(b)
    s1 = filt(a * a) - mu1**2
    s2 = filt(b * b) - mu2**2
    s12 = filt(a * b) - mu1 * mu2
    smap = ((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1**2 + mu2**2 + c1) * (s1 + s2 + c2))
    return float(smap.mean())


@pytest.fixture
def pair():
    rng = np.random.default_rng(11)
    yy, xx = np.mgrid[0:40, 0:33]
    a = (128 + 60 * np.sin(xx / 4.0) + 40 * np.cos(yy / 3.0)).clip(0, 255).astype(np.uint8)
    noise = rng.normal(0, 12, a.shape)
    b = np.clip(a + noise, 0, 255).astype(np.uint8)
    return a, b


def test_ssim_identical_is_one(pair):
    a, _ = pair
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-12)


def test_ssim_matches_direct_2d_window(pair):
    a, b = pair
    assert ssim(a, b) == pytest.approx(_ssim_direct(a, b), abs=1e-12)


def test_ssim_symmetric(pair):
    a, b = pair
    assert ssim(a, b) == pytest.approx(ssim(b, a), abs=1e-14)


def test_ssim_decreases_with_noise(pair):
    a, _ = pair
    rng = np.random.default_rng(0)
    values = []
    for sigma in (2, 8, 20, 50):
        noisy = np.clip(a + rng.normal(0, sigma, a.shape), 0, 255)
        values.append(ssim(a, noisy))
    assert all(x > y for x, y in itertools.pairwise(values))
    assert 0 < values[-1] < values[0] < 1


def test_ssim_constant_images_closed_form():
    # With zero variance SSIM reduces to the luminance term (2*m1*m2 + C1) / (m1^2 + m2^2 + C1).
    c1 = (0.01 * 255) ** 2
    a = np.full((20, 20), 100.0)
    b = np.full((20, 20), 120.0)
    assert ssim(a, b) == pytest.approx((2 * 100 * 120 + c1) / (100**2 + 120**2 + c1), abs=1e-9)


def test_ssim_rejects_bad_input():
    with pytest.raises(ValueError):
        ssim(np.zeros((10, 30)), np.zeros((10, 30)))
    with pytest.raises(ValueError):
        ssim(np.zeros((20, 20, 3)), np.zeros((20, 20, 3)))
    with pytest.raises(ValueError):
        ssim(np.zeros((20, 20)), np.zeros((20, 21)))


# ---------------------------------------------------------------- crop ----------------------------


@pytest.mark.parametrize(
    ("shape", "scale", "expected"),
    [((13, 17), 2, (12, 16)), ((13, 17), 3, (12, 15)), ((12, 16, 3), 4, (12, 16, 3)), ((7, 9), 1, (7, 9))],
)
def test_modcrop_shapes(shape, scale, expected):
    img = np.arange(np.prod(shape)).reshape(shape)
    out = modcrop(img, scale)
    assert out.shape == expected
    # Crops from the bottom/right: the top-left corner is kept.
    np.testing.assert_array_equal(out, img[: expected[0], : expected[1]])


def test_shave_shapes():
    img = np.arange(10 * 12 * 3).reshape(10, 12, 3)
    assert shave(img, 3).shape == (4, 6, 3)
    np.testing.assert_array_equal(shave(img, 2), img[2:8, 2:10])
    assert shave(img, 0).shape == img.shape
    with pytest.raises(ValueError):
        shave(img, 5)
    with pytest.raises(ValueError):
        modcrop(img, 0)


# ---------------------------------------------------------------- color ---------------------------

# MATLAB rgb2ycbcr on uint8, worked out by hand from the BT.601 formula (rounded half away from zero).
PURE_COLOURS = [
    ((255, 255, 255), (235, 128, 128)),
    ((0, 0, 0), (16, 128, 128)),
    ((255, 0, 0), (81, 90, 240)),  # 16+65.481, 128-37.797, 128+112
    ((0, 255, 0), (145, 54, 34)),  # 16+128.553, 128-74.203, 128-93.786
    ((0, 0, 255), (41, 240, 110)),  # 16+24.966, 128+112, 128-18.214
]


@pytest.mark.parametrize(("rgb", "ycc"), PURE_COLOURS)
def test_uint8_pure_colours(rgb, ycc):
    img = np.array(rgb, np.uint8).reshape(1, 1, 3)
    out = rgb_to_ycbcr(img)
    assert out.dtype == np.uint8
    assert tuple(out[0, 0]) == ycc
    # The uint8 YCbCr is rounded, so the way back may miss saturated primaries by a level or two.
    back = ycbcr_to_rgb(out)[0, 0].astype(int)
    assert np.abs(back - np.array(rgb)).max() <= 2


def test_float_pure_colour_values():
    white = rgb_to_ycbcr(np.ones((1, 1, 3)))
    np.testing.assert_allclose(white[0, 0], [235 / 255, 128 / 255, 128 / 255], rtol=0, atol=1e-15)
    black = rgb_to_ycbcr(np.zeros((2, 1, 3)))
    np.testing.assert_allclose(black[..., 0], 16 / 255, rtol=0, atol=1e-15)


def test_float_round_trip_and_dtypes():
    rng = np.random.default_rng(1)
    rgb = rng.random((17, 23, 3))
    ycc = rgb_to_ycbcr(rgb)
    assert ycc.dtype == np.float64
    assert ycc[..., 0].min() >= 16 / 255 - 1e-12 and ycc[..., 0].max() <= 235 / 255 + 1e-12
    np.testing.assert_allclose(ycbcr_to_rgb(ycc), rgb, rtol=0, atol=1e-10)
    ycc32 = rgb_to_ycbcr(rgb.astype(np.float32))
    assert ycc32.dtype == np.float32
    assert ycbcr_to_rgb(ycc32).dtype == np.float32
    np.testing.assert_allclose(ycc32, ycc, rtol=0, atol=1e-6)


def test_inverse_clips_float_like_matlab():
    # Y at the top of the range with extreme chroma is outside the RGB cube; MATLAB clips to [0, 1].
    out = ycbcr_to_rgb(np.array([[[1.0, 1.0, 1.0]]]))
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_uint8_round_trip_is_close():
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    back = ycbcr_to_rgb(rgb_to_ycbcr(rgb))
    # Studio swing keeps only ~220 levels of Y, so an 8-bit round trip is off by a couple of levels.
    assert np.abs(back.astype(int) - rgb.astype(int)).max() <= 3


def test_uint16_path():
    white = np.full((1, 1, 3), 65535, np.uint16)
    out = rgb_to_ycbcr(white)
    assert out.dtype == np.uint16
    assert tuple(out[0, 0]) == (235 * 257, 128 * 257, 128 * 257)
    np.testing.assert_array_equal(ycbcr_to_rgb(out), white)


def test_color_rejects_bad_input():
    with pytest.raises(ValueError):
        rgb_to_ycbcr(np.zeros((4, 4, 4)))
    with pytest.raises(TypeError):
        rgb_to_ycbcr(np.zeros((4, 4, 3), dtype=np.int32))
