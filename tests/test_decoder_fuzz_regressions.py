"""Inputs the decoder fuzzing (``tests/test_decoder_fuzz.py``, ``make fuzz``) found or aimed at, kept as
named tests with their outcome pinned: the pipeline's own :class:`ImageError` with a stable code, or a
correct decode. Each file is generated deterministically here from a small valid seed."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from PIL import Image

from inference.image_io import decode_image
from inference.image_limits import ImageError, ImageLimits
from inference.pipeline import probe
from tests.test_decoder_fuzz_formats import SET_DIMS, chunks, png_bomb_chunks, seeds

LIMITS = ImageLimits(max_upload_bytes=1 << 20, max_input_pixels=1 << 16, max_output_pixels=1 << 18)


def _refusal(data: bytes) -> ImageError:
    with pytest.raises(ImageError) as caught:
        probe(data, 2.0, LIMITS)
    with pytest.raises(ImageError) as again:
        decode_image(data, 2.0, LIMITS)
    assert (again.value.status, again.value.code) == (caught.value.status, caught.value.code)
    return caught.value


def _one_bit_bmp(colors: int) -> bytes:
    grey = (np.indices((9, 12)).sum(axis=0) % 2 * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(grey).convert("1").save(buf, format="BMP")
    data = bytearray(buf.getvalue())
    data[46:50] = struct.pack("<I", colors)  # BITMAPINFOHEADER biClrUsed
    return bytes(data)


def test_bmp_palette_larger_than_its_bit_depth_is_refused_as_corrupt() -> None:
    """Found by ``make fuzz`` (a duplicated header range put 25165 in a 1-bit BMP's colour count): Pillow
    accepted it, scanned the 65536-entry maximum in a Python loop on every open, and decoded with a
    palette read past the end of the file. Now refused before Pillow parses it."""
    err = _refusal(_one_bit_bmp(65536))
    assert (err.status, err.code) == (400, "corrupt_image") and "65536 colours" in err.detail
    # The same file with an honest colour count still decodes, to its two grey levels.
    decoded = decode_image(_one_bit_bmp(2), 2.0, LIMITS)
    assert decoded.size == (12, 9) and set(np.unique(decoded.color)) == {0, 255}


@pytest.mark.parametrize("chunk", [0, 1], ids=["zTXt", "iCCP"])
def test_png_zlib_bomb_in_an_ancillary_chunk_is_refused_without_inflating_it(chunk: int) -> None:
    """64 MiB of zeros deflated into a text or ICC chunk: Pillow stops inflating at its 1 MiB text-chunk
    cap, so the upload is refused as corrupt (400) instead of expanded."""
    png = seeds("PNG")[0]
    at = chunks("PNG", png)[0][1]  # right after IHDR
    err = _refusal(png[:at] + png_bomb_chunks()[chunk] + png[at:])
    assert (err.status, err.code) == (400, "corrupt_image")


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "GIF", "JPEG", "WEBP", "TIFF"])
def test_header_claiming_50000_by_50000_is_refused_from_the_header(fmt: str) -> None:
    """The decompression-bomb shape in every format's own header fields: 413 naming the pixel limit for
    the accepted formats (GIF: 415 whatever its size), never a decode. (Lossy WebP stores 14 bits per
    side, so it claims 848x848 here: still over the limit.)"""
    data = bytearray(seeds(fmt)[0])
    SET_DIMS[fmt](data, 50_000, 50_000)
    err = _refusal(bytes(data))
    if fmt == "GIF":
        assert (err.status, err.code) == (415, "unsupported_format")
    else:
        assert (err.status, err.code) == (413, "input_too_large")
        assert err.limit == {"name": "max_input_pixels", "value": LIMITS.max_input_pixels}
