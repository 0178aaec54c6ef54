"""The real app (lifespan, batcher, ONNX Runtime on the tiny exported model) over httpx's ASGI transport.

Timing-sensitive scenarios (warmup, cross-request batching, deadlines, disconnects) are made deterministic
with :class:`GatedEngine`, which can hold warmup or one engine run until the test releases it.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import signal
import socket
import struct
import threading
import time
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from engines.base import Engine
from engines.ort_engine import OrtEngine
from service.app import create_app
from service.metrics import METRIC_NAMES, series_names
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


def test_readyz_is_503_until_warmup_finishes(tiny_onnx: Path) -> None:
    app, engine = gated(tiny_onnx)
    engine.warmup_gate.clear()

    async def main() -> None:
        async with serving(app, wait_ready=False) as client:
            assert (await client.get("/healthz")).json() == {"status": "ok"}
            r = await client.get("/readyz")
            assert r.status_code == 503 and r.json()["error"] == "not_ready"
            r = await up(client, png(10, 10))
            assert r.status_code == 503 and r.headers["retry-after"] == "1"
            engine.warmup_gate.set()
            await until(lambda: app.state.upscaler.ready)
            assert (await client.get("/readyz")).status_code == 200
            assert (await up(client, png(10, 10))).status_code == 200
        assert not app.state.upscaler.ready  # lifespan shutdown flips readiness

    asyncio.run(main())


def test_upscale_returns_png_with_headers(tiny_repo: Path, caplog: pytest.LogCaptureFixture) -> None:
    app = create_app(settings(tiny_repo))

    async def main() -> None:
        async with serving(app) as client:
            r = await up(client, png(23, 17), headers={"x-request-id": "client-id-1"})
            assert r.status_code == 200 and r.headers["content-type"] == "image/png"
            assert decode(r.content).shape == (34, 46, 3)
            assert r.headers["x-request-id"] == "client-id-1"
            timing = r.headers["server-timing"]
            stages = [p.split(";")[0] for p in timing.split(", ")]
            assert stages == ["read", "decode", "queue", "infer", "encode", "total"]
            # Non-integer scale, multipart upload and grey input; an unsafe request id is replaced.
            files = {"image": ("x.png", png(23, 17, mode="L"), "image/png")}
            r = await client.post("/upscale?scale=2.5", files=files, headers={"x-request-id": "bad id\x7f"})
            assert r.status_code == 200 and decode(r.content).shape == (43, 58)
            assert len(r.headers["x-request-id"]) == 32 and r.headers["x-request-id"] != "bad id"
            r = await client.post(
                "/upscale?scale=3", content=png(12, 9), headers={"content-type": "application/octet-stream"}
            )
            assert r.status_code == 200 and decode(r.content).shape == (27, 36, 3)

    with caplog.at_level(logging.INFO, logger="drrn.access"):
        asyncio.run(main())
    lines = [rec.fields for rec in caplog.records if rec.name == "drrn.access"]
    first = next(f for f in lines if f["id"] == "client-id-1")
    assert first["status"] == 200 and first["input"] == "23x17" and first["output"] == "46x34"
    assert first["scale"] == "2" and first["bytes_in"] > 0 and first["bytes_out"] > 0
    stages = {"read_ms", "decode_ms", "queue_ms", "infer_ms", "encode_ms", "cpu_wait_ms", "total_ms"}
    assert stages <= first.keys() and first["tiles"] == 3  # 46x34 as 3 tiles of 24x34 (<= 32**2 px)


BAD_REQUESTS: list[tuple[str, dict[str, Any], int, str, str | None]] = [
    ("empty body", {"content": b""}, 400, "empty_body", None),
    ("truncated png", {"content": png(40, 40)[:60]}, 400, "corrupt_image", None),
    ("text file", {"content": b"hello, this is not an image\n" * 4}, 415, "unsupported_format", None),
    ("lying header", {"content": lying_png(50_000, 50_000)}, 413, "input_too_large", "max_input_pixels"),
    ("scale=0", {"scale": "0"}, 422, "bad_scale", None),
    ("scale=9", {"scale": "9"}, 422, "bad_scale", "max_scale"),
    ("scale=abc", {"scale": "abc"}, 422, "bad_scale", None),
    ("missing scale", {"scale": None}, 422, "bad_scale", None),
    (
        "over byte limit",
        {"content": b"\x89PNG" + bytes(100_001)},
        413,
        "upload_too_large",
        "max_upload_bytes",
    ),
    ("over limit, chunked", {"chunked": 150_000}, 413, "upload_too_large", "max_upload_bytes"),
    ("wrong content type", {"headers": {"content-type": "text/plain"}}, 415, "unsupported_media_type", None),
]


def test_bad_requests_get_json_errors_and_the_service_keeps_serving(tiny_repo: Path) -> None:
    app = create_app(settings(tiny_repo))
    good = png(16, 12)

    async def chunks(n: int) -> AsyncIterator[bytes]:  # no Content-Length: the limit bites while reading
        for _ in range(n // 10_000):
            yield bytes(10_000)

    async def main() -> None:
        async with serving(app) as client:
            for name, case, status, code, limit in BAD_REQUESTS:
                content = chunks(case["chunked"]) if "chunked" in case else case.get("content", good)
                r = await up(client, content, case.get("scale", "2"), headers=case.get("headers", {}))
                body = r.json()
                assert (r.status_code, body["error"]) == (status, code), (name, body)
                assert body["detail"] and body["request_id"] == r.headers["x-request-id"], name
                if limit:
                    assert body["limit"]["name"] == limit and body["limit"]["value"] > 0, name
                assert (await up(client, good)).status_code == 200, f"not serving after {name}"
            files = {"picture": ("x.png", good, "image/png")}
            r = await client.post("/upscale?scale=2", files=files)
            assert r.status_code == 422 and r.json()["error"] == "missing_image"
            r = await client.get("/nope")
            assert r.status_code == 404 and r.json()["error"] == "not_found"
            text = (await client.get("/metrics")).text
            rejected = {s.labels["reason"]: s.value for s in metric_samples(text)["drrn_rejections"]}
            assert rejected["bad_input"] == 9 and rejected["too_large"] == 3

    asyncio.run(main())


def test_concurrent_requests_share_engine_runs(tiny_onnx: Path) -> None:
    app, engine = gated(tiny_onnx, max_delay_ms=0.0)
    # Each output is one 24x20 tile: one shape, so tiles of different requests stack into one run.
    images = [png(12, 10, seed=i) for i in range(16)]

    async def main() -> None:
        async with serving(app) as client:
            batcher = app.state.upscaler.batcher
            engine.hold_next = True  # the first run holds until every other request has queued its tile
            tasks = [asyncio.create_task(up(client, img)) for img in images]
            await asyncio.to_thread(engine.run_entered.wait, 30)
            await until(lambda: batcher.queue_depth == 16 - engine.runs[0])
            engine.run_gate.set()
            concurrent = await asyncio.gather(*tasks)
            queued = 16 - engine.runs[0]  # at least 12: they leave the queue in full runs of 4
            assert engine.runs[1:] == [MAX_BATCH] * (queued // MAX_BATCH) + (
                [queued % 4] if queued % 4 else []
            )
            for img, r in zip(images, concurrent, strict=True):  # each response is its own image's
                alone = await up(client, img)
                diff = np.abs(decode(r.content).astype(int) - decode(alone.content).astype(int))
                assert diff.max() <= 1
            samples = metric_samples((await client.get("/metrics")).text)

        def count(name: str, le: str) -> float:
            return next(s.value for s in samples[name] if s.name.endswith("_bucket") and s.labels["le"] == le)

        # One tile per request, so every run of several tiles mixed several requests, as the metrics show.
        multi_tile = count("drrn_batch_size_tiles", "+Inf") - count("drrn_batch_size_tiles", "1.0")
        multi_request = count("drrn_batch_requests", "+Inf") - count("drrn_batch_requests", "1.0")
        assert multi_tile == multi_request >= 3

    asyncio.run(main())


def test_metrics_and_model_endpoints(tiny_repo: Path) -> None:
    app = create_app(settings(tiny_repo))

    async def main() -> None:
        async with serving(app) as client:
            assert (await up(client, png(30, 20))).status_code == 200
            r = await client.get("/metrics")
            model = (await client.get("/v1/model")).json()
            docs = await client.get("/docs")
            spec = (await client.get("/openapi.json")).json()
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        samples = metric_samples(r.text)
        exposed = {s.name for fam in samples.values() for s in fam if s.name.startswith("drrn_")}
        assert exposed == series_names()  # every listed metric is exported, and nothing unlisted
        assert {fam.name for fam in text_string_to_metric_families(r.text)} >= {
            n.removesuffix("_total") for n in METRIC_NAMES
        }
        assert any(s.labels.get("route") == "/upscale" for s in samples["drrn_request_duration_seconds"])
        (info,) = [s.labels for s in samples["drrn_model_info"]]
        assert info["model"] == "fast" and info["default"] == "True" and info["margin"] == "6"
        assert (
            info["provider"] == "CPUExecutionProvider" and info["tile"] == "32" and info["max_batch"] == "4"
        )

        assert model["name"] == "fast" and model["default"] is True
        assert model["depth"] == 6 and model["receptive_field"] == 13 and model["params"] > 0
        assert model["precision"] == "fp32" and model["provider"] == "CPUExecutionProvider"
        assert (
            model["serving"]["tile"] == TILE
            and model["max_batch"] == MAX_BATCH
            and isinstance(model["model_card"], dict)
        )
        assert (
            model["serving"]["margin"] == 6
            and model["serving"]["max_queue_tiles"] == Settings().max_queue_tiles
        )
        assert model["limits"]["max_upload_bytes"] == 100_000 and model["ready"] is True
        assert docs.status_code == 200 and "/upscale" in spec["paths"]

    asyncio.run(main())


def test_engine_failure_is_a_500_for_that_request_only(tiny_onnx: Path) -> None:
    app, engine = gated(tiny_onnx)

    async def main() -> None:
        async with serving(app) as client:
            engine.fail_next = True
            r = await up(client, png(16, 16))
            body = r.json()
            assert r.status_code == 500 and body["error"] == "engine_error"
            assert body["request_id"] == r.headers["x-request-id"]
            assert (await up(client, png(16, 16))).status_code == 200
            assert (await client.get("/readyz")).status_code == 200
            errors = metric_samples((await client.get("/metrics")).text)["drrn_errors"]
            assert {s.labels["kind"]: s.value for s in errors}["engine"] == 1

    asyncio.run(main())


def test_overload_deadline_and_oversized_requests(tiny_onnx: Path) -> None:
    # The queued request must outlive the refusals below, even on a loaded machine.
    app, engine = gated(tiny_onnx, max_queue_tiles=3, request_timeout_s=5.0, retry_after_s=2)

    async def main() -> None:
        async with serving(app) as client:
            batcher = app.state.upscaler.batcher
            engine.hold_next = True
            running = asyncio.create_task(up(client, png(10, 10)))  # 1 tile, holds the engine
            await asyncio.to_thread(engine.run_entered.wait, 30)
            queued = asyncio.create_task(up(client, png(40, 10)))  # 80x20 output: 2 tiles of 48x20
            await until(lambda: batcher.queue_depth == 2)
            decoded_before = decode_count(await client.get("/metrics"))
            full = await up(client, png(40, 10))
            assert full.status_code == 503 and full.headers["retry-after"] == "2"
            assert full.json()["error"] == "queue_full" and full.json()["limit"]["name"] == "max_queue_tiles"
            huge = await up(client, png(30, 20))  # 4 tiles can never fit a queue of 3
            assert huge.status_code == 413 and huge.json()["limit"] == {"name": "max_queue_tiles", "value": 3}
            # Both were refused from the image header, before any decode/bicubic/tiling work.
            assert decode_count(await client.get("/metrics")) == decoded_before
            late = await queued  # its deadline passes while the engine is held
            assert late.status_code == 504 and late.json()["limit"]["name"] == "request_timeout_s"
            engine.run_gate.set()
            assert (await running).status_code == 504
        assert engine.runs == [1]  # the expired request's tiles never ran

    asyncio.run(main())


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


def test_inflight_limit_gives_503_with_retry_after(tiny_onnx: Path) -> None:
    app, engine = gated(tiny_onnx, max_inflight_requests=1, retry_after_s=3)

    async def main() -> None:
        async with serving(app) as client:
            engine.hold_next = True
            running = asyncio.create_task(up(client, png(10, 10)))
            await asyncio.to_thread(engine.run_entered.wait, 30)
            r = await up(client, png(10, 10))
            body = r.json()
            assert r.status_code == 503 and r.headers["retry-after"] == "3" and body["error"] == "overloaded"
            assert body["limit"] == {"name": "max_inflight_requests", "value": 1}
            assert body["request_id"] == r.headers["x-request-id"]
            engine.run_gate.set()
            assert (await running).status_code == 200
            assert (await up(client, png(10, 10))).status_code == 200  # the slot is free again
            assert rejections(await client.get("/metrics"))["overloaded"] == 1

    asyncio.run(main())


def test_deadline_covers_the_whole_request_including_the_upload(tiny_repo: Path) -> None:
    # Long enough for the follow-up request on a loaded CI machine (three thread hand-offs).
    app = create_app(settings(tiny_repo, request_timeout_s=2.0))
    stalled = asyncio.Event()

    async def stalling_body() -> AsyncIterator[bytes]:
        yield png(10, 10)[:20]
        await stalled.wait()  # the client never sends the rest
        yield b""

    async def main() -> None:
        async with serving(app) as client:
            r = await up(client, stalling_body())
            body = r.json()
            assert r.status_code == 504 and body["error"] == "deadline_exceeded"
            assert body["limit"] == {"name": "request_timeout_s", "value": 2.0}
            assert (await up(client, png(10, 10))).status_code == 200
            metrics = await client.get("/metrics")
            assert rejections(metrics)["deadline"] == 1 and gauge(metrics, "drrn_inflight_requests") == 0

    asyncio.run(main())


def test_shutdown_refuses_new_requests_and_drains_admitted_ones(tiny_onnx: Path) -> None:
    """What SIGTERM triggers (service.main schedules Lifecycle.begin_shutdown from its signal handler)."""
    app, engine = gated(tiny_onnx)

    async def main() -> None:
        async with serving(app) as client:
            up_ = app.state.upscaler
            engine.hold_next = True
            admitted = asyncio.create_task(up(client, png(10, 10)))
            await asyncio.to_thread(engine.run_entered.wait, 30)
            drain = app.state.lifecycle.begin_shutdown()
            r = await up(client, png(10, 10))
            assert r.status_code == 503 and r.headers["retry-after"] == "1"
            assert (
                r.json()["error"] == "shutting_down" and r.json()["request_id"] == r.headers["x-request-id"]
            )
            assert (await client.get("/readyz")).status_code == 503
            assert (await client.get("/healthz")).status_code == 200  # draining is not a failure
            metrics = await client.get("/metrics")
            assert gauge(metrics, "drrn_ready") == 0 and rejections(metrics)["shutting_down"] == 1
            assert not drain.done()  # still waiting for the admitted request
            engine.run_gate.set()
            assert (await admitted).status_code == 200
            await drain
            assert not up_.batcher.running

    asyncio.run(main())


def test_requests_left_at_the_end_of_the_grace_get_503_json(tiny_onnx: Path) -> None:
    app, engine = gated(tiny_onnx, shutdown_grace_s=0)

    async def main() -> None:
        async with serving(app) as client:
            engine.hold_next = True
            admitted = asyncio.create_task(up(client, png(10, 10)))
            await asyncio.to_thread(engine.run_entered.wait, 30)
            await app.state.lifecycle.begin_shutdown()  # no grace: the batcher fails what it holds
            r = await admitted
            assert r.status_code == 503 and r.json()["error"] == "shutting_down"
            assert r.headers["retry-after"] == "1"
            assert rejections(await client.get("/metrics"))["shutting_down"] == 1  # counted once
            engine.run_gate.set()

    asyncio.run(main())


class FailingWarmupEngine(GatedEngine):
    def warmup(self) -> None:
        raise RuntimeError("device lost during warmup")


def test_failed_warmup_makes_the_service_unhealthy(tiny_onnx: Path, tiny_repo: Path) -> None:
    engine = FailingWarmupEngine(OrtEngine(tiny_onnx, TILE, MAX_BATCH, intra_op_threads=1))
    app = create_app(settings(tiny_repo), engines={"fast": engine})

    async def main() -> None:
        async with serving(app, wait_ready=False) as client:
            await until(lambda: app.state.upscaler.unhealthy is not None)
            r = await client.get("/healthz")
            assert r.status_code == 503 and r.json()["error"] == "unhealthy"
            assert "device lost" in r.json()["detail"] and r.json()["request_id"]
            r = await client.get("/readyz")
            assert r.status_code == 503 and "device lost" in r.json()["detail"]
            r = await up(client, png(10, 10))
            assert r.status_code == 503 and r.json()["error"] == "not_ready"
            metrics = await client.get("/metrics")
            assert gauge(metrics, "drrn_ready") == 0
            errors = {s.labels["kind"]: s.value for s in metric_samples(metrics.text)["drrn_errors"]}
            assert errors["warmup"] == 1

    asyncio.run(main())


def test_dead_batcher_worker_fails_pending_requests_and_health(tiny_onnx: Path) -> None:
    app, engine = gated(tiny_onnx)

    def bug(*args: Any) -> None:
        raise RuntimeError("bug in the worker loop")

    async def main() -> None:
        async with serving(app) as client:
            st = app.state.upscaler
            app.state.metrics.on_batch = bug  # the batcher's observer: raises in the worker after a run
            engine.hold_next = True
            first = asyncio.create_task(up(client, png(10, 10)))
            await asyncio.to_thread(engine.run_entered.wait, 30)
            queued = asyncio.create_task(up(client, png(40, 10)))  # 2 tiles behind the held run
            await until(lambda: st.batcher.queue_depth == 2)
            engine.run_gate.set()
            for r in await asyncio.gather(first, queued):  # failed now, not at their 30 s deadline
                assert r.status_code == 500 and r.json()["error"] == "engine_error"
            r = await client.get("/healthz")
            assert r.status_code == 503 and "worker crashed" in r.json()["detail"]
            assert (await client.get("/readyz")).status_code == 503
            metrics = await client.get("/metrics")
            assert gauge(metrics, "drrn_ready") == 0
            errors = {s.labels["kind"]: s.value for s in metric_samples(metrics.text)["drrn_errors"]}
            assert errors["worker"] == 1

    asyncio.run(main())


def test_client_disconnect_cancels_queued_tiles(tiny_onnx: Path) -> None:
    app, engine = gated(tiny_onnx)

    async def main() -> None:
        async with serving(app) as client:
            batcher = app.state.upscaler.batcher
            engine.hold_next = True
            running = asyncio.create_task(up(client, png(10, 10)))
            await asyncio.to_thread(engine.run_entered.wait, 30)

            hang_up = asyncio.Event()
            sent: list[dict[str, Any]] = []
            body = png(10, 10, seed=3)

            async def receive() -> dict[str, Any]:
                if not sent and not hang_up.is_set() and body:
                    sent.append({})
                    return {"type": "http.request", "body": body, "more_body": False}
                await hang_up.wait()
                return {"type": "http.disconnect"}

            async def send(message: dict[str, Any]) -> None:
                sent.append(message)

            scope = {
                "type": "http",
                "asgi": {"version": "3.0"},
                "http_version": "1.1",
                "method": "POST",
                "scheme": "http",
                "path": "/upscale",
                "raw_path": b"/upscale",
                "query_string": b"scale=2",
                "headers": [(b"content-type", b"image/png"), (b"host", b"drrn")],
                "client": ("127.0.0.1", 1),
                "server": ("drrn", 80),
                "state": {},
            }
            call = asyncio.create_task(app(scope, receive, send))
            await until(lambda: batcher.queue_depth == 1)
            hang_up.set()
            await call
            assert batcher.queue_depth == 0
            assert next(m["status"] for m in sent if m.get("type") == "http.response.start") == 499
            engine.run_gate.set()
            assert (await running).status_code == 200
            text = (await client.get("/metrics")).text
        assert engine.runs == [1]  # only the connected request's tile ran
        counted = [
            s for s in metric_samples(text)["drrn_rejections"] if s.name.endswith("_total") and s.value
        ]
        assert [(s.labels["reason"], s.labels["model"], s.value) for s in counted] == [
            ("cancelled", "fast", 1)
        ]

    asyncio.run(main())


def test_missing_model_fails_startup_with_build_hint(tmp_path: Path) -> None:
    from drrn.errors import UserError

    app = create_app(settings(tmp_path / "absent"))

    async def main() -> None:
        with pytest.raises(UserError, match="make models"):
            async with app.router.lifespan_context(app):
                pass

    asyncio.run(main())


def test_settings_come_from_drrn_env_vars(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRRN_TILE", "64")
    monkeypatch.setenv("DRRN_MAX_BATCH", "2")
    monkeypatch.setenv("DRRN_LOG_LEVEL", "debug")
    monkeypatch.setenv("DRRN_MODELS", "fast, quality")
    monkeypatch.setenv("DRRN_MARGIN", "")
    s = Settings()
    assert (s.tile, s.max_batch, s.log_level, s.models, s.margin) == (
        64,
        2,
        "DEBUG",
        ["fast", "quality"],
        None,
    )
    assert s.default_model == "fast" and s.image_limits().max_scale == 4.0
    monkeypatch.setenv("DRRN_MODELS", "")
    assert Settings().models is None  # every model in the repository
    monkeypatch.setenv("DRRN_MARGIN", "40")
    with pytest.raises(ValueError, match="margin 40"):
        Settings()


def test_ort_engine_contract(tiny_onnx: Path, tmp_path: Path) -> None:
    from engines.base import ModelNotFoundError

    engine = OrtEngine(tiny_onnx, TILE, MAX_BATCH, intra_op_threads=1)
    engine.warmup()
    x = np.random.default_rng(0).random((3, 1, TILE, TILE), dtype=np.float32)
    y = engine.run(x)
    assert y.shape == x.shape and y.dtype == np.float32
    assert np.abs(y - x).mean() < 0.1  # a residual net near identity (the fixture scales its residual)
    with pytest.raises(ValueError):
        engine.run(np.zeros((MAX_BATCH + 1, 1, TILE, TILE), np.float32))
    info = engine.info()
    assert (info["depth"], info["receptive_field"], info["precision"]) == (6, 13, "fp32")
    assert info["providers"] == ["CPUExecutionProvider"] and engine.depth == 6
    with pytest.raises(ModelNotFoundError, match="make models"):
        OrtEngine(tmp_path / "missing.onnx", TILE, MAX_BATCH)
    with pytest.raises(ValueError, match="max_batch"):
        create_app(settings(tmp_path, max_batch=2), engines={"fast": engine})
    engine.close()


def _http_response(conn: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Read one HTTP/1.1 response off ``conn`` until the server closes it (it does, while shutting down)."""
    data = b""
    while chunk := conn.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in header_lines)}
    return int(status_line.split()[1]), headers, body


@pytest.mark.slow
def test_sigterm_drains_admitted_requests_and_answers_json_to_the_last(tiny_onnx: Path) -> None:
    """The real shutdown path: `drrn serve` in a subprocess, uvicorn's signal handling included.

    Two requests are admitted and held mid-upload (half their body sent) when SIGTERM arrives. New requests
    get 503 shutting_down JSON until uvicorn closes its listener, then connection refused. The first request
    then sends the rest of its body and completes with 200 within the grace. The second never does: when
    uvicorn's graceful timeout ends and it cancels the request, the client still gets a JSON 503, not
    uvicorn's plain-text 500. Then the process exits.
    """
    from bench.spawn import SpawnedService

    env = {
        "DRRN_PROVIDERS": "cpu",
        "DRRN_TILE": str(TILE),
        "DRRN_MAX_BATCH": str(MAX_BATCH),
        "DRRN_INTRA_OP_THREADS": "1",
        "DRRN_CPU_WORKERS": "1",
        "DRRN_REQUEST_TIMEOUT_S": "120",  # the deadline must not end the held requests first
        "DRRN_UPLOAD_TIMEOUT_S": "120",
        "DRRN_SHUTDOWN_GRACE_S": "10",  # ample for a 20x16 image on a loaded box; uvicorn cancels at 10 + 2 s
    }
    body = png(20, 16)
    head = (
        f"POST /upscale?scale=2 HTTP/1.1\r\nHost: drrn\r\nContent-Type: image/png\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    with SpawnedService(env, model=tiny_onnx, ready_timeout_s=120) as svc:
        finishing = socket.create_connection(("127.0.0.1", svc.port), timeout=60)
        abandoned = socket.create_connection(("127.0.0.1", svc.port), timeout=60)
        with finishing, abandoned:
            for conn in (finishing, abandoned):
                conn.sendall(head + body[:40])
            with httpx.Client(base_url=svc.url, timeout=30) as client:
                for _ in range(3000):  # until the route admitted both (they are now reading their bodies)
                    if gauge(client.get("/metrics"), "drrn_uploading_requests") == 2:
                        break
                    time.sleep(0.01)
                else:
                    raise AssertionError("the requests were never admitted")
            svc.proc.send_signal(signal.SIGTERM)
            refused, answers = False, []
            for _ in range(3000):
                try:
                    r = httpx.post(
                        f"{svc.url}/upscale?scale=2", content=body, headers={"content-type": "image/png"}
                    )
                except httpx.TransportError:
                    refused = True
                    break
                answers.append((r.status_code, r.json()["error"], r.headers.get("retry-after")))
                time.sleep(0.01)
            assert refused, "the listener never closed"
            assert all(a == (503, "shutting_down", "1") for a in answers), answers
            finishing.sendall(body[40:])  # an admitted request completes after SIGTERM
            status, headers, payload = _http_response(finishing)
            assert status == 200 and headers["content-type"] == "image/png", payload[:300]
            assert decode(payload).shape == (32, 40, 3)
            status, headers, payload = _http_response(abandoned)
            assert (status, headers["content-type"], headers["retry-after"]) == (503, "application/json", "1")
            assert json.loads(payload)["error"] == "shutting_down"
        assert svc.proc.wait(timeout=60) is not None
