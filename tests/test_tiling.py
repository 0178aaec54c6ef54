"""imaging.tiling: plan/extract/stitch geometry, the tile-shape choice (against a brute-force search, and
the overhead on thin, small and large images), and tiled inference against a whole-image run of the real
tiny ONNX model (exact for every image shape; a too-small margin must break that)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from imaging.tiling import (
    QUANTUM,
    TILE_SHAPES,
    _axis,
    core_bands,
    extract_tiles,
    extract_tiles_by_band,
    plan_tiles,
    run_in_batches,
    run_tiled,
    stitch_rows,
    stitch_tiles,
)

TILE, ATOL = 32, 1e-5
SHAPES = [(1, 1), (5, 3), (50, 20), (20, 50), (32, 32), (33, 32), (64, 96), (70, 45), (100, 37)]


def image(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Smooth structure plus noise in [0, 1]: content a model actually changes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    smooth = 0.5 + 0.3 * np.sin(xx / 5) * np.cos(yy / 7)
    return np.clip(smooth + rng.normal(0, 0.05, shape), 0, 1).astype(np.float32)


@pytest.mark.parametrize("kind", ["fit", "uniform", "square"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("margin", [0, 6, 15])
def test_cores_partition_the_image_and_round_trip(shape: tuple[int, int], margin: int, kind: str) -> None:
    h, w = shape
    plan = plan_tiles(h, w, TILE, margin, kind)
    th, tw = plan.tile_shape
    expected = {"square": (TILE, TILE), "uniform": (min(TILE, h), min(TILE, w))}.get(kind, (th, tw))
    assert th * tw <= TILE * TILE and (th, tw) == expected and (kind == "square" or (th <= h and tw <= w))
    owners = np.zeros(shape, int)
    for tl in plan.tiles:
        (y0, y1), (x0, x1) = tl.core_y, tl.core_x
        owners[y0:y1, x0:x1] += 1
        # The core lies inside its tile window, which lies inside the (padded) image.
        assert tl.y0 <= y0 < y1 <= tl.y0 + th and tl.x0 <= x0 < x1 <= tl.x0 + tw
        assert tl.y0 + th <= plan.padded_shape[0] and tl.x0 + tw <= plan.padded_shape[1]
        # Every core pixel has `margin` pixels of context inside the tile, unless that side is the image edge.
        assert y0 - tl.y0 >= margin or tl.y0 == 0
        assert tl.y0 + th - y1 >= margin or tl.y0 + th >= h
        assert x0 - tl.x0 >= margin or tl.x0 == 0
        assert tl.x0 + tw - x1 >= margin or tl.x0 + tw >= w
    assert (owners == 1).all()  # each output pixel comes from exactly one tile
    img = image(shape)
    tiles = extract_tiles(img, plan)
    assert tiles.shape == (len(plan), 1, th, tw) and tiles.dtype == np.float32
    np.testing.assert_array_equal(stitch_tiles(tiles, plan), img)
    np.testing.assert_array_equal(run_tiled(img, lambda t: t.copy(), TILE, margin, 3), img)


def brute_force_cost(h: int, w: int, tile: int, margin: int) -> int:
    """Fewest computed pixels over every allowed tile shape: per axis the whole axis, or a multiple of
    QUANTUM shorter than it and longer than 2 * margin; at most tile**2 pixels."""

    def lengths(n: int) -> list[int]:
        return [n] + [t for t in range(QUANTUM, n, QUANTUM) if t > 2 * margin]

    costs = [
        len(_axis(h, th, margin)) * th * len(_axis(w, tw, margin)) * tw
        for th in lengths(h)
        for tw in lengths(w)
        if th * tw <= tile * tile
    ]
    return min(costs)


@pytest.mark.parametrize(("tile", "margin"), [(24, 3), (24, 7), (48, 6), (48, 20)])
def test_the_chosen_shape_computes_the_fewest_pixels(tile: int, margin: int) -> None:
    """Against every allowed shape, on a grid of sizes and aspect ratios. (With margin 0 more tiles cost
    nothing, so many tiny tiles could shave the rounding to QUANTUM; the search does not chase that.)"""
    for h, w in itertools.product(range(1, 200, 11), range(1, 260, 13)):
        plan = plan_tiles(h, w, tile, margin)
        assert plan.computed_pixels == brute_force_cost(h, w, tile, margin), (h, w)


@pytest.mark.parametrize(
    ("shape", "bound"),
    [
        ((64, 64), 1.0),  # smaller than a tile: one tile of exactly the image
        ((4, 16000), 1.0),  # 1:4000 and within the area: one tile
        ((16, 64000), 1.05),  # the thin x4 output that used to run out its deadline: 16 x 1024 tiles
        ((1000, 1000), 1.45),
        ((4000, 4000), 1.45),  # large: about (1 + 2m / (T - 2m))^2 = 1.40
        ((300, 260), 1.2),  # just over a tile: split evenly, not a full tile plus a sliver
    ],
)
def test_computed_pixels_stay_close_to_the_output(shape: tuple[int, int], bound: float) -> None:
    plan = plan_tiles(*shape, 256, 20)
    assert plan.computed_pixels / (shape[0] * shape[1]) <= bound
    assert plan.tile_h * plan.tile_w <= 256 * 256


def mirror_padded(img: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Reference: the whole image mirror-padded ("symmetric", in rounds) to ``shape``."""
    while img.shape[0] < shape[0] or img.shape[1] < shape[1]:
        dy, dx = (
            min(max(shape[0] - img.shape[0], 0), img.shape[0]),
            min(max(shape[1] - img.shape[1], 0), img.shape[1]),
        )
        img = np.pad(img, ((0, dy), (0, dx)), mode="symmetric")
    return img


@pytest.mark.parametrize("shape", SHAPES)
def test_band_by_band_equals_whole_image(shape: tuple[int, int]) -> None:
    """Tiles cut from bands equal tiles cut from the whole padded image; stitching by rows equals stitching
    it all; no band is taller than a tile and each is asked for once, top to bottom."""
    img, plan = image(shape, seed=3), plan_tiles(*shape, TILE, 6, "square")
    asked: list[slice] = []

    def rows_of(rows: slice) -> np.ndarray:
        asked.append(rows)
        return img[rows]

    tiles = extract_tiles_by_band(rows_of, plan)
    padded = mirror_padded(img, plan.padded_shape)
    th, tw = plan.tile_shape
    for tl, tile in zip(plan.tiles, tiles, strict=True):
        np.testing.assert_array_equal(tile[0], padded[tl.y0 : tl.y0 + th, tl.x0 : tl.x0 + tw])
    assert [r.start for r in asked] == sorted({tl.y0 for tl in plan.tiles})
    assert all(0 < r.stop - r.start <= th for r in asked)

    bands = core_bands(plan)
    assert bands[0].start == 0 and bands[-1].stop == shape[0]
    assert all(a.stop == b.start for a, b in itertools.pairwise(bands))
    np.testing.assert_array_equal(np.concatenate([stitch_rows(tiles, plan, b) for b in bands]), img)
    some = slice(shape[0] // 3, max(shape[0] // 3 + 1, shape[0] - 1))
    np.testing.assert_array_equal(stitch_rows(tiles, plan, some), img[some])
    with pytest.raises(ValueError):
        stitch_rows(tiles, plan, slice(0, shape[0], 2) if shape[0] > 1 else slice(1, 1))
    with pytest.raises(ValueError):
        extract_tiles_by_band(lambda rows: img[rows][:, :-1] if shape[1] > 1 else img[rows][:0], plan)


def test_short_axes_of_square_tiles_are_mirror_padded() -> None:
    img = image((5, 3))
    (tile,) = extract_tiles(img, plan_tiles(5, 3, TILE, 6, "square"))
    np.testing.assert_array_equal(tile[0, :5, :3], img)
    np.testing.assert_array_equal(tile[0, :5, 3:6], img[:, ::-1])  # "symmetric": the edge pixel repeats


def test_bad_plans_and_batches_are_refused() -> None:
    with pytest.raises(ValueError, match="twice the margin"):
        plan_tiles(10, 10, TILE, 16)
    with pytest.raises(ValueError, match="empty"):
        plan_tiles(0, 10, TILE, 6)
    with pytest.raises(ValueError, match="max_batch"):
        run_in_batches(np.zeros((2, 1, TILE, TILE), np.float32), lambda t: t, 0)
    calls: list[int] = []

    def run(t: np.ndarray) -> np.ndarray:
        calls.append(len(t))
        return t

    x = np.arange(7, dtype=np.float32).reshape(7, 1, 1, 1)
    out = run_in_batches(x, lambda t: run(t) * 2, 3)
    assert calls == [3, 3, 1] and out is x and out.ravel().tolist() == [2 * i for i in range(7)]
    with pytest.raises(ValueError):
        run_in_batches(x, lambda t: t[:1], 3)


@pytest.fixture(scope="module")
def model(tiny_runner):
    return tiny_runner


@pytest.mark.parametrize("kind", ["fit", "uniform"])
@pytest.mark.parametrize("shape", [(32, 32), (48, 70), (97, 64), (48, 20), (5, 3), (12, 300), (200, 9)])
def test_tiled_equals_whole_image_for_every_shape(model, shape: tuple[int, int], kind: str) -> None:
    """Thin and small images too: an axis with one tile is the whole axis, so nothing is padded."""
    run, depth = model
    img = image(shape, seed=shape[0])
    whole = run(img[None, None])[0, 0]
    assert np.abs(whole - img).max() > 100 * ATOL  # the model really changes the image
    plan = plan_tiles(*shape, TILE, depth, kind)
    tiled = stitch_tiles(run_in_batches(extract_tiles(img, plan), run, 8), plan)
    np.testing.assert_allclose(tiled, whole, rtol=0, atol=ATOL)


@pytest.mark.parametrize("margin_below_depth", [1, 4])
def test_a_margin_below_the_depth_breaks_exactness(model, margin_below_depth: int) -> None:
    """Negative control: the comparison above can fail."""
    run, depth = model
    img = image((48, 70), seed=48)
    whole = run(img[None, None])[0, 0]
    tiled = run_tiled(img, run, TILE, depth - margin_below_depth, 8)
    assert np.abs(tiled - whole).max() > ATOL


def test_a_short_axis_of_square_tiles_differs_only_near_its_padded_border(model) -> None:
    """Square tiles (for an engine that runs one shape): width 20 < tile, so the tile sees mirrored pixels
    past column 20 where the whole image sees zero padding; the last `depth` columns differ, everything else
    is exact."""
    run, depth = model
    img = image((48, 20), seed=3)
    whole = run(img[None, None])[0, 0]
    plan = plan_tiles(48, 20, TILE, depth, "square")
    tiled = stitch_tiles(run_in_batches(extract_tiles(img, plan), run, 8), plan)
    np.testing.assert_allclose(tiled[:, : 20 - depth], whole[:, : 20 - depth], rtol=0, atol=ATOL)
    assert np.abs(tiled[:, 20 - depth :] - whole[:, 20 - depth :]).max() > ATOL


@pytest.mark.parametrize("kind", TILE_SHAPES)
def test_the_plan_of_a_transposed_image_is_the_transposed_plan(kind: str) -> None:
    """The x8 ensemble's quarter turns run on the transposed plan: same tiles, same pixels per tile."""
    rng = np.random.default_rng(7)
    for h, w in [(1, 300), (46, 60), (60, 46), (35, 35), (130, 31), *rng.integers(1, 400, (40, 2)).tolist()]:
        for tile, margin in [(32, 6), (64, 12), (128, 20)]:
            a, b = plan_tiles(h, w, tile, margin, kind), plan_tiles(w, h, tile, margin, kind)
            if h == w:  # its own plan, whatever its tiles' shape (35x35 at 32: 35x24 tiles)
                assert a == b
                continue
            assert (b.height, b.width, b.tile_h, b.tile_w) == (a.width, a.height, a.tile_w, a.tile_h)
            swapped = {(t.x0, t.y0, t.core_x, t.core_y) for t in a.tiles}
            assert {(t.y0, t.x0, t.core_y, t.core_x) for t in b.tiles} == swapped, (h, w, tile, margin)
