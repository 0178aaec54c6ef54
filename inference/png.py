"""PNG output for the service, and exact reading of 16-bit colour PNGs, which Pillow cannot represent.

:func:`encode_png` writes the service's results: 8-bit through Pillow, 16-bit through :func:`encode_png16`.

Pillow (checked on 13.0) opens a 48-bit RGB PNG as mode ``RGB`` and a 64-bit RGBA or 32-bit grey+alpha
PNG as ``RGBA``, keeping only the **high byte** of every sample (truncation, not rounding): it has no
16-bit multi-channel mode, so it can neither give us those samples nor save them. (16-bit grey is fine:
mode ``I;16``.)

Reading: Pillow's PNG decoder still does all the hard work (inflate, the five row filters, Adam7
interlacing); only its final "unpack" step drops the low byte. That step is chosen by the tile's raw
mode, so the image is decoded twice with raw modes that have the same bytes per pixel (so the row
filters are undone identically) but pick different bytes: ``RGB;16B`` keeps bytes 0, 2, 4 of each
big-endian pixel (the high bytes) and ``RGB;16L`` keeps bytes 1, 3, 5 (the low bytes). Grey+alpha
(4 bytes per pixel) needs one decode with raw mode ``RGBA``, which keeps all four bytes. No filter or
interlace code is re-implemented here. :func:`wide_rawmodes` only offers the trick when Pillow's tile is
exactly what this relies on; otherwise callers fall back to Pillow's 8-bit decode.

Writing: :func:`encode_png16` is a minimal PNG writer (IHDR, optional iCCP, IDAT with the "Up" filter,
IEND) for ``uint16`` grey, grey+alpha, RGB and RGBA.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

__all__ = ["PNG_COMPRESS_LEVEL", "encode_png", "encode_png16", "join_wide", "png_header", "wide_rawmodes"]

# zlib level for output PNGs. Levels 1-3 are several times faster than Pillow's default (6) on large
# super-resolved images for files only a few percent bigger; encode time is on the request's critical path.
PNG_COMPRESS_LEVEL = 2

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# PNG colour type -> (the raw mode Pillow 13 uses for 16-bit samples, raw modes we decode with).
_WIDE = {
    2: ("RGB;16B", ("RGB;16B", "RGB;16L")),  # RGB: high bytes, then low bytes
    6: ("RGBA;16B", ("RGBA;16B", "RGBA;16L")),  # RGBA: high bytes, then low bytes
    4: ("LA;16B", ("RGBA",)),  # grey+alpha: all 4 bytes (L hi, L lo, A hi, A lo) in one decode
}
_COLOR_TYPE = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> PNG colour type (grey, grey+alpha, RGB, RGBA)
_IDAT_CHUNK = 1 << 20  # split IDAT like other encoders do; readers stream them anyway


def png_header(data: bytes) -> tuple[int, int, int, int] | None:
    """``(width, height, bit_depth, color_type)`` from a PNG's IHDR, or None if ``data`` is not a PNG."""
    if len(data) < 33 or data[:8] != _SIGNATURE or data[12:16] != b"IHDR":
        return None
    width, height, depth, color_type = struct.unpack(">IIBB", data[16:26])
    return width, height, depth, color_type


def wide_rawmodes(data: bytes, tile: object) -> tuple[str, ...] | None:
    """Raw modes that recover every bit of a 16-bit colour PNG, or None when the trick does not apply.

    Args:
        data: the PNG file.
        tile: ``image.tile`` of the freshly opened Pillow image.

    None means: not a 16-bit colour PNG, or Pillow's tile is not the single ``zip`` tile with the raw
    mode this module was written against (a future Pillow may decode these natively).
    """
    header = png_header(data)
    if header is None or header[2] != 16 or header[3] not in _WIDE:
        return None
    expected, rawmodes = _WIDE[header[3]]
    if not isinstance(tile, list) or len(tile) != 1:
        return None
    first = tile[0]
    if getattr(first, "codec_name", None) != "zip" or getattr(first, "args", None) != expected:
        return None
    return rawmodes


def join_wide(parts: list[np.ndarray], color_type: int) -> np.ndarray:
    """Combine the uint8 arrays decoded with :func:`wide_rawmodes`' raw modes into ``uint16[H, W, C]``.

    Returns C = 3 (RGB), 4 (RGBA) or 2 (grey, alpha), samples 0..65535.
    """
    if color_type == 4:
        (raw,) = parts
        raw = raw.astype(np.uint16)
        return np.stack([(raw[..., 0] << 8) | raw[..., 1], (raw[..., 2] << 8) | raw[..., 3]], axis=-1)
    high, low = parts
    return (high.astype(np.uint16) << 8) | low.astype(np.uint16)


def _chunk(kind: bytes, payload: bytes | memoryview) -> bytes:
    crc = zlib.crc32(payload, zlib.crc32(kind))
    return struct.pack(">I", len(payload)) + kind + bytes(payload) + struct.pack(">I", crc)


def encode_png16(
    pixels: np.ndarray, icc_profile: bytes | None = None, compress_level: int = PNG_COMPRESS_LEVEL
) -> bytes:
    """A 16-bit PNG of ``pixels``.

    Args:
        pixels: ``uint16[H, W]`` (grey) or ``uint16[H, W, C]`` with C = 1 (grey), 2 (grey, alpha),
            3 (RGB) or 4 (RGBA); non-interlaced output.
        icc_profile: ICC profile bytes to embed as an ``iCCP`` chunk, or None.
        compress_level: zlib level 0-9.
    """
    arr = np.asarray(pixels)
    if arr.dtype != np.uint16:
        raise TypeError(f"expected uint16 pixels, got {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[2] not in _COLOR_TYPE or min(arr.shape[:2]) < 1:
        raise ValueError(f"expected HxW or HxWxC (C in 1..4) pixels, got shape {arr.shape}")
    height, width, channels = arr.shape
    # Rows of big-endian bytes; each filtered with "Up" (byte minus the byte above, mod 256), which is
    # vectorisable and compresses smooth photographic 16-bit data far better than no filter.
    raw = arr.astype(">u2").reshape(height, width * channels).view(np.uint8)
    rows = np.empty((height, 1 + raw.shape[1]), dtype=np.uint8)
    rows[:, 0] = 2  # filter type Up; on the first row "above" is zero, so it stores the row as is
    rows[0, 1:] = raw[0]
    np.subtract(raw[1:], raw[:-1], out=rows[1:, 1:])  # uint8 arithmetic wraps mod 256, as PNG wants
    compressed = zlib.compress(memoryview(rows).cast("B"), compress_level)
    ihdr = struct.pack(">IIBBBBB", width, height, 16, _COLOR_TYPE[channels], 0, 0, 0)
    out = [_SIGNATURE, _chunk(b"IHDR", ihdr)]
    if icc_profile:
        # iCCP: profile name, NUL, compression method 0 (zlib), compressed profile.
        out.append(_chunk(b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(icc_profile)))
    view = memoryview(compressed)
    out.extend(_chunk(b"IDAT", view[i : i + _IDAT_CHUNK]) for i in range(0, len(view), _IDAT_CHUNK))
    out.append(_chunk(b"IEND", b""))
    return b"".join(out)


def _icc_matches(icc: bytes, channels: int) -> bool:
    # ICC header bytes 16..20 name the profile's colour space. PNG requires a GRAY profile for grey
    # images and an RGB one for colour; a CMYK profile from a converted JPEG would now be wrong, so drop it.
    space = icc[16:20] if len(icc) >= 128 else b""
    return space == (b"GRAY" if channels <= 2 else b"RGB ")


def encode_png(pixels: np.ndarray, icc_profile: bytes | None = None) -> bytes:
    """PNG of ``uint8``/``uint16[H, W]`` or ``[H, W, C]`` (C: 1 grey, 2 grey+alpha, 3 RGB, 4 RGBA).

    8-bit goes through Pillow; 16-bit through :func:`encode_png16` (Pillow has no 16-bit
    colour modes), grey included so all 16-bit output takes one path. ``icc_profile`` is embedded when
    its colour space matches the output (RGB for colour, GRAY for grey), dropped otherwise.
    """
    arr = pixels if pixels.ndim == 3 else pixels[..., None]
    icc = icc_profile if icc_profile and _icc_matches(icc_profile, arr.shape[2]) else None
    if arr.dtype == np.uint16:
        return encode_png16(arr, icc, PNG_COMPRESS_LEVEL)
    image = Image.fromarray(np.ascontiguousarray(arr[..., 0] if arr.shape[2] == 1 else arr))
    buf = io.BytesIO()
    params: dict = {"compress_level": PNG_COMPRESS_LEVEL}
    if icc:
        params["icc_profile"] = icc
    image.save(buf, format="PNG", **params)
    return buf.getvalue()
