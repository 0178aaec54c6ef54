"""Cropping helpers of the DRRN/MATLAB protocol: ``modcrop`` and border ``shave``.

Both work on ``HxW`` and ``HxWxC`` arrays of any dtype and return *views* (basic slicing, no copy), so
callers that mutate the result must ``.copy()`` it first.
"""

from __future__ import annotations

import numpy as np

__all__ = ["modcrop", "shave"]


def _check_image(img: np.ndarray) -> None:
    if img.ndim not in (2, 3):
        raise ValueError(f"expected an HxW or HxWxC array, got shape {img.shape}")


def modcrop(img: np.ndarray, scale: int) -> np.ndarray:
    """Crop height and width down to multiples of ``scale`` (MATLAB ``modcrop``).

    Rows are removed from the bottom and columns from the right, so the top-left pixel grid is kept,
    exactly as ``imgs(1:sz(1), 1:sz(2), :)`` in the MATLAB script.

    Args:
        img: ``HxW`` or ``HxWxC`` array.
        scale: positive integer modulus (the super-resolution factor).

    Returns:
        A view of shape ``(H - H % scale, W - W % scale[, C])``.
    """
    img = np.asarray(img)
    _check_image(img)
    if int(scale) != scale or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")
    scale = int(scale)
    h, w = img.shape[:2]
    return img[: h - h % scale, : w - w % scale]


def shave(img: np.ndarray, border: int) -> np.ndarray:
    """Remove ``border`` pixels from each of the four sides.

    The DRRN protocol shaves ``scale`` pixels before computing PSNR/SSIM, because the bicubic input
    and the network are least reliable next to the image border.

    Args:
        img: ``HxW`` or ``HxWxC`` array.
        border: non-negative integer; 0 returns the whole image.

    Returns:
        A view of shape ``(H - 2*border, W - 2*border[, C])``.

    Raises:
        ValueError: if nothing would be left.
    """
    img = np.asarray(img)
    _check_image(img)
    if int(border) != border or border < 0:
        raise ValueError(f"border must be a non-negative integer, got {border!r}")
    border = int(border)
    h, w = img.shape[:2]
    if 2 * border >= min(h, w):
        raise ValueError(f"cannot shave {border} px from each side of a {h}x{w} image")
    return img[border : h - border, border : w - border]
