"""What the service tests share: the real app over httpx's ASGI transport, on the tiny exported model.

Timing-sensitive scenarios (warmup, cross-request batching, deadlines, disconnects) are made deterministic
with :class:`GatedEngine`, which can hold warmup or one engine run until the test releases it.
"""

from __future__ import annotations

import io
import struct
import threading
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from engines.base import Engine
from engines.ort_engine import OrtEngine
from service.app import create_app
from service.settings import Settings
from tests.conftest import until

TILE, MAX_BATCH = 32, 4


class GatedEngine(Engine):
    """The real ONNX engine, plus test hooks: hold warmup, hold the next run, fail the next run."""

    def __init__(self, inner: OrtEngine) -> None:
        super().__init__(inner.tile, inner.max_batch)
        self.inner = inner
        self.warmup_gate = threading.Event()
        self.warmup_gate.set()
        self.hold_next = False  # the next run blocks until run_gate is set
        self.run_gate, self.run_entered = threading.Event(), threading.Event()
        self.fail_next = False
        self.runs: list[int] = []  # tiles per run, after warmup

    @property
    def depth(self) -> int:
        return self.inner.depth

    def info(self) -> dict[str, Any]:
        return self.inner.info()

    def warmup(self) -> None:
        assert self.warmup_gate.wait(30)
        super().warmup()
        self.runs.clear()

    def run(self, batch: np.ndarray) -> np.ndarray:
        self.runs.append(len(batch))
        if self.hold_next:
            self.hold_next = False
            self.run_entered.set()
            assert self.run_gate.wait(30), "test never released the run"
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("simulated device failure")
        return self.inner.run(batch)


def settings(repo: Path, **kw: Any) -> Settings:
    """Settings serving the repository ``repo``'s "fast" model (the tiny B1U2) at TILE x TILE."""
    base = dict(
        model_dir=repo,
        models=["fast"],
        providers="cpu",
        intra_op_threads=1,
        tile=TILE,
        max_batch=MAX_BATCH,
        max_delay_ms=2.0,
        cpu_workers=2,
        max_upload_bytes=100_000,
    )
    return Settings(**{**base, **kw})


def gated(model: Path, **kw: Any) -> tuple[Any, GatedEngine]:
    s = settings(model, **kw)
    engine = GatedEngine(OrtEngine(model, TILE, MAX_BATCH, intra_op_threads=1))
    return create_app(s, engines={"fast": engine}), engine


@asynccontextmanager
async def serving(app: Any, wait_ready: bool = True) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://drrn") as client:
            if wait_ready:
                await until(lambda: app.state.upscaler.ready)
            yield client


def png(width: int, height: int, seed: int = 0, mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(seed)
    shape = (height, width, 3) if mode == "RGB" else (height, width)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(buf, "PNG")
    return buf.getvalue()


def lying_png(width: int, height: int) -> bytes:
    """A real 8x8 PNG whose IHDR (CRC fixed up) claims ``width x height``."""
    data = bytearray(png(8, 8))
    ihdr = b"IHDR" + struct.pack(">II", width, height) + bytes(data[24:29])  # type, w, h, depth..interlace
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(ihdr))
    return bytes(data)


def decode(body: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(body)))


async def up(client: httpx.AsyncClient, body: bytes, scale: str | None = "2", **kw: Any) -> httpx.Response:
    params = {} if scale is None else {"scale": scale}
    headers = {"content-type": "image/png", **kw.pop("headers", {})}
    return await client.post("/upscale", params=params, content=body, headers=headers, **kw)


def metric_samples(text: str) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for fam in text_string_to_metric_families(text):
        out.setdefault(fam.name, []).extend(fam.samples)
    return out


def decode_count(metrics: httpx.Response) -> float:
    return next(
        s.value for s in metric_samples(metrics.text)["drrn_decode_seconds"] if s.name.endswith("_count")
    )


def rejections(metrics: httpx.Response) -> dict[str, float]:
    """Rejection counts by reason, summed over the ``model`` label."""
    out: dict[str, float] = {}
    for s in metric_samples(metrics.text)["drrn_rejections"]:
        if s.name.endswith("_total"):
            out[s.labels["reason"]] = out.get(s.labels["reason"], 0.0) + s.value
    return out


def gauge(metrics: httpx.Response, name: str) -> float:
    return metric_samples(metrics.text)[name][0].value
