"""MATLAB-compatible RGB <-> YCbCr conversion (ITU-R BT.601, studio swing).

These reproduce MATLAB's ``rgb2ycbcr`` / ``ycbcr2rgb``, which the DRRN protocol uses to get the
luminance channel. With R, G, B in 0..255:

    Y  =  16 + ( 65.481 R + 128.553 G +  24.966 B) / 255      (Y in [16, 235])
    Cb = 128 + (-37.797 R -  74.203 G + 112.000 B) / 255      (Cb, Cr in [16, 240])
    Cr = 128 + (112.000 R -  93.786 G -  18.214 B) / 255

Like MATLAB, the behaviour depends on the input's dtype:

* float (values nominally in [0, 1]): output in the same [0, 1] scale, i.e. the formula above divided
  by 255 (Y in [16/255, 235/255]); no rounding or clipping in ``rgb_to_ycbcr``.
* uint8 (0..255): output uint8, rounded half away from zero and saturated.
* uint16 (0..65535): output uint16, MATLAB's 16-bit scaling (x257), rounded and saturated.

float32 input gives float32 output (computed in float64, then cast); every other float dtype gives
float64. Arrays of any shape whose last axis has length 3 are accepted (HxWx3 images, Nx3 colormaps).
"""

from __future__ import annotations

import numpy as np

__all__ = ["rgb_to_ycbcr", "ycbcr_to_rgb"]

# MATLAB's matrix and offset for RGB in [0, 1] -> YCbCr in [0, 255].
_ORIG_T = np.array(
    [
        [65.481, 128.553, 24.966],
        [-37.797, -74.203, 112.0],
        [112.0, -93.786, -18.214],
    ],
    dtype=np.float64,
)
_ORIG_OFFSET = np.array([16.0, 128.0, 128.0], dtype=np.float64)

# Per-class factors from rgb2ycbcr.m: T = factor_T * origT, offset = factor_offset * origOffset.
# They are applied as multiplications (not divisions) in the same order as MATLAB, so the float results
# agree to the last ulp and uint8 rounding ties (if any) break the same way.
_FWD_FACTORS = {"float": (1 / 255, 1 / 255), "uint8": (1 / 255, 1.0), "uint16": (257 / 65535, 257.0)}
# ycbcr2rgb.m: T = factor_T * inv(origT), offset = factor_offset * inv(origT) * origOffset.
_INV_FACTORS = {"float": (255.0, 1.0), "uint8": (255.0, 255.0), "uint16": (65535 / 257, 65535.0)}


def _dtype_class(arr: np.ndarray) -> str:
    """Map a numpy dtype to MATLAB's class name used to pick the scale factors."""
    if arr.dtype.kind == "f":
        return "float"
    if arr.dtype == np.uint8:
        return "uint8"
    if arr.dtype == np.uint16:
        return "uint16"
    raise TypeError(f"unsupported dtype {arr.dtype}; use float (in [0, 1]), uint8 or uint16")


def _check_shape(arr: np.ndarray, what: str) -> None:
    if arr.ndim < 1 or arr.shape[-1] != 3:
        raise ValueError(f"{what} must have 3 channels on the last axis, got shape {arr.shape}")


def _lincomb(arr: np.ndarray, t: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """``out[..., p] = t[p,0]*a0 + t[p,1]*a1 + t[p,2]*a2 + offset[p]`` in float64.

    Written as explicit per-channel sums (MATLAB's ``imlincomb`` order) rather than a matmul so the
    rounding of every intermediate matches MATLAB's; three 3-term sums are cheap.
    """
    channels = [arr[..., c].astype(np.float64, copy=False) for c in range(3)]
    out = np.empty(arr.shape, dtype=np.float64)
    for p in range(3):
        acc = t[p, 0] * channels[0]
        acc += t[p, 1] * channels[1]
        acc += t[p, 2] * channels[2]
        acc += offset[p]
        out[..., p] = acc
    return out


def _to_output(values: np.ndarray, like: np.ndarray) -> np.ndarray:
    """Cast float64 results back to the input's class (rounding + saturation for integers)."""
    if like.dtype.kind == "f":
        return values.astype(np.float32) if like.dtype == np.float32 else values
    info = np.iinfo(like.dtype)
    # Values are clipped to >= 0 first, so floor(x + 0.5) is MATLAB's round-half-away-from-zero.
    return np.floor(np.clip(values, info.min, info.max) + 0.5).astype(like.dtype)


def rgb_to_ycbcr(rgb: np.ndarray) -> np.ndarray:
    """MATLAB ``rgb2ycbcr``.

    Args:
        rgb: ``(..., 3)`` array, float in [0, 1], uint8 in 0..255 or uint16 in 0..65535.

    Returns:
        ``(..., 3)`` YCbCr with channels (Y, Cb, Cr). Float input -> float in [0, 1] scale
        (Y in [16/255, 235/255]), float32 preserved, otherwise float64. uint8 -> uint8 (Y in 16..235),
        uint16 -> uint16.
    """
    arr = np.asarray(rgb)
    _check_shape(arr, "rgb")
    factor_t, factor_offset = _FWD_FACTORS[_dtype_class(arr)]
    values = _lincomb(arr, factor_t * _ORIG_T, factor_offset * _ORIG_OFFSET)
    return _to_output(values, arr)


def ycbcr_to_rgb(ycbcr: np.ndarray) -> np.ndarray:
    """MATLAB ``ycbcr2rgb``: the inverse of :func:`rgb_to_ycbcr`.

    Args:
        ycbcr: ``(..., 3)`` array (Y, Cb, Cr), float in the [0, 1] scale, uint8 or uint16.

    Returns:
        ``(..., 3)`` RGB of the same class. Float output is clipped to [0, 1] exactly as MATLAB does
        (YCbCr values that come from resampling can map slightly outside the RGB cube); for YCbCr that
        came from a valid RGB image the clip is a no-op and the round trip is exact to ~1e-15.
        Integer outputs are rounded half away from zero and saturated.
    """
    arr = np.asarray(ycbcr)
    _check_shape(arr, "ycbcr")
    cls = _dtype_class(arr)
    factor_t, factor_offset = _INV_FACTORS[cls]
    t_inv = np.linalg.inv(_ORIG_T)
    # rgb = Tinv * (ycc - offset), rewritten as Tinv*ycc - Tinv*offset (MATLAB's form).
    values = _lincomb(arr, factor_t * t_inv, -(factor_offset * (t_inv @ _ORIG_OFFSET)))
    if cls == "float":
        np.clip(values, 0.0, 1.0, out=values)
    return _to_output(values, arr)
