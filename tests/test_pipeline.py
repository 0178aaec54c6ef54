"""inference.pipeline / image_io / png / local: real images made here with Pillow (or by hand for 16-bit
colour PNGs, which Pillow cannot write), and the real tiny ONNX model through onnxruntime."""

from __future__ import annotations

import io
import math
import struct
import tracemalloc
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image, ImageCms

from drrn.errors import UserError
from drrn.paths import datasets_dir
from imaging.color import rgb_to_ycbcr
from imaging.protocol import quantize
from imaging.resize import imresize
from inference.image_io import decode_image
from inference.pipeline import (
    ImageError,
    ImageLimits,
    check_upload_size,
    count_tiles,
    finish,
    prepare,
    probe,
    upscale_bytes,
)
from inference.png import encode_png16
from inference.request_params import parse_scale

LIMITS = ImageLimits()
RNG = np.random.default_rng(1234)


def identity(batch: np.ndarray) -> np.ndarray:
    """A "model" that returns its input: output must then equal plain bicubic of every channel."""
    return batch.copy()


def encode(image: Image.Image, fmt: str = "PNG", **params) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **params)
    return buf.getvalue()


def upscale(
    data: bytes, scale: float = 2, run=identity, limits: ImageLimits = LIMITS, tile: int = 32
) -> bytes:
    return upscale_bytes(data, scale, run, limits, tile, 6, 4)


def bicubic(arr: np.ndarray, out_wh: tuple[int, int], top: int) -> np.ndarray:
    """Expected output for the identity model: float64 bicubic of the samples, quantised like the service."""
    up = imresize(arr.astype(np.float64) / top, output_shape=(out_wh[1], out_wh[0]))
    return np.floor(np.clip(up * top, 0, top) + 0.5)


def textured(h: int, w: int, channels: int = 3) -> np.ndarray:
    """Smooth gradients plus noise: real edges and texture for the bicubic/model to act on."""
    yy, xx = np.mgrid[0:h, 0:w]
    base = [(xx * 255 / w), (yy * 255 / h), ((xx + yy) * 127 / (h + w) + 64)][:channels]
    arr = np.stack(base, axis=-1) + RNG.normal(0, 20, (h, w, channels))
    return np.clip(arr, 0, 255).astype(np.uint8)


def error_of(fn, *args) -> ImageError:
    with pytest.raises(ImageError) as info:
        fn(*args)
    return info.value


# --- hand-made 16-bit PNGs --------------------------------------------------------------------------------
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _filter_rows(rows: np.ndarray, bpp: int) -> bytes:
    """Apply PNG filters 0-4 in rotation (every row type is exercised), from the original bytes."""
    out = []
    for y, x in enumerate(rows.astype(np.int64)):
        b = rows[y - 1].astype(np.int64) if y else np.zeros_like(x)
        a = np.concatenate([np.zeros(bpp, np.int64), x[:-bpp]])
        c = np.concatenate([np.zeros(bpp, np.int64), b[:-bpp]])
        p = a + b - c
        pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
        paeth = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
        kind = y % 5
        pred = (0, a, b, (a + b) // 2, paeth)[kind]
        out.append(bytes([kind]) + ((x - pred) % 256).astype(np.uint8).tobytes())
    return b"".join(out)


def png16(arr: np.ndarray, color_type: int, interlace: bool = False, trns: bytes | None = None) -> bytes:
    """A 16-bit PNG written by hand (all five row filters; optionally Adam7-interlaced)."""
    h, w = arr.shape[:2]
    channels = 1 if arr.ndim == 2 else arr.shape[2]
    bpp = 2 * channels

    def rows_of(sub: np.ndarray) -> np.ndarray:
        return sub.astype(">u2").reshape(sub.shape[0], -1).view(np.uint8)

    passes = [(x0, y0, dx, dy) for x0, y0, dx, dy in _ADAM7] if interlace else [(0, 0, 1, 1)]
    raw = b"".join(
        _filter_rows(rows_of(arr[y0::dy, x0::dx]), bpp)
        for x0, y0, dx, dy in passes
        if arr[y0::dy, x0::dx].size
    )
    ihdr = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, int(interlace))
    extra = _chunk(b"tRNS", trns) if trns else b""
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + extra
        + _chunk(b"IDAT", zlib.compress(raw))
        + _chunk(b"IEND", b"")
    )


def png_ihdr(data: bytes) -> tuple[int, int, int, int]:
    return struct.unpack(">IIBB", data[16:26])


# --- scale parsing and errors -----------------------------------------------------------------------------
@pytest.mark.parametrize(("raw", "value"), [("2", 2.0), ("3", 3.0), ("4", 4.0), (" 2.5 ", 2.5), ("3.3", 3.3)])
def test_parse_scale_accepts_reals_in_range(raw: str, value: float) -> None:
    assert parse_scale(raw, LIMITS) == value


@pytest.mark.parametrize(
    "raw", [None, "", "0", "1", "-2", "abc", "nan", "inf", "-inf", "1_5", "2,5", "9", "1e9"]
)
def test_parse_scale_rejects(raw: str | None) -> None:
    err = error_of(parse_scale, raw, LIMITS)
    assert (err.status, err.code) == (422, "bad_scale")
    over = raw in ("9", "1e9")
    assert err.limit == ({"name": "max_scale", "value": 4.0} if over else None)
    body = err.to_dict()
    assert body["error"] == "bad_scale" and body["detail"]
    assert ("limit" in body) == over


def test_upload_size_limit() -> None:
    check_upload_size(LIMITS.max_upload_bytes, LIMITS)
    err = error_of(check_upload_size, LIMITS.max_upload_bytes + 1, LIMITS)
    assert (err.status, err.code) == (413, "upload_too_large")
    assert err.to_dict()["limit"] == {"name": "max_upload_bytes", "value": 20 * 2**20}
    small = ImageLimits(max_upload_bytes=100)
    err = error_of(prepare, encode(Image.fromarray(textured(64, 64))), 2, small, 32, 6)
    assert err.code == "upload_too_large"


def _huge_png(width: int, height: int) -> bytes:
    """A valid ~100-byte PNG whose IHDR claims ``width x height`` RGB (its IDAT holds one row only)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    row = zlib.compress(b"\x00" * (1 + 3 * min(width, 64)))
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", row) + _chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [50_000, 4_001, 10_000])
def test_huge_dimensions_refused_from_header(side: int) -> None:
    # 50000^2 trips Pillow's decompression-bomb error inside open(); 4001^2 only our own limit; 10000^2 is in
    # Pillow's warning band, made an error here as a strict warnings filter would.
    data = _huge_png(side, side)
    assert len(data) < 200
    tracemalloc.start()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            err = error_of(prepare, data, 2, LIMITS, 32, 6)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 10 * 2**20  # nothing image-sized was allocated
    assert (err.status, err.code) == (413, "input_too_large")
    assert err.to_dict()["limit"] == {"name": "max_input_pixels", "value": 16_000_000}
    assert str(side * side) in err.detail


def test_output_limit_checked_before_decode() -> None:
    err = error_of(prepare, _huge_png(4000, 4000), 2.1, LIMITS, 32, 6)
    assert (err.status, err.code) == (422, "output_too_large")
    assert err.limit == {"name": "max_output_pixels", "value": LIMITS.max_output_pixels}
    # ceil() counts: 10x10 at 2.5 is 25x25 = 625 pixels, so a limit of 624 refuses it and 625 does not.
    data = encode(Image.new("RGB", (10, 10)))
    assert error_of(prepare, data, 2.5, ImageLimits(max_output_pixels=624), 32, 6).code == "output_too_large"
    assert prepare(data, 2.5, ImageLimits(max_output_pixels=625), 32, 6).output_size == (25, 25)


def test_bad_inputs() -> None:
    png = encode(Image.fromarray(textured(40, 40)))
    gif = encode(Image.new("P", (8, 8)), "GIF")
    cases = {
        b"": (400, "empty_body"),
        png[: len(png) // 2]: (400, "corrupt_image"),  # truncated in the pixel data
        png[:30]: (400, "corrupt_image"),  # truncated in the header
        b"hello, this is not an image\n" * 4: (415, "unsupported_format"),
        gif: (415, "unsupported_format"),
        encode(Image.fromarray(textured(40, 40)), "JPEG")[:300]: (400, "corrupt_image"),
    }
    for data, expected in cases.items():
        err = error_of(prepare, data, 2, LIMITS, 32, 6)
        assert (err.status, err.code) == expected, data[:16]
        assert err.limit is None and "limit" not in err.to_dict()
    assert "GIF" in error_of(prepare, gif, 2, LIMITS, 32, 6).detail


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about the corrupt TIFF/EXIF tags it skips
def test_mutated_files_fail_cleanly() -> None:
    """Random byte corruption of every accepted format: each file either decodes or gives an ImageError."""
    rng = np.random.default_rng(7)
    exif = Image.Exif()
    exif[0x0112] = 6
    image = Image.fromarray(textured(12, 10))
    seeds = [encode(image, fmt) for fmt in ("PNG", "WEBP", "BMP", "TIFF")]
    seeds += [
        encode(image, "JPEG", exif=exif.tobytes()),
        encode_png16(rng.integers(0, 65536, (5, 4, 3), np.uint16)),
    ]
    outcomes = set()
    for seed in seeds:
        for _ in range(25):
            data = bytearray(seed)
            for pos in rng.integers(0, len(data), rng.integers(1, 4)):
                data[pos] = rng.integers(0, 256)
            if rng.random() < 0.3:
                data = data[: rng.integers(1, len(data))]
            try:
                prepare(bytes(data), 2, LIMITS, 32, 6)
                outcomes.add("ok")
            except ImageError as exc:
                assert exc.status in (400, 413, 415) and exc.to_dict()["error"] == exc.code
                outcomes.add(exc.code)
    assert {"ok", "corrupt_image"} <= outcomes


def test_prepare_validates_scale_too() -> None:
    data = encode(Image.new("L", (8, 8)))
    assert error_of(prepare, data, 1.0, LIMITS, 32, 6).code == "bad_scale"
    assert error_of(prepare, data, math.inf, LIMITS, 32, 6).code == "bad_scale"


# --- modes, sizes, values ---------------------------------------------------------------------------------
@pytest.mark.parametrize("scale", [2, 3, 4, 2.5, 3.3])
def test_rgb_sizes_and_colour_path(scale: float) -> None:
    rgb = textured(23, 31)
    out = Image.open(io.BytesIO(upscale(encode(Image.fromarray(rgb)), scale)))
    size = (math.ceil(31 * scale), math.ceil(23 * scale))
    assert (out.format, out.mode, out.size) == ("PNG", "RGB", size)
    # YCbCr and bicubic are linear, so with an identity model the output is the bicubic of RGB.
    assert np.abs(np.asarray(out).astype(float) - bicubic(rgb, size, 255)).max() <= 1


def test_probe_reads_sizes_and_limits_from_the_header_only() -> None:
    data = encode(Image.fromarray(textured(30, 50)))
    assert probe(data, 3, LIMITS) == ((50, 30), (150, 90))
    assert probe(data, 2.5, LIMITS)[1] == (125, 75)  # ceil, as prepare
    prepared = prepare(data, 3, LIMITS, 32, 6)
    (tiles,) = prepared.tiles
    assert count_tiles(prepared.output_size, 32, 6) == len(tiles) == 28  # 4 x 7 tiles of 32x32
    tracemalloc.start()
    try:
        sizes = probe(_huge_png(3000, 2000), 2, ImageLimits(max_output_pixels=10**8))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sizes == ((3000, 2000), (6000, 4000)) and peak < 2**20  # nothing image-sized decoded
    assert error_of(probe, b"", 2, LIMITS).code == "empty_body"
    assert error_of(probe, b"not an image at all", 2, LIMITS).code == "unsupported_format"
    assert error_of(probe, _huge_png(4001, 4001), 2, LIMITS).code == "input_too_large"
    assert error_of(probe, data, 2, ImageLimits(max_output_pixels=100)).code == "output_too_large"
    assert error_of(probe, data, 9, LIMITS).code == "bad_scale"


def test_quantize_uint16_has_the_uint8_semantics() -> None:
    """The service quantises with imaging.protocol.quantize (the evaluation protocol's), 8- or 16-bit."""
    x = np.array([-0.5, 0.0, 0.2 / 65535, 0.7 / 65535, 1234.6 / 65535, 1.0, 1.5, np.nan])
    out = quantize(x, np.uint16)
    assert out.dtype == np.uint16 and out.tolist() == [0, 0, 0, 1, 1235, 65535, 65535, 0]
    assert quantize(x).dtype == np.uint8 and quantize(x).tolist() == [0, 0, 0, 0, 5, 255, 255, 0]
    with pytest.raises(ValueError, match="uint8 and uint16"):
        quantize(x, np.int16)


def test_prepare_and_finish_split() -> None:
    prepared = prepare(encode(Image.fromarray(textured(30, 50))), 3, LIMITS, 32, 6)
    assert prepared.input_size == (50, 30) and prepared.output_size == (150, 90)
    (t,) = prepared.tiles
    assert t.dtype == np.float32 and t.ndim == 4 and t.shape[1:] == (1, 32, 32)
    assert 0.0 < t.mean() < 1.0
    out = Image.open(io.BytesIO(finish(prepared, [identity(t)])))
    assert out.size == (150, 90)


def test_rgba_alpha_upscaled_and_kept() -> None:
    rgba = np.dstack([textured(24, 32), np.tile(np.linspace(0, 255, 32).astype(np.uint8), (24, 1))])
    out = Image.open(io.BytesIO(upscale(encode(Image.fromarray(rgba)), 2.5)))
    assert out.mode == "RGBA" and out.size == (80, 60)
    got = np.asarray(out).astype(float)
    assert np.abs(got[..., 3] - bicubic(rgba[..., 3], (80, 60), 255)).max() <= 1
    assert got[..., 3].min() == 0 and got[..., 3].max() == 255


def test_la_and_l() -> None:
    grey = textured(21, 17, 1)[..., 0]
    la = np.dstack([grey, 255 - grey])
    out = Image.open(io.BytesIO(upscale(encode(Image.fromarray(la, "LA")), 2)))
    assert out.mode == "LA" and out.size == (34, 42)
    for c in range(2):
        assert np.abs(np.asarray(out)[..., c] - bicubic(la[..., c], (34, 42), 255)).max() <= 1
    out = Image.open(io.BytesIO(upscale(encode(Image.fromarray(grey, "L")), 3)))
    assert out.mode == "L" and out.size == (51, 63)
    assert np.abs(np.asarray(out) - bicubic(grey, (51, 63), 255)).max() <= 1


def test_palette_with_transparency() -> None:
    pal = Image.new("P", (20, 20), 0)
    pal.putpalette([255, 0, 0, 0, 255, 0])
    pal.paste(1, (10, 0, 20, 20))
    out = np.asarray(Image.open(io.BytesIO(upscale(encode(pal, transparency=1), 2))))
    assert out.shape == (40, 40, 4)
    assert (out[:, :16, 3] == 255).all() and (out[:, 24:, 3] == 0).all()
    assert (out[:, :16, :3] == [255, 0, 0]).all()
    opaque = Image.open(io.BytesIO(upscale(encode(pal), 2)))  # no tRNS: plain RGB
    assert opaque.mode == "RGB"


def test_other_formats_and_cmyk() -> None:
    rgb = textured(16, 24)
    for fmt in ("JPEG", "WEBP", "BMP", "TIFF"):
        out = Image.open(io.BytesIO(upscale(encode(Image.fromarray(rgb), fmt), 2)))
        assert (out.mode, out.size) == ("RGB", (48, 32)), fmt
    cmyk = Image.new("CMYK", (10, 6), (0, 255, 255, 0))  # red
    out = np.asarray(Image.open(io.BytesIO(upscale(encode(cmyk, "JPEG", quality=95), 2))))
    assert out.shape == (12, 20, 3) and out[..., 0].min() > 200 and out[..., 1:].max() < 60


def test_multi_frame_uses_first_frame() -> None:
    frames = [Image.new("L", (8, 8), v) for v in (40, 200)]
    data = encode(frames[0], "TIFF", save_all=True, append_images=frames[1:])
    assert Image.open(io.BytesIO(data)).n_frames == 2
    out = np.asarray(Image.open(io.BytesIO(upscale(data, 2))))
    assert (out == 40).all()


def test_grey16_in_grey16_out() -> None:
    ramp = np.round(np.linspace(0, 65535, 40 * 33)).astype(np.uint16).reshape(33, 40)
    ramp[::7] = 65535 - ramp[::7]  # edges, so bicubic overshoot gets clipped at both ends
    data = encode(Image.fromarray(ramp))
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    out_bytes = upscale(data, 2.5)
    out = Image.open(io.BytesIO(out_bytes))
    assert png_ihdr(out_bytes)[2:] == (16, 0)
    assert out.mode == "I;16" and out.size == (100, 83)
    got = np.asarray(out).astype(float)
    assert got.min() == 0 and got.max() == 65535
    assert np.count_nonzero(got % 257) > got.size // 2  # real 16-bit precision, not 8-bit scaled up
    assert np.abs(got - bicubic(ramp, (100, 83), 65535)).max() <= 1


@pytest.mark.parametrize(("color_type", "channels"), [(2, 3), (6, 4), (4, 2)])
@pytest.mark.parametrize("interlace", [False, True])
def test_png16_colour_decoded_exactly(color_type: int, channels: int, interlace: bool) -> None:
    arr = RNG.integers(0, 65536, (19, 13, channels)).astype(np.uint16)
    decoded = decode_image(png16(arr, color_type, interlace), 2, LIMITS)
    assert decoded.color.dtype == np.uint16
    got = decoded.color if decoded.alpha is None else np.dstack([decoded.color, decoded.alpha])
    assert np.array_equal(got.reshape(arr.shape), arr)


def test_png16_rgb_transparency_key() -> None:
    arr = RNG.integers(0, 65536, (6, 5, 3)).astype(np.uint16)
    arr[2, 3] = (1000, 2000, 3000)
    decoded = decode_image(png16(arr, 2, trns=struct.pack(">HHH", 1000, 2000, 3000)), 2, LIMITS)
    expected = np.full((6, 5), 65535)
    expected[2, 3] = 0
    assert np.array_equal(decoded.alpha, expected)


def test_rgb16_in_rgb16_out() -> None:
    rgb = (textured(18, 22).astype(np.uint16) * 257) ^ RNG.integers(0, 256, (18, 22, 3)).astype(np.uint16)
    out = upscale(png16(rgb, 2), 2)
    assert png_ihdr(out) == (44, 36, 16, 2)
    got = decode_image(out, 2, LIMITS).color.astype(float)
    assert np.abs(got - bicubic(rgb, (44, 36), 65535)).max() <= 1
    rgba = np.dstack([rgb, RNG.integers(0, 65536, (18, 22), dtype=np.uint16)])
    out = upscale(png16(rgba, 6), 2)
    assert png_ihdr(out) == (44, 36, 16, 6)
    assert np.abs(decode_image(out, 2, LIMITS).alpha - bicubic(rgba[..., 3], (44, 36), 65535)).max() <= 1


def test_encode_png16_roundtrips() -> None:
    grey = RNG.integers(0, 65536, (9, 14)).astype(np.uint16)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(encode_png16(grey)))), grey)
    rgba = RNG.integers(0, 65536, (9, 14, 4)).astype(np.uint16)
    decoded = decode_image(encode_png16(rgba), 2, LIMITS)
    assert np.array_equal(decoded.color, rgba[..., :3]) and np.array_equal(decoded.alpha, rgba[..., 3])


@pytest.mark.parametrize(("orientation", "marker_xy"), [(6, (56, 8)), (8, (8, 120))])
def test_exif_orientation_applied(orientation: int, marker_xy: tuple[int, int]) -> None:
    stored = np.zeros((32, 64, 3), np.uint8)
    stored[...] = (0, 0, 200)
    stored[:16, :16] = (230, 20, 20)  # red marker at the stored top-left
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(Image.fromarray(stored), "JPEG", quality=95, exif=exif.tobytes())
    assert prepare(data, 2, LIMITS, 32, 6).input_size == (32, 64)
    out = np.asarray(Image.open(io.BytesIO(upscale(data, 2))))
    assert out.shape == (128, 64, 3)  # upright: the stored 64x32 became 32x64
    x, y = marker_xy
    assert out[y, x, 0] > 180 and out[y, x, 2] < 80  # 6: top-left -> top-right; 8: -> bottom-left
    others = [(8, 8), (56, 8), (8, 120), (56, 120)]
    others.remove(marker_xy)
    assert all(out[oy, ox, 2] > 150 for ox, oy in others)


def test_icc_profile_copied() -> None:
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    out = Image.open(io.BytesIO(upscale(encode(Image.fromarray(textured(8, 8)), icc_profile=icc), 2)))
    assert out.info.get("icc_profile") == icc
    out16 = upscale(_with_icc(icc), 2)
    assert png_ihdr(out16)[2:] == (16, 2)
    assert Image.open(io.BytesIO(out16)).info.get("icc_profile") == icc
    # An RGB profile cannot describe a grey PNG: it is dropped rather than written invalidly.
    grey = Image.open(io.BytesIO(upscale(encode(Image.new("L", (8, 8), 90), icc_profile=icc), 2)))
    assert grey.mode == "L" and "icc_profile" not in grey.info


def _with_icc(icc: bytes) -> bytes:
    """A 16-bit RGB PNG carrying an iCCP chunk (made by the service's own writer)."""
    return encode_png16(RNG.integers(0, 65536, (5, 5, 3), dtype=np.uint16), icc)


# --- the real model ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ort_model(tiny_runner):
    return tiny_runner


def _content() -> np.ndarray:
    """A 48x48 crop of Set5 butterfly when ../shared is present (read in place), else synthetic texture."""
    path = datasets_dir() / "Set5" / "butterfly.png"
    if path.is_file():
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))[100:148, 100:148].copy()
    return textured(48, 48)


def test_tiling_invariance_with_real_model(ort_model) -> None:
    run, depth = ort_model
    data = encode(Image.fromarray(_content()))
    whole = upscale_bytes(data, 2, run, LIMITS, 96, depth, 8)  # 96x96 output: exactly one tile
    tiled = upscale_bytes(data, 2, run, LIMITS, 32, depth, 8)  # overlapping tiles of <= 32**2 pixels
    (tiles,) = prepare(data, 2, LIMITS, 32, depth).tiles
    assert len(tiles) > 9 and tiles.shape[2] * tiles.shape[3] <= 32 * 32
    a, b = (np.asarray(Image.open(io.BytesIO(x))) for x in (whole, tiled))
    assert a.shape == b.shape == (96, 96, 3)
    y_a, y_b = (rgb_to_ycbcr(x)[..., 0].astype(int) for x in (a, b))
    assert np.abs(y_a - y_b).max() <= 1
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    plain = np.asarray(Image.open(io.BytesIO(upscale_bytes(data, 2, identity, LIMITS, 96, depth, 8))))
    assert np.abs(plain.astype(int) - a).max() > 2  # the model really changed the image


def test_upscale_file(tiny_onnx, tmp_path) -> None:
    from inference.local import upscale_file

    src, dst = tmp_path / "in.png", tmp_path / "out.png"
    Image.fromarray(textured(20, 30)).save(src)
    upscale_file(str(src), str(dst), 2.5, str(tiny_onnx))
    with Image.open(dst) as out:
        assert (out.format, out.mode, out.size) == ("PNG", "RGB", (75, 50))
    with pytest.raises(UserError, match="cannot read"):
        upscale_file(str(tmp_path / "missing.png"), str(dst), 2, str(tiny_onnx))
    with pytest.raises(UserError, match="exceeds the limit"):
        upscale_file(str(src), str(dst), 9, str(tiny_onnx))
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(UserError, match="not a recognised image"):
        upscale_file(str(tmp_path / "bad.png"), str(dst), 2, str(tiny_onnx))
