"""Engine faults and shutdown under load: a hung engine call (504 at the deadline, then the watchdog makes
``/healthz`` 503), an engine failing 1 run in 10 under concurrent load (only those runs' requests fail;
every other response is byte-identical to a clean run), and SIGTERM to a spawned ``drrn serve`` under
concurrent clients (every request gets a 200 or a JSON 503; none is lost). Orderings, never durations."""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest

from inference import pipeline
from service.app import create_app
from tests.conftest import until
from tests.fake_engines import ToneEngine
from tests.service_harness import (
    MAX_BATCH,
    TILE,
    gauge,
    metric_samples,
    png,
    rejections,
    serving,
    settings,
)


async def post(client: httpx.AsyncClient, body: bytes) -> httpx.Response:
    return await client.post("/upscale?scale=2", content=body, headers={"content-type": "image/png"})


def test_a_hung_engine_call_ends_its_requests_at_the_deadline_then_health_fails(tiny_onnx: Path) -> None:
    engine = ToneEngine(TILE, MAX_BATCH)
    app = create_app(settings(tiny_onnx, request_timeout_s=1.0, engine_stall_s=1.5), {"fast": engine})

    async def main() -> None:
        try:
            async with serving(app) as client:
                engine.hang = True
                first = asyncio.create_task(post(client, png(10, 10)))
                await asyncio.to_thread(engine.hanging.wait, 30)
                hung, queued = await asyncio.gather(first, post(client, png(12, 12)))
                for r in (hung, queued):  # the one in the stuck run and the one queued behind it
                    assert r.status_code == 504 and r.json()["error"] == "deadline_exceeded"
                assert engine.hanging.is_set() and not engine.release.is_set()
                await until(lambda: app.state.upscaler.unhealthy is not None)  # the watchdog
                r = await client.get("/healthz")
                assert r.status_code == 503 and r.json()["error"] == "unhealthy"
                assert "engine_stall_s=1.5" in r.json()["detail"]
                assert (await client.get("/readyz")).status_code == 503
                r = await post(client, png(10, 10))  # refused at once, not queued behind the hung call
                assert r.status_code == 503 and r.json()["error"] == "not_ready"
                metrics = await client.get("/metrics")
                errors = {s.labels["kind"]: s.value for s in metric_samples(metrics.text)["drrn_errors"]}
                assert errors["engine_stall"] == 1 and gauge(metrics, "drrn_ready") == 0
                assert rejections(metrics)["deadline"] == 2
                assert engine.runs == [1]  # the queued request's tile never ran
        finally:
            engine.release.set()  # let the test's engine thread end

    asyncio.run(main())


def tile_owners(bodies: list[bytes]) -> dict[bytes, int]:
    """The digest of each input tile -> the request it belongs to (the real pipeline's tiling)."""
    s = settings(Path("unused"))
    owners: dict[bytes, int] = {}
    for i, body in enumerate(bodies):
        prepared = pipeline.prepare(body, 2.0, s.image_limits(), TILE, 2, 1)
        for t in prepared.tiles[0]:
            owners[hashlib.sha256(np.ascontiguousarray(t).tobytes()).digest()] = i
    return owners


def test_an_engine_failing_one_run_in_ten_fails_only_the_requests_in_those_runs(tiny_onnx: Path) -> None:
    sizes = [(10, 10), (20, 10), (20, 20), (30, 17), (14, 25)]  # 1 to 4 tiles each at 2x
    bodies = [png(*sizes[i % len(sizes)], seed=i) for i in range(48)]

    async def run_all(engine: ToneEngine) -> list[httpx.Response]:
        app = create_app(settings(tiny_onnx, margin=2), {"fast": engine})
        async with serving(app) as client:
            return await asyncio.gather(*(post(client, b) for b in bodies))

    clean = asyncio.run(run_all(ToneEngine(TILE, MAX_BATCH)))
    assert all(r.status_code == 200 for r in clean)
    flaky = ToneEngine(TILE, MAX_BATCH)
    flaky.fail_runs = set(range(10, 1000, 10))
    answers = asyncio.run(run_all(flaky))

    owners = tile_owners(bodies)
    doomed = {
        owners[hashlib.sha256(np.ascontiguousarray(t).tobytes()).digest()]
        for batch in flaky.failed
        for t in batch
    }
    assert flaky.failed and doomed  # some runs failed, and they held some requests' tiles
    for i, (r, ref) in enumerate(zip(answers, clean, strict=True)):
        if i in doomed:
            assert r.status_code == 500 and r.json()["error"] == "engine_error", i
        else:
            assert r.status_code == 200 and r.content == ref.content, i
    assert len(doomed) < len(bodies) / 2


@pytest.mark.slow
def test_sigterm_under_load_loses_no_request(tiny_onnx: Path) -> None:
    """8 clients send requests back to back, each on a new connection, to a spawned ``drrn serve``; SIGTERM
    arrives mid-stream. Every request that reached the server gets a 200 PNG or a JSON 503 (before its body
    is read); after its first 503 a client stops (a real one would retry on another replica). A refused
    connection means the listener had closed: that request was never sent. Nothing else is allowed."""
    from bench.spawn import SpawnedService

    env = {
        "DRRN_PROVIDERS": "cpu",
        "DRRN_TILE": str(TILE),
        "DRRN_MAX_BATCH": str(MAX_BATCH),
        "DRRN_INTRA_OP_THREADS": "1",
        "DRRN_CPU_WORKERS": "1",
        "DRRN_SHUTDOWN_GRACE_S": "30",
    }
    outcomes: list[tuple[str, int | str]] = []
    lock, started, stop = threading.Lock(), threading.Event(), threading.Event()

    def client(seed: int, url: str) -> None:
        body = png(24, 16, seed=seed)
        with httpx.Client(timeout=60, limits=httpx.Limits(max_keepalive_connections=0)) as c:
            while not stop.is_set():
                try:
                    r = c.post(f"{url}/upscale?scale=2", content=body, headers={"content-type": "image/png"})
                except httpx.ConnectError:
                    with lock:
                        outcomes.append(("refused", 0))
                    return
                except httpx.TransportError as exc:
                    with lock:
                        outcomes.append(("lost", repr(exc)))
                    return
                ok = r.status_code == 200 and r.headers["content-type"] == "image/png"
                clean_503 = r.status_code == 503 and json.loads(r.content)["error"] == "shutting_down"
                with lock:
                    outcomes.append(("ok" if ok else "503" if clean_503 else "bad", r.status_code))
                started.set()
                if not ok:
                    return

    with SpawnedService(env, model=tiny_onnx, ready_timeout_s=120) as svc:
        threads = [threading.Thread(target=client, args=(i, svc.url)) for i in range(8)]
        for t in threads:
            t.start()
        assert started.wait(60)
        while sum(o[0] == "ok" for o in outcomes) < 40:
            threading.Event().wait(0.01)
        svc.proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(120)
        stop.set()
        assert svc.proc.wait(timeout=60) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it handled
    kinds = [kind for kind, _ in outcomes]
    assert "lost" not in kinds and "bad" not in kinds, [o for o in outcomes if o[0] in ("lost", "bad")]
    assert kinds.count("ok") >= 40 and len(outcomes) == kinds.count("ok") + 8  # each client ended once
