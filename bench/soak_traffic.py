"""The seeded request mix of ``drrn bench soak``: valid images of every accepted format and mode, malformed
inputs and client aborts, all made in the run (no files).

Each request is drawn from one ``numpy.random.Generator`` seeded with ``(seed, index)``, so a run is
reproducible request by request whatever the order the workers take them in.

- **valid** (93%): output size drawn first, then the input that gives it at the drawn scale. The long
  side is log-uniform in [16, 256] px for most requests and, for ``large_frac`` of the fast model's, in
  [16, sqrt(max_output_pixels)] (up to the output limit; on a CPU most of those are refused by
  deadline-aware admission with 413 or 503, which are correct answers). The aspect ratio is log-uniform in
  [1/2, 2]; scales are 2, 3 or 4 half the time and a real in [1.5, 4] otherwise. ``quality_frac`` of the
  requests go to the quality model (if served) with a long side of at most 64 px: it costs ~13x the fast
  model per pixel. Format and pixel mode: every mode each format can carry (:data:`FORMAT_MODES`).
- **malformed** (5%): a truncated valid file, random bytes, random bytes after a PNG signature, a valid PNG
  sent as ``text/plain``, or a GIF (not an accepted format). Any 4xx is a correct answer.
- **abort** (2%): the client closes the connection mid-upload, while waiting, or after the first response
  bytes (raw sockets, :mod:`bench.soak`). No answer is expected.

Pixels come from one :func:`bench.request_mix.textured_image` per run, tiled and cropped at a drawn offset.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from functools import cache

import numpy as np

from bench.request_mix import textured_image
from imaging.resize import output_shape_for_scale

MALFORMED_FRAC, ABORT_FRAC = 0.05, 0.02
SMALL_MAX_SIDE, QUALITY_MAX_SIDE, MIN_SIDE = 256, 64, 16
# Pillow save format -> pixel modes it writes (and the service decodes); I;16 is 16-bit grey.
FORMAT_MODES = {
    "PNG": ("L", "LA", "RGB", "RGBA", "I;16", "P"),
    "JPEG": ("L", "RGB"),
    "WEBP": ("RGB", "RGBA"),
    "BMP": ("L", "RGB", "RGBA", "P"),
    "TIFF": ("L", "LA", "RGB", "RGBA", "I;16", "P"),
}
MALFORMED_KINDS = ("truncated", "garbage", "garbage_after_png_magic", "wrong_content_type", "gif")
ABORT_KINDS = ("mid_upload", "mid_wait", "mid_response")


@dataclass(frozen=True)
class SoakRequest:
    """One request: body, query, content type, and what a correct answer delivers.

    ``kind`` is ``valid``, ``malformed`` or ``abort``; ``detail`` names the format/mode, malformed kind or
    abort kind; ``out_w``/``out_h`` are the expected output size for ``valid`` (0 otherwise).
    """

    index: int
    kind: str
    detail: str
    model: str
    scale: float
    body: bytes
    content_type: str
    out_w: int = 0
    out_h: int = 0

    @property
    def params(self) -> dict[str, str]:
        return {"scale": f"{self.scale:g}", "model": self.model}


@cache
def _base_texture(seed: int) -> np.ndarray:
    """``uint8[1024, 1024, 3]``, the pixels every request crops from (made once per run)."""
    return textured_image(1024, 1024, seed=seed)


def synth_rgb(width: int, height: int, rng: np.random.Generator, seed: int) -> np.ndarray:
    """``uint8[height, width, 3]``: the base texture tiled to cover the size, cropped at a drawn offset."""
    base = _base_texture(seed)
    bh, bw = base.shape[:2]
    y0, x0 = int(rng.integers(0, bh)), int(rng.integers(0, bw))
    reps = (math.ceil((height + y0) / bh), math.ceil((width + x0) / bw), 1)
    big = np.tile(base, reps) if reps != (1, 1, 1) else base
    return np.ascontiguousarray(big[y0 : y0 + height, x0 : x0 + width])


def encode(rgb: np.ndarray, fmt: str, mode: str) -> bytes:
    """``rgb`` (``uint8[h, w, 3]``) as a ``fmt`` file of pixel ``mode`` (alpha: a diagonal ramp)."""
    from PIL import Image

    im = Image.fromarray(rgb)
    if mode in ("L", "LA", "I;16"):
        im = im.convert("L")
    if mode in ("LA", "RGBA"):
        h, w = rgb.shape[:2]
        ramp = (np.add.outer(np.arange(h), np.arange(w)) * 255 // max(1, h + w - 2)).astype(np.uint8)
        im.putalpha(Image.fromarray(ramp))
    elif mode == "I;16":
        im = Image.fromarray(np.asarray(im).astype(np.uint16) * 257)  # 16-bit grey, full range
    elif mode == "P":  # the web palette without dithering: fast on large images
        im = im.convert("P", dither=Image.Dither.NONE)
    options = {"WEBP": {"method": 0, "quality": 80}, "JPEG": {"quality": 85}}.get(fmt, {})
    buf = io.BytesIO()
    im.save(buf, format=fmt, **options)
    return buf.getvalue()


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _draw_scale(rng: np.random.Generator) -> float:
    if rng.random() < 0.5:
        return float(rng.choice([2.0, 3.0, 4.0]))
    return round(float(rng.uniform(1.5, 4.0)), 2)


def _draw_shape(rng: np.random.Generator, long_side: float, scale: float, max_out_px: int) -> tuple:
    """``(input w, input h, output w, output h)`` whose output has about ``long_side`` px on its long side
    and at most ``max_out_px`` pixels."""
    aspect = _log_uniform(rng, 0.5, 2.0)
    out_w, out_h = (long_side, long_side / aspect) if aspect >= 1 else (long_side * aspect, long_side)
    in_w, in_h = max(1, round(out_w / scale)), max(1, round(out_h / scale))
    while True:
        oh, ow = output_shape_for_scale((in_h, in_w), scale)
        if ow * oh <= max_out_px:
            return in_w, in_h, ow, oh
        in_w, in_h = max(1, in_w - 1), max(1, in_h - 1)


def _valid(i: int, rng: np.random.Generator, seed: int, models: list[str], limits: dict, mix: dict) -> tuple:
    model = "quality" if "quality" in models and rng.random() < mix["quality_frac"] else models[0]
    scale = _draw_scale(rng)
    if model == "quality":
        hi = QUALITY_MAX_SIDE
    elif rng.random() < mix["large_frac"]:
        hi = math.sqrt(limits["max_output_pixels"])
    else:
        hi = SMALL_MAX_SIDE
    hi = min(hi, mix.get("max_side") or hi)
    in_w, in_h, ow, oh = _draw_shape(rng, _log_uniform(rng, MIN_SIDE, hi), scale, limits["max_output_pixels"])
    fmt = str(rng.choice(list(FORMAT_MODES)))
    mode = str(rng.choice(FORMAT_MODES[fmt]))
    body = encode(synth_rgb(in_w, in_h, rng, seed), fmt, mode)
    return model, scale, body, f"{fmt}/{mode}", ow, oh


def _malformed(rng: np.random.Generator, seed: int) -> tuple[str, bytes, str]:
    kind = str(rng.choice(MALFORMED_KINDS))
    w, h = int(rng.integers(8, 96)), int(rng.integers(8, 96))
    if kind == "truncated":
        fmt = str(rng.choice(list(FORMAT_MODES)))
        good = encode(synth_rgb(w, h, rng, seed), fmt, "RGB")
        return f"truncated/{fmt}", good[: max(8, int(len(good) * rng.uniform(0.2, 0.7)))], "image/*"
    if kind == "garbage":
        return kind, rng.bytes(int(rng.integers(1, 4096))), "image/png"
    if kind == "garbage_after_png_magic":
        return kind, b"\x89PNG\r\n\x1a\n" + rng.bytes(int(rng.integers(1, 4096))), "image/png"
    if kind == "wrong_content_type":
        return kind, encode(synth_rgb(w, h, rng, seed), "PNG", "RGB"), "text/plain"
    return kind, encode(synth_rgb(w, h, rng, seed), "GIF", "P"), "image/gif"


def make_request(i: int, seed: int, models: list[str], limits: dict, mix: dict) -> SoakRequest:
    """Request number ``i`` of the run seeded ``seed``; ``models`` lists the served names (default first),
    ``limits`` is ``GET /v1/model``'s ``limits``, ``mix`` holds ``large_frac``, ``quality_frac`` and an
    optional ``max_side`` (px) cap on every output's long side."""
    rng = np.random.default_rng([seed, i])
    u = rng.random()
    if u < MALFORMED_FRAC:
        detail, body, ctype = _malformed(rng, seed)
        return SoakRequest(i, "malformed", detail, models[0], 2.0, body, ctype)
    model, scale, body, fmt_mode, ow, oh = _valid(i, rng, seed, models, limits, mix)
    if u < MALFORMED_FRAC + ABORT_FRAC:
        detail = str(rng.choice(ABORT_KINDS))
        return SoakRequest(i, "abort", detail, model, scale, body, "application/octet-stream", ow, oh)
    return SoakRequest(i, "valid", fmt_mode, model, scale, body, "application/octet-stream", ow, oh)
