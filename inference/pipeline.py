"""The super-resolution pipeline around the model: bytes in, tiles for the engine, PNG bytes out.

``prepare`` (decode, validate, bicubic-upscale, cut the luminance into tiles) and ``finish`` (stitch the
model's tiles, recombine with the upscaled chroma and alpha, encode) are separate so the HTTP service can
batch tiles from many requests through one engine in between; :func:`upscale_bytes` chains them for a
single caller (``drrn upscale``).

Colour handling follows the DRRN protocol: the model sees only MATLAB-YCbCr luminance (grey images use
their one channel as Y). Cb, Cr and alpha are bicubic-upscaled with the same MATLAB-compatible
``imresize``. All maths is float32 in [0, 1]; 8-bit inputs give 8-bit PNGs and 16-bit inputs 16-bit
PNGs, quantised like the evaluation protocol (:func:`imaging.protocol.quantize`: rounded half up, clipped).
Decoding lives in :mod:`inference.image_io`, limits in :mod:`inference.image_limits`, the
``scale``/``ensemble`` parameters in :mod:`inference.request_params`, PNG output in :mod:`inference.png`.

Memory. Nothing float is ever held at the output's full size except the tiles themselves: the bicubic
upscale of Y is computed one band of tile rows at a time (``imresize(window=...)``, bit-identical to the
whole-image resize), the engine's outputs overwrite the input tiles in place, and :func:`finish` upscales
chroma/alpha and converts to 8/16-bit per band of output rows. Per output pixel a request holds its tiles
(4 bytes x the tile/core overlap, ~8 B at tile 128 / margin 20), the final samples and the PNG.

:func:`probe` reads only the header, so a caller can refuse work it cannot take (e.g. too many tiles for
its queue) before the expensive :func:`prepare`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from imaging.color import rgb_to_ycbcr, ycbcr_to_rgb
from imaging.ensemble import dihedral, undo_dihedral
from imaging.protocol import quantize
from imaging.resize import imresize, output_shape_for_scale
from imaging.tiling import (
    TilePlan,
    core_bands,
    extract_tiles,
    extract_tiles_by_band,
    plan_tiles,
    run_in_batches,
    stitch_rows,
    stitch_tiles,
)
from inference.image_io import decode_image, probe_image
from inference.image_limits import ImageError, ImageLimits, check_upload_size
from inference.png import encode_png
from inference.request_params import check_ensemble, check_scale

__all__ = [
    "ImageError",
    "ImageLimits",
    "Prepared",
    "check_upload_size",
    "count_tiles",
    "finish",
    "prepare",
    "probe",
    "tile_load",
    "upscale_bytes",
]

# Colour conversion runs in horizontal strips of about this many pixels: rgb_to_ycbcr/ycbcr_to_rgb work
# in float64 with per-channel temporaries, which on a whole 64-Mpixel output would take several GB.
_STRIP_PIXELS = 1 << 20


def _ensemble_plans(
    out_shape: tuple[int, int], tile: int, margin: int, ensemble: int, shape: str
) -> list[tuple[int, TilePlan]]:
    """``(transform k, its tile plan)`` in tile order: the transforms that keep the output's orientation
    (even ``k``) first, then the quarter turns (odd ``k``), planned on the transposed output. Tile plans
    are symmetric in their axes, so for a non-square output the turned plan is the upright one transposed
    (its ``tw x th`` tiles hold as many pixels; a square output's plans are one and the same), and both
    orientations tile exactly like a single pass of the same shape."""
    h, w = out_shape
    upright, turned = plan_tiles(h, w, tile, margin, shape), plan_tiles(w, h, tile, margin, shape)
    order = [k for k in range(ensemble) if k % 2 == 0] + [k for k in range(ensemble) if k % 2 == 1]
    return [(k, turned if k % 2 else upright) for k in order]


def _by_shape(arrays: list[np.ndarray]) -> tuple[np.ndarray, ...]:
    """Consecutive ``float32[n, 1, h, w]`` arrays of one shape concatenated: one group per tile shape."""
    groups: list[list[np.ndarray]] = []
    for a in arrays:
        if groups and groups[-1][0].shape[2:] == a.shape[2:]:
            groups[-1].append(a)
        else:
            groups.append([a])
    return tuple(np.concatenate(g) if len(g) > 1 else g[0] for g in groups)


@dataclass
class Prepared:
    """A decoded request, ready for the engine.

    Attributes:
        tiles: one group ``float32[N, 1, th, tw]`` per tile shape (``th * tw <= T**2``,
            :func:`imaging.tiling.plan_tiles`) of bicubic-upscaled Y in [0, 1] (unclipped bicubic
            overshoot, as in training), cut by ``imaging.tiling``; the engine returns the same shapes. A
            single pass has one group; the x8 ensemble has two when its quarter turns' tiles are the
            transposes of the others' (``tw x th``), so every transform runs on exactly fitted tiles.
        input_size: ``(width, height)`` of the upright input (after EXIF orientation).
        output_size: ``(width, height)`` = ``(ceil(w * s), ceil(h * s))``.

    The underscored fields are private to :func:`finish`. Only ``tiles`` is at the output's size: chroma
    and alpha stay at the input's size and are upscaled band by band as the result is assembled, so a
    request's memory is its tiles plus the final 8/16-bit pixels and PNG (no whole-image float planes).
    """

    tiles: tuple[np.ndarray, ...]
    input_size: tuple[int, int]
    output_size: tuple[int, int]
    _plan: TilePlan = field(repr=False)
    _chroma: np.ndarray | None = field(repr=False)  # float32[h, w, 2] input (Cb, Cr) in [0, 1]; None for grey
    _alpha: np.ndarray | None = field(repr=False)  # float32[h, w] input alpha in [0, 1], or None
    _dtype: type = field(repr=False)  # np.uint8 or np.uint16: output sample type
    _icc_profile: bytes | None = field(repr=False)
    _ensemble: list[tuple[int, TilePlan]] | None = field(default=None, repr=False)  # (k, plan), tile order


def _strips(height: int, width: int) -> Iterator[slice]:
    step = max(1, _STRIP_PIXELS // max(1, width))
    for start in range(0, height, step):
        yield slice(start, min(start + step, height))


def probe(
    data: bytes, scale: float, limits: ImageLimits, ensemble: int = 1
) -> tuple[tuple[int, int], tuple[int, int]]:
    """``((width, height), (out_width, out_height))`` of ``data`` at ``scale``, from the header only.

    Runs the same format and limit checks :func:`prepare` starts with, without decoding pixels. Sizes
    are as stored (EXIF orientation not applied; it swaps both pairs alike and no count depends on it).

    Raises:
        ImageError: bad scale, unreadable header, or a limit exceeded.
    """
    check_scale(float(scale), limits)
    width, height = probe_image(data, scale, limits)
    out_h, out_w = output_shape_for_scale((height, width), scale)
    check_ensemble(ensemble, (out_w, out_h), limits)
    return (width, height), (out_w, out_h)


def count_tiles(
    output_size: tuple[int, int], tile: int, margin: int, ensemble: int = 1, shape: str = "fit"
) -> int:
    """Tiles :func:`prepare` cuts for an output of ``(width, height)``: the engine runs a request costs."""
    return tile_load(output_size, tile, margin, ensemble, shape)[0]


def tile_load(
    output_size: tuple[int, int], tile: int, margin: int, ensemble: int = 1, shape: str = "fit"
) -> tuple[int, int]:
    """``(tiles, pixels per tile)`` :func:`prepare` cuts for an output of ``(width, height)``."""
    width, height = output_size
    if ensemble > 1:
        plans = _ensemble_plans((height, width), tile, margin, ensemble, shape)
        return sum(len(p) for _, p in plans), plans[0][1].tile_h * plans[0][1].tile_w
    plan = plan_tiles(height, width, tile, margin, shape)
    return len(plan), plan.tile_h * plan.tile_w


def prepare(
    data: bytes,
    scale: float,
    limits: ImageLimits,
    tile: int,
    margin: int,
    ensemble: int = 1,
    shape: str = "fit",
) -> Prepared:
    """Decode and validate ``data`` and build the engine's input tiles.

    Args:
        data: the uploaded file (JPEG, PNG, WebP, BMP or TIFF).
        scale: scale factor in ``(1, limits.max_scale]`` (see :func:`inference.request_params.parse_scale`).
        limits: request limits, all checked before the pixels are decoded.
        tile: tile side T (tiles hold at most T**2 pixels and fit the image's shape); margin: context pixels
            per tile side (the model depth makes tiling exact); ``shape``: the tile shapes, ``fit``,
            ``uniform`` or ``square`` (:func:`imaging.tiling.plan_tiles`).
        ensemble: 1, or 8 for the dihedral self-ensemble (:mod:`imaging.ensemble`): the tiles of all 8
            transforms of the upscaled Y (the upright ones, then the quarter turns on transposed tiles);
            this holds the whole upscaled Y once (the output is bounded by ``max_ensemble_output_pixels``).

    Raises:
        ImageError: for anything wrong with the input (see :func:`inference.image_io.decode_image`).
    """
    check_scale(float(scale), limits)
    decoded = decode_image(data, scale, limits)
    width, height = decoded.size
    out_shape = output_shape_for_scale((height, width), scale)
    inv_max = np.float32(1.0 / decoded.max_value)

    if decoded.color.ndim == 2:  # grey: the channel is Y (as in the evaluation protocol)
        luma = decoded.color.astype(np.float32) * inv_max
        chroma = None
    else:
        ycc = np.empty((height, width, 3), dtype=np.float32)
        for rows in _strips(height, width):
            ycc[rows] = rgb_to_ycbcr(decoded.color[rows].astype(np.float32) * inv_max)
        luma, chroma = ycc[..., 0], ycc[..., 1:]
    alpha = None if decoded.alpha is None else decoded.alpha.astype(np.float32) * inv_max
    plan = plan_tiles(out_shape[0], out_shape[1], tile, margin, shape)

    def upscaled_luma(rows: slice) -> np.ndarray:
        # Bit-identical to rows of the whole upscaled plane (imresize's window), one band of tiles at a time.
        return imresize(luma, output_shape=out_shape, window=(rows, slice(None)))

    plans = None
    if ensemble > 1:
        check_ensemble(ensemble, (out_shape[1], out_shape[0]), limits)
        plans = _ensemble_plans(out_shape, tile, margin, ensemble, shape)
        whole = imresize(luma, output_shape=out_shape).astype(np.float32)
        tiles = _by_shape([extract_tiles(dihedral(whole, k), p) for k, p in plans])
    else:
        tiles = (extract_tiles_by_band(upscaled_luma, plan),)
    return Prepared(
        tiles=tiles,
        input_size=(width, height),
        output_size=(out_shape[1], out_shape[0]),
        _plan=plan,
        _chroma=chroma,
        _alpha=alpha,
        _dtype=decoded.color.dtype.type,
        _icc_profile=decoded.icc_profile,
        _ensemble=plans,
    )


def finish(prepared: Prepared, sr_tiles: Sequence[np.ndarray]) -> bytes:
    """Stitch the model's output tiles, recombine with chroma/alpha and encode a PNG.

    Args:
        prepared: from :func:`prepare`.
        sr_tiles: the model's output for each group of ``prepared.tiles``, of the same shapes and in the
            same order; Y in [0, 1] (values outside are clipped, NaN becomes 0).

    Returns:
        PNG bytes, ``output_size``, mode L/LA/RGB/RGBA (16-bit samples for 16-bit inputs), with the input's
        ICC profile when it matches the output's colour space.
    """
    plan, dtype = prepared._plan, prepared._dtype
    groups = [np.asarray(g, dtype=np.float32) for g in sr_tiles]
    got, expected = [g.shape for g in groups], [g.shape for g in prepared.tiles]
    if got != expected:
        raise ValueError(f"outputs {got} do not match the tiles {expected}")
    shape = (plan.height, plan.width)
    n_color = 1 if prepared._chroma is None else 3
    pixels = np.empty((*shape, n_color + (prepared._alpha is not None)), dtype=dtype)
    if prepared._ensemble is not None:  # undo each transform and average: the whole Y, once
        acc = np.zeros(shape, dtype=np.float64)
        for k, p, out in _per_transform(groups, prepared._ensemble):
            acc += undo_dihedral(stitch_tiles(out, p), k)
        whole = (acc / len(prepared._ensemble)).astype(np.float32)
    # Band by band (the core rows of one row of tiles): only the final pixels exist at full size.
    for rows in core_bands(plan):
        luma = whole[rows] if prepared._ensemble is not None else stitch_rows(groups[0], plan, rows)
        window = (rows, slice(None))
        if prepared._chroma is None:
            pixels[rows, :, 0] = quantize(luma, dtype)
        else:
            chroma = imresize(prepared._chroma, output_shape=shape, window=window)
            ycc = np.concatenate([luma[..., None], chroma], axis=-1)
            # ycbcr_to_rgb clips to [0, 1] (MATLAB's behaviour), so chroma overshoot cannot wrap around.
            pixels[rows, :, :3] = quantize(ycbcr_to_rgb(ycc), dtype)
        if prepared._alpha is not None:
            pixels[rows, :, n_color] = quantize(
                imresize(prepared._alpha, output_shape=shape, window=window), dtype
            )
    return encode_png(pixels, prepared._icc_profile)


def upscale_bytes(
    data: bytes,
    scale: float,
    run: Callable[[np.ndarray], np.ndarray],
    limits: ImageLimits,
    tile: int,
    margin: int,
    max_batch: int,
    ensemble: int = 1,
) -> bytes:
    """Synchronous :func:`prepare` -> ``run`` on chunks of at most ``max_batch`` tiles -> :func:`finish`.

    ``run`` maps ``float32[n, 1, th, tw] -> float32[n, 1, th, tw]`` (an engine's ``run``).
    """
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    prepared = prepare(data, scale, limits, tile, margin, ensemble)
    return finish(prepared, [run_in_batches(g, run, max_batch) for g in prepared.tiles])


def _per_transform(
    groups: list[np.ndarray], plans: list[tuple[int, TilePlan]]
) -> Iterator[tuple[int, TilePlan, np.ndarray]]:
    """``(k, plan, its output tiles)`` for each transform: each one's tiles are consecutive in one group."""
    g, start = 0, 0
    for k, p in plans:
        if start == len(groups[g]):
            g, start = g + 1, 0
        yield k, p, groups[g][start : start + len(p)]
        start += len(p)
