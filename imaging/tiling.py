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

import bisect
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

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

    @cached_property
    def _core_row_starts(self) -> list[int]:
        # Non-decreasing: tiles are planned row by row.
        return [tl.core_y[0] for tl in self.tiles]

    def tiles_for_rows(self, r0: int, r1: int) -> range:
        """Indices of the tiles whose cores cover output rows ``[r0, r1)`` (a contiguous run)."""
        starts = self._core_row_starts
        lo = bisect.bisect_right(starts, r0)
        lo = bisect.bisect_left(starts, starts[lo - 1]) if lo > 0 else 0
        return range(lo, bisect.bisect_left(starts, r1))


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


def _pad(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Mirror-pad ``image`` at its bottom/right up to ``shape`` (no-op when it is already that big)."""
    ph, pw = shape
    # numpy's "symmetric" repeats the edge pixel like MATLAB's mirror; it cannot exceed 2x the length, so
    # tiny images are padded in rounds.
    while image.shape[0] < ph or image.shape[1] < pw:
        dy = min(max(ph - image.shape[0], 0), image.shape[0])
        dx = min(max(pw - image.shape[1], 0), image.shape[1])
        image = np.pad(image, ((0, dy), (0, dx)), mode="symmetric")
    return image


def extract_tiles(image: np.ndarray, plan: TilePlan) -> np.ndarray:
    """``float32[H, W] -> float32[N, 1, T, T]`` in plan order."""
    if image.shape != (plan.height, plan.width):
        raise ValueError(f"image {image.shape} does not match plan {(plan.height, plan.width)}")
    return extract_tiles_by_band(lambda rows: image[rows], plan)


def extract_tiles_by_band(rows_of: Callable[[slice], np.ndarray], plan: TilePlan) -> np.ndarray:
    """Tiles in plan order (``float32[N, 1, T, T]``), cut one band of tile rows at a time.

    ``rows_of(rows)`` returns ``float32[len(rows), W]``: those rows of the ``H x W`` image. It is called
    once per band of tiles (at most T rows, in order), so a caller can compute the image band by band,
    as the service does with its bicubic upscale, and never hold all of it.
    """
    t = plan.tile
    out = np.empty((len(plan), 1, t, t), dtype=np.float32)
    band_y0, band = -1, np.empty((0, 0), np.float32)
    for i, tl in enumerate(plan.tiles):
        if tl.y0 != band_y0:
            rows = slice(tl.y0, min(tl.y0 + t, plan.height))
            band = np.asarray(rows_of(rows), dtype=np.float32)
            if band.shape != (rows.stop - rows.start, plan.width):
                raise ValueError(
                    f"rows_of({rows}) gave {band.shape}, expected {(rows.stop - rows.start, plan.width)}"
                )
            # Mirror padding per band equals padding the whole image: rows are only ever padded when the
            # image is shorter than a tile, and then the one band is the whole image.
            band, band_y0 = _pad(band, (t, plan.padded_shape[1])), tl.y0
        out[i, 0] = band[:, tl.x0 : tl.x0 + t]
    return out


def core_bands(plan: TilePlan) -> list[slice]:
    """The output's row bands, top to bottom, each the core rows of one row of tiles (at most T - 2m)."""
    return [slice(y0, y1) for y0, y1 in sorted({tl.core_y for tl in plan.tiles})]


def stitch_rows(outputs: np.ndarray, plan: TilePlan, rows: slice) -> np.ndarray:
    """``float32[N, 1, T, T] -> float32[len(rows), W]``: rows ``rows`` (step 1) of the stitched image.

    Each output pixel comes from exactly one tile's core. Stitching band by band (:func:`core_bands`) lets a
    caller turn a large result into its final form without a whole-image float buffer.
    """
    if outputs.shape != (len(plan), 1, plan.tile, plan.tile):
        raise ValueError(f"outputs {outputs.shape} do not match plan of {len(plan)} tiles of {plan.tile}")
    r0, r1, step = rows.indices(plan.height)
    if step != 1 or r1 <= r0:
        raise ValueError(f"rows {rows} must be a non-empty step-1 range of {plan.height}")
    out = np.empty((r1 - r0, plan.width), dtype=np.float32)
    for i in plan.tiles_for_rows(r0, r1):
        tl = plan.tiles[i]
        (y0, y1), (x0, x1) = tl.core_y, tl.core_x
        a, b = max(y0, r0), min(y1, r1)
        out[a - r0 : b - r0, x0:x1] = outputs[i, 0, a - tl.y0 : b - tl.y0, x0 - tl.x0 : x1 - tl.x0]
    return out


def stitch_tiles(outputs: np.ndarray, plan: TilePlan) -> np.ndarray:
    """``float32[N, 1, T, T] -> float32[H, W]``: each tile contributes exactly its core."""
    return stitch_rows(outputs, plan, slice(0, plan.height))


def run_in_batches(tiles: np.ndarray, run: Callable[[np.ndarray], np.ndarray], max_batch: int) -> np.ndarray:
    """``run`` over ``tiles`` (``float32[N, 1, T, T]``) in consecutive chunks of at most ``max_batch``.

    Each chunk's output is written over that chunk in place, as the service's batcher does, so a large
    image costs one tile buffer rather than two. Returns ``tiles`` (now the outputs).
    """
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    for i in range(0, len(tiles), max_batch):
        chunk = tiles[i : i + max_batch]
        out = run(chunk)
        if out.shape != chunk.shape:
            raise ValueError(f"run returned {out.shape} for a chunk of {chunk.shape}")
        chunk[...] = out
    return tiles


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
