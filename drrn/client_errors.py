"""Typed errors of :mod:`drrn.client`, built from the service's JSON error body.

Every error the service answers has one shape (``service/errors.py``)::

    {"error": code, "detail": message, "limit": {"name": ..., "value": ...} | null, "request_id": ...}

:func:`error_from_response` turns one into an exception whose class says what the caller can do about it:

    DRRNError
    ├── ClientError            4xx: the request is wrong; retrying it cannot help (never retried)
    │   ├── InvalidImage       400 empty_body / corrupt_image, 415 (subclass UnsupportedImage)
    │   ├── ImageTooLarge      413 upload/input too large, too_many_tiles; 422 output_too_large[_for_ensemble]
    │   ├── InvalidParameter   422 bad_scale / bad_ensemble / validation_error (subclass UnknownModel)
    │   └── Unauthorized       401: the server wants an API key and got none, or a wrong one
    ├── ServerBusy             503 (queue_full, overloaded, not_ready, shutting_down, no_upstream) after the
    │   │                      client's retries and time budget were used up
    │   └── QuotaExceeded      429: this API key already has the server's limit of requests in flight
    ├── ServerError            5xx other than 503: 500 engine_error, 504 deadline_exceeded (DeadlineExceeded)
    ├── ConnectionFailed       no HTTP answer (refused, reset, DNS) after the retries
    └── RequestTimeout         an attempt exceeded the client's own timeout (not retried: the server is busy
                               with it)

Only the standard library here: this module is imported by the torch/numpy-free client.
"""

from __future__ import annotations

from typing import Any


class DRRNError(Exception):
    """Base class. ``status`` (0 when there was no HTTP answer), ``code`` (the body's ``error``),
    ``detail``, ``limit`` (``{"name", "value"}`` or None), ``request_id``, ``body`` (the parsed JSON, or
    None) and ``attempts`` (how many requests were sent)."""

    def __init__(
        self,
        detail: str,
        *,
        status: int = 0,
        code: str = "",
        limit: dict[str, Any] | None = None,
        request_id: str | None = None,
        body: dict[str, Any] | None = None,
        attempts: int = 1,
    ) -> None:
        super().__init__(detail)
        self.detail, self.status, self.code, self.limit = detail, status, code, limit
        self.request_id, self.body, self.attempts = request_id, body, attempts

    def __str__(self) -> str:
        head = f"{self.status} {self.code}".strip() if self.status else self.code
        return f"{head}: {self.detail}" if head else self.detail


class ClientError(DRRNError):
    """A 4xx answer: the request itself is wrong (never retried)."""


class InvalidImage(ClientError):
    """400: empty body, truncated or corrupt image."""


class UnsupportedImage(InvalidImage):
    """415: not an image, or a format the server does not accept."""


class ImageTooLarge(ClientError):
    """The upload, the input or the output exceeds a server limit (``limit`` names it)."""


class InvalidParameter(ClientError):
    """422: a bad ``scale`` or ``ensemble``, or another invalid request parameter."""


class UnknownModel(InvalidParameter):
    """422 unknown_model: ``limit["value"]`` lists the names the server serves."""


class Unauthorized(ClientError):
    """401: no API key was sent, or the server does not know it (``Client(..., api_key=...)``). Never
    retried: the same key gets the same answer."""


class ServerBusy(DRRNError):
    """503 with Retry-After, still answered when the retries or the time budget ran out."""


class QuotaExceeded(ServerBusy):
    """429: this API key's requests in flight are at the server's per-key limit (``limit`` names it).
    Retried like a 503 (after ``Retry-After``): one of the key's other requests will finish."""


class ServerError(DRRNError):
    """A 5xx other than 503 (an engine failure, or a 5xx from a proxy)."""


class DeadlineExceeded(ServerError):
    """504: the server's per-request deadline passed (``limit`` is request_timeout_s)."""


class ConnectionFailed(DRRNError):
    """No HTTP answer (connection refused or reset, name resolution) after the retries."""


class RequestTimeout(DRRNError):
    """An attempt took longer than the client's ``timeout``."""


_BY_CODE: dict[str, type[DRRNError]] = {
    "empty_body": InvalidImage,
    "corrupt_image": InvalidImage,
    "unsupported_format": UnsupportedImage,
    "upload_too_large": ImageTooLarge,
    "input_too_large": ImageTooLarge,
    "too_many_tiles": ImageTooLarge,
    "output_too_large": ImageTooLarge,
    "output_too_large_for_ensemble": ImageTooLarge,
    "bad_scale": InvalidParameter,
    "bad_ensemble": InvalidParameter,
    "validation_error": InvalidParameter,
    "unknown_model": UnknownModel,
    "deadline_exceeded": DeadlineExceeded,
    "unauthorized": Unauthorized,
}
_BY_STATUS: dict[int, type[DRRNError]] = {
    400: InvalidImage,
    401: Unauthorized,
    413: ImageTooLarge,
    415: UnsupportedImage,
    422: InvalidParameter,
    429: QuotaExceeded,
    503: ServerBusy,
    504: DeadlineExceeded,
}


def error_class(status: int, code: str) -> type[DRRNError]:
    """The exception class for an HTTP error answer: by the body's code when known (and consistent with
    the status class), else by status; a code added to the server later still maps by its status."""
    by_code = _BY_CODE.get(code)
    if by_code is not None and issubclass(by_code, ClientError) == (400 <= status < 500):
        return by_code
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    return ClientError if 400 <= status < 500 else ServerError


def error_from_response(status: int, body: bytes, headers: dict[str, str], attempts: int = 1) -> DRRNError:
    """The typed exception for an error answer. ``body`` is the raw response body: the service's JSON, or
    anything else a proxy may send (HTML, text), which becomes ``code="http_<status>"`` and a short
    ``detail``. ``headers`` are lower-case names (``x-request-id`` fills ``request_id`` when the body has
    none)."""
    import json

    parsed: dict[str, Any] | None = None
    try:
        value = json.loads(body)
        parsed = value if isinstance(value, dict) else None
    except ValueError:
        pass
    if parsed is not None and isinstance(parsed.get("error"), str):
        code, detail = parsed["error"], str(parsed.get("detail") or parsed["error"])
        limit = parsed.get("limit") if isinstance(parsed.get("limit"), dict) else None
        rid = parsed.get("request_id")
    else:
        code, limit, rid = f"http_{status}", None, None
        text = body[:200].decode("utf-8", "replace").strip()
        detail = f"HTTP {status}" + (f": {text}" if text else "")
    rid = rid if isinstance(rid, str) else headers.get("x-request-id")
    cls = error_class(status, code)
    return cls(detail, status=status, code=code, limit=limit, request_id=rid, body=parsed, attempts=attempts)
