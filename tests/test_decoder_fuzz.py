"""The decoders, fuzzed: mutated image files through the upload path's probe + decode.

Seeds are small valid PNG, JPEG, WebP, GIF, BMP and TIFF files made here with Pillow (several modes and
codecs each). Hypothesis mutates them (bit flips, byte overwrites, truncation, inserted bytes, duplicated
or dropped byte ranges and chunks/segments, extreme width/height written into the real header fields)
and feeds each result to what ``Upscaler`` runs on an upload: :func:`inference.pipeline.probe` (header
only) then :func:`inference.image_io.decode_image`. Properties, per case:

* the only exception is the pipeline's own :class:`~inference.image_io.ImageError`;
* a Hypothesis deadline bounds its time (generous: a decode within the test's limits takes milliseconds);
* memory stays within the limits: the decoded planes are the probed size, at most ``max_input_pixels``,
  and the process's peak resident memory during the case (Linux ``VmHWM``, reset before each case, so
  Pillow's C buffers count too) grows by at most a small multiple of that.

Budget: the ``ci`` profile (``make test``) runs a fixed, derandomised set of cases (the same every run);
``make fuzz`` (``DRRN_FUZZ_PROFILE=fuzz``) runs many more random ones and keeps Hypothesis' database of
failures. A crash found becomes a named test in ``tests/test_decoder_fuzz_regressions.py``.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections.abc import Callable
from datetime import timedelta
from functools import cache

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from inference.image_io import Decoded, ImageError, ImageLimits, decode_image
from inference.pipeline import probe

LIMITS = ImageLimits(
    max_upload_bytes=1 << 20, max_input_pixels=1 << 16, max_output_pixels=1 << 18, max_scale=4.0
)
SCALE = 2.0
# Per case: a decode within LIMITS needs a few bytes per pixel (Pillow's image, its tobytes copy, an EXIF
# transpose copy, the planes, 16-bit splits); 64 bytes per allowed pixel is ample, plus 16 MiB for page
# granularity and the interpreter. An image of a bomb header's claimed size would be thousands of times more.
PEAK_KIB = (64 * LIMITS.max_input_pixels + (16 << 20)) // 1024
_HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
settings.register_profile(
    "decoder-ci",
    max_examples=1000,  # per format: 6 formats, 6000 cases, about 15 s on 2 cores
    deadline=timedelta(seconds=2),
    derandomize=True,
    database=None,
    suppress_health_check=_HEALTH,
)
settings.register_profile(
    "decoder-fuzz",
    max_examples=int(os.environ.get("DRRN_FUZZ_EXAMPLES", "20000")),
    deadline=timedelta(seconds=2),
    suppress_health_check=_HEALTH,
)
# Pillow warns (corrupt EXIF, tags past the end, sizes over its own bomb threshold) and carries on; the
# properties below are what matters, so the warnings are not noise for the test report.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::PIL.Image.DecompressionBombWarning")
FUZZ = settings.get_profile(f"decoder-{os.environ.get('DRRN_FUZZ_PROFILE', 'ci')}")


def _noise(w: int, h: int, channels: int, seed: int = 0, dtype: type = np.uint8) -> np.ndarray:
    top = np.iinfo(dtype).max
    arr = np.random.default_rng(seed).integers(0, top, size=(h, w, channels), endpoint=True)
    return arr.astype(dtype)[..., 0] if channels == 1 else arr.astype(dtype)


def _save(image: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **params)
    return buf.getvalue()


@cache
def seeds(fmt: str) -> tuple[bytes, ...]:
    """Small valid files of ``fmt`` covering its common modes and codecs."""
    from inference.png import encode_png16

    rgb, rgba = Image.fromarray(_noise(12, 9, 3)), Image.fromarray(_noise(12, 9, 4, 1))
    grey, pal = Image.fromarray(_noise(12, 9, 1, 2)), rgb.convert("P", palette=Image.Palette.ADAPTIVE)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90
    out: list[bytes] = []
    if fmt == "PNG":
        out += [_save(im, "PNG") for im in (rgb, rgba, grey, grey.convert("1"), grey.convert("LA"))]
        out += [_save(pal, "PNG", transparency=3), _save(rgb, "PNG", exif=exif.tobytes())]
        out += [_save(Image.fromarray(_noise(12, 9, 1, 3, np.uint16)), "PNG")]
        out += [encode_png16(_noise(8, 6, c, 4, np.uint16)) for c in (2, 3, 4)]
    elif fmt == "JPEG":
        out += [_save(rgb, "JPEG"), _save(grey, "JPEG"), _save(rgb, "JPEG", progressive=True)]
        out += [_save(rgb, "JPEG", exif=exif.tobytes()), _save(rgb.convert("CMYK"), "JPEG")]
        out += [_save(rgb, "JPEG", icc_profile=_srgb_icc(), subsampling=0)]
    elif fmt == "WEBP":
        out += [_save(rgb, "WEBP"), _save(rgba, "WEBP", lossless=True), _save(rgb, "WEBP", exif=exif)]
        out += [_save(rgb, "WEBP", save_all=True, append_images=[rgba], duration=10)]
    elif fmt == "GIF":
        out += [_save(pal, "GIF"), _save(pal, "GIF", transparency=0)]
        out += [_save(pal, "GIF", save_all=True, append_images=[grey.convert("P")])]
    elif fmt == "BMP":
        out += [_save(im, "BMP") for im in (rgb, rgba, grey, pal, grey.convert("1"))]
    elif fmt == "TIFF":
        out += [_save(rgb, "TIFF"), _save(rgba, "TIFF", compression="tiff_lzw")]
        out += [_save(grey, "TIFF", compression="tiff_adobe_deflate"), _save(pal, "TIFF")]
        out += [_save(grey.convert("1"), "TIFF", compression="group4"), _save(rgb.convert("CMYK"), "TIFF")]
        out += [_save(Image.fromarray(_noise(12, 9, 1, 5, np.uint16)), "TIFF")]
        out += [_save(grey.convert("F"), "TIFF"), _save(rgb, "TIFF", compression="packbits")]
        out += [_save(rgb, "TIFF", save_all=True, append_images=[grey]), _save(rgb, "TIFF", exif=exif)]
    return tuple(out)


@cache
def _srgb_icc() -> bytes:
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


# --- header fields: where each format stores width and height --------------------------------------


def _png_dims(data: bytearray, w: int, h: int) -> None:
    if data[12:16] == b"IHDR" and len(data) >= 33:  # keep the CRC valid so the reader trusts the header
        data[16:24] = struct.pack(">II", w & 0xFFFFFFFF, h & 0xFFFFFFFF)
        data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))


def _bmp_dims(data: bytearray, w: int, h: int) -> None:
    if len(data) >= 26:
        data[18:26] = struct.pack("<ii", _s32(w), _s32(h))  # signed: negative height means top-down


def _gif_dims(data: bytearray, w: int, h: int) -> None:
    data[6:10] = struct.pack("<HH", w & 0xFFFF, h & 0xFFFF)  # logical screen
    at = data.find(b"\x2c")  # first image descriptor: its own size
    if at > 0 and at + 9 <= len(data):
        data[at + 5 : at + 9] = struct.pack("<HH", w & 0xFFFF, h & 0xFFFF)


def _jpeg_dims(data: bytearray, w: int, h: int) -> None:
    for marker in (b"\xff\xc0", b"\xff\xc1", b"\xff\xc2"):  # start of frame: P, Y, X after the length
        at = data.find(marker)
        if at >= 0 and at + 9 <= len(data):
            data[at + 5 : at + 9] = struct.pack(">HH", h & 0xFFFF, w & 0xFFFF)


def _webp_dims(data: bytearray, w: int, h: int) -> None:
    kind = bytes(data[12:16])
    if kind == b"VP8X" and len(data) >= 30:  # canvas size minus one, 24 bits each
        data[24:30] = ((w - 1) & 0xFFFFFF).to_bytes(3, "little") + ((h - 1) & 0xFFFFFF).to_bytes(3, "little")
    elif kind == b"VP8L" and len(data) >= 25:  # 14 bits each, minus one, after the 0x2f signature
        bits = int.from_bytes(data[21:25], "little") & ~0xFFFFFFF
        data[21:25] = (bits | ((w - 1) & 0x3FFF) | (((h - 1) & 0x3FFF) << 14)).to_bytes(4, "little")
    elif kind == b"VP8 " and len(data) >= 30:  # 14 bits each after the key-frame start code
        data[26:30] = struct.pack("<HH", w & 0x3FFF, h & 0x3FFF)


def _tiff_dims(data: bytearray, w: int, h: int) -> None:
    end = {b"II": "<", b"MM": ">"}.get(bytes(data[:2]))
    if end is None or len(data) < 8:
        return
    (ifd,) = struct.unpack(end + "I", data[4:8])
    if ifd + 2 > len(data):
        return
    (count,) = struct.unpack(end + "H", data[ifd : ifd + 2])
    for i in range(count):
        at = ifd + 2 + 12 * i
        if at + 12 > len(data):
            return
        (tag,) = struct.unpack(end + "H", data[at : at + 2])
        if tag in (256, 257):  # ImageWidth, ImageLength: rewrite as LONG
            value = (w if tag == 256 else h) & 0xFFFFFFFF
            data[at + 2 : at + 12] = struct.pack(end + "HII", 4, 1, value)


def _s32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >= 1 << 31 else v


SET_DIMS: dict[str, Callable[[bytearray, int, int], None]] = {
    "PNG": _png_dims,
    "BMP": _bmp_dims,
    "GIF": _gif_dims,
    "JPEG": _jpeg_dims,
    "WEBP": _webp_dims,
    "TIFF": _tiff_dims,
}
# Zero, tiny, just under/over the test's pixel limit, decompression-bomb sizes, field overflows.
EXTREME = st.sampled_from([0, 1, 2, 255, 256, 257, 4096, 65535, 65536, 50_000, 2**31 - 1, 2**31, 2**32 - 1])
DIMENSION = st.one_of(EXTREME, st.integers(0, 2**32 - 1))


@st.composite
def mutated(draw: st.DrawFn, fmt: str) -> bytes:
    """One of ``fmt``'s seeds with 1-4 mutations applied in turn."""
    data = bytearray(draw(st.sampled_from(seeds(fmt))))
    for _ in range(draw(st.integers(1, 4))):
        n = len(data)
        op = draw(st.sampled_from(["flip", "byte", "truncate", "insert", "duplicate", "drop", "dims"]))
        if op == "dims":
            SET_DIMS[fmt](data, draw(DIMENSION), draw(DIMENSION))
        elif n == 0:
            data += draw(st.binary(min_size=1, max_size=16))
        elif op == "flip":
            at = draw(st.integers(0, n - 1))
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte":
            data[draw(st.integers(0, n - 1))] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFE, 0xFF]))
        elif op == "truncate":
            del data[draw(st.integers(0, n - 1)) :]
        elif op == "insert":
            at = draw(st.integers(0, n))
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        else:  # duplicate or drop a range (a chunk, marker segment, IFD entry... or part of one)
            start = draw(st.integers(0, n - 1))
            stop = draw(st.integers(start + 1, min(n, start + 256)))
            piece = bytes(data[start:stop])
            if op == "drop":
                del data[start:stop]
            else:
                at = draw(st.integers(0, len(data)))
                data[at:at] = piece * draw(st.integers(1, 3))
    return bytes(data)


def probe_and_decode(data: bytes) -> Decoded | None:
    """What the service runs on an upload, up to the decoded planes; None when refused with an
    ImageError (anything else propagates and fails the test). Checks the memory properties."""
    rss_before = _reset_peak_rss()
    try:
        (width, height), _ = probe(data, SCALE, LIMITS)
        decoded = decode_image(data, SCALE, LIMITS)
    except ImageError:
        return None
    if rss_before is not None:
        grown = _peak_rss_kib() - rss_before
        assert grown <= PEAK_KIB, f"peak RSS grew by {grown} KiB decoding {len(data)} bytes"
    h, w = decoded.color.shape[:2]
    assert {w, h} == {width, height} and w * h <= LIMITS.max_input_pixels  # EXIF may swap w and h
    assert decoded.color.dtype in (np.uint8, np.uint16) and decoded.color.ndim in (2, 3)
    assert decoded.color.ndim == 2 or decoded.color.shape[2] == 3
    if decoded.alpha is not None:
        assert decoded.alpha.shape == (h, w) and decoded.alpha.dtype == decoded.color.dtype
    return decoded


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(next(line.split()[1] for line in f if line.startswith(field + ":")))


def _peak_rss_kib() -> int:
    return _status_kib("VmHWM")


def _reset_peak_rss() -> int | None:
    """Reset the process's peak RSS to its current RSS (Linux >= 4.0) and return that, in KiB; None where
    the kernel offers no reset (then the per-case memory check is off; the other checks still run)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_kib("VmRSS")
    except (OSError, StopIteration):
        return None


@pytest.fixture(scope="module")
def warm() -> None:
    """Import every Pillow plugin first: an unidentified file would otherwise import them mid-case."""
    Image.init()


@pytest.mark.parametrize("fmt", list(SET_DIMS))
def test_seeds_are_valid_and_decode(fmt: str, warm: None) -> None:
    """The fuzzing starts from real files: every accepted format's seeds decode, GIF's are refused."""
    results = [probe_and_decode(data) for data in seeds(fmt)]
    assert len(results) >= 2
    if fmt == "GIF":
        assert results == [None] * len(results)
    else:
        assert all(r is not None for r in results)


@pytest.mark.parametrize("fmt", list(SET_DIMS))
def test_mutated_files_raise_only_image_errors_within_limits(fmt: str, warm: None) -> None:
    @FUZZ
    @given(data=mutated(fmt))
    def run(data: bytes) -> None:
        probe_and_decode(data)

    run()
