"""Decode and validate uploaded images (numpy + Pillow; no torch). Output encoding is :mod:`inference.png`.

Every problem a client can cause becomes an :class:`ImageError` carrying an HTTP status, a stable code and
a JSON-able body; nothing here raises anything else for bad input.

Limits are checked from the header, before any pixel is decoded: Pillow's ``Image.open`` is lazy (it reads
size, mode and format only), so a few-KB PNG claiming 50000x50000 is refused without allocating. Pixel
counts do not depend on EXIF orientation (a rotation swaps w and h), so no metadata needs decoding first.

Accepted: JPEG, PNG, WebP, BMP, TIFF (the first frame of multi-frame files). Pixel modes become:

* ``1``/``L``/``F`` -> grey (output ``L``); ``LA``/``La``, or ``L`` with a tRNS key -> grey + alpha (``LA``);
* ``I;16*``/``I`` (16-bit grey) -> 16-bit grey, + alpha if a tRNS key is present (16-bit output);
* ``RGB`` -> RGB; ``RGBA``/``RGBa``/``PA``, or ``P``/``RGB`` with tRNS -> RGB + alpha (``RGBA``);
* 16-bit RGB, RGBA and grey+alpha PNG -> their exact 16-bit samples (see :mod:`inference.png`);
* anything else (CMYK, YCbCr, opaque ``P``, ...) -> Pillow's ``convert("RGB")``.

Known limitation: 16-bit *colour* in non-PNG files (e.g. 48-bit TIFF) goes through Pillow's 8-bit decode.
"""

from __future__ import annotations

import contextlib
import io
import struct
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from imaging.resize import output_shape_for_scale
from inference import png
from inference.image_limits import ImageError, ImageLimits, check_upload_size, limit_body

__all__ = ["ACCEPTED_FORMATS", "Decoded", "decode_image", "probe_image"]

ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF")

# Exceptions Pillow's plugins and decoders raise on malformed data (OSError covers "image file is
# truncated" and zlib/decoder errors; the rest come from header parsing of individual formats).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, KeyError, struct.error)
_WIDE_GREY = {"I;16", "I;16L", "I;16B", "I;16N", "I"}
# Magic numbers, only to word errors: an accepted signature Pillow cannot parse is a corrupt file (400),
# a known other format is "unsupported" by name (415).
_ACCEPTED_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM", b"II*\x00", b"MM\x00*")
_OTHER_MAGIC = {b"GIF87a": "GIF", b"GIF89a": "GIF", b"%PDF": "PDF", b"\x00\x00\x01\x00": "ICO"}
_ACCEPTED_TEXT = "JPEG, PNG, WebP, BMP or TIFF"


@dataclass(frozen=True)
class Decoded:
    """A decoded, upright image.

    Attributes:
        color: ``uint8`` or ``uint16`` samples, ``[H, W]`` (grey) or ``[H, W, 3]`` (RGB).
        alpha: same dtype, ``[H, W]``, or None when the image is opaque by construction.
        icc_profile: the input's embedded ICC profile bytes, or None.
    """

    color: np.ndarray
    alpha: np.ndarray | None
    icc_profile: bytes | None

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)``."""
        return self.color.shape[1], self.color.shape[0]

    @property
    def max_value(self) -> int:
        """255 or 65535: the sample value meaning 1.0."""
        return int(np.iinfo(self.color.dtype).max)


def _corrupt(reason: object) -> ImageError:
    return ImageError(400, "corrupt_image", f"the image could not be decoded ({reason})")


def _too_large(pixels: int | None, limits: ImageLimits) -> ImageError:
    got = f"{pixels} pixels" if pixels is not None else "the image"
    return ImageError(
        413,
        "input_too_large",
        f"{got} exceeds the input limit of {limits.max_input_pixels} pixels",
        limit_body("max_input_pixels", limits),
    )


def _unidentified(data: bytes) -> ImageError:
    if data.startswith(_ACCEPTED_MAGIC) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP"):
        return _corrupt("malformed or truncated header")
    for magic, name in _OTHER_MAGIC.items():
        if data.startswith(magic):
            return ImageError(415, "unsupported_format", f"{name} is not supported; send {_ACCEPTED_TEXT}")
    return ImageError(415, "unsupported_format", f"not a recognised image; send {_ACCEPTED_TEXT}")


def _check_bmp_palette(data: bytes) -> None:
    """A paletted BMP (1-8 bits) may list at most 2**bits colours. Pillow accepts up to 65536 for any
    depth and scans them in a Python loop: a 100-byte file would cost ~0.1 s of CPU per open (and decode
    with a palette read past the end of the file), so such a header is refused as corrupt up front."""
    if data[:2] != b"BM" or len(data) < 50 or struct.unpack("<I", data[14:18])[0] < 40:
        return
    bits, colors = struct.unpack("<H", data[28:30])[0], struct.unpack("<I", data[46:50])[0]
    if bits in (1, 2, 4, 8) and colors > 1 << bits:
        raise _corrupt(f"a {bits}-bit BMP with a palette of {colors} colours")


def _open(data: bytes, limits: ImageLimits) -> Image.Image:
    """Lazily open ``data`` (header only); map every failure to an :class:`ImageError`."""
    _check_bmp_palette(data)
    try:
        return Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # Pillow's own guard (beyond Image.MAX_IMAGE_PIXELS, a global we leave alone) fires inside open();
        # the warning only arrives as an exception if a warnings filter made it one. Either way: too large.
        header = png.png_header(data)
        raise _too_large(header[0] * header[1] if header else None, limits) from None
    except UnidentifiedImageError:
        raise _unidentified(data) from None
    except _DECODE_ERRORS as exc:
        raise _corrupt(exc) from None


def _check_pixels(size: tuple[int, int], scale: float, limits: ImageLimits) -> None:
    width, height = size
    if width < 1 or height < 1:
        raise _corrupt(f"empty image {width}x{height}")
    if width * height > limits.max_input_pixels:
        raise _too_large(width * height, limits)
    out_h, out_w = output_shape_for_scale((height, width), scale)
    if out_w * out_h > limits.max_output_pixels:
        # 422, not 413: the upload itself is acceptable; the requested scale is what is too big for it.
        raise ImageError(
            422,
            "output_too_large",
            f"{width}x{height} at scale {scale:g} gives {out_w}x{out_h} = {out_w * out_h} pixels, over "
            f"the output limit of {limits.max_output_pixels} pixels",
            limit_body("max_output_pixels", limits),
        )


def _load_upright(image: Image.Image, limits: ImageLimits) -> None:
    """Decode the pixels (first frame) and apply EXIF orientation, in place."""
    try:
        image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _too_large(None, limits) from None
    except (*_DECODE_ERRORS, zlib.error) as exc:
        raise _corrupt(exc) from None
    # Unparseable EXIF loses only the orientation hint; the pixels are fine, so serve them as stored.
    # in_place keeps mode, palette and info (transparency) exactly as decoded.
    with contextlib.suppress(*_DECODE_ERRORS):
        ImageOps.exif_transpose(image, in_place=True)


def _convert(image: Image.Image, mode: str) -> np.ndarray:
    try:
        return np.asarray(image if image.mode == mode else image.convert(mode))
    except (ValueError, OSError) as exc:
        detail = f"pixel mode {image.mode} is not supported ({exc})"
        raise ImageError(415, "unsupported_format", detail) from None


def _planes(image: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """Normalise a loaded Pillow image to (colour, alpha) uint8/uint16 planes (see the module docstring)."""
    mode = image.mode
    key = image.info.get("transparency")
    if mode in _WIDE_GREY:
        grey = np.clip(np.asarray(image), 0, 65535).astype(np.uint16)
        alpha = None
        if isinstance(key, int):  # tRNS on 16-bit grey: that exact value is fully transparent
            alpha = np.where(grey == key, 0, 65535).astype(np.uint16)
        return grey, alpha
    if mode in ("1", "L", "F") and key is None:  # F (float grey TIFF): Pillow clips to 0..255
        return _convert(image, "L"), None
    if mode in ("1", "L", "LA", "La"):
        grey_alpha = _convert(image, "LA")
        return grey_alpha[..., 0], grey_alpha[..., 1]
    if mode == "RGB" and key is None:
        return _convert(image, "RGB"), None
    if mode in ("RGBA", "RGBa", "PA", "RGB") or (mode == "P" and key is not None):
        rgba = _convert(image, "RGBA")
        return rgba[..., :3], rgba[..., 3]
    return _convert(image, "RGB"), None


def _decode_wide_png(data: bytes, rawmodes: tuple[str, ...], limits: ImageLimits) -> Decoded:
    """Exact 16-bit decode of a colour PNG via :mod:`inference.png` (one Pillow decode per raw mode)."""
    parts, info = [], {}
    for rawmode in rawmodes:
        with _open(data, limits) as part:
            part.tile = [part.tile[0]._replace(args=rawmode)]
            _load_upright(part, limits)
            parts.append(np.asarray(part))
            info = part.info
    color_type = png.png_header(data)[3]
    samples = png.join_wide(parts, color_type)
    if color_type == 4:
        return Decoded(samples[..., 0], samples[..., 1], info.get("icc_profile"))
    if color_type == 6:
        return Decoded(samples[..., :3], samples[..., 3], info.get("icc_profile"))
    key = info.get("transparency")
    alpha = None
    if isinstance(key, tuple) and len(key) == 3:  # tRNS colour key, in 16-bit sample values
        alpha = np.where(np.all(samples == np.array(key, np.uint16), axis=-1), 0, 65535).astype(np.uint16)
    return Decoded(samples, alpha, info.get("icc_profile"))


def _check_body(data: bytes, limits: ImageLimits) -> None:
    check_upload_size(len(data), limits)
    if not data:
        raise ImageError(400, "empty_body", f"the request body is empty; send a {_ACCEPTED_TEXT} image")


def probe_image(data: bytes, scale: float, limits: ImageLimits) -> tuple[int, int]:
    """``(width, height)`` of ``data`` as stored, from its header only (no pixel is decoded), after the
    same format and limit checks as :func:`decode_image`.

    EXIF orientation is not applied (that would need the metadata decoded): a 90-degree rotation swaps
    width and height, which changes neither pixel counts nor tile counts.

    Raises:
        ImageError: as :func:`decode_image` does for anything detectable from the header.
    """
    _check_body(data, limits)
    with _open(data, limits) as image:
        _check_pixels(image.size, scale, limits)
        return image.size


def decode_image(data: bytes, scale: float, limits: ImageLimits) -> Decoded:
    """Validate and decode an upload.

    Args:
        data: the file's bytes.
        scale: the (already validated) scale factor, to check the output size before decoding.
        limits: the limits to enforce.

    Returns:
        The upright image as integer planes (:class:`Decoded`).

    Raises:
        ImageError: 400 ``empty_body``/``corrupt_image``, 413 ``upload_too_large``/``input_too_large``,
            415 ``unsupported_format``, 422 ``output_too_large``.
    """
    _check_body(data, limits)
    with _open(data, limits) as image:
        _check_pixels(image.size, scale, limits)
        rawmodes = png.wide_rawmodes(data, image.tile) if image.format == "PNG" else None
        if rawmodes is not None:
            return _decode_wide_png(data, rawmodes, limits)
        _load_upright(image, limits)
        color, alpha = _planes(image)
        return Decoded(color, alpha, image.info.get("icc_profile"))
