"""drrn.client against a real ``drrn serve`` (subprocess, tiny exported models): success, the typed errors,
503 + Retry-After retries and the give-up after the time budget.

The server is made full deterministically: with ``DRRN_MAX_UPLOADS=1`` a raw-socket upload that sends its
headers and half its body holds the one upload slot, so every other request gets 503 ``overloaded`` with
``Retry-After: 1`` until the test finishes that upload.
Assertions are on order and counts (attempts, retry events, the wait the client chose), never wall time.
"""

from __future__ import annotations

import asyncio
import io
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from bench.spawn import SpawnedService, free_port
from drrn.client import (
    AsyncClient,
    Client,
    ConnectionFailed,
    ImageTooLarge,
    InvalidImage,
    InvalidParameter,
    RequestTimeout,
    RetryEvent,
    ServerBusy,
    UnknownModel,
    UnsupportedImage,
)
from tests.service_harness import png

pytestmark = pytest.mark.slow


def server_env(tiny_repo: Path, **extra: str) -> dict[str, str]:
    return {
        "DRRN_MODEL_DIR": str(tiny_repo),
        "DRRN_MODELS": "fast,quality",
        "DRRN_DEFAULT_MODEL": "fast",
        "DRRN_PROVIDERS": "cpu",
        "DRRN_TILE": "64",
        "DRRN_INTRA_OP_THREADS": "1",
        "DRRN_INTER_OP_THREADS": "1",
        "DRRN_CPU_WORKERS": "1",
        "DRRN_SHUTDOWN_GRACE_S": "1",
        **extra,
    }


@pytest.fixture(scope="module")
def server(tiny_repo: Path) -> Iterator[str]:
    """A normal server with a small input limit (so ImageTooLarge is cheap to provoke)."""
    with SpawnedService(server_env(tiny_repo, DRRN_MAX_INPUT_PIXELS="40000")) as svc:
        yield svc.url


@pytest.fixture(scope="module")
def full_server(tiny_repo: Path) -> Iterator[SpawnedService]:
    """A server that admits one request at a time and asks for ``Retry-After: 1``."""
    env = server_env(tiny_repo, DRRN_MAX_UPLOADS="1", DRRN_RETRY_AFTER_S="1")
    with SpawnedService(env) as svc:
        yield svc


def size_of(data: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(data)).size


# --- success -------------------------------------------------------------------------------------------
def test_upscale_path_bytes_pil_and_out(server: str, tmp_path: Path) -> None:
    src = tmp_path / "in.png"
    src.write_bytes(png(30, 20, seed=1))
    with Client(server) as c:
        assert c.ready()
        from_path = c.upscale(src, 2)
        from_bytes = c.upscale(src.read_bytes(), 2)
        from_pil = c.upscale(Image.open(src), 2, model="quality")
        written = c.upscale(str(src), 2.5, out=tmp_path / "out.png")
        listing = c.models()
    assert from_path[:8] == b"\x89PNG\r\n\x1a\n" and from_path == from_bytes
    assert size_of(from_path) == (60, 40) and size_of(from_pil) == (60, 40)
    assert from_pil != from_path  # the other model ran
    assert written == tmp_path / "out.png" and size_of(written.read_bytes()) == (75, 50)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    assert listing["default"] == "fast" and {m["name"] for m in listing["models"]} == {"fast", "quality"}


def test_async_client_same_results(server: str) -> None:
    data = png(16, 16, seed=2)

    async def go() -> tuple[bytes, bool, dict]:
        async with AsyncClient(server) as c:
            results = await asyncio.gather(*(c.upscale(data, 3) for _ in range(4)))
            assert len(set(results)) == 1
            return results[0], await c.ready(), await c.models()

    result, ready, listing = asyncio.run(go())
    assert size_of(result) == (48, 48) and ready and listing["default"] == "fast"
    with Client(server) as c:
        assert c.upscale(data, 3) == result


# --- typed errors: each carries the server's JSON, and a 4xx is never retried --------------------------
@pytest.mark.parametrize(
    ("kwargs", "cls", "code", "status"),
    [
        ({"image": b""}, InvalidImage, "empty_body", 400),
        ({"image": b"\x89PNG\r\n\x1a\n" + b"\0" * 40}, InvalidImage, "corrupt_image", 400),
        ({"image": b"just some text, not an image"}, UnsupportedImage, "unsupported_format", 415),
        ({"image": png(250, 200)}, ImageTooLarge, "input_too_large", 413),
        ({"scale": 9}, InvalidParameter, "bad_scale", 422),
        ({"ensemble": 3}, InvalidParameter, "bad_ensemble", 422),
        ({"model": "nope"}, UnknownModel, "unknown_model", 422),
    ],
)
def test_error_classes(server: str, kwargs: dict, cls: type, code: str, status: int) -> None:
    events: list[RetryEvent] = []
    call = {"image": png(8, 8), "scale": 2, **kwargs}
    with Client(server, retries=5, on_retry=events.append) as c, pytest.raises(cls) as info:
        c.upscale(**call)
    err = info.value
    assert (err.status, err.code, err.attempts, events) == (status, code, 1, [])
    assert err.detail and err.request_id and err.request_id.startswith("client-")
    assert err.body is not None and err.body["error"] == code
    if code == "input_too_large":
        assert err.limit == {"name": "max_input_pixels", "value": 40000}
    if code == "unknown_model":
        assert err.limit["value"] == ["fast", "quality"]


def test_connection_refused_is_retried_then_raised() -> None:
    events: list[RetryEvent] = []
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with Client(url, retries=2, on_retry=events.append) as c:
        assert not c.ready()
        with pytest.raises(ConnectionFailed) as info:
            c.upscale(b"x", 2)
    assert info.value.attempts == 3 and [e.attempt for e in events] == [1, 2]
    assert all(e.retry_after_s is None and e.wait_s > 0 for e in events)


def test_read_timeout_is_not_retried() -> None:
    """A server that accepts the connection and never answers: the attempt times out, and is not re-sent
    (the server may still be working on it)."""
    events: list[RetryEvent] = []
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)  # the kernel completes the handshake; nobody ever reads
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        with Client(url, timeout=0.5, retries=3, on_retry=events.append) as c, pytest.raises(RequestTimeout):
            c.upscale(png(8, 8), 2)
    assert events == []


# --- 503: retried after Retry-After, bounded in count and time -----------------------------------------
class HeldUpload:
    """A raw HTTP upload stopped halfway through its body: it holds the server's one upload slot."""

    def __init__(self, svc: SpawnedService) -> None:
        self.svc, self.body = svc, png(8, 8, seed=3)
        self.sock = socket.create_connection(("127.0.0.1", svc.port))
        head = (
            f"POST /upscale?scale=2 HTTP/1.1\r\nHost: test\r\nContent-Type: image/png\r\n"
            f"Content-Length: {len(self.body)}\r\nConnection: close\r\n\r\n"
        )
        self.sock.sendall(head.encode() + self.body[:20])
        self._wait_inflight(1)

    def _wait_inflight(self, want: int) -> None:
        for _ in range(500):  # the cap turns a bug into a failure, not a hang
            text = httpx.get(f"{self.svc.url}/metrics", timeout=5).text
            if f"drrn_uploading_requests {float(want)}" in text:
                return
            time.sleep(0.02)
        raise AssertionError(f"uploading never reached {want}")

    def release(self) -> bytes:
        """Send the rest of the body and read the whole answer; the slot is free when this returns (the
        server leaves admission before it sends the response)."""
        self.sock.sendall(self.body[20:])
        chunks = []
        while chunk := self.sock.recv(65536):
            chunks.append(chunk)
        self.sock.close()
        return b"".join(chunks)


def test_503_is_retried_after_retry_after(full_server: SpawnedService) -> None:
    held, log = HeldUpload(full_server), []

    def on_retry(event: RetryEvent) -> None:
        log.append(event)
        if len(log) == 1:  # the server answered 503 while full: free it, the retry must then succeed
            assert held.release().startswith(b"HTTP/1.1 200")

    with Client(full_server.url, retries=3, on_retry=on_retry) as c:
        result = c.upscale(png(10, 6), 2)
    assert size_of(result) == (20, 12)
    assert len(log) == 1
    event = log[0]
    assert isinstance(event.error, ServerBusy) and event.error.code == "overloaded"
    assert event.error.limit == {"name": "max_uploads", "value": 1}
    assert event.retry_after_s == 1.0 and 1.0 <= event.wait_s <= 1.25  # Retry-After plus at most 25% jitter


def test_async_503_is_retried_after_retry_after(full_server: SpawnedService) -> None:
    held, log = HeldUpload(full_server), []

    def on_retry(event: RetryEvent) -> None:
        log.append(event)
        if len(log) == 1:
            held.release()

    async def go() -> bytes:
        async with AsyncClient(full_server.url, retries=3, on_retry=on_retry) as c:
            return await c.upscale(png(10, 6), 2)

    assert size_of(asyncio.run(go())) == (20, 12)
    assert [e.error.code for e in log] == ["overloaded"] and log[0].wait_s >= 1.0


def test_gives_up_after_the_time_budget(full_server: SpawnedService) -> None:
    held, log = HeldUpload(full_server), []
    try:
        client = Client(full_server.url, retries=100, retry_budget_s=2.5, on_retry=log.append)
        with client as c, pytest.raises(ServerBusy) as info:
            c.upscale(png(10, 6), 2)
    finally:
        held.release()
    # Waits of >= 1 s each within a 2.5 s budget: at most 2 retries, far below the count bound of 100.
    assert info.value.code == "overloaded" and info.value.status == 503
    assert 1 <= info.value.attempts <= 3 and len(log) == info.value.attempts - 1
    assert all(e.wait_s >= 1.0 for e in log)


def test_gives_up_after_the_retry_count(full_server: SpawnedService) -> None:
    held, log = HeldUpload(full_server), []
    try:
        client = Client(full_server.url, retries=1, retry_budget_s=600, on_retry=log.append)
        with client as c, pytest.raises(ServerBusy) as info:
            c.upscale(png(10, 6), 2)
    finally:
        held.release()
    assert info.value.attempts == 2 and [e.attempt for e in log] == [1]


def test_readme_example_runs(server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's example, as written, against the test server (its URL swapped in)."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Python client", 1)[1]
    example = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert len(example.strip().splitlines()) <= 6
    monkeypatch.chdir(tmp_path)
    Image.fromarray(np.full((12, 10, 3), 128, np.uint8)).save("photo.jpg")
    exec(compile(example.replace("http://127.0.0.1:8000", server), "README.md", "exec"), {})
    assert size_of((tmp_path / "photo_x4.png").read_bytes()) == (40, 48)
