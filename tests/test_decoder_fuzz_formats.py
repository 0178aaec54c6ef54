"""The file formats the decoder fuzzing (``tests/test_decoder_fuzz.py``) starts from and mutates: small
valid seed files made with Pillow, where each format keeps its width and height, and how each splits into
chunks/segments. The tests here check that tooling against Pillow itself, so a fuzzing run that "passes"
cannot be one whose mutations never reach the real header fields or chunk boundaries.
"""

from __future__ import annotations

import io
import itertools
import struct
import zlib
from collections.abc import Callable
from functools import cache

import numpy as np
import pytest
from PIL import Image


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
        out += [_save(rgb.convert(m), "TIFF") for m in ("YCbCr", "LAB", "I")] + [
            _save(rgba.convert("PA"), "TIFF")
        ]
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


# --- chunks: the units a structure-aware mutation duplicates, drops or moves ------------------------


def _png_chunks(data: bytes) -> list[tuple[int, int]]:
    spans, at = [], 8
    while at + 12 <= len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        end = min(len(data), at + 12 + length)
        spans.append((at, end))
        at = end
    return spans


def _jpeg_segments(data: bytes) -> list[tuple[int, int]]:
    """Marker segments after SOI, up to and including SOS (the entropy-coded data follows it)."""
    spans, at = [], 2
    while at + 4 <= len(data) and data[at] == 0xFF:
        (length,) = struct.unpack(">H", data[at + 2 : at + 4])
        end = min(len(data), at + 2 + length)
        spans.append((at, end))
        if data[at + 1] == 0xDA:  # start of scan
            break
        at = end
    return spans


def _riff_chunks(data: bytes) -> list[tuple[int, int]]:
    spans, at = [], 12
    while at + 8 <= len(data):
        (length,) = struct.unpack("<I", data[at + 4 : at + 8])
        end = min(len(data), at + 8 + length + (length & 1))
        spans.append((at, end))
        at = end
    return spans


def chunks(fmt: str, data: bytes) -> list[tuple[int, int]]:
    """``(start, stop)`` of each chunk (PNG), marker segment (JPEG) or RIFF chunk (WebP); [] for formats
    without such a structure (BMP, GIF, TIFF: byte-range mutations cover those)."""
    split = {"PNG": _png_chunks, "JPEG": _jpeg_segments, "WEBP": _riff_chunks}.get(fmt)
    return split(data) if split else []


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    """A PNG chunk with a valid CRC (so Pillow parses it rather than rejecting it early)."""
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


@cache
def png_bomb_chunks() -> tuple[bytes, ...]:
    """Ancillary chunks whose zlib payload inflates to 64 MiB: text and ICC profile decompression bombs."""
    bomb = zlib.compress(b"\0" * (64 << 20), 9)
    return (png_chunk(b"zTXt", b"k\0\0" + bomb), png_chunk(b"iCCP", b"icc\0\0" + bomb))


# --- the tooling, checked against Pillow ----------------------------------------------------------


@pytest.mark.parametrize("fmt", list(SET_DIMS))
def test_every_format_has_seeds_pillow_reads(fmt: str) -> None:
    sizes = {Image.open(io.BytesIO(data)).size for data in seeds(fmt)}
    assert len(seeds(fmt)) >= 3 and sizes <= {(12, 9), (9, 12), (8, 6)}  # 9x12: a TIFF's EXIF


@pytest.mark.parametrize("fmt", list(SET_DIMS))
def test_dimension_setters_write_the_fields_pillow_reads(fmt: str) -> None:
    """For each format, at least the first seed reports exactly the size written into its header."""
    data = bytearray(seeds(fmt)[0])
    SET_DIMS[fmt](data, 300, 200)
    assert Image.open(io.BytesIO(bytes(data))).size == (300, 200)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_chunks_tile_the_file_from_the_first_chunk(fmt: str) -> None:
    for data in seeds(fmt):
        spans = chunks(fmt, data)
        assert spans and all(a[1] == b[0] for a, b in itertools.pairwise(spans))
        last = spans[-1]
        if fmt == "JPEG":  # segments end at start-of-scan; the entropy-coded data follows
            assert data[last[0] : last[0] + 2] == b"\xff\xda"
        else:
            assert last[1] == len(data)
    png = seeds("PNG")[0]
    kinds = [png[a + 4 : a + 8] for a, _ in chunks("PNG", png)]
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND" and b"IDAT" in kinds
