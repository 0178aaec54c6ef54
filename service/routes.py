"""HTTP routes: validate, then one await on the :class:`~inference.upscaler.Upscaler`. No inference logic and
no error mapping here (``service.errors`` maps domain errors to HTTP in one place).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import ClientDisconnect

from inference.upscaler import Upscaler
from inference.upscaler_types import ClientGoneError, ServedModel
from service import openapi as api
from service.errors import REQUEST_ID_HEADER, ServiceError, error_response, request_id
from service.upload import MULTIPART_OVERHEAD, read_image

__all__ = ["MULTIPART_OVERHEAD", "router"]

router = APIRouter()


def _upscaler(request: Request) -> Upscaler:
    upscaler = request.app.state.upscaler
    if upscaler is None:  # no lifespan ran (a test client without it): nothing can be served
        raise ServiceError(503, "not_ready", "service is starting up", reason="not_ready")
    return upscaler


@router.get(
    "/healthz",
    summary="Liveness: 200 unless warmup failed or the batcher died (then 503)",
    operation_id="healthz",
    responses=api.HEALTHZ_RESPONSES,
)
async def healthz(request: Request) -> Response:
    failure = _upscaler(request).unhealthy
    if failure is not None:  # this process can never serve: let the orchestrator restart it
        return error_response(request, 503, "unhealthy", failure)
    return JSONResponse({"status": "ok"})


@router.get(
    "/readyz",
    summary="Readiness: 200 once every model is loaded and warm and the batcher runs",
    operation_id="readyz",
    responses=api.READYZ_RESPONSES,
)
async def readyz(request: Request) -> Response:
    up = _upscaler(request)
    if up.ready:
        return JSONResponse({"status": "ready"})
    failure = up.unhealthy
    detail = (
        f"failed: {failure}"
        if failure
        else {"starting": "loading and warming up the models"}.get(up.phase.value, "shutting down")
    )
    return error_response(request, 503, "not_ready", detail)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    operation_id="metrics",
    responses=api.METRICS_RESPONSES,
)
async def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


def _entry(request: Request, m: ServedModel) -> dict[str, Any]:
    """One model as the API shows it: its card, the serving parameters it runs with, and the limits."""
    s, up = request.app.state.settings, _upscaler(request)
    serving = {
        "tile": m.tile,
        "margin": m.margin,
        "tile_shape": m.tile_shape,
        "max_batch": m.engine.max_batch,
        "max_delay_ms": s.max_delay_ms,
        "max_queue_tiles": s.max_queue_tiles,
        "request_timeout_s": s.request_timeout_s,
    }
    # Server paths stay private; tile and margin are shown as served (overrides applied), under "serving".
    card = {k: v for k, v in m.card.items() if k not in ("tile", "margin", "serving", "model_path")}
    return {
        **card,
        "name": m.name,
        "default": m.name == up.default_model,
        "serving": serving,
        "limits": s.limits_dict(),
        "ready": up.ready,
    }


@router.get(
    "/v1/models",
    summary="Every served model: cost, quality, serving parameters; which is default",
    operation_id="list_models",
    response_model=None,  # the body is documented by responses[200]; returned as built
    responses=api.LIST_MODELS_RESPONSES,
)
async def list_models(request: Request) -> dict[str, Any]:
    up = _upscaler(request)
    return {"default": up.default_model, "models": [_entry(request, m) for m in up.models.values()]}


@router.get(
    "/v1/models/{name}",
    summary="One served model (422 with the valid names if unknown)",
    operation_id="show_model",
    response_model=None,  # the body is documented by responses[200]; returned as built
    responses=api.SHOW_MODEL_RESPONSES,
)
async def show_model(request: Request, name: str = Path(description="model name")) -> dict[str, Any]:
    return _entry(request, _upscaler(request).resolve(name))


@router.get(
    "/v1/model",
    summary="The default model (alias of /v1/models/{default}, for older clients)",
    operation_id="default_model",
    response_model=None,  # the body is documented by responses[200]; returned as built
    responses=api.DEFAULT_MODEL_RESPONSES,
)
async def default_model(request: Request) -> dict[str, Any]:
    return _entry(request, _upscaler(request).resolve(None))


async def _disconnected(request: Request) -> None:
    """Return when the client goes away (the body has been read, so only ``http.disconnect`` is left)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _read(request: Request) -> bytes:
    try:
        return await read_image(request, request.app.state.upscaler.limits)
    except ClientDisconnect:
        raise ClientGoneError("client closed the connection mid-upload") from None


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


@router.post(
    "/upscale",
    summary="Super-resolve an image; returns PNG",
    response_class=Response,
    operation_id="upscale",
    responses=api.UPSCALE_RESPONSES,
    openapi_extra=api.UPSCALE_EXTRA,
)
async def upscale(
    request: Request,
    scale: str | None = Query(None, include_in_schema=False),  # documented (required) in api.UPSCALE_EXTRA
    model: str | None = Query(None, description="served model name (GET /v1/models); default if absent"),
    ensemble: str | None = Query(
        None, description="1 (default) or 8: average the 8 flips/rotations (8x the work; own output limit)"
    ),
) -> Response:
    """Body: multipart field ``image``, or the raw image with an ``image/*`` or octet-stream type."""
    rid = request_id(request)
    request.state.access = facts = {}
    result = await _upscaler(request).upscale(
        lambda: _read(request), scale, model, rid, facts, lambda: _disconnected(request), ensemble
    )
    timing = ", ".join(f"{k};dur={_ms(v)}" for k, v in result.timings.items())
    headers = {REQUEST_ID_HEADER: rid, "Server-Timing": timing}
    return Response(result.png, media_type="image/png", headers=headers)
