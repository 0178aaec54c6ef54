"""FastAPI app factory. Nothing happens at import: :func:`create_app` builds settings, metrics, the
:class:`~inference.upscaler.Upscaler` core, routes and exception handlers; the lifespan loads every served
model, warms them in the background (``/healthz`` answers meanwhile, ``/readyz`` says 503) and then starts
the batcher (see :mod:`service.lifecycle`, which also drains and closes on shutdown).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engines.base import Engine
from inference.upscaler import Upscaler
from inference.upscaler_types import UpscalerConfig
from service.api_keys import KeyStore
from service.auth import ApiKeyMiddleware, open_paths
from service.errors import install_exception_handlers, sane_request_id
from service.lifecycle import Lifecycle, model_loader
from service.metrics import ServiceMetrics
from service.openapi import add_bearer_security
from service.routes import router
from service.settings import Settings
from service.web import router as web_router

log = logging.getLogger("drrn.service")
access_log = logging.getLogger("drrn.access")


class AccessLogMiddleware:
    """Pure ASGI middleware: request id on every response, one JSON access-log line and the request-duration
    metric per request, and a JSON 500 (never a dropped connection) for any exception a route lets escape.

    A cancelled request (uvicorn cancels what is still running when its graceful-shutdown timeout ends)
    still gets its log line and, if no response started yet, a JSON 503 ``shutting_down`` instead of
    uvicorn's plain-text 500; the cancellation is then re-raised.
    """

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics, retry_after_s: int) -> None:
        self.app, self.metrics, self.retry_after_s = app, metrics, retry_after_s

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
        except asyncio.CancelledError:
            rid = state.get("request_id", "-")
            log.warning("%s %s (request %s) cancelled by the server", scope["method"], scope["path"], rid)
            access = state.get("access", {})
            if not resp["started"]:
                if "rejection_counted_by" not in access:  # the batcher counts a request it held
                    self.metrics.on_reject(access.get("model"), "shutting_down")
                body = {"error": "shutting_down", "detail": "the server stopped before the request finished"}
                retry = [(b"retry-after", str(self.retry_after_s).encode())]
                with contextlib.suppress(Exception):  # the connection may be gone already
                    await _send_json(send_wrapper, 503, {**body, "limit": None, "request_id": rid}, retry)
            raise
        except Exception:
            rid = state.get("request_id", "-")
            log.exception("unhandled error in %s %s (request %s)", scope["method"], scope["path"], rid)
            self.metrics.errors.labels(kind="internal").inc()
            if not resp["started"]:
                body = {"error": "internal_error", "detail": "internal server error", "limit": None}
                await _send_json(send_wrapper, 500, {**body, "request_id": rid})
        finally:
            elapsed = time.perf_counter() - t0
            route = getattr(scope.get("route"), "path", "unmatched")
            model = self.metrics.label(state.get("access", {}).get("model"))
            self.metrics.request_duration.labels(
                route=route, status=str(resp["status"]), model=model
            ).observe(elapsed)
            fields = {
                "id": state.get("request_id"),
                "method": scope["method"],
                "path": scope["path"],
                "status": resp["status"],
                **state.get("access", {}),
                **({"key": state["api_key"]} if "api_key" in state else {}),  # the key's name, never the key
                "bytes_out": resp["bytes_out"],
                "total_ms": round(elapsed * 1000, 3),
            }
            access_log.info(
                "%s %s %s", scope["method"], scope["path"], resp["status"], extra={"fields": fields}
            )


async def _send_json(
    send: Send, status: int, body: dict[str, Any], extra_headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    payload = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    headers += extra_headers
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def create_app(settings: Settings | None = None, engines: Mapping[str, Engine] | None = None) -> FastAPI:
    """The service app. ``settings`` default to ``DRRN_*`` env vars. ``engines`` (tests, other backends)
    replace the repository's models: ``{name: engine}``, each engine's ``max_batch`` equal to the
    settings'; ``settings.default_model`` must be one of them."""
    settings = settings or Settings()
    if engines is not None and settings.max_batch is not None:
        bad = {n: e.max_batch for n, e in engines.items() if e.max_batch != settings.max_batch}
        if bad:
            raise ValueError(f"engine max_batch {bad} != settings.max_batch {settings.max_batch}")
    metrics = ServiceMetrics(settings.max_batch or 8)  # histogram buckets up to the largest batch
    config = UpscalerConfig(
        max_delay_ms=settings.max_delay_ms,
        max_queue_tiles=settings.max_queue_tiles,
        max_inflight=settings.max_inflight_requests,
        request_timeout_s=settings.request_timeout_s,
        retry_after_s=settings.retry_after_s,
        cpu_workers=settings.cpu_workers or min(4, os.cpu_count() or 1),
        upload_timeout_s=settings.upload_timeout_s,
        max_uploads=settings.max_uploads,
        deadline_admission=settings.deadline_admission,
        engine_stall_s=settings.engine_stall_s,
    )
    loader = model_loader(settings, engines)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        upscaler = Upscaler(config, settings.image_limits(), settings.default_model, metrics)
        app.state.upscaler = upscaler
        app.state.lifecycle = lifecycle = Lifecycle(settings, upscaler)
        try:
            await lifecycle.startup(loader)
            for name, m in upscaler.models.items():
                metrics.add_model(
                    name, {**m.card, "margin": m.margin, "default": name == upscaler.default_model}
                )
            yield
        finally:
            await lifecycle.shutdown()

    app = FastAPI(
        title="DRRN super-resolution",
        summary="Deep Recursive Residual Network (Tai et al., CVPR 2017) on ONNX Runtime",
        version="0.2.0",
        lifespan=lifespan,
    )
    app.state.settings, app.state.metrics = settings, metrics
    app.state.upscaler = app.state.lifecycle = None  # set by the lifespan
    install_exception_handlers(app)
    app.include_router(router)
    app.include_router(web_router)  # GET /: the try-it page (service/static)
    if settings.api_keys_file is not None:  # inside the access log: refusals get an id and a log line
        app.add_middleware(
            ApiKeyMiddleware,
            store=KeyStore(settings.api_keys_file),
            metrics=metrics,
            max_inflight=settings.api_key_max_inflight,
            retry_after_s=settings.retry_after_s,
            open_paths=open_paths(settings.metrics_require_key),
        )
        plain_openapi = app.openapi

        def openapi() -> dict[str, Any]:
            if app.openapi_schema is None:
                add_bearer_security(plain_openapi(), open_paths(settings.metrics_require_key))
            return app.openapi_schema

        app.openapi = openapi  # type: ignore[method-assign]
    app.add_middleware(AccessLogMiddleware, metrics=metrics, retry_after_s=settings.retry_after_s)
    return app
