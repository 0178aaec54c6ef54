"""HTTP routes: validate, hand CPU work to a thread pool, await the batcher. No inference logic here.

``POST /upscale`` stages: read body (byte limit enforced while streaming) -> ``pipeline.prepare`` in the CPU
pool (decode, bicubic, tiles) -> ``batcher.submit`` (deadline = arrival + request_timeout_s; cancelled if the
client disconnects) -> ``pipeline.finish`` in the CPU pool (stitch, colour, PNG).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from service import pipeline
from service.batcher import BatcherError, TileBatcher
from service.engine import Engine
from service.errors import (
    REQUEST_ID_HEADER,
    ServiceError,
    error_response,
    from_batcher_error,
    from_image_error,
    request_id,
)
from service.metrics import ServiceMetrics
from service.pipeline import ImageError, ImageLimits
from service.settings import Settings

T = TypeVar("T")
MULTIPART_OVERHEAD = 64 * 1024  # boundaries and part headers allowed on top of max_upload_bytes
router = APIRouter()


@dataclass
class ServiceState:
    """What the routes share; built by :func:`service.app.create_app`, filled in by its lifespan."""

    settings: Settings
    metrics: ServiceMetrics
    limits: ImageLimits
    cpu_pool: ThreadPoolExecutor | None = None  # decode/encode threads, created by the lifespan
    engine: Engine | None = None
    batcher: TileBatcher | None = None
    margin: int = 0
    ready: bool = False
    shutting_down: bool = False  # set from uvicorn's signal handler: plain bool writes only
    startup_error: str | None = None
    inflight: int = 0
    model_info: dict[str, Any] = field(default_factory=dict)

    @property
    def is_ready(self) -> bool:
        return self.ready and not self.shutting_down and self.batcher is not None and self.batcher.running


def _state(request: Request) -> ServiceState:
    return request.app.state.drrn


@router.get("/healthz", summary="Liveness: 200 while the process runs")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: 200 once the model is loaded, warm and the batcher runs")
async def readyz(request: Request) -> Response:
    st = _state(request)
    if st.is_ready:
        return JSONResponse({"status": "ready"})
    if st.shutting_down:
        detail = "shutting down"
    elif st.startup_error:
        detail = f"startup failed: {st.startup_error}"
    else:
        detail = "loading and warming up the model"
    return error_response(request, 503, "not_ready", detail)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    return Response(_state(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/model", summary="The served model, serving parameters and request limits")
async def model(request: Request) -> dict[str, Any]:
    st = _state(request)
    s = st.settings
    return {
        **st.model_info,
        "serving": {
            "tile": s.tile,
            "margin": st.margin,
            "max_batch": s.max_batch,
            "max_delay_ms": s.max_delay_ms,
            "max_queue_tiles": s.max_queue_tiles,
            "request_timeout_s": s.request_timeout_s,
        },
        "limits": s.limits_dict(),
        "ready": st.is_ready,
    }


async def _limited(request: Request, cap: int, envelope: int, limits: ImageLimits) -> AsyncIterator[bytes]:
    """The request body, failing with 413 as soon as more than ``cap`` bytes have arrived."""
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > cap:
            pipeline.check_upload_size(total - envelope, limits)
        yield chunk


async def read_image(request: Request, limits: ImageLimits) -> bytes:
    """The uploaded image: multipart field ``image``, or the raw body (``image/*``, octet-stream or no type).

    Never holds more than ``max_upload_bytes`` (+ a multipart envelope) of body in memory.
    """
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    multipart = media == "multipart/form-data"
    if media and not (multipart or media.startswith("image/") or media == "application/octet-stream"):
        raise ServiceError(
            415,
            "unsupported_media_type",
            f"content type {media!r}: send the image as multipart field 'image' or as a raw body with "
            "an image/* or application/octet-stream content type",
            reason="bad_input",
        )
    envelope = MULTIPART_OVERHEAD if multipart else 0
    cap = limits.max_upload_bytes + envelope
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > cap:  # refuse before reading anything
        pipeline.check_upload_size(int(length) - envelope, limits)
    stream = _limited(request, cap, envelope, limits)
    if not multipart:
        body = bytearray()
        async for chunk in stream:
            body += chunk
        return bytes(body)
    try:
        form = await MultiPartParser(request.headers, stream, max_files=1, max_fields=8).parse()
    except MultiPartException as exc:
        raise ServiceError(
            400, "bad_multipart", f"malformed multipart body: {exc}", reason="bad_input"
        ) from exc
    try:
        upload = form.get("image")
        if not isinstance(upload, UploadFile):
            raise ServiceError(
                422, "missing_image", "multipart body has no file field named 'image'", reason="bad_input"
            )
        data = await upload.read()
        pipeline.check_upload_size(len(data), limits)
        return data
    finally:
        await form.close()


async def _disconnected(request: Request) -> None:
    """Return when the client goes away (the body has been read, so only ``http.disconnect`` is left)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``; if the client disconnects first, cancel it (the batcher drops the queued tiles)."""
    task, watch = asyncio.ensure_future(work), asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done() and watch.exception() is not None:
            await asyncio.wait({task})  # a failing receive() is not a disconnect: keep waiting
    finally:
        watch.cancel()
        if not task.done():  # disconnected, or we were cancelled ourselves (server shutdown)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    if task.cancelled():
        raise ServiceError(499, "client_disconnected", "client closed the connection; work cancelled")
    return task.result()


_BINARY = {"schema": {"type": "string", "format": "binary"}}
_UPLOAD_BODY = {  # documented by hand: the route reads the raw stream itself to enforce the byte limit
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {"type": "object", "properties": {"image": _BINARY["schema"]}, "required": ["image"]}
        },
        "image/*": _BINARY,
        "application/octet-stream": _BINARY,
    },
}


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


@router.post(
    "/upscale",
    summary="Super-resolve an image; returns PNG",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, 413: {}, 415: {}, 422: {}, 503: {}, 504: {}},
    openapi_extra={"requestBody": _UPLOAD_BODY},
)
async def upscale(
    request: Request,
    scale: str | None = Query(None, description="2, 3, 4 or any real in (1, max_scale]"),
) -> Response:
    """Body: multipart field ``image``, or the raw image with an ``image/*`` or octet-stream type."""
    st = _state(request)
    rid = request_id(request)
    request.state.access = access = {"scale": scale}
    if not st.is_ready:
        retry = {"Retry-After": str(st.settings.retry_after_s)}
        code = "shutting_down" if st.shutting_down else "not_ready"
        st.metrics.on_reject(code)
        raise ServiceError(503, code, "service is starting up or shutting down", headers=retry)
    if st.inflight >= st.settings.max_inflight_requests:
        st.metrics.on_reject("overloaded")
        limit = {"name": "max_inflight_requests", "value": st.settings.max_inflight_requests}
        retry = {"Retry-After": str(st.settings.retry_after_s)}
        raise ServiceError(503, "overloaded", "too many requests in flight; retry later", limit, retry)
    st.inflight += 1
    st.metrics.inflight.set(st.inflight)
    try:
        return await _upscale(request, st, scale, rid, access)
    except ImageError as exc:
        err = from_image_error(exc)
        st.metrics.on_reject(err.reason or "bad_input")
        raise err from None
    except BatcherError as exc:
        raise from_batcher_error(exc, st.settings.request_timeout_s, st.settings.retry_after_s) from None
    except ClientDisconnect:
        st.metrics.on_reject("client_disconnected")
        raise ServiceError(499, "client_disconnected", "client closed the connection mid-upload") from None
    except ServiceError as exc:
        if exc.reason:
            st.metrics.on_reject(exc.reason)
        raise
    finally:
        st.inflight -= 1
        st.metrics.inflight.set(st.inflight)


async def _upscale(
    request: Request, st: ServiceState, raw_scale: str | None, rid: str, access: dict
) -> Response:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + st.settings.request_timeout_s
    scale = pipeline.parse_scale(raw_scale, st.limits)
    data = await read_image(request, st.limits)
    access["bytes_in"] = len(data)

    t0 = time.perf_counter()
    prepared = await loop.run_in_executor(
        st.cpu_pool, pipeline.prepare, data, scale, st.limits, st.settings.tile, st.margin
    )
    decode_s = time.perf_counter() - t0
    del data  # the encoded upload is no longer needed while tiles wait for the engine
    (w, h), (ow, oh) = prepared.input_size, prepared.output_size
    n_tiles = len(prepared.tiles)
    access.update(input=f"{w}x{h}", output=f"{ow}x{oh}", tiles=n_tiles)
    st.metrics.decode.observe(decode_s)
    st.metrics.input_megapixels.observe(w * h / 1e6)
    st.metrics.request_tiles.observe(n_tiles)

    result = await _unless_disconnected(request, st.batcher.submit(prepared.tiles, deadline, rid))
    st.metrics.queue_wait.observe(result.queue_wait_s)

    t0 = time.perf_counter()
    png = await loop.run_in_executor(st.cpu_pool, pipeline.finish, prepared, result.outputs)
    encode_s = time.perf_counter() - t0
    st.metrics.encode.observe(encode_s)

    timings = {"decode": decode_s, "queue": result.queue_wait_s, "infer": result.infer_s, "encode": encode_s}
    access.update(
        bytes_out=len(png),
        engine_runs=result.engine_runs,
        **{f"{k}_ms": round(v * 1000, 3) for k, v in timings.items()},
    )
    server_timing = ", ".join(f"{k};dur={_ms(v)}" for k, v in timings.items())
    return Response(
        png, media_type="image/png", headers={REQUEST_ID_HEADER: rid, "Server-Timing": server_timing}
    )
