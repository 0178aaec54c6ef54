"""HTTP routes: validate, hand CPU work to a thread pool, await the batcher. No inference logic here.

``POST /upscale`` stages, all under one deadline (arrival + request_timeout_s; past it: 504):
read body (byte limit enforced while streaming) -> ``pipeline.probe`` (header only: sizes and tile count,
refused early with 413/503 when the batcher could not take that many tiles) -> ``pipeline.prepare`` in the
CPU pool (decode, bicubic, tiles) -> ``batcher.submit`` (cancelled if the client disconnects) ->
``pipeline.finish`` in the CPU pool (stitch, colour, PNG).

A deadline that passes while a CPU-pool step runs answers 504 at once; the thread finishes that step in the
background (a running thread cannot be interrupted) and its result is dropped.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import ClientDisconnect

from inference import pipeline
from inference.batcher import BatcherError, DeadlineExceededError
from inference.pipeline import ImageError
from service.errors import (
    REQUEST_ID_HEADER,
    ServiceError,
    error_response,
    from_batcher_error,
    from_image_error,
    request_id,
)
from service.state import ServiceState
from service.upload import MULTIPART_OVERHEAD, read_image

__all__ = ["MULTIPART_OVERHEAD", "ServiceState", "router"]

T = TypeVar("T")
router = APIRouter()


def _state(request: Request) -> ServiceState:
    return request.app.state.drrn


@router.get("/healthz", summary="Liveness: 200 unless warmup failed or the batcher died (then 503)")
async def healthz(request: Request) -> Response:
    failure = _state(request).failure
    if failure is not None:  # this process can never serve: let the orchestrator restart it
        return error_response(request, 503, "unhealthy", failure)
    return JSONResponse({"status": "ok"})


@router.get("/readyz", summary="Readiness: 200 once the model is loaded, warm and the batcher runs")
async def readyz(request: Request) -> Response:
    st = _state(request)
    if st.is_ready:
        return JSONResponse({"status": "ready"})
    if st.shutting_down:
        detail = "shutting down"
    elif st.failure:
        detail = f"failed: {st.failure}"
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
    arrival = asyncio.get_running_loop().time()
    rid = request_id(request)
    request.state.access = access = {"scale": scale}
    retry = {"Retry-After": str(st.settings.retry_after_s)}
    if not st.is_ready:
        failure = st.failure
        if st.shutting_down:
            code, detail = "shutting_down", "service is shutting down; retry (another replica)"
        else:
            code, detail = "not_ready", f"service failed: {failure}" if failure else "service is starting up"
        st.metrics.on_reject(code)
        raise ServiceError(503, code, detail, headers=retry)
    if st.inflight >= st.settings.max_inflight_requests:
        st.metrics.on_reject("overloaded")
        limit = {"name": "max_inflight_requests", "value": st.settings.max_inflight_requests}
        raise ServiceError(503, "overloaded", "too many requests in flight; retry later", limit, retry)
    st.enter()
    try:
        return await _upscale(request, st, scale, rid, access, arrival)
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
        st.leave()


def _timed(fn: Callable[..., T], *args: Any) -> tuple[T, float]:
    """``fn(*args)`` and the seconds it ran (measured on the thread that runs it, so a wait for a pool
    thread is not included)."""
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


async def _upscale(
    request: Request, st: ServiceState, raw_scale: str | None, rid: str, access: dict, arrival: float
) -> Response:
    loop = asyncio.get_running_loop()
    s, t_start = st.settings, time.perf_counter()
    timings: dict[str, float] = {}
    stage = "read"
    try:
        async with asyncio.timeout_at(arrival + s.request_timeout_s):
            scale = pipeline.parse_scale(raw_scale, st.limits)
            data = await read_image(request, st.limits)
            timings["read"] = time.perf_counter() - t_start
            access["bytes_in"] = len(data)

            stage = "decode"
            t0 = time.perf_counter()
            (w, h), (ow, oh) = pipeline.probe(data, scale, st.limits)
            n_tiles = pipeline.count_tiles((ow, oh), s.tile, st.margin)
            access.update(input=f"{w}x{h}", output=f"{ow}x{oh}", tiles=n_tiles)
            st.batcher.check_capacity(n_tiles)  # refuse before the expensive part; submit checks again
            probe_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            prepared, prepare_s = await loop.run_in_executor(
                st.cpu_pool, _timed, pipeline.prepare, data, scale, st.limits, s.tile, st.margin
            )
            cpu_wait_s = time.perf_counter() - t0 - prepare_s
            timings["decode"] = probe_s + prepare_s
            del data  # the encoded upload is no longer needed while tiles wait for the engine
            (w, h), (ow, oh) = prepared.input_size, prepared.output_size  # upright (EXIF applied)
            access.update(input=f"{w}x{h}", output=f"{ow}x{oh}")
            st.metrics.decode.observe(timings["decode"])
            st.metrics.input_megapixels.observe(w * h / 1e6)
            st.metrics.request_tiles.observe(n_tiles)

            stage = "queue"  # the batcher counts its own rejections, deadline included
            submit = st.batcher.submit(prepared.tiles, arrival + s.request_timeout_s, rid)
            result = await _unless_disconnected(request, submit)
            timings["queue"], timings["infer"] = result.queue_wait_s, result.infer_s

            stage = "encode"
            t0 = time.perf_counter()
            png, encode_s = await loop.run_in_executor(
                st.cpu_pool, _timed, pipeline.finish, prepared, result.outputs
            )
            cpu_wait_s += time.perf_counter() - t0 - encode_s
            timings["encode"] = encode_s
            st.metrics.encode.observe(encode_s)
    except TimeoutError:
        if stage != "queue":
            st.metrics.on_reject("deadline")
        access["timed_out_in"] = stage
        raise DeadlineExceededError(f"request {rid} exceeded its deadline during {stage}") from None
    timings["total"] = loop.time() - arrival
    access.update(
        bytes_out=len(png),
        engine_runs=result.engine_runs,
        cpu_wait_ms=round(cpu_wait_s * 1000, 3),
        **{f"{k}_ms": round(v * 1000, 3) for k, v in timings.items() if k != "total"},
    )
    server_timing = ", ".join(f"{k};dur={_ms(v)}" for k, v in timings.items())
    return Response(
        png, media_type="image/png", headers={REQUEST_ID_HEADER: rid, "Server-Timing": server_timing}
    )
