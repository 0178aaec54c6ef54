"""FastAPI app factory. Nothing happens at import: :func:`create_app` builds settings, metrics and routes;
the lifespan loads the engine, warms it up in the background (``/healthz`` answers meanwhile, ``/readyz``
says 503) and then starts the batcher.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.batcher import TileBatcher
from service.engine import Engine, engine_from_settings
from service.errors import install_exception_handlers, sane_request_id
from service.metrics import ServiceMetrics
from service.routes import ServiceState, router
from service.settings import Settings

log = logging.getLogger("drrn.service")
access_log = logging.getLogger("drrn.access")


class AccessLogMiddleware:
    """Pure ASGI middleware: request id on every response, one JSON access-log line and the request-duration
    metric per request, and a JSON 500 (never a dropped connection) for any exception a route lets escape."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        state = scope.setdefault("state", {})
        incoming = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), None)
        state["request_id"] = sane_request_id(incoming)
        resp: dict[str, Any] = {"status": 500, "started": False, "bytes_out": 0}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                resp["status"], resp["started"] = message["status"], True
                headers = list(message.get("headers", []))
                if not any(k.lower() == b"x-request-id" for k, _ in headers):
                    headers.append((b"x-request-id", state["request_id"].encode()))
                message = {**message, "headers": headers}
            elif message["type"] == "http.response.body":
                resp["bytes_out"] += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception:
            rid = state.get("request_id", "-")
            log.exception("unhandled error in %s %s (request %s)", scope["method"], scope["path"], rid)
            self.metrics.errors.labels(kind="internal").inc()
            if not resp["started"]:
                body = {"error": "internal_error", "detail": "internal server error", "limit": None}
                await _send_json(send_wrapper, 500, {**body, "request_id": rid}, rid)
        finally:
            elapsed = time.perf_counter() - t0
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.request_duration.labels(route=route, status=str(resp["status"])).observe(elapsed)
            fields = {
                "id": state.get("request_id"),
                "method": scope["method"],
                "path": scope["path"],
                "status": resp["status"],
                **state.get("access", {}),
                "bytes_out": resp["bytes_out"],
                "total_ms": round(elapsed * 1000, 3),
            }
            access_log.info(
                "%s %s %s", scope["method"], scope["path"], resp["status"], extra={"fields": fields}
            )


async def _send_json(send: Send, status: int, body: dict[str, Any], rid: str) -> None:
    payload = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def _warn_on_limit_conflicts(st: ServiceState) -> None:
    """The largest allowed output can need more tiles than the queue holds; such requests get 413."""
    s, core = st.settings, st.settings.tile - 2 * st.margin
    side = math.isqrt(s.max_output_pixels)
    worst = math.ceil(side / core) ** 2
    if worst > s.max_queue_tiles:
        log.warning(
            "max_output_pixels=%d needs up to %d tiles of core %d > max_queue_tiles=%d: outputs above "
            "~%.1f MP will be refused with 413 too_many_tiles",
            s.max_output_pixels,
            worst,
            core,
            s.max_queue_tiles,
            s.max_queue_tiles * core * core / 1e6,
        )


async def _startup(st: ServiceState, engine: Engine | None, engine_pool: ThreadPoolExecutor) -> None:
    """Load the engine (failures abort startup: a service without a model must not pretend to run)."""
    s = st.settings
    st.engine = engine or await asyncio.get_running_loop().run_in_executor(
        engine_pool, engine_from_settings, s
    )
    st.margin = s.resolve_margin(st.engine.depth)
    st.model_info = st.engine.info()
    st.metrics.set_model(st.model_info)
    _warn_on_limit_conflicts(st)


async def _warm_and_start(st: ServiceState, engine_pool: ThreadPoolExecutor) -> None:
    """Warm up on the engine's own thread, then start the batcher and report ready."""
    s, engine = st.settings, st.engine
    assert engine is not None
    t0 = time.perf_counter()
    try:
        await asyncio.get_running_loop().run_in_executor(engine_pool, engine.warmup)
    except Exception as exc:
        log.exception("warmup failed; the service stays unready")
        st.startup_error = f"warmup failed: {exc}"
        st.metrics.errors.labels(kind="warmup").inc()
        return
    log.info(
        "warmup of batch sizes 1..%d at %dx%d took %.2fs",
        s.max_batch,
        s.tile,
        s.tile,
        time.perf_counter() - t0,
    )
    st.batcher = TileBatcher(
        engine.run,
        max_batch=s.max_batch,
        max_delay_ms=s.max_delay_ms,
        max_queue_tiles=s.max_queue_tiles,
        executor=engine_pool,
        observer=st.metrics,
        retry_after_s=s.retry_after_s,
        tile=s.tile,
    )
    st.batcher.start()
    st.ready = True
    st.metrics.ready.set(1)


async def _shutdown(st: ServiceState, warm: asyncio.Task[None] | None) -> None:
    st.shutting_down, st.ready = True, False
    st.metrics.ready.set(0)
    if warm is not None and not warm.done():
        warm.cancel()
        await asyncio.gather(warm, return_exceptions=True)
    if st.batcher is not None:
        await st.batcher.stop(st.settings.shutdown_grace_s)


def create_app(settings: Settings | None = None, engine: Engine | None = None) -> FastAPI:
    """The service app. ``settings`` default to ``DRRN_*`` env vars; ``engine`` (tests, other backends)
    replaces the ONNX Runtime engine the settings describe and must match ``tile`` and ``max_batch``."""
    settings = settings or Settings()
    if engine is not None and (engine.tile, engine.max_batch) != (settings.tile, settings.max_batch):
        raise ValueError(
            f"engine tile/max_batch {engine.tile}/{engine.max_batch} != "
            f"settings {settings.tile}/{settings.max_batch}"
        )
    metrics = ServiceMetrics(settings.max_batch)
    st = ServiceState(settings, metrics, settings.image_limits())
    cpu_workers = settings.cpu_workers or min(4, os.cpu_count() or 1)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # One thread owns the model: loading, warmup and every batch run happen on it.
        engine_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="drrn-engine")
        st.cpu_pool = cpu_pool = ThreadPoolExecutor(max_workers=cpu_workers, thread_name_prefix="drrn-cpu")
        warm = None
        try:
            await _startup(st, engine, engine_pool)
            warm = asyncio.create_task(_warm_and_start(st, engine_pool), name="drrn-warmup")
            yield
        finally:
            await _shutdown(st, warm)
            engine_pool.shutdown(wait=False, cancel_futures=True)
            cpu_pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="DRRN super-resolution",
        summary="Deep Recursive Residual Network (Tai et al., CVPR 2017) on ONNX Runtime",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.drrn = st
    install_exception_handlers(app)
    app.include_router(router)
    app.add_middleware(AccessLogMiddleware, metrics=metrics)
    return app
