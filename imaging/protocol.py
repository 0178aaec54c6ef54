"""The DRRN evaluation protocol (the authors' MATLAB test script), shared by training and evaluation.

Steps, for an integer scale ``s``:

1. :func:`load_y`: read the image as uint8; RGB -> MATLAB ``rgb2ycbcr`` on uint8, keep Y (uint8, rounded).
   A single-channel image is used as Y directly.
2. ``gt = modcrop(y / 255, s)``: float64 in [0, 1], H and W multiples of ``s``.
3. :func:`degrade`: ``imresize(imresize(gt, 1/s), s)``, MATLAB bicubic, float, not rounded.
4. :func:`score`: :func:`quantize` prediction and ground truth to uint8, shave ``s`` px from every
   border, then PSNR and SSIM on Y.

:func:`prepare` does 1-3 in one call and returns ``(gt, bicubic)``; training cuts patches from that pair.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

from imaging.color import rgb_to_ycbcr
from imaging.crop import modcrop, shave
from imaging.metrics import psnr, ssim
from imaging.resize import imresize

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageReadError",
    "degrade",
    "image_files",
    "load_y",
    "prepare",
    "quantize",
    "score",
    "to_y",
]

#: File suffixes treated as images by dataset folders (training and evaluation).
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})


def image_files(folder: str | os.PathLike[str]) -> list[Path]:
    """The images of one dataset folder (non-recursive), sorted for a reproducible order.

    Raises ``FileNotFoundError`` when the folder is missing and ``ValueError`` when it holds no image.
    """
    path = Path(folder)
    if not path.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {path}")
    images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise ValueError(f"no images in dataset folder: {path}")
    return images


# Pillow modes holding one channel of 16- or 32-bit integers (16-bit PNG/TIFF greyscale).
_WIDE_GRAY_MODES = {"I", "I;16", "I;16L", "I;16B", "I;16N"}


class ImageReadError(ValueError):
    """An image file could not be opened or decoded.

    Attributes:
        path: what was passed to :func:`load_y` (path or file object).
        reason: a short human-readable cause.
    """

    def __init__(self, path: object, reason: str) -> None:
        super().__init__(f"cannot read image {path!s}: {reason}")
        self.path = path
        self.reason = reason


def to_y(image: Image.Image) -> np.ndarray:
    """Luminance of a decoded Pillow image as MATLAB would compute it from ``imread``.

    * ``L``: used as Y directly; ``1`` (bilevel) becomes 0/255 like ``im2uint8(logical)``.
    * ``LA``: alpha dropped, then as ``L``.
    * 16-bit/32-bit greyscale (``I;16``, ``I``): scaled to uint8 with MATLAB ``im2uint8`` (x/257,
      rounded, saturated), then used as Y.
    * ``F`` (float greyscale): treated as already in 0..255, rounded and saturated.
    * everything else (``RGB``, ``RGBA``, ``P``, ``CMYK``, ``YCbCr``, ...): converted to RGB by Pillow
      (alpha and transparency are dropped, as MATLAB's ``imread`` returns the colour planes only), then
      Y of ``rgb_to_ycbcr`` on uint8.

    EXIF orientation is ignored, as in MATLAB's ``imread``.

    Returns:
        ``HxW`` uint8 array, Y in 16..235 for colour images (any 0..255 for greyscale ones).
    """
    mode = image.mode
    if mode == "L":
        return np.asarray(image, dtype=np.uint8).copy()
    if mode in ("1", "LA", "La"):
        return np.asarray(image.convert("L"), dtype=np.uint8).copy()
    if mode in _WIDE_GRAY_MODES:
        wide = np.asarray(image).astype(np.float64)
        return np.floor(np.clip(wide / 257.0, 0, 255) + 0.5).astype(np.uint8)
    if mode == "F":
        return np.floor(np.clip(np.asarray(image, dtype=np.float64), 0, 255) + 0.5).astype(np.uint8)
    rgb = np.asarray(image if mode == "RGB" else image.convert("RGB"), dtype=np.uint8)
    return np.ascontiguousarray(rgb_to_ycbcr(rgb)[..., 0])


def load_y(path: str | os.PathLike[str] | BinaryIO) -> np.ndarray:
    """Read an image file and return its MATLAB luminance (see :func:`to_y`).

    Args:
        path: a filesystem path or a binary file object.

    Returns:
        ``HxW`` uint8 array.

    Raises:
        ImageReadError: (a ``ValueError``) if the file is missing, not an image, truncated, or too large
            for Pillow's decompression-bomb guard.
    """
    try:
        with Image.open(path) as image:
            # Image.open is lazy; load() forces decoding inside the try so truncated files are caught.
            image.load()
            return to_y(image)
    except FileNotFoundError as exc:
        raise ImageReadError(path, "file not found") from exc
    except Image.DecompressionBombError as exc:
        raise ImageReadError(path, f"image too large ({exc})") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        # Pillow raises UnidentifiedImageError (an OSError) for non-images, OSError for truncated data,
        # and occasionally ValueError/SyntaxError from individual decoders on corrupt headers.
        raise ImageReadError(path, f"{type(exc).__name__}: {exc}") from exc


def _check_scale(scale: int) -> int:
    if int(scale) != scale or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")
    return int(scale)


def degrade(gt: np.ndarray, scale: int) -> np.ndarray:
    """Bicubic down- then up-sampling: the network's input for ground truth ``gt``.

    Args:
        gt: ``HxW`` float array in [0, 1], already modcropped (H and W multiples of ``scale``).
        scale: integer super-resolution factor.

    Returns:
        ``HxW`` float64 array (same shape as ``gt``), not rounded or clipped (bicubic overshoots
        slightly outside [0, 1] near edges, exactly as in MATLAB).
    """
    s = _check_scale(scale)
    gt = np.asarray(gt, dtype=np.float64)
    if gt.ndim != 2:
        raise ValueError(f"gt must be HxW, got shape {gt.shape}")
    if gt.shape[0] % s or gt.shape[1] % s:
        raise ValueError(f"gt shape {gt.shape} is not a multiple of scale {s}; modcrop it first")
    low = imresize(gt, 1 / s)
    # Upscale to gt's exact shape. With scale s this is ceil((H/s) * s) = H anyway; passing the scale
    # (not the shape) keeps the kernel's scale identical to MATLAB's imresize(low, s).
    return imresize(low, s)


def quantize(x: np.ndarray, dtype: type[np.unsignedinteger] = np.uint8) -> np.ndarray:
    """Float image in [0, 1] -> uint8, as MATLAB ``uint8(x * 255)`` / ``im2uint8``.

    Values are scaled by 255, saturated to [0, 255] and rounded half away from zero; NaN maps to 0
    as in MATLAB. ``dtype=np.uint16`` does the same with 65535 (MATLAB ``im2uint16``).
    """
    if np.dtype(dtype) not in (np.dtype(np.uint8), np.dtype(np.uint16)):
        raise ValueError(f"quantize supports uint8 and uint16, got {np.dtype(dtype)}")
    top = float(np.iinfo(dtype).max)
    scaled = np.asarray(x, dtype=np.float64) * top
    np.nan_to_num(scaled, copy=False, nan=0.0)
    np.clip(scaled, 0.0, top, out=scaled)
    # After clipping every value is >= 0, so floor(x + 0.5) is MATLAB's round-half-away-from-zero.
    scaled += 0.5
    np.floor(scaled, out=scaled)
    return scaled.astype(dtype)


def score(pred: np.ndarray, gt: np.ndarray, scale: int) -> tuple[float, float]:
    """PSNR (dB) and SSIM of a prediction against ground truth under the DRRN protocol.

    Args:
        pred: ``HxW`` float prediction in [0, 1] (values outside are saturated by quantisation).
        gt: ``HxW`` float ground truth in [0, 1], same shape.
        scale: integer scale; ``scale`` px are shaved from every border before measuring.

    Returns:
        ``(psnr, ssim)`` as Python floats, computed on the uint8-quantised Y channel.
    """
    s = _check_scale(scale)
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"pred shape {pred.shape} differs from gt shape {gt.shape}")
    p = shave(quantize(pred), s)
    g = shave(quantize(gt), s)
    return psnr(p, g), ssim(p, g)


def prepare(path: str | os.PathLike[str] | BinaryIO, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """Load an image and build the protocol's ``(ground truth, bicubic input)`` pair.

    Args:
        path: image file (see :func:`load_y`).
        scale: integer super-resolution factor.

    Returns:
        ``(gt, bicubic)``: two ``HxW`` float64 arrays of the same shape (H, W multiples of ``scale``);
        ``gt`` in [0, 1], ``bicubic = degrade(gt, scale)``.

    Raises:
        ImageReadError: if the file cannot be read.
        ValueError: if the image is smaller than ``scale`` in either dimension.
    """
    s = _check_scale(scale)
    y = load_y(path)
    gt = modcrop(y.astype(np.float64) / 255.0, s)
    if gt.size == 0:
        raise ValueError(f"image of shape {y.shape} is smaller than scale {s}")
    return np.ascontiguousarray(gt), degrade(gt, s)
