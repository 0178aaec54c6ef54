"""What the OpenAPI document (``GET /openapi.json``, ``/docs``) says each route accepts and returns.

Declarations only: :mod:`service.routes` passes these to its decorators (``responses=``, ``openapi_extra=``),
so the routes stay thin and the whole HTTP contract reads in one place. Every status a route can return
is listed with its body: JSON of :class:`ErrorBody` for every error (the shape :mod:`service.errors` builds),
a PNG for ``/upscale``, Prometheus text for ``/metrics``, JSON models for the model listings. Every response
carries ``X-Request-ID``; ``/upscale``'s 503 carries ``Retry-After``.

``tests/test_api_schema.py`` holds a live ``drrn serve`` to this document with Schemathesis (no server
error; status code, content type, headers and body all as documented).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "DEFAULT_MODEL_RESPONSES",
    "HEALTHZ_RESPONSES",
    "LIST_MODELS_RESPONSES",
    "METRICS_RESPONSES",
    "READYZ_RESPONSES",
    "SHOW_MODEL_RESPONSES",
    "UPSCALE_EXTRA",
    "UPSCALE_RESPONSES",
    "ErrorBody",
    "ErrorLimit",
    "ModelEntry",
    "ModelList",
    "Status",
    "add_bearer_security",
]


class ErrorLimit(BaseModel):
    """The limit a request hit, e.g. ``{"name": "max_input_pixels", "value": 16000000}``."""

    name: str = Field(description="the setting's name (DRRN_ + upper case is its environment variable)")
    value: int | float | str | list[str] = Field(
        description="its value on this server (for `model`: the served names)"
    )


class ErrorBody(BaseModel):
    """Every error response (4xx and 5xx) has this JSON body."""

    error: str = Field(description="stable machine-readable code", examples=["corrupt_image"])
    detail: str = Field(description="one human-readable sentence")
    limit: ErrorLimit | None = Field(description="the limit that was hit, else null")
    request_id: str = Field(description="the request's id, also in the X-Request-ID header and the logs")


class Status(BaseModel):
    status: Literal["ok", "ready"]


class Serving(BaseModel):
    """The parameters a model is served with on this server (overrides applied)."""

    model_config = ConfigDict(extra="allow")
    tile: int = Field(description="tile side T in output pixels (the engine sees float32[N, 1, T, T])")
    margin: int = Field(description="context pixels around each tile's core")
    tile_shape: str = Field(
        description="fit: tiles shaped to each image; uniform: T x T where the image allows (CUDA batching)"
    )
    max_batch: int
    max_delay_ms: float
    max_queue_tiles: int
    request_timeout_s: float


class ModelEntry(BaseModel):
    """One served model: its model card (architecture, cost, quality table, provenance) plus how it is
    served here. Card fields beyond those named are passed through as they are in ``card.json``."""

    model_config = ConfigDict(extra="allow")
    name: str
    architecture: str = Field(examples=["DRRN_B1U9_C64"])
    depth: int = Field(description="convolution layers on the path from input to output")
    receptive_field: int = Field(description="2 * depth + 1 pixels")
    mflop_per_pixel: float = Field(description="MFLOP per output pixel")
    scales: list[float] = Field(description="the scales the model was trained on")
    default: bool = Field(description="the model a request without `model` gets")
    serving: Serving
    limits: dict[str, float] = Field(description="every request limit by name (the DRRN_* settings)")
    ready: bool = Field(description="loaded and warmed up")


class ModelList(BaseModel):
    default: str = Field(description="the name a request without `model` gets")
    models: list[ModelEntry]


def _headers(*names: str) -> dict[str, Any]:
    known = {
        "X-Request-ID": {"description": "your X-Request-ID if it was sane, else a fresh id"},
        "Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}},
        "Server-Timing": {"description": "read, decode, queue, infer, encode and total, in ms"},
        "WWW-Authenticate": {
            "description": 'Bearer realm="drrn" (with error="invalid_token" for a wrong key)'
        },
    }
    return {name: {"required": True, "schema": {"type": "string"}, **known[name]} for name in names}


def _error(description: str, *headers: str) -> dict[str, Any]:
    return {
        "model": ErrorBody,
        "description": description,
        "headers": _headers("X-Request-ID", *headers),
    }


def _ok(description: str, content: dict[str, Any] | None = None, *headers: str) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description, "headers": _headers("X-Request-ID", *headers)}
    if content is not None:
        out["content"] = content
    return out


_BINARY = {"schema": {"type": "string", "format": "binary"}}
_NOT_READY = "`not_ready`: the service is starting (no model loaded yet)"

HEALTHZ_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "model": Status,
        **_ok('`{"status": "ok"}`: the process can serve (or is warming up, or draining)'),
    },
    503: _error("`unhealthy`: warmup failed or the batcher died; restart the process"),
}
READYZ_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": Status, **_ok('`{"status": "ready"}`: every model is loaded and warm')},
    503: _error("`not_ready`: starting, draining, or failed (the detail says which)"),
}
METRICS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: _ok("Prometheus text exposition format", {"text/plain": {"schema": {"type": "string"}}}),
}
LIST_MODELS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": ModelList, **_ok("every served model and the default's name")},
    503: _error(_NOT_READY),
}
SHOW_MODEL_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": ModelEntry, **_ok("the model's entry")},
    404: _error("`not_found`: a name containing `/` (encoded or not) matches no route"),
    422: _error("`unknown_model`: `limit.value` lists the served names"),
    503: _error(_NOT_READY),
}
DEFAULT_MODEL_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": ModelEntry, **_ok("the default model's entry")},
    503: _error(_NOT_READY),
}

UPSCALE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: _ok(
        "the upscaled image, ceil(h*scale) x ceil(w*scale), as PNG (8- or 16-bit like the input)",
        {"image/png": _BINARY},
        "Server-Timing",
    ),
    400: _error("`empty_body`, `corrupt_image` (truncated or malformed), `bad_multipart`"),
    401: _error(
        "`unauthorized`: a missing or wrong `Authorization: Bearer` key (when DRRN_API_KEYS_FILE is set)",
        "WWW-Authenticate",
    ),
    408: _error("`upload_timeout`: the body did not arrive within DRRN_UPLOAD_TIMEOUT_S"),
    413: _error(
        "`upload_too_large` (DRRN_MAX_UPLOAD_BYTES), `input_too_large` (DRRN_MAX_INPUT_PIXELS, read from the "
        "header before decoding), `too_many_tiles` (DRRN_MAX_QUEUE_TILES), `deadline_unreachable` (the "
        "request alone needs more engine time than DRRN_REQUEST_TIMEOUT_S)"
    ),
    415: _error("`unsupported_format` (not JPEG, PNG, WebP, BMP or TIFF), `unsupported_media_type`"),
    422: _error(
        "`bad_scale` (missing, not a number, <= 1 or over DRRN_MAX_SCALE), `bad_ensemble`, `unknown_model`, "
        "`missing_image` (multipart without an `image` file), `output_too_large` "
        "(DRRN_MAX_OUTPUT_PIXELS), `output_too_large_for_ensemble` (DRRN_MAX_ENSEMBLE_OUTPUT_PIXELS)"
    ),
    500: _error("`engine_error`: inference failed (only the requests batched with it fail)"),
    429: _error(
        "`quota_exceeded`: the key's DRRN_API_KEY_MAX_INFLIGHT requests are in flight", "Retry-After"
    ),
    503: _error(
        "`queue_full`, `overloaded` (DRRN_MAX_INFLIGHT_REQUESTS, DRRN_MAX_UPLOADS, DRRN_MAX_CONNECTIONS), "
        "`backlog` (the work queued ahead would make it miss its deadline; Retry-After from the queue), "
        "`not_ready` or `shutting_down`",
        "Retry-After",
    ),
    504: _error("`deadline_exceeded`: not finished within DRRN_REQUEST_TIMEOUT_S of arrival"),
}

# The route reads the raw stream itself (to enforce the byte limit while reading), so the body and the
# `scale` parameter are documented here rather than derived from the signature.
UPSCALE_EXTRA: dict[str, Any] = {
    "parameters": [
        {
            "name": "scale",
            "in": "query",
            "required": True,
            "description": "the scale factor: 2, 3, 4 (trained) or any real in (1, DRRN_MAX_SCALE] "
            "(4 by default; GET /v1/models shows it under limits.max_scale). Missing or out of range: "
            "422 `bad_scale`.",
            "schema": {"type": "number", "exclusiveMinimum": 1, "examples": [2, 2.5, 4]},
        }
    ],
    "requestBody": {
        "required": True,
        "description": "the image (JPEG, PNG, WebP, BMP or TIFF): the raw body with an `image/*` or "
        "`application/octet-stream` type (or none), or multipart/form-data with the file in field `image`",
        "content": {
            "image/*": _BINARY,
            "application/octet-stream": _BINARY,
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"image": _BINARY["schema"]},
                    "required": ["image"],
                }
            },
        },
    },
}


def add_bearer_security(schema: dict[str, Any], open_paths: frozenset[str]) -> dict[str, Any]:
    """Declare the API keys in ``schema`` (in place; returned): an HTTP bearer scheme, required by every
    operation whose path is not in ``open_paths`` (:func:`service.auth.open_paths`). Only when the server
    has keys (``DRRN_API_KEYS_FILE``): without them nothing asks for one, and the document says so."""
    components = schema.setdefault("components", {})
    components.setdefault("securitySchemes", {})["apiKey"] = {
        "type": "http",
        "scheme": "bearer",
        "description": "an API key from DRRN_API_KEYS_FILE (`drrn keys add`): `Authorization: Bearer <key>`",
    }
    for path, operations in schema.get("paths", {}).items():
        if path in open_paths:
            continue
        for operation in operations.values():
            operation["security"] = [{"apiKey": []}]
    return schema
