"""Python client of the DRRN service: ``Client`` (blocking) and ``AsyncClient`` (asyncio), over httpx only.

    from drrn.client import Client

    with Client("http://127.0.0.1:8000") as drrn:
        drrn.upscale("photo.jpg", 4, out="photo_x4.png")          # or: png = drrn.upscale(data, 2.5)

Retries: a connection that fails (refused, reset, closed without an answer) and a 503 (queue full,
overloaded, warming up, draining, no replica behind the load balancer) or a 429 (this API key's requests
in flight at the server's per-key limit) are retried, waiting at least the server's ``Retry-After`` (else
an exponential backoff) plus jitter, so clients told "1 s" do not all return in the same millisecond.
Retries stop after ``retries`` of them or when the next one would start past ``retry_budget_s`` from the
call's start; then the last error is raised. Any other answer, 4xx above all (a 401 for a missing or wrong
``api_key`` too), is final. ``POST /upscale`` is a pure function of the request, so re-sending it is safe.

Errors raise the typed exceptions of :mod:`drrn.client_errors` (re-exported here), carrying the server's
JSON: ``code``, ``detail``, ``limit``, ``request_id``. The retry policy, the request building and the
error parsing are shared by both clients; only the send/sleep calls differ.

Dependencies: httpx and the standard library. A PIL image is accepted by duck typing (its ``save`` method),
so Pillow is never imported here; neither are numpy, onnxruntime nor torch.
"""

from __future__ import annotations

import asyncio
import io
import os
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from drrn.client_errors import (
    ClientError,
    ConnectionFailed,
    DeadlineExceeded,
    DRRNError,
    ImageTooLarge,
    InvalidImage,
    InvalidParameter,
    QuotaExceeded,
    RequestTimeout,
    ServerBusy,
    ServerError,
    Unauthorized,
    UnknownModel,
    UnsupportedImage,
)
from drrn.client_retry import Attempts, RetryEvent, RetryPolicy

__all__ = [
    "AsyncClient",
    "Client",
    "ClientError",
    "ConnectionFailed",
    "DRRNError",
    "DeadlineExceeded",
    "ImageTooLarge",
    "InvalidImage",
    "InvalidParameter",
    "QuotaExceeded",
    "RequestTimeout",
    "RetryEvent",
    "RetryPolicy",
    "ServerBusy",
    "ServerError",
    "Unauthorized",
    "UnknownModel",
    "UnsupportedImage",
]


def image_bytes(image: Any) -> bytes:
    """The encoded image to send: ``bytes``-like as is, a path (``str`` / ``PathLike``) read, a binary file
    object read, a PIL image encoded as PNG (lossless; 16-bit modes stay 16-bit)."""
    if isinstance(image, bytes | bytearray | memoryview):
        return bytes(image)
    if isinstance(image, str | os.PathLike):
        return Path(image).read_bytes()
    if callable(getattr(image, "read", None)):
        return image.read()
    if callable(getattr(image, "save", None)) and hasattr(image, "mode"):  # PIL, without importing it
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return buf.getvalue()
    raise TypeError(f"image must be a path, bytes, a binary file or a PIL image, not {type(image).__name__}")


@dataclass(frozen=True)
class _Call:
    method: str
    path: str
    params: dict[str, str] = field(default_factory=dict)
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)


def _upscale_call(image: Any, scale: float, model: str | None, ensemble: int | None) -> _Call:
    params = {"scale": str(scale)}
    if model is not None:
        params["model"] = model
    if ensemble is not None:
        params["ensemble"] = str(ensemble)
    # One id for every attempt of this call, so the server and load balancer logs join them.
    headers = {"content-type": "application/octet-stream", "x-request-id": f"client-{uuid.uuid4().hex}"}
    return _Call("POST", "/upscale", params, image_bytes(image), headers)


def write_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file in the same folder and a rename, so ``path`` is
    either absent or complete, even if the process dies mid-write."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


class _Base:
    _transport: type[httpx.Client] | type[httpx.AsyncClient]  # the one difference between the two clients

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float | httpx.Timeout = 120.0,
        retries: int = 4,
        retry_budget_s: float = 120.0,
        policy: RetryPolicy | None = None,
        on_retry: Callable[[RetryEvent], None] | None = None,
        max_connections: int = 32,
        api_key: str | None = None,
    ) -> None:
        self.policy = policy or RetryPolicy(retries=retries, budget_s=retry_budget_s)
        self.on_retry = on_retry
        self._rng = random.Random()
        self._http_args: dict[str, Any] = {
            "base_url": base_url.rstrip("/"),
            "timeout": timeout,
            # The key rides on every request of this client; httpx never logs headers.
            "headers": {"user-agent": "drrn-client"}
            | ({"authorization": f"Bearer {api_key}"} if api_key else {}),
            "limits": httpx.Limits(max_connections=max_connections),
        }
        self._http: Any = self._transport(**self._http_args)

    def _attempts(self) -> Attempts:
        return Attempts(self.policy, self.on_retry, self._rng)


_DOC_ARGS = """
    Args: ``base_url`` (e.g. ``http://127.0.0.1:8000``, or the load balancer), ``timeout`` per attempt
    (seconds or an ``httpx.Timeout``), ``retries`` and ``retry_budget_s`` (see the module doc; or a whole
    :class:`RetryPolicy` as ``policy``), ``on_retry`` called before each wait, ``max_connections``,
    ``api_key`` for a server that requires one (sent as ``Authorization: Bearer``; a wrong or missing key
    raises :class:`Unauthorized`, never retried).

    ``upscale(image, scale, model=None, ensemble=None, out=None)``: ``image`` a path, bytes, a binary file
    or a PIL image; ``scale`` in (1, the server's max_scale]; ``model`` a served name (None: the server's
    default); ``ensemble`` 1 or 8. Returns the PNG bytes, or writes them to ``out`` (atomically) and
    returns its ``Path``. ``models()``: the ``/v1/models`` JSON. ``ready()``: True when ``/readyz`` is 200
    (False on any other answer or no answer; never retried).
"""


class Client(_Base):
    __doc__ = "Blocking client; thread-safe (one connection pool), a context manager.\n" + _DOC_ARGS

    _transport = httpx.Client

    def upscale(
        self,
        image: Any,
        scale: float,
        model: str | None = None,
        ensemble: int | None = None,
        out: str | os.PathLike | None = None,
    ) -> bytes | Path:
        png = self._send(_upscale_call(image, scale, model, ensemble)).content
        return png if out is None else write_atomic(out, png)

    def models(self) -> dict[str, Any]:
        return self._send(_Call("GET", "/v1/models")).json()

    def ready(self) -> bool:
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def _send(self, call: _Call) -> httpx.Response:
        attempts = self._attempts()
        while True:
            try:
                resp = self._http.request(
                    call.method, call.path, params=call.params, content=call.content, headers=call.headers
                )
            except httpx.TransportError as exc:
                wait = attempts.after_exception(exc)
            else:
                wait = attempts.after_response(resp)
                if wait is None:
                    return resp
            time.sleep(wait)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient(_Base):
    __doc__ = "asyncio client (the same API, awaited); an async context manager.\n" + _DOC_ARGS

    _transport = httpx.AsyncClient

    async def upscale(
        self,
        image: Any,
        scale: float,
        model: str | None = None,
        ensemble: int | None = None,
        out: str | os.PathLike | None = None,
    ) -> bytes | Path:
        call = await asyncio.to_thread(_upscale_call, image, scale, model, ensemble)  # may read a file
        png = (await self._send(call)).content
        return png if out is None else await asyncio.to_thread(write_atomic, out, png)

    async def models(self) -> dict[str, Any]:
        return (await self._send(_Call("GET", "/v1/models"))).json()

    async def ready(self) -> bool:
        try:
            return (await self._http.get("/readyz")).status_code == 200
        except httpx.TransportError:
            return False

    async def _send(self, call: _Call) -> httpx.Response:
        attempts = self._attempts()
        while True:
            try:
                resp = await self._http.request(
                    call.method, call.path, params=call.params, content=call.content, headers=call.headers
                )
            except httpx.TransportError as exc:
                wait = attempts.after_exception(exc)
            else:
                wait = attempts.after_response(resp)
                if wait is None:
                    return resp
            await asyncio.sleep(wait)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
