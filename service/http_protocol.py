"""uvicorn's HTTP protocol, with each response's head and body leaving the process in one write
(:class:`CoalescingHTTPProtocol`), and bounds on what a connection may hold before its request reaches the
app (:class:`GuardedHTTPProtocol`, what ``drrn serve`` runs).

Why: uvicorn writes a response's status line and headers (``http.response.start``) and its body
(``http.response.body``) with two ``transport.write`` calls, i.e. two ``send()`` syscalls. A replica that
dies between them (SIGKILL, the OOM killer, a node loss) leaves nginx holding a response head it has
already forwarded to the client, and nginx can only fail over (``proxy_next_upstream``) a request whose
response has not started: the client gets a 200 with a truncated body instead of a transparent retry on
the other replica. The window is microseconds, but a batch completing writes several responses back to
back, so a crash during a burst of responses hits it (CI caught it: 1 of 240 requests in the LB failover
test). Sending everything written during one event-loop iteration as one write closes the window for
every response whose PNG fits the socket's send buffer (all but multi-megapixel outputs); for larger
bodies a crash mid-body still truncates, which the client sees as a Content-Length mismatch.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.auto import AutoHTTPProtocol


class CoalescingTransport:
    """Wraps an ``asyncio.Transport``: writes made in one event-loop iteration go out as a single write.

    Everything except ``write``, ``writelines``, ``write_eof``, ``close``, ``abort`` and
    ``get_write_buffer_size`` is delegated unchanged. ``close`` and ``write_eof`` send what is pending
    first (so no byte is ever dropped on a normal close); ``abort`` discards it, as the inner transport
    discards its own buffer.
    """

    def __init__(self, inner: asyncio.Transport) -> None:
        self._inner = inner
        self._pending: list[bytes] = []
        self._flush_handle: asyncio.Handle | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        self._pending.append(bytes(data))
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_soon(self.flush)

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def flush(self) -> None:
        """Hand everything pending to the inner transport as one write (no-op when nothing is pending)."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self._pending:
            data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
            self._pending.clear()
            self._inner.write(data)

    def write_eof(self) -> None:
        self.flush()
        self._inner.write_eof()

    def close(self) -> None:
        self.flush()
        self._inner.close()

    def abort(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._pending.clear()
        self._inner.abort()

    def get_write_buffer_size(self) -> int:
        return self._inner.get_write_buffer_size() + sum(len(p) for p in self._pending)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class CoalescingHTTPProtocol(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
    """uvicorn's default HTTP/1.1 protocol (httptools, else h11) over a :class:`CoalescingTransport`.

    Pass it as ``uvicorn.Config(http=CoalescingHTTPProtocol)``.
    """

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport))

    def eof_received(self) -> bool | None:
        # The client half-closed. uvicorn answers by letting the transport close itself, which bypasses
        # the wrapper; uvloop can deliver the EOF before the pending flush callback runs, so send what
        # is pending first (the transport's own close then drains it).
        transport = self.transport
        if isinstance(transport, CoalescingTransport):
            transport.flush()
        return super().eof_received()


@dataclass(frozen=True)
class ConnectionLimits:
    """What one connection may take before its request reaches the app (``DRRN_*`` settings)."""

    header_timeout_s: float = 10.0  # connect (or a keep-alive request's first byte) -> end of headers
    max_header_bytes: int = 16 * 1024  # request line + header fields
    max_headers: int = 64  # header fields per request
    retry_after_s: int = 1  # Retry-After of the 503 for connections over max_connections
    # told the rejection reason of each refusal made here (before the app sees the request), so it is
    # counted with the app's own (drrn_rejections_total); called on the event loop
    on_reject: Callable[[str], None] | None = None


# drrn_rejections_total reasons of the refusals made here: a slow head is a timed-out upload, a connection
# over max_connections an overload, and an oversized or malformed head bad input
_REJECTION_REASON = {408: "upload_timeout", 503: "overloaded"}


class _HeadRejected(Exception):
    """Raised from a parser callback to stop parsing; :meth:`GuardedHTTPProtocol.send_400_response` then
    answers with the status and code it carries."""


class GuardedHTTPProtocol(CoalescingHTTPProtocol):
    """:class:`CoalescingHTTPProtocol` that bounds each request head in time, bytes and header count.

    Why: uvicorn arms no timer until a first response is complete, and httptools (llhttp) sets no size
    limit, so a client that connects and sends nothing, or trickles its headers a byte at a time, or sends
    megabytes of headers, holds a connection and memory for as long as it likes (slowloris). Each
    connection here must finish every request head within ``header_timeout_s`` of connecting (or of its
    first byte after a keep-alive pause; idle keep-alive connections are uvicorn's ``timeout_keep_alive``),
    else it gets 408; a head over ``max_header_bytes`` or ``max_headers`` gets 431; a malformed one 400.
    All three as the service's JSON error body, then the connection closes. (The body has its own bound,
    ``upload_timeout_s``, enforced by the app.) Build one with :func:`guarded_protocol`.
    """

    limits = ConnectionLimits()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._head_timer: asyncio.TimerHandle | None = None
        self._in_head, self._head_bytes, self._header_count, self._head_size = True, 0, 0, 0
        self._rejection: tuple[int, str, str, dict[str, Any]] | None = None
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        limit = self.limits.max_header_bytes
        if self._in_head and self._head_bytes > limit and not self.transport.is_closing():
            # llhttp buffers a partial header itself: stop feeding it once the head outgrows the bound
            self._reject(431, "header_too_large", f"request head over {limit} bytes", "max_header_bytes")
            self.send_400_response("")

    # httptools parser callbacks
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_count = self._head_size = 0
        if self._head_timer is None:
            self._arm_head_timer()

    def on_url(self, url: bytes) -> None:
        self._head_size += len(url)
        self._check_head_size()
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        self._head_size += len(name) + len(value) + 4
        if self._header_count > self.limits.max_headers:
            n = self.limits.max_headers
            self._reject(431, "too_many_headers", f"more than {n} header fields", "max_headers")
            raise _HeadRejected
        self._check_head_size()
        super().on_header(name, value)

    def _check_head_size(self) -> None:
        if self._head_size > self.limits.max_header_bytes:
            n = self.limits.max_header_bytes
            self._reject(431, "header_too_large", f"request head over {n} bytes", "max_header_bytes")
            raise _HeadRejected

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._cancel_head_timer()
        n = self.limit_concurrency
        if n is not None and (len(self.connections) >= n or len(self.tasks) >= n):
            # the check uvicorn makes next, answered with the service's JSON and a Retry-After instead of
            # uvicorn's plain-text 503
            self._rejection = (
                503,
                "overloaded",
                f"more than {n} connections or requests at once (max_connections={n})",
                {"name": "max_connections", "value": n},
            )
            raise _HeadRejected
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.cycle is not None and self.cycle.more_body and not self.transport.is_closing():
            # answered before its body was read (413 on Content-Length, 408, 404): the rest of the body
            # is read and dropped, but it must not trickle in for ever
            self._arm_head_timer()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head, self._head_bytes = True, 0  # what follows is the next request's head
        self._cancel_head_timer()  # armed again by its first byte; idle time is timeout_keep_alive's

    def send_400_response(self, msg: str) -> None:
        """Every parser-level refusal as the service's JSON error shape (uvicorn sends plain text)."""
        status, code, detail, limit = self._rejection or (400, "bad_http_request", msg or "invalid HTTP", {})
        self._cancel_head_timer()
        if self.limits.on_reject is not None:
            self.limits.on_reject(_REJECTION_REASON.get(status, "bad_input"))
        rid = uuid.uuid4().hex  # the request never reached the app: a fresh id, as for any bad one
        body = json.dumps({"error": code, "detail": detail, "limit": limit or None, "request_id": rid})
        body = body.encode()
        reason = {
            400: b"Bad Request",
            408: b"Request Timeout",
            431: b"Request Header Fields Too Large",
            503: b"Service Unavailable",
        }
        head = b"HTTP/1.1 %d %s\r\n" % (status, reason[status])
        head += b"x-request-id: %s\r\n" % rid.encode()
        if status == 503:
            head += b"retry-after: %d\r\n" % max(1, int(self.limits.retry_after_s))
        head += b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(
            body
        )
        if not self.transport.is_closing():
            self.transport.write(head + body)
            self.transport.close()

    def _reject(self, status: int, code: str, detail: str, limit_name: str) -> None:
        value = getattr(self.limits, limit_name)
        self._rejection = (
            status,
            code,
            f"{detail} ({limit_name}={value})",
            {"name": limit_name, "value": value},
        )

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = asyncio.get_running_loop().call_later(
            self.limits.header_timeout_s, self._head_timeout
        )

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if not self._in_head:  # the unread rest of an answered request's body never came
            self.transport.close()
        else:
            t = self.limits.header_timeout_s
            self._reject(
                408, "header_timeout", f"request head not received within {t:g}s", "header_timeout_s"
            )
            self.send_400_response("")


def guarded_protocol(limits: ConnectionLimits) -> type[GuardedHTTPProtocol]:
    """A :class:`GuardedHTTPProtocol` class with ``limits`` (pass it as ``uvicorn.Config(http=...)``)."""
    return type("GuardedHTTPProtocol", (GuardedHTTPProtocol,), {"limits": limits})
