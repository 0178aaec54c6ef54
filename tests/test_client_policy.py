"""The client's shared policy without a server: error bodies -> typed exceptions (including what proxies
send), Retry-After parsing, the wait bounds; and that ``import drrn.client`` needs none of torch,
onnxruntime, numpy or Pillow (a subprocess in which importing them raises)."""

from __future__ import annotations

import json
import subprocess
import sys
from email.utils import formatdate
from pathlib import Path

import pytest

from drrn.client_errors import (
    ClientError,
    DeadlineExceeded,
    ImageTooLarge,
    ServerBusy,
    ServerError,
    UnknownModel,
    UnsupportedImage,
    error_from_response,
)
from drrn.client_retry import RetryPolicy, parse_retry_after

REPO = Path(__file__).resolve().parents[1]


def body(code: str, limit: dict | None = None, rid: str = "r1") -> bytes:
    return json.dumps(
        {"error": code, "detail": f"{code} happened", "limit": limit, "request_id": rid}
    ).encode()


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (413, "too_many_tiles", ImageTooLarge),
        (422, "output_too_large", ImageTooLarge),
        (415, "unsupported_format", UnsupportedImage),
        (422, "unknown_model", UnknownModel),
        (503, "queue_full", ServerBusy),
        (503, "no_upstream", ServerBusy),  # nginx's own JSON when no replica answered
        (504, "deadline_exceeded", DeadlineExceeded),
        (500, "engine_error", ServerError),
        (418, "a_code_added_later", ClientError),  # unknown codes still map by status
        (500, "unsupported_format", ServerError),  # a code never moves an error across the 4xx/5xx line
    ],
)
def test_error_from_json_body(status: int, code: str, cls: type) -> None:
    limit = {"name": "max_queue_tiles", "value": 64}
    err = error_from_response(status, body(code, limit), {}, attempts=2)
    assert type(err) is cls
    assert (err.status, err.code, err.detail, err.limit, err.request_id, err.attempts) == (
        status,
        code,
        f"{code} happened",
        limit,
        "r1",
        2,
    )
    assert code in str(err) and str(status) in str(err)


def test_error_from_a_proxy_html_page() -> None:
    err = error_from_response(502, b"<html>Bad Gateway</html>", {"x-request-id": "abc"})
    assert type(err) is ServerError and err.code == "http_502" and "Bad Gateway" in err.detail
    assert err.request_id == "abc" and err.body is None and err.limit is None
    err = error_from_response(413, b"", {})
    assert type(err) is ImageTooLarge and err.detail == "HTTP 413"


def test_retry_after_parsing() -> None:
    assert parse_retry_after("3") == 3.0 and parse_retry_after(" 0 ") == 0.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    in_a_minute = parse_retry_after(formatdate(usegmt=True, timeval=__import__("time").time() + 60))
    assert in_a_minute is not None and 55 < in_a_minute <= 60
    assert parse_retry_after(formatdate(usegmt=True, timeval=0)) == 0.0  # a date in the past: now


def test_wait_bounds() -> None:
    p = RetryPolicy(backoff_s=0.5, max_backoff_s=4.0, jitter=0.25)
    # Retry-After is a floor, jitter only adds (up to 25%).
    assert p.wait_s(1, 2.0, 0.0) == 2.0 and p.wait_s(1, 2.0, 0.999) == pytest.approx(2.5, abs=0.01)
    # Without it: exponential, halved at most by jitter, capped.
    assert [p.wait_s(n, None, 0.999) for n in (1, 2, 3, 4, 5)] == pytest.approx([0.5, 1, 2, 4, 4], abs=0.01)
    assert p.wait_s(3, None, 0.0) == 1.0
    # A Retry-After shorter than the backoff does not make the client hammer the server.
    assert p.wait_s(5, 0.0, 0.0) == 2.0


BLOCKED = """
import sys

class Block:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {"torch", "onnxruntime", "numpy", "PIL"}:
            raise ImportError(f"blocked: {name}")
        return None

sys.meta_path.insert(0, Block())
try:
    import numpy
except ImportError:
    pass
else:
    raise SystemExit("the blocker does not work")
import drrn.client
from drrn.client import AsyncClient, Client, ServerBusy

Client("http://127.0.0.1:1").close()
print("imported", drrn.client.__name__)
"""


def test_import_needs_no_numpy_onnxruntime_torch() -> None:
    res = subprocess.run(
        [sys.executable, "-c", BLOCKED], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "imported drrn.client"
