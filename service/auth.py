"""Keep strangers out (optional; on when ``DRRN_API_KEYS_FILE`` is set): a pure ASGI middleware that asks
every request for ``Authorization: Bearer <key>`` and bounds each key's requests in flight.

- Open without a key: the probes ``/healthz`` and ``/readyz``, ``/metrics`` (unless
  ``DRRN_METRICS_REQUIRE_KEY``), the try-it page ``/`` with its two static files, and the API description
  (``/docs``, ``/redoc``, ``/openapi.json``). None of them holds data or costs compute, and the page must
  load to ask for a key; what it calls (``/v1/models``, ``/upscale``) needs one. Everything else needs a
  key, unknown paths included (a stranger learns nothing by probing, not even which paths exist).
- A missing or wrong key: 401 with ``WWW-Authenticate: Bearer`` (RFC 6750) and the service's JSON error
  body; the request is never read further. ``drrn_rejections_total{reason="unauthorized"}`` counts it.
- A valid key with ``api_key_max_inflight`` requests already in flight: 429 ``quota_exceeded`` with
  ``Retry-After`` (``reason="quota"``). One client cannot take every admission slot of the server.

Metrics count by reason only, never by key or key name (label values a client could mint). The key's
*name* (never the key) goes to the access log as ``key``. Runs inside
:class:`service.app.AccessLogMiddleware`, so every refusal still gets a request id and its log line.
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api_keys import KeyStore
from service.errors import REQUEST_ID_HEADER, sane_request_id
from service.metrics import ServiceMetrics
from service.web import ASSETS

PROBE_PATHS = ("/healthz", "/readyz")
DOC_PATHS = ("/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json")
REALM = 'Bearer realm="drrn"'


def open_paths(metrics_require_key: bool) -> frozenset[str]:
    """The exact paths served without a key (see the module docstring)."""
    page = {"/", *(f"/static/{name}" for name in ASSETS if name != "index.html")}
    return frozenset({*PROBE_PATHS, *DOC_PATHS, *page, *(() if metrics_require_key else ("/metrics",))})


def bearer_token(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The token of the first ``Authorization: Bearer <token>`` header (scheme case-insensitive), else
    None."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").strip().partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return None


def _has_body(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    return any(
        (k == b"content-length" and v.strip() not in (b"", b"0")) or k == b"transfer-encoding"
        for k, v in headers
    )


class ApiKeyMiddleware:
    """Pure ASGI middleware: authenticate by bearer key, then hold one of the key's in-flight slots for the
    whole request. ``open_paths``: exact paths served without a key."""

    def __init__(
        self,
        app: ASGIApp,
        store: KeyStore,
        metrics: ServiceMetrics,
        max_inflight: int,
        retry_after_s: int,
        open_paths: Iterable[str],
    ) -> None:
        self.app, self.store, self.metrics = app, store, metrics
        self.max_inflight, self.retry_after_s = max_inflight, retry_after_s
        self.open_paths = frozenset(open_paths)
        self.inflight: dict[str, int] = {}  # key name -> requests in flight (names with 0 are removed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        token = bearer_token(scope["headers"])
        name = None if token is None else self.store.verify(token)
        if name is None:
            self.metrics.on_reject(None, "unauthorized")
            if token is None:
                detail, challenge = "an API key is required: send Authorization: Bearer <key>", REALM
            else:
                detail, challenge = "the API key is not valid", f'{REALM}, error="invalid_token"'
            await self._refuse(scope, receive, send, 401, "unauthorized", detail, None, challenge)
            return
        scope.setdefault("state", {})["api_key"] = name  # the name, for the access log
        held = self.inflight.get(name, 0)
        if held >= self.max_inflight:
            self.metrics.on_reject(None, "quota")
            limit = {"name": "api_key_max_inflight", "value": self.max_inflight}
            detail = f"this API key already has {held} requests in flight; retry when one has finished"
            await self._refuse(scope, receive, send, 429, "quota_exceeded", detail, limit, None)
            return
        self.inflight[name] = held + 1
        try:
            await self.app(scope, receive, send)
        finally:
            left = self.inflight[name] - 1
            if left:
                self.inflight[name] = left
            else:
                del self.inflight[name]

    async def _refuse(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        status: int,
        code: str,
        detail: str,
        limit: dict | None,
        challenge: str | None,
    ) -> None:
        state = scope.setdefault("state", {})
        rid = state.get("request_id") or sane_request_id(None)
        headers = {REQUEST_ID_HEADER: rid}
        if challenge:
            headers["WWW-Authenticate"] = challenge
        if status == 429:
            headers["Retry-After"] = str(self.retry_after_s)
        if _has_body(scope["headers"]):  # unread: don't leave it in the connection for the next request
            headers["Connection"] = "close"
        body = {"error": code, "detail": detail, "limit": limit, "request_id": rid}
        await JSONResponse(body, status_code=status, headers=headers)(scope, receive, send)
