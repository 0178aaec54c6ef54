"""Every error the service returns is JSON of one shape::

    {"error": code, "detail": human message, "limit": {"name": ..., "value": ...} | null, "request_id": ...}

This module is the one place where domain errors become HTTP: :func:`to_service_error` maps the Upscaler's
request outcomes (:mod:`inference.upscaler_types`), pipeline (:class:`~inference.pipeline.ImageError`) and
batcher errors to that shape, and :func:`install_exception_handlers` registers handlers that answer with it
and count each rejection once (``drrn_rejections_total{reason, model}``; the batcher counts the outcomes it
decides itself, queue_full, too_large, deadline in the queue, shutting_down, cancelled, so those map with
``reason=None`` here). Validation errors, unknown routes and unexpected exceptions use the same shape.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from engines.repository import UnknownModelError
from inference.batch_types import (
    BacklogError,
    BatcherError,
    DeadlineExceededError,
    DeadlineUnreachableError,
    EngineError,
    QueueFullError,
    RequestTooLargeError,
    ShuttingDownError,
)
from inference.image_limits import ImageError
from inference.upscaler_types import (
    ClientGoneError,
    NotReadyError,
    OverloadedError,
    StageDeadlineError,
    UploadTimeoutError,
)

log = logging.getLogger("drrn.service")
REQUEST_ID_HEADER = "X-Request-ID"
_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")


class ServiceError(Exception):
    """An HTTP error with the service's JSON body; ``reason`` labels ``drrn_rejections_total`` (None = a
    server-side error, counted in ``drrn_errors_total`` instead)."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        limit: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.limit = status, code, detail, limit
        self.headers, self.reason = headers or {}, reason


def sane_request_id(incoming: str | None) -> str:
    """``incoming`` if it is a sane id (1-128 chars of ``[A-Za-z0-9-_.:]``, safe in logs and headers), else a
    new uuid4 hex."""
    if incoming and len(incoming) <= 128 and set(incoming) <= _ID_CHARS:
        return incoming
    return uuid.uuid4().hex


def request_id(request: Request) -> str:
    """The request's id, assigned once (by the access-log middleware, or here) and kept on ``request.state``
    so logs, headers and error bodies agree."""
    rid = getattr(request.state, "request_id", None)
    if rid is None:
        rid = request.state.request_id = sane_request_id(request.headers.get(REQUEST_ID_HEADER))
    return rid


def error_response(
    request: Request,
    status: int,
    code: str,
    detail: str,
    limit: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    rid = request_id(request)
    body = {"error": code, "detail": detail, "limit": limit, "request_id": rid}
    return JSONResponse(body, status_code=status, headers={**(headers or {}), REQUEST_ID_HEADER: rid})


def from_image_error(exc: ImageError) -> ServiceError:
    """Pipeline input errors (400/413/415/422) keep their status, code and limit."""
    reason = "too_large" if exc.status == 413 else "bad_input"
    return ServiceError(exc.status, exc.code, exc.detail, exc.limit, reason=reason)


def from_batcher_error(exc: BatcherError, request_timeout_s: float, retry_after_s: int) -> ServiceError:
    """Batcher outcomes -> HTTP: full queue/shutdown 503 + Retry-After, too many tiles 413, deadline 504,
    engine failure 500. The batcher counted its own rejections (reason=None here), except a deadline
    that passed outside it (:class:`StageDeadlineError`)."""
    retry = {"Retry-After": str(retry_after_s)}
    if isinstance(exc, QueueFullError):
        limit = {"name": "max_queue_tiles", "value": exc.max_queue_tiles}
        return ServiceError(503, "queue_full", f"server busy: {exc}; retry later", limit, retry)
    if isinstance(exc, RequestTooLargeError):
        limit = {"name": "max_queue_tiles", "value": exc.max_queue_tiles}
        return ServiceError(413, "too_many_tiles", f"image too large for this server: {exc}", limit)
    if isinstance(exc, DeadlineUnreachableError):
        limit = {"name": "request_timeout_s", "value": request_timeout_s}
        detail = f"image too large to finish in time on this server: {exc}; send a smaller image or scale"
        return ServiceError(413, "deadline_unreachable", detail, limit)
    if isinstance(exc, BacklogError):
        limit = {"name": "request_timeout_s", "value": request_timeout_s}
        headers = {"Retry-After": str(exc.retry_after_s)}
        return ServiceError(503, "backlog", f"server busy: {exc}; retry later", limit, headers)
    if isinstance(exc, DeadlineExceededError):
        limit = {"name": "request_timeout_s", "value": request_timeout_s}
        reason = "deadline" if isinstance(exc, StageDeadlineError) else None
        detail = f"request not finished within {request_timeout_s}s"
        return ServiceError(504, "deadline_exceeded", detail, limit, reason=reason)
    if isinstance(exc, ShuttingDownError):
        return ServiceError(503, "shutting_down", str(exc), headers=retry)
    if isinstance(exc, EngineError):
        return ServiceError(500, "engine_error", "inference failed; the request id identifies the server log")
    return ServiceError(500, "internal_error", "unexpected batcher error")


def to_service_error(exc: Exception, request_timeout_s: float, retry_after_s: int) -> ServiceError:
    """Any request outcome the service knows -> its HTTP error (status, code, limit, rejection reason)."""
    retry = {"Retry-After": str(retry_after_s)}
    if isinstance(exc, ServiceError):
        return exc
    if isinstance(exc, ImageError):
        return from_image_error(exc)
    if isinstance(exc, BatcherError):
        return from_batcher_error(exc, request_timeout_s, retry_after_s)
    if isinstance(exc, NotReadyError):
        return ServiceError(503, exc.code, str(exc), headers=retry, reason=exc.code)
    if isinstance(exc, OverloadedError):
        limit = {"name": exc.limit, "value": exc.value}
        return ServiceError(503, "overloaded", str(exc), limit, retry, reason="overloaded")
    if isinstance(exc, UploadTimeoutError):
        limit = {"name": "upload_timeout_s", "value": exc.upload_timeout_s}
        headers = {"Connection": "close"}  # the rest of the body is not wanted
        return ServiceError(408, "upload_timeout", str(exc), limit, headers, reason="upload_timeout")
    if isinstance(exc, UnknownModelError):
        limit = {"name": "model", "value": exc.valid}
        return ServiceError(422, "unknown_model", str(exc), limit, reason="bad_input")
    if isinstance(exc, ClientGoneError):
        reason = None if exc.in_queue else "client_disconnected"  # in the queue: the batcher counted it
        return ServiceError(499, "client_disconnected", str(exc), reason=reason)
    raise TypeError(f"not a request outcome: {exc!r}")


DOMAIN_ERRORS = (ServiceError, ImageError, BatcherError, NotReadyError, OverloadedError, UnknownModelError)
DOMAIN_ERRORS += (ClientGoneError, UploadTimeoutError)


def install_exception_handlers(app: FastAPI) -> None:
    """JSON bodies (and rejection counts) for every domain error, validation errors and HTTP errors
    (404/405). Unexpected exceptions are turned into a JSON 500 by :class:`service.app.AccessLogMiddleware`.
    Needs ``app.state.settings`` and ``app.state.metrics``."""

    async def _domain_error(request: Request, exc: Exception) -> JSONResponse:
        settings, metrics = request.app.state.settings, request.app.state.metrics
        err = to_service_error(exc, settings.request_timeout_s, settings.retry_after_s)
        access = getattr(request.state, "access", None)  # set by /upscale only: lookups are not rejections
        if err.reason and access is not None:
            metrics.on_reject(access.get("model"), err.reason)
        return error_response(request, err.status, err.code, err.detail, err.limit, err.headers)

    for cls in DOMAIN_ERRORS:
        app.add_exception_handler(cls, _domain_error)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(x) for x in e.get('loc', ()))}: {e.get('msg', '')}" for e in exc.errors()]
        return error_response(request, 422, "validation_error", "; ".join(parts) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed"}
        headers = dict(exc.headers or {})
        return error_response(
            request, exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail), None, headers
        )
