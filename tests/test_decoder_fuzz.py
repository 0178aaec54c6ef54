"""The decoders, fuzzed: mutated image files through the upload path's probe + decode.

Seeds are small valid PNG, JPEG, WebP, GIF, BMP and TIFF files made here with Pillow (several modes and
codecs each). Hypothesis mutates them (bit flips, byte overwrites, truncation, inserted bytes, duplicated
or dropped byte ranges and chunks/segments, extreme width/height written into the real header fields)
and feeds each result to what ``Upscaler`` runs on an upload: :func:`inference.pipeline.probe` (header
only) then :func:`inference.image_io.decode_image`. Properties, per case:

* the only exception is the pipeline's own :class:`~inference.image_limits.ImageError`;
* a Hypothesis deadline bounds its time (generous: a decode within the test's limits takes milliseconds);
* memory stays within the limits: the decoded planes are the probed size, at most ``max_input_pixels``,
  and the process's peak resident memory during the case (Linux ``VmHWM``, reset before each case, so
  Pillow's C buffers count too) grows by at most a small multiple of that.

Budget: the ``ci`` profile (``make test``) runs a fixed, derandomised set of cases (the same every run);
``make fuzz`` (``DRRN_FUZZ_PROFILE=fuzz``) runs many more random ones and keeps Hypothesis' database of
failures. A crash found becomes a named test in ``tests/test_decoder_fuzz_regressions.py``.
"""

from __future__ import annotations

import os
from datetime import timedelta

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from inference.image_io import Decoded, decode_image
from inference.image_limits import ImageError, ImageLimits
from inference.pipeline import probe
from tests.test_decoder_fuzz_formats import SET_DIMS, chunks, png_bomb_chunks, seeds

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
    max_examples=500,  # per format: 6 formats, 3000 cases, 10-20 s on 2 cores
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


# Zero, tiny, just under/over the test's pixel limit, decompression-bomb sizes, field overflows.
EXTREME = st.sampled_from([0, 1, 2, 255, 256, 257, 4096, 65535, 65536, 50_000, 2**31 - 1, 2**31, 2**32 - 1])
DIMENSION = st.one_of(EXTREME, st.integers(0, 2**32 - 1))


OPS = ["flip", "byte", "truncate", "insert", "duplicate", "drop", "dims", "chunk", "bomb"]


def _mutate_chunk(draw: st.DrawFn, data: bytearray, fmt: str) -> None:
    """Duplicate, drop or move one whole chunk/segment (a byte range where the format has none)."""
    spans = chunks(fmt, bytes(data)) or [(a, min(len(data), a + 64)) for a in range(0, len(data), 64)]
    start, stop = draw(st.sampled_from(spans))
    piece = bytes(data[start:stop])
    action = draw(st.sampled_from(["duplicate", "drop", "move"]))
    if action != "duplicate":
        del data[start:stop]
    if action != "drop":
        at = draw(st.sampled_from([a for a, _ in chunks(fmt, bytes(data))] or [0, len(data)]))
        data[at:at] = piece * (draw(st.integers(1, 3)) if action == "duplicate" else 1)


@st.composite
def mutated(draw: st.DrawFn, fmt: str) -> bytes:
    """One of ``fmt``'s seeds with 1-4 mutations applied in turn."""
    data = bytearray(draw(st.sampled_from(seeds(fmt))))
    for _ in range(draw(st.integers(1, 4))):
        n = len(data)
        op = draw(st.sampled_from(OPS))
        if op == "dims":
            SET_DIMS[fmt](data, draw(DIMENSION), draw(DIMENSION))
        elif n == 0:
            data += draw(st.binary(min_size=1, max_size=16))
        elif op == "chunk":
            _mutate_chunk(draw, data, fmt)
        elif op == "bomb":  # a zlib bomb in an ancillary chunk, right after the header chunk
            at = chunks("PNG", bytes(data))[0][1] if fmt == "PNG" and chunks("PNG", bytes(data)) else n
            data[at:at] = draw(st.sampled_from(png_bomb_chunks()))
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
        else:  # duplicate or drop any byte range (part of a chunk, an IFD entry, a palette...)
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
