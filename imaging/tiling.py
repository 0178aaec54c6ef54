"""Overlapping fixed-size tiles, so a fully convolutional model runs on any image with bounded memory and a
fixed set of input shapes (the service warms those up once and batches tiles across requests).

Geometry, per axis of length L, tile side T and margin m (core K = T - 2m):

- the output is partitioned into cores ``[kK, min((k+1)K, L))``;
- each core is computed by a tile starting at ``clamp(core_start - m, 0, L - T)``, so every core pixel is
  at least m pixels from a tile edge, *or* that edge is the image edge itself.

Exactness. A conv net with ``depth`` 3x3 layers and zero padding sees exactly the same inputs at a core
pixel as it does on the whole image when m >= depth, so for an image at least T pixels long on *both*
axes, tiled output equals whole-image output up to float summation order (tests/test_tiling.py checks
this with a real model at atol 1e-5, and that m < depth breaks it).

Short axes are *not* exact. When L < T on an axis, the image is mirror-padded (``numpy`` "symmetric") up
to T along it and the tile runs on the padded image; its core is the original L pixels. At the far border
(the padded side) the network then sees mirrored pixels where a whole-image run sees its zero padding, so
results within ``depth`` pixels of that border differ from a whole-image run of the unpadded image
(usually slightly: the mirror continues the content naturally, where zero padding is a hard edge). The
near border (index 0) is unaffected. The service accepts this for small images; callers that need
bit-for-bit agreement with a whole-image run should use images at least one tile in each dimension.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Tile:
    """One tile: its source window and the core it contributes (all in image coordinates)."""

    y0: int  # tile window top-left in the (possibly padded) image
    x0: int
    core_y: tuple[int, int]  # [start, stop) rows of the output this tile owns
    core_x: tuple[int, int]


@dataclass(frozen=True)
class TilePlan:
    height: int
    width: int
    tile: int
    margin: int
    tiles: tuple[Tile, ...]

    def __len__(self) -> int:
        return len(self.tiles)

    @property
    def padded_shape(self) -> tuple[int, int]:
        return max(self.height, self.tile), max(self.width, self.tile)


def _axis(length: int, tile: int, margin: int) -> list[tuple[int, int, int]]:
    """``[(tile_start, core_start, core_stop)]`` along one axis."""
    if length <= tile:
        return [(0, 0, length)]
    core = tile - 2 * margin
    out = []
    for start in range(0, length, core):
        stop = min(start + core, length)
        out.append((min(max(start - margin, 0), length - tile), start, stop))
    return out


def plan_tiles(height: int, width: int, tile: int, margin: int) -> TilePlan:
    """Plan tiles of side ``tile`` with ``margin`` pixels of context for an ``height x width`` image."""
    if tile <= 2 * margin:
        raise ValueError(f"tile {tile} must exceed twice the margin {margin}")
    if height < 1 or width < 1:
        raise ValueError(f"empty image {height}x{width}")
    tiles = tuple(
        Tile(ty, tx, (cy0, cy1), (cx0, cx1))
        for ty, cy0, cy1 in _axis(height, tile, margin)
        for tx, cx0, cx1 in _axis(width, tile, margin)
    )
    return TilePlan(height, width, tile, margin, tiles)


def _pad(image: np.ndarray, plan: TilePlan) -> np.ndarray:
    ph, pw = plan.padded_shape
    if (ph, pw) == image.shape:
        return image
    # numpy's "symmetric" repeats the edge pixel like MATLAB's mirror; it cannot exceed 2x the length, so
    # tiny images are padded in rounds.
    while image.shape[0] < ph or image.shape[1] < pw:
        dy = min(ph - image.shape[0], image.shape[0])
        dx = min(pw - image.shape[1], image.shape[1])
        image = np.pad(image, ((0, dy), (0, dx)), mode="symmetric")
    return image


def extract_tiles(image: np.ndarray, plan: TilePlan) -> np.ndarray:
    """``float32[H, W] -> float32[N, 1, T, T]`` in plan order."""
    if image.shape != (plan.height, plan.width):
        raise ValueError(f"image {image.shape} does not match plan {(plan.height, plan.width)}")
    src = _pad(np.asarray(image, dtype=np.float32), plan)
    t = plan.tile
    out = np.empty((len(plan), 1, t, t), dtype=np.float32)
    for i, tl in enumerate(plan.tiles):
        out[i, 0] = src[tl.y0 : tl.y0 + t, tl.x0 : tl.x0 + t]
    return out


def stitch_tiles(outputs: np.ndarray, plan: TilePlan) -> np.ndarray:
    """``float32[N, 1, T, T] -> float32[H, W]``: each tile contributes exactly its core."""
    if outputs.shape != (len(plan), 1, plan.tile, plan.tile):
        raise ValueError(f"outputs {outputs.shape} do not match plan of {len(plan)} tiles of {plan.tile}")
    out = np.empty((plan.height, plan.width), dtype=np.float32)
    for i, tl in enumerate(plan.tiles):
        (y0, y1), (x0, x1) = tl.core_y, tl.core_x
        out[y0:y1, x0:x1] = outputs[i, 0, y0 - tl.y0 : y1 - tl.y0, x0 - tl.x0 : x1 - tl.x0]
    return out


def run_in_batches(tiles: np.ndarray, run: Callable[[np.ndarray], np.ndarray], max_batch: int) -> np.ndarray:
    """``run`` over ``tiles`` (``float32[N, 1, T, T]``) in consecutive chunks of at most ``max_batch``;
    the outputs concatenated in order."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    return np.concatenate([run(tiles[i : i + max_batch]) for i in range(0, len(tiles), max_batch)])


def run_tiled(
    image: np.ndarray,
    run: Callable[[np.ndarray], np.ndarray],
    tile: int,
    margin: int,
    max_batch: int,
) -> np.ndarray:
    """Synchronous tiled inference: ``float32[H, W] -> float32[H, W]``.

    ``run`` maps ``float32[n, 1, T, T] -> float32[n, 1, T, T]`` with ``n <= max_batch``. The service does
    the same with tiles of many requests interleaved by its batcher; this is the single-caller form used
    by ``drrn upscale`` and ``drrn eval``.
    """
    plan = plan_tiles(*image.shape, tile, margin)
    return stitch_tiles(run_in_batches(extract_tiles(image, plan), run, max_batch), plan)
