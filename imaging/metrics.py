"""Image quality metrics of the DRRN protocol: PSNR and SSIM on the luminance channel.

Both take arrays in 0..255 units (typically uint8 after :func:`imaging.protocol.quantize`) and
compute in float64, like MATLAB's ``double(im)``.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

__all__ = ["psnr", "ssim"]

# Constants of Wang et al. 2004, ``ssim_index.m``.
_SSIM_WINDOW = 11
_SSIM_SIGMA = 1.5
_SSIM_K1 = 0.01
_SSIM_K2 = 0.03


def _pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    if a.size == 0:
        raise ValueError("cannot compare empty images")
    return a, b


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    """Peak signal-to-noise ratio ``20 * log10(peak / RMSE)`` in dB.

    Args:
        a, b: arrays of equal shape (any number of dimensions) in 0..``peak`` units, any real dtype.
        peak: the maximum possible value (255 for 8-bit data).

    Returns:
        PSNR as a Python float; ``inf`` for identical inputs (as MATLAB's ``20*log10(255/0)``).
    """
    a, b = _pair(a, b)
    mse = float(np.mean(np.square(a - b)))
    if mse == 0.0:
        return math.inf
    return 20.0 * math.log10(peak / math.sqrt(mse))


@lru_cache(maxsize=4)
def _gaussian_1d(size: int, sigma: float) -> np.ndarray:
    """Normalised 1-D Gaussian; its outer product is MATLAB's ``fspecial('gaussian', size, sigma)``.

    fspecial zeroes values below ``eps * max``; for 11/1.5 the smallest 2-D value is ~2e-10 of the
    maximum, so that step never triggers and the separable form is exact.
    """
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(x * x) / (2 * sigma * sigma))
    g /= g.sum()
    g.setflags(write=False)
    return g


def _filter_valid(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable 2-D correlation with ``outer(g, g)``, 'valid' region (MATLAB ``filter2(w, x, 'valid')``).

    A sum of shifted slices is used because the kernel is short (11 taps) and numpy has no convolve2d;
    it reads each input element 11 times per axis but allocates only the output.
    """
    n = g.shape[0]
    h, w = x.shape
    rows = g[0] * x[: h - n + 1]
    for k in range(1, n):
        rows += g[k] * x[k : h - n + 1 + k]
    out = g[0] * rows[:, : w - n + 1]
    for k in range(1, n):
        out += g[k] * rows[:, k : w - n + 1 + k]
    return out


def ssim(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    """Mean SSIM of two grayscale images, exactly as Wang et al.'s reference ``ssim_index.m``.

    11x11 Gaussian window (sigma 1.5, normalised), ``K1 = 0.01``, ``K2 = 0.03``, ``L = peak``; the
    local statistics are taken over the 'valid' region only (no padding), and the SSIM map is averaged.
    There is no automatic downsampling (that belongs to the later ``ssim.m``, not ``ssim_index.m``).

    Args:
        a, b: ``HxW`` arrays of equal shape in 0..``peak`` units, H and W at least 11.
        peak: dynamic range L (255 for 8-bit data).

    Returns:
        Mean SSIM as a Python float, 1.0 for identical images.
    """
    a, b = _pair(a, b)
    if a.ndim != 2:
        raise ValueError(f"ssim expects 2-D (grayscale) images, got shape {a.shape}")
    if min(a.shape) < _SSIM_WINDOW:
        raise ValueError(f"images must be at least {_SSIM_WINDOW}x{_SSIM_WINDOW}, got {a.shape}")
    c1 = (_SSIM_K1 * peak) ** 2
    c2 = (_SSIM_K2 * peak) ** 2
    g = _gaussian_1d(_SSIM_WINDOW, _SSIM_SIGMA)

    mu1 = _filter_valid(a, g)
    mu2 = _filter_valid(b, g)
    mu1_sq = mu1 * mu1
    mu2_sq = mu2 * mu2
    mu1_mu2 = mu1 * mu2
    # E[x^2] - E[x]^2 form, as in ssim_index.m (the reference does not clamp tiny negative variances).
    sigma1_sq = _filter_valid(a * a, g) - mu1_sq
    sigma2_sq = _filter_valid(b * b, g) - mu2_sq
    sigma12 = _filter_valid(a * b, g) - mu1_mu2
    ssim_map = ((2 * mu1_mu2 + c1) * (2 * sigma12 + c2)) / (
        (mu1_sq + mu2_sq + c1) * (sigma1_sq + sigma2_sq + c2)
    )
    return float(np.mean(ssim_map))
