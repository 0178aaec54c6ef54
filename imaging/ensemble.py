"""Geometric self-ensemble: run a model on the 8 flips/rotations of its input, undo each, average.

A fully convolutional SR network is not exactly equivariant to the dihedral group D4 (its learned 3x3
kernels are not symmetric), so the 8 outputs differ slightly and their mean is a better estimate
(Timofte et al., "Seven ways to improve example-based single image super resolution", CVPR 2016; used by
EDSR as "+"). It costs 8 model runs. One implementation, used by ``drrn eval --ensemble 8`` and by the
service's ``?ensemble=8`` (:mod:`inference.pipeline`).

Transform ``k`` in 0..7: ``rot90`` by ``k % 4`` quarter turns, then a left-right flip when ``k >= 4``.
Odd ``k % 4`` swaps height and width.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

ENSEMBLE_SIZES = (1, 8)


def dihedral(x: np.ndarray, k: int) -> np.ndarray:
    """Transform ``k`` (0..7) of the first two axes of ``x`` (``[H, W, ...]``), as a contiguous copy."""
    if not 0 <= k < 8:
        raise ValueError(f"dihedral transform index must be in 0..7, got {k}")
    y = np.rot90(x, k % 4, axes=(0, 1))
    return np.ascontiguousarray(y[:, ::-1] if k >= 4 else y)


def undo_dihedral(y: np.ndarray, k: int) -> np.ndarray:
    """The inverse of :func:`dihedral`: ``undo_dihedral(dihedral(x, k), k) == x``."""
    if not 0 <= k < 8:
        raise ValueError(f"dihedral transform index must be in 0..7, got {k}")
    z = y[:, ::-1] if k >= 4 else y
    return np.ascontiguousarray(np.rot90(z, -(k % 4), axes=(0, 1)))


def self_ensemble(x: np.ndarray, sr: Callable[[np.ndarray], np.ndarray], n: int = 8) -> np.ndarray:
    """Mean of ``undo(sr(dihedral(x, k)), k)`` over ``k < n``; ``n = 1`` is ``sr(x)`` itself.

    ``x``: ``float32[H, W]`` (the bicubic-upscaled Y); ``sr`` maps ``[h, w] -> [h, w]``. Returns
    ``float32[H, W]``, accumulated in float64.
    """
    if n not in ENSEMBLE_SIZES:
        raise ValueError(f"ensemble size must be one of {ENSEMBLE_SIZES}, got {n}")
    if n == 1:
        return np.asarray(sr(x), dtype=np.float32)
    acc = np.zeros(x.shape, dtype=np.float64)
    for k in range(n):
        acc += undo_dihedral(np.asarray(sr(dihedral(x, k))), k)
    return (acc / n).astype(np.float32)
