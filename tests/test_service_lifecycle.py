"""The real app under stress: overload and deadlines, shutdown and drain, failed warmup, a dead batcher
worker, client disconnects, the settings' environment, the engine contract and SIGTERM (harness:
``tests/service_harness.py``).
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from engines.ort_engine import OrtEngine
from service.app import create_app
from service.settings import Settings
from tests.conftest import until
from tests.service_harness import (
    MAX_BATCH,
    TILE,
    GatedEngine,
    decode,
    gated,
    gauge,
    metric_samples,
    png,
    rejections,
    serving,
    settings,
    up,
)


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


def test_a_queued_request_the_server_cancels_is_counted_once(tiny_onnx: Path) -> None:
    """The batcher counts a request it held as cancelled; the middleware's 503 must not count it again."""
    app, engine = gated(tiny_onnx)

    async def main() -> None:
        async with serving(app) as client:
            engine.hold_next = True
            running = asyncio.create_task(up(client, png(10, 10)))
            await asyncio.to_thread(engine.run_entered.wait, 30)
            queued = asyncio.create_task(up(client, png(12, 10, seed=1)))
            batcher = app.state.upscaler.batcher
            await until(lambda: batcher.queued(app.state.upscaler.default_model) > 0)
            queued.cancel()  # in-process, the app runs in this task: the server cancelling it
            with pytest.raises(asyncio.CancelledError):
                await queued
            engine.run_gate.set()
            assert (await running).status_code == 200
            counts = rejections(await client.get("/metrics"))
            assert counts.get("cancelled") == 1 and counts.get("shutting_down", 0) == 0, counts

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
