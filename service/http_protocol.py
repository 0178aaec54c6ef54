"""uvicorn's HTTP protocol, with each response's head and body leaving the process in one write.

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
