"""Connection-level abuse against a real uvicorn server (the protocol ``drrn serve`` runs) on loopback,
driven with raw sockets: stalled and trickled uploads, aborted uploads and responses, oversized and slow
request heads, and ``X-Request-ID`` header injection. The engine is :class:`tests.fake_engines.ToneEngine`
(the HTTP, upload and admission layers under test are the real ones). Orderings are asserted, never
durations.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from bench.spawn import free_port
from service.app import create_app
from service.main import uvicorn_config
from service.settings import Settings
from tests.fake_engines import ToneEngine
from tests.service_harness import gauge, png, rejections

TILE, MAX_BATCH = 32, 4
HEX_ID = re.compile(r"[0-9a-f]{32}")


@contextmanager
def live_server(engine: ToneEngine | None = None, **kw: Any) -> Iterator[tuple[str, int, ToneEngine]]:
    """``(url, port, engine)`` of the service under uvicorn (guarded protocol and all) in a thread."""
    engine = engine or ToneEngine(TILE, MAX_BATCH)
    base = dict(tile=TILE, max_batch=MAX_BATCH, cpu_workers=1, max_upload_bytes=100_000, log_level="WARNING")
    settings = Settings(**{**base, **kw})
    app = create_app(settings, engines={"fast": engine})
    port = free_port()
    import uvicorn

    server = uvicorn.Server(uvicorn_config(app, settings, "127.0.0.1", port))
    server.config.log_config = None
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            for _ in range(3000):
                try:
                    if client.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                threading.Event().wait(0.01)
            else:
                raise AssertionError("server never became ready")
        yield url, port, engine
    finally:
        engine.release.set()
        server.should_exit = True
        thread.join(60)


def metrics(url: str) -> httpx.Response:
    return httpx.get(f"{url}/metrics", timeout=30)


def head(length: int, path: str = "/upscale?scale=2", extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: drrn\r\nContent-Type: image/png\r\nContent-Length: {length}\r\n"
        f"{extra}\r\n"
    ).encode("latin-1")


def read_response(conn: socket.socket) -> tuple[int, dict[str, str], bytes, bytes]:
    """One response (status, headers, body, raw head), read until Content-Length or the close."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    raw_head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = raw_head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    while len(body) < int(headers.get("content-length", 0)):
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(status_line.split()[1]), headers, body, raw_head


def until_gauge(url: str, name: str, value: float) -> None:
    for _ in range(3000):
        if gauge(metrics(url), name) == value:
            return
        threading.Event().wait(0.01)
    raise AssertionError(f"{name} never reached {value} (now {gauge(metrics(url), name)})")


def nothing_received(conn: socket.socket) -> bool:
    """No byte (and no close) has arrived on ``conn`` yet."""
    conn.setblocking(False)
    try:
        conn.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return True
    finally:
        conn.settimeout(60)
    return False


def test_forty_stalled_uploads_do_not_delay_a_well_behaved_request() -> None:
    """40 clients send their headers and 10 bytes of body, then stall. With 4 in-flight slots, a normal
    request still completes while all 40 are stalled: bodies being received hold no slot."""
    body = png(10, 10)
    with live_server(max_inflight_requests=4, upload_timeout_s=120, request_timeout_s=120) as (url, port, _):
        stalled = [socket.create_connection(("127.0.0.1", port), timeout=60) for _ in range(40)]
        try:
            for conn in stalled:
                conn.sendall(head(len(body)) + body[:10])
            until_gauge(url, "drrn_uploading_requests", 40)
            r = httpx.post(f"{url}/upscale?scale=2", content=body, headers={"content-type": "image/png"})
            assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).size == (20, 20)
            # ...while every stalled upload is still stalled, unanswered and counted as receiving
            assert all(nothing_received(conn) for conn in stalled)
            m = metrics(url)
            assert gauge(m, "drrn_uploading_requests") == 40 and gauge(m, "drrn_inflight_requests") == 0
            # and each of them can still finish normally
            stalled[0].sendall(body[10:])
            status, _, payload, _ = read_response(stalled[0])
            assert status == 200 and Image.open(io.BytesIO(payload)).size == (20, 20)
        finally:
            for conn in stalled:
                conn.close()
        until_gauge(url, "drrn_uploading_requests", 0)


def test_a_stalled_upload_gets_408_naming_the_upload_timeout() -> None:
    body = png(10, 10)
    with live_server(upload_timeout_s=0.5, request_timeout_s=60) as (url, port, engine):
        with socket.create_connection(("127.0.0.1", port), timeout=60) as conn:
            conn.sendall(head(len(body)) + body[:10])
            status, headers, payload, _ = read_response(conn)
            assert status == 408 and headers["content-type"] == "application/json"
            err = json.loads(payload)
            assert err["error"] == "upload_timeout"
            assert err["limit"] == {"name": "upload_timeout_s", "value": 0.5}
            assert err["request_id"] == headers["x-request-id"]
            assert conn.recv(1) == b""  # and the server closed the connection
        m = metrics(url)
        assert rejections(m)["upload_timeout"] == 1
        assert gauge(m, "drrn_uploading_requests") == 0 and gauge(m, "drrn_inflight_requests") == 0
        assert engine.runs == []


def test_aborted_uploads_and_responses_leave_the_gauges_at_zero() -> None:
    body = png(10, 10)
    with live_server() as (url, port, engine):
        for cut in (0, 10, len(body) - 1):  # mid-upload: after the head, mid-body, one byte short
            with socket.create_connection(("127.0.0.1", port), timeout=60) as conn:
                conn.sendall(head(len(body)) + body[:cut])
                until_gauge(url, "drrn_uploading_requests", 1)
        until_gauge(url, "drrn_uploading_requests", 0)
        # mid-response: the engine holds the request's run; the client leaves while it waits
        engine.hang = True
        with socket.create_connection(("127.0.0.1", port), timeout=60) as conn:
            conn.sendall(head(len(body)) + body)
            assert engine.hanging.wait(60)
        until_gauge(url, "drrn_inflight_requests", 0)  # the request ended when its client left
        engine.release.set()
        # ...and a request queued behind a held run, whose client leaves (its tiles are dropped)
        engine.release.clear()
        engine.hanging.clear()
        engine.hang = True
        first = socket.create_connection(("127.0.0.1", port), timeout=60)
        first.sendall(head(len(body)) + body)
        assert engine.hanging.wait(60)
        with socket.create_connection(("127.0.0.1", port), timeout=60) as conn:
            conn.sendall(head(len(body)) + body)
            until_gauge(url, "drrn_queue_depth_tiles", 1)
        until_gauge(url, "drrn_queue_depth_tiles", 0)
        engine.release.set()
        status, *_ = read_response(first)
        first.close()
        assert status == 200
        m = metrics(url)
        for name in ("drrn_uploading_requests", "drrn_inflight_requests", "drrn_queue_depth_tiles"):
            assert gauge(m, name) == 0, name
        # three left mid-upload; two left with work in the batcher (the running run, the queued tile)
        assert rejections(m)["client_disconnected"] == 3 and rejections(m)["cancelled"] == 2
        assert len(engine.runs) == 2  # the two held runs; the queued request's tile never ran
        r = httpx.post(f"{url}/upscale?scale=2", content=body, headers={"content-type": "image/png"})
        assert r.status_code == 200


BAD_IDS = [
    "a" * 129,  # too long
    "bad\x01id",  # control character
    "has space",
    "\xff\xfe\xfd",  # not ASCII
    "<script>",
    "",
]


@pytest.mark.parametrize("bad", BAD_IDS)
def test_a_bad_request_id_is_replaced_never_echoed(bad: str) -> None:
    with live_server() as (_, port, _engine), socket.create_connection(("127.0.0.1", port), 60) as conn:
        conn.sendall(f"GET /healthz HTTP/1.1\r\nHost: drrn\r\nX-Request-ID: {bad}\r\n\r\n".encode("latin-1"))
        status, headers, body, raw = read_response(conn)
    if status == 400:  # the parser itself refuses control characters in a header value
        assert json.loads(body)["error"] == "bad_http_request"
        assert json.loads(body)["request_id"] == headers["x-request-id"]
    else:
        assert status == 200
    assert HEX_ID.fullmatch(headers["x-request-id"])
    if bad:
        assert bad.encode("latin-1") not in raw + body


def test_header_injection_through_the_request_id_goes_nowhere() -> None:
    """CR/LF inside the id: either the parser splits it into another request header (the id is then the
    sane part) or refuses the request; no injected header ever reaches the response."""
    attempts = [
        b"X-Request-ID: abc\r\nX-Injected: 1\r\n",
        b"X-Request-ID: abc\rX-Injected: 1\r\n",
        b"X-Request-ID: abc\nX-Injected: 1\r\n",
        b"X-Request-ID: abc%0d%0aX-Injected: 1\r\n",
        b"X-Request-ID: abc\r\n X-Injected: 1\r\n",  # obsolete line folding
    ]
    with live_server() as (_, port, _engine):
        for extra in attempts:
            with socket.create_connection(("127.0.0.1", port), timeout=60) as conn:
                conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: drrn\r\n" + extra + b"\r\n")
                status, headers, body, raw = read_response(conn)
            assert b"x-injected" not in raw.lower(), (extra, raw)
            assert raw.count(b"\r\n") == len(headers)  # every header line is one the server meant
            if status == 200:
                assert headers["x-request-id"] in ("abc",) or HEX_ID.fullmatch(headers["x-request-id"])
            else:
                assert status == 400 and json.loads(body)["error"] == "bad_http_request"
    # a sane id is kept, on errors too
    with live_server() as (_, port, _engine):
        with socket.create_connection(("127.0.0.1", port), timeout=60) as conn:
            conn.sendall(b"GET /nope HTTP/1.1\r\nHost: drrn\r\nX-Request-ID: client-7.a:b_c\r\n\r\n")
            status, headers, body, _ = read_response(conn)
        assert status == 404 and headers["x-request-id"] == "client-7.a:b_c"
        assert json.loads(body)["request_id"] == "client-7.a:b_c"


def test_request_heads_are_bounded_in_bytes_count_and_time() -> None:
    limits = dict(max_header_bytes=4096, max_headers=16, header_timeout_s=0.5)
    with live_server(**limits) as (url, port, _engine):
        cases = {
            "too_many_headers": b"".join(b"X-%d: v\r\n" % i for i in range(17)),
            "header_too_large": b"X-Big: " + b"v" * 8000 + b"\r\n",
        }
        for code, extra in cases.items():
            with socket.create_connection(("127.0.0.1", port), timeout=60) as conn:
                conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: drrn\r\n" + extra + b"\r\n")
                status, _, body, _ = read_response(conn)
                assert status == 431 and json.loads(body)["error"] == code, body
                assert conn.recv(1) == b""
        # a head that never ends (slowloris) and a connection that sends nothing both get 408 and a close
        for first in (b"GET /healthz HTTP/1.1\r\nHost: d", b""):
            with socket.create_connection(("127.0.0.1", port), timeout=60) as conn:
                conn.sendall(first)
                status, _, body, _ = read_response(conn)
                err = json.loads(body)
                assert status == 408 and err["error"] == "header_timeout"
                assert err["limit"] == {"name": "header_timeout_s", "value": 0.5}
                assert conn.recv(1) == b""
        with socket.create_connection(("127.0.0.1", port), timeout=60) as conn:
            conn.sendall(b"NOT HTTP AT ALL\r\n\r\n")
            status, _, body, _ = read_response(conn)
            assert status == 400 and json.loads(body)["error"] == "bad_http_request"
        # refused before the app saw them, and still counted with its own refusals
        counts = rejections(metrics(url))
        assert counts["bad_input"] == 3 and counts["upload_timeout"] == 2
        # within the limits, keep-alive requests on one connection work
        with httpx.Client(base_url=url) as client:
            assert [client.get("/healthz").status_code for _ in range(3)] == [200] * 3
        assert np.isfinite(gauge(metrics(url), "drrn_inflight_requests"))


def test_connections_over_max_connections_get_a_json_503_with_retry_after() -> None:
    with live_server(max_connections=3) as (url, port, _engine):
        idle = [socket.create_connection(("127.0.0.1", port), timeout=60) for _ in range(3)]
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=60) as conn:
                conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: drrn\r\n\r\n")
                status, headers, body, _ = read_response(conn)
                err = json.loads(body)
                assert status == 503 and headers["content-type"] == "application/json"
                assert err["error"] == "overloaded" and err["limit"] == {
                    "name": "max_connections",
                    "value": 3,
                }
                assert int(headers["retry-after"]) >= 1
                assert conn.recv(1) == b""
        finally:
            for c in idle:
                c.close()
        for _ in range(3000):  # once the idle connections are gone, requests are served again
            with socket.create_connection(("127.0.0.1", port), timeout=60) as conn:
                conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: drrn\r\nConnection: close\r\n\r\n")
                if read_response(conn)[0] == 200:
                    break
            threading.Event().wait(0.01)
        else:
            raise AssertionError("never served again after the idle connections closed")
        assert rejections(metrics(url))["overloaded"] >= 1  # counted, though the app never saw it
