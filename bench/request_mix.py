"""The benchmarks' request mix: the images ``bench.loadgen`` sends to ``POST /upscale``, as RGB PNGs.

Each worker cycles through the mix from its own offset, so every level sends the same proportions: a 64x64
and a 128x128 crop at x2 and x4, and a 480x320 photo at x2. Crops come from Set5 butterfly and the photo
from Set5 baby when ``drrn.paths.datasets_dir()/Set5`` exists (read in place, never copied); otherwise they
are synthetic textured images of the same sizes.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

import numpy as np

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# (name, crop width, crop height, scale, Set5 source)
MIX_SPEC = (
    ("crop64_x2", 64, 64, 2.0, "butterfly"),
    ("crop64_x4", 64, 64, 4.0, "butterfly"),
    ("crop128_x2", 128, 128, 2.0, "butterfly"),
    ("crop128_x4", 128, 128, 4.0, "butterfly"),
    ("photo480x320_x2", 480, 320, 2.0, "baby"),
)


@dataclass(frozen=True)
class Req:
    """One request of the mix: PNG body, scale, and what a correct answer delivers."""

    name: str
    body: bytes
    scale: float
    out_w: int
    out_h: int
    tiles: int  # engine tiles the service cuts it into (for the engine comparison)
    source: str
    tile_hw: tuple[int, int] = (0, 0)  # the shape of those tiles (all of a request's tiles have one)


def textured_image(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A synthetic RGB ``uint8[h, w, 3]`` with gratings, rings, blocky edges and noise (not flat, not pure
    noise: bicubic and the model both do real work on it)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = np.hypot(x - width / 2, y - height / 2)
    blocks = ((x // 16 + y // 16) % 2) * 0.15
    chans = []
    for c in range(3):
        v = 0.45 + 0.2 * np.sin(x / (5 + 2 * c) + y / 11) + 0.12 * np.sin(r / (4 + c)) + blocks
        chans.append(v + rng.normal(0, 0.04, size=v.shape))
    return (np.clip(np.stack(chans, axis=-1), 0, 1) * 255).round().astype(np.uint8)


def _crop(source: str, w: int, h: int) -> tuple[np.ndarray, str]:
    from PIL import Image

    from drrn.paths import datasets_dir

    path = datasets_dir() / "Set5" / f"{source}.png"
    if path.is_file():
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"))
        if arr.shape[0] >= h and arr.shape[1] >= w:
            y0, x0 = (arr.shape[0] - h) // 2, (arr.shape[1] - w) // 2
            return np.ascontiguousarray(arr[y0 : y0 + h, x0 : x0 + w]), f"Set5/{source}.png center crop"
    return textured_image(w, h, seed=w * 1000 + h), "synthetic textured"


def png_bytes(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def build_mix(tile: int, margin: int, shape: str = "fit") -> list[Req]:
    """The request mix, with output size, tile count and tile shape computed as the service will (pass the
    ``tile_shape`` it reports under ``serving``: ``fit`` on the CPU, ``uniform`` on CUDA)."""
    from imaging.resize import output_shape_for_scale
    from imaging.tiling import plan_tiles

    mix = []
    for name, w, h, scale, source in MIX_SPEC:
        rgb, origin = _crop(source, w, h)
        oh, ow = output_shape_for_scale((h, w), scale)
        plan = plan_tiles(oh, ow, tile, margin, shape)
        mix.append(Req(name, png_bytes(rgb), scale, ow, oh, len(plan), origin, plan.tile_shape))
    return mix


def png_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` from a PNG's IHDR, or None if ``data`` is not a PNG."""
    if len(data) < 24 or not data.startswith(PNG_SIGNATURE):
        return None
    return struct.unpack(">II", data[16:24])
