"""service.http_protocol: a response's head and body leave the process in one write.

Unit tests drive :class:`CoalescingTransport` over a recording transport in a real event loop; the
integration test runs a real uvicorn server on loopback and records what reaches the socket transport,
with uvicorn's stock protocol as the control (two writes per response: the window the LB test hit).
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from bench.spawn import free_port
from service.http_protocol import CoalescingHTTPProtocol, CoalescingTransport


class RecordingTransport:
    """The inner side: records every call; ``events`` is shared so tests can see the order."""

    def __init__(self, events: list[tuple[str, bytes]], inner: Any = None) -> None:
        self.events, self.inner, self.closing = events, inner, False

    def write(self, data: bytes) -> None:
        self.events.append(("write", bytes(data)))
        if self.inner is not None:
            self.inner.write(data)

    def close(self) -> None:
        self.events.append(("close", b""))
        self.closing = True
        if self.inner is not None:
            self.inner.close()

    def abort(self) -> None:
        self.events.append(("abort", b""))
        if self.inner is not None:
            self.inner.abort()

    def write_eof(self) -> None:
        self.events.append(("eof", b""))

    def is_closing(self) -> bool:
        return self.inner.is_closing() if self.inner is not None else self.closing

    def get_write_buffer_size(self) -> int:
        return self.inner.get_write_buffer_size() if self.inner is not None else 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_writes_in_one_iteration_leave_as_one_write() -> None:
    async def scenario() -> list[tuple[str, bytes]]:
        events: list[tuple[str, bytes]] = []
        t = CoalescingTransport(RecordingTransport(events))  # type: ignore[arg-type]
        t.write(b"HTTP/1.1 200 OK\r\n\r\n")
        t.write(memoryview(b"body"))
        t.write(b"")
        assert events == [], "nothing may reach the socket before the iteration ends"
        assert t.get_write_buffer_size() == len(b"HTTP/1.1 200 OK\r\n\r\nbody")
        await asyncio.sleep(0)
        t.write(b"next")  # a later iteration is a separate write
        await asyncio.sleep(0)
        return events

    assert asyncio.run(scenario()) == [("write", b"HTTP/1.1 200 OK\r\n\r\nbody"), ("write", b"next")]


def test_close_sends_pending_first_and_abort_drops_it() -> None:
    async def scenario() -> tuple[list[tuple[str, bytes]], list[tuple[str, bytes]]]:
        closed: list[tuple[str, bytes]] = []
        t = CoalescingTransport(RecordingTransport(closed))  # type: ignore[arg-type]
        t.writelines([b"head", b"tail"])
        t.close()
        aborted: list[tuple[str, bytes]] = []
        a = CoalescingTransport(RecordingTransport(aborted))  # type: ignore[arg-type]
        a.write(b"head")
        a.write_eof()  # flushes, then EOF
        a.write(b"lost")
        a.abort()
        await asyncio.sleep(0.01)  # any stale flush callback would have run by now
        return closed, aborted

    closed, aborted = asyncio.run(scenario())
    assert closed == [("write", b"headtail"), ("close", b"")]
    assert aborted == [("write", b"head"), ("eof", b""), ("abort", b"")]


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = bytes(range(256)) * 64 if scope["path"] == "/big" else b"small"
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]}
    )
    await send({"type": "http.response.body", "body": body})


async def _three_gets(client: httpx.AsyncClient) -> list[bytes]:
    return [(await client.get(p)).content for p in ("/small", "/big", "/small")]


def _served_writes(
    base: type[asyncio.Protocol],
    app: Any = _app,
    requests: Callable[[httpx.AsyncClient], Awaitable[list[bytes]]] = _three_gets,
    lifespan: str = "off",
) -> tuple[list[tuple[str, bytes]], list[bytes]]:
    """``requests`` on one keep-alive connection to a real uvicorn serving ``app`` on loopback.

    Returns (the socket-side writes, the response bodies).
    """
    events: list[tuple[str, bytes]] = []

    class Recorded(base):  # type: ignore[misc, valid-type]
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            # The recorder sits under whatever the protocol wraps around it: it sees what the socket
            # transport is asked to send.
            super().connection_made(RecordingTransport(events, inner=transport))  # type: ignore[arg-type]

    async def scenario() -> list[bytes]:
        port = free_port()
        config = uvicorn.Config(
            app, host="127.0.0.1", port=port, http=Recorded, log_config=None, lifespan=lifespan
        )
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.01)
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
                return await requests(client)
        finally:
            server.should_exit = True
            await asyncio.wait_for(task, 30)

    bodies = asyncio.run(scenario())
    return [e for e in events if e[0] == "write"], bodies


def test_real_server_sends_each_response_in_one_write() -> None:
    big = bytes(range(256)) * 64
    writes, bodies = _served_writes(CoalescingHTTPProtocol)
    assert bodies == [b"small", big, b"small"]
    assert len(writes) == 3, [w[:40] for _, w in writes]
    for (_, data), body in zip(writes, bodies, strict=True):
        assert data.startswith(b"HTTP/1.1 200 OK\r\n") and data.endswith(b"\r\n\r\n" + body)


def test_control_stock_protocol_splits_head_and_body() -> None:
    """The control: without the coalescing transport, every response is two writes (head, then body)."""
    writes, bodies = _served_writes(AutoHTTPProtocol)
    assert bodies == [b"small", bytes(range(256)) * 64, b"small"]
    assert len(writes) == 6
    assert all(data.startswith(b"HTTP/1.1 200 OK") for _, data in writes[::2])


async def _blocking_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = b"x" * 5000
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5000")]})
    await send({"type": "http.response.body", "body": body})
    # Hold the loop before the pending flush can run, so the client's half-close is processed first.
    time.sleep(0.3)


@pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])
def test_a_client_half_close_does_not_lose_a_pending_response(loop_name: str) -> None:
    """uvloop handles socket events before queued callbacks: the EOF must not close ahead of the flush."""
    port = free_port()

    async def scenario() -> bytes:
        config = uvicorn.Config(
            _blocking_app,
            host="127.0.0.1",
            port=port,
            http=CoalescingHTTPProtocol,
            log_config=None,
            lifespan="off",
        )
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.01)

        def client() -> bytes:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
                conn.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
                conn.shutdown(socket.SHUT_WR)
                chunks = []
                while chunk := conn.recv(65536):
                    chunks.append(chunk)
                return b"".join(chunks)

        try:
            return await asyncio.to_thread(client)
        finally:
            server.should_exit = True
            await asyncio.wait_for(task, 10)

    if loop_name == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        response = uvloop.run(scenario())
    else:
        response = asyncio.run(scenario())
    assert response.startswith(b"HTTP/1.1 200 OK\r\n") and response.endswith(b"\r\n\r\n" + b"x" * 5000)


def test_the_service_app_answers_upscale_in_one_write(tiny_repo: Path) -> None:
    """Guards the app side: a middleware that yields between head and body (e.g. Starlette's
    BaseHTTPMiddleware, which streams) would split them again across loop iterations."""
    import io

    import numpy as np
    from PIL import Image

    from service.app import create_app
    from service.settings import Settings

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(buf, "PNG")
    settings = Settings(
        model_dir=tiny_repo, models=["fast"], providers="cpu", intra_op_threads=1, tile=32, max_batch=2
    )

    async def requests(client: httpx.AsyncClient) -> list[bytes]:
        bodies = []
        for _ in range(600):  # until the engine is warmed up
            r = await client.get("/readyz")
            bodies.append(r.content)
            if r.status_code == 200:
                break
            await asyncio.sleep(0.05)
        r = await client.post(
            "/upscale?scale=2", content=buf.getvalue(), headers={"content-type": "image/png"}
        )
        assert r.status_code == 200 and r.content.startswith(b"\x89PNG")
        return [*bodies, r.content]

    writes, bodies = _served_writes(CoalescingHTTPProtocol, create_app(settings), requests, lifespan="on")
    assert len(writes) == len(bodies), [w[:60] for _, w in writes]
    for (_, data), body in zip(writes, bodies, strict=True):
        assert data.startswith(b"HTTP/1.1 ") and data.endswith(body)
