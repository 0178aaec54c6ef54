"""Overlapping tiles, so a fully convolutional model runs on any image with bounded memory (each tile has
at most ``tile**2`` pixels) and the service can batch tiles across requests.

Geometry, per axis of length L, with n tiles of length t and margin m:

- n = 1: the tile is the whole axis (t = L). No padding, no overlap, nothing wasted.
- n >= 2: tiles start at evenly spaced offsets from 0 to L - t; adjacent tiles overlap by at least 2m
  and the boundary between their cores is the middle of the overlap, so every core pixel is at least m
  pixels from a tile edge, *or* that edge is the image edge itself. n tiles of length t cover L when
  n*t - 2m(n - 1) >= L; the computed length n*t is L + 2m(n - 1) plus rounding.

Shape. :func:`plan_tiles` picks the tile shape ``(th, tw)`` with ``th * tw <= tile**2`` that computes the
fewest pixels (ties: fewest tiles), searching the tile count along the shorter axis. So a thin image gets
thin tiles (a 64000x16 output runs as 16 x 4096 tiles, not 16-row strips of 128x128 squares), a small
image is one tile of exactly its size, and the overhead of a large image is about (1 + 2m/(T - 2m))^2.
Lengths of split axes are rounded up to a multiple of :data:`QUANTUM` so similar images share tile shapes
(tiles batch together only when their shapes are equal).

Exactness. A conv net with ``depth`` 3x3 layers and zero padding sees exactly the same inputs at a core
pixel as it does on the whole image when m >= depth, and an axis covered by one tile is the whole axis, so
tiled output equals whole-image output up to float summation order for *every* image
(tests/test_tiling.py checks this with a real model at atol 1e-5, and that m < depth breaks it).

Other shapes (``shape=``): ``"uniform"`` tiles are ``min(T, H) x min(T, W)``, so every image at least T on
both axes gets the same T x T tiles and they batch across requests (the CUDA default; still exact, and a
thin image still gets thin tiles). ``"square"`` tiles are always T x T, for an engine that can run one
shape only: an axis shorter than T is mirror-padded (``numpy`` "symmetric") up to T and its far border then
differs slightly from a whole-image run within ``depth`` pixels. Every shape is symmetric in the axes: for
``H != W`` the plan of a ``W x H`` image is the transpose of the ``H x W`` one's (the x8 self-ensemble's
quarter turns rely on it: their tiles are the upright ones' transposes, with as many pixels). A square
image's plan may still have non-square tiles (``fit``: 35x35 at T=32 gives 35x24 tiles); it is its own.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np

QUANTUM = 8  # split-axis tile lengths are multiples of this (shared shapes batch together)
_EXTRA = 3  # tile counts tried beyond the fewest, per axis and shape


@dataclass(frozen=True)
class Tile:
    """One tile: its source window and the core it contributes (all in image coordinates)."""

    y0: int  # tile window top-left in the (possibly padded) image
    x0: int
    core_y: tuple[int, int]  # [start, stop) rows of the output this tile owns
    core_x: tuple[int, int]


@dataclass(frozen=True)
class TilePlan:
    """Every tile of an ``height x width`` image is ``tile_h x tile_w`` (see the module docstring)."""

    height: int
    width: int
    tile_h: int
    tile_w: int
    margin: int
    tiles: tuple[Tile, ...]

    def __len__(self) -> int:
        return len(self.tiles)

    @property
    def tile_shape(self) -> tuple[int, int]:
        return self.tile_h, self.tile_w

    @property
    def padded_shape(self) -> tuple[int, int]:
        return max(self.height, self.tile_h), max(self.width, self.tile_w)

    @property
    def computed_pixels(self) -> int:
        """Pixels the model computes for this image (>= height * width; the ratio is the tiling overhead)."""
        return len(self.tiles) * self.tile_h * self.tile_w

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


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _count(length: int, t: int, margin: int) -> int:
    """Fewest tiles of length ``t`` (> 2 * margin) covering ``length`` (n = 1 when ``length <= t``)."""
    return 1 if length <= t else _ceil_div(length - 2 * margin, t - 2 * margin)


def _shortest(length: int, n: int, margin: int) -> int | None:
    """Shortest multiple-of-QUANTUM length with which ``n >= 2`` tiles cover ``length``; None when that
    is not shorter than ``length`` (one whole-axis tile is then better)."""
    t = max(_ceil_div(length + 2 * margin * (n - 1), n), 2 * margin + 1)
    t = _ceil_div(t, QUANTUM) * QUANTUM
    return t if t < length else None


def _fits(length: int, max_t: int, margin: int) -> list[tuple[int, int]]:
    """``(n, t)`` options of tiles no longer than ``max_t`` covering ``length``, each at its shortest: the
    fewest tiles, and a few more (rounding to QUANTUM can make one more tile compute fewer pixels)."""
    if length <= max_t:
        return [(1, length)]
    if _ceil_div(2 * margin + 1, QUANTUM) * QUANTUM > max_t:
        return []
    n = _count(length, max_t, margin)
    while (t := _shortest(length, n, margin)) is None or t > max_t:  # rounding up can overshoot max_t
        n += 1
    return [(k, t) for k in range(n, n + _EXTRA + 1) if (t := _shortest(length, k, margin)) is not None]


@lru_cache(maxsize=4096)
def _best_shape(height: int, width: int, tile: int, margin: int) -> tuple[int, int]:
    """The ``(th, tw)`` with ``th * tw <= tile**2`` computing the fewest pixels (then: fewest tiles)."""
    area = tile * tile
    short, long_ = sorted((height, width))
    best: tuple[int, int, int, int] | None = None  # (computed pixels, tiles, t_short, t_long)
    floor = _ceil_div(2 * margin + 1, QUANTUM) * QUANTUM  # the shortest split-axis tile
    for n in range(1, short + 1):
        t_s = short if n == 1 else _shortest(short, n, margin)
        if t_s is not None and t_s <= area:
            for n_l, t_l in _fits(long_, area // t_s, margin):
                cand = (n * t_s * n_l * t_l, n * n_l, t_s, t_l)
                best = cand if best is None or cand[:2] < best[:2] else best
        if n > 1 and t_s is not None and t_s <= floor:
            break  # more tiles along the short axis only add overlap from here on
    if best is None:
        raise ValueError(f"no tiles of at most {tile}x{tile} px with margin {margin} fit {height}x{width}")
    _, _, t_s, t_l = best
    return (t_s, t_l) if height <= width else (t_l, t_s)


def _axis(length: int, t: int, margin: int) -> list[tuple[int, int, int]]:
    """``[(tile_start, core_start, core_stop)]`` along one axis for tiles of length ``t``."""
    n = _count(length, t, margin)
    if n == 1:
        return [(0, 0, length)]
    starts = [k * (length - t) // (n - 1) for k in range(n)]
    # The core boundary between two neighbours is the middle of their overlap (>= 2 * margin).
    bounds = [0, *(b + (a + t - b) // 2 for a, b in itertools.pairwise(starts)), length]
    return [(s, bounds[k], bounds[k + 1]) for k, s in enumerate(starts)]


TILE_SHAPES = ("fit", "uniform", "square")


def plan_tiles(height: int, width: int, tile: int, margin: int, shape: str = "fit") -> TilePlan:
    """Plan the tiles of an ``height x width`` image: at most ``tile**2`` pixels each, shaped per ``shape``
    (``fit``, ``uniform`` or ``square``), with ``margin`` pixels of context around every core (see the
    module docstring)."""
    if tile <= 2 * margin:
        raise ValueError(f"tile {tile} must exceed twice the margin {margin}")
    if height < 1 or width < 1:
        raise ValueError(f"empty image {height}x{width}")
    if shape == "fit":
        th, tw = _best_shape(height, width, tile, margin)
    elif shape == "uniform":
        th, tw = min(tile, height), min(tile, width)
    elif shape == "square":
        th, tw = tile, tile
    else:
        raise ValueError(f"tile shape {shape!r} is not one of {TILE_SHAPES}")
    tiles = tuple(
        Tile(ty, tx, (cy0, cy1), (cx0, cx1))
        for ty, cy0, cy1 in _axis(height, th, margin)
        for tx, cx0, cx1 in _axis(width, tw, margin)
    )
    return TilePlan(height, width, th, tw, margin, tiles)


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
    """``float32[H, W] -> float32[N, 1, th, tw]`` in plan order."""
    if image.shape != (plan.height, plan.width):
        raise ValueError(f"image {image.shape} does not match plan {(plan.height, plan.width)}")
    return extract_tiles_by_band(lambda rows: image[rows], plan)


def extract_tiles_by_band(rows_of: Callable[[slice], np.ndarray], plan: TilePlan) -> np.ndarray:
    """Tiles in plan order (``float32[N, 1, th, tw]``), cut one band of tile rows at a time.

    ``rows_of(rows)`` returns ``float32[len(rows), W]``: those rows of the ``H x W`` image. It is called
    once per band of tiles (at most th rows, in order), so a caller can compute the image band by band,
    as the service does with its bicubic upscale, and never hold all of it.
    """
    th, tw = plan.tile_shape
    out = np.empty((len(plan), 1, th, tw), dtype=np.float32)
    band_y0, band = -1, np.empty((0, 0), np.float32)
    for i, tl in enumerate(plan.tiles):
        if tl.y0 != band_y0:
            rows = slice(tl.y0, min(tl.y0 + th, plan.height))
            band = np.asarray(rows_of(rows), dtype=np.float32)
            if band.shape != (rows.stop - rows.start, plan.width):
                raise ValueError(
                    f"rows_of({rows}) gave {band.shape}, expected {(rows.stop - rows.start, plan.width)}"
                )
            # Mirror padding per band equals padding the whole image: rows are only ever padded when the
            # image is shorter than a (square) tile, and then the one band is the whole image.
            band, band_y0 = _pad(band, (th, plan.padded_shape[1])), tl.y0
        out[i, 0] = band[:, tl.x0 : tl.x0 + tw]
    return out


def core_bands(plan: TilePlan) -> list[slice]:
    """The output's row bands, top to bottom, each the core rows of one row of tiles."""
    return [slice(y0, y1) for y0, y1 in sorted({tl.core_y for tl in plan.tiles})]


def stitch_rows(outputs: np.ndarray, plan: TilePlan, rows: slice) -> np.ndarray:
    """``float32[N, 1, th, tw] -> float32[len(rows), W]``: rows ``rows`` (step 1) of the stitched image.

    Each output pixel comes from exactly one tile's core. Stitching band by band (:func:`core_bands`) lets a
    caller turn a large result into its final form without a whole-image float buffer.
    """
    if outputs.shape != (len(plan), 1, *plan.tile_shape):
        raise ValueError(
            f"outputs {outputs.shape} do not match plan of {len(plan)} tiles of {plan.tile_shape}"
        )
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
    """``float32[N, 1, th, tw] -> float32[H, W]``: each tile contributes exactly its core."""
    return stitch_rows(outputs, plan, slice(0, plan.height))


def run_in_batches(tiles: np.ndarray, run: Callable[[np.ndarray], np.ndarray], max_batch: int) -> np.ndarray:
    """``run`` over ``tiles`` (``float32[N, 1, th, tw]``) in consecutive chunks of at most ``max_batch``.

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

    ``run`` maps ``float32[n, 1, th, tw] -> float32[n, 1, th, tw]`` with ``n <= max_batch``. The service
    does the same with tiles of many requests interleaved by its batcher; this is the single-caller form
    used by ``drrn upscale`` and ``drrn eval``.
    """
    plan = plan_tiles(*image.shape, tile, margin)
    return stitch_tiles(run_in_batches(extract_tiles(image, plan), run, max_batch), plan)
