"""Failover through the real load balancer, on loopback only.

Two real replicas (``drrn serve`` subprocesses on a tiny exported model) sit behind the real nginx, run from
docker/nginx.conf.template rendered by docker/render_nginx.sh (what the compose ``nginx`` service runs).
A bounded load of upscale requests at concurrency 8 runs through nginx, and one replica is SIGKILLed partway
through. Expected: no client-visible failure, both replicas served before the kill, and every request
started after the kill was served by the survivor (nginx retries what hit the dead one: POST /upscale is a
pure function of the request). Which replica served a request comes from nginx's JSON access log
(``upstream_addr``), joined on the X-Request-ID the test sends. The stack itself is in tests/lb_stack.py.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.lb_stack import Proc, lb_stack

TOTAL_REQUESTS = 240
CONCURRENCY = 8
KILL_AFTER = 80  # completed requests before replica 0 is killed
RUN_TIMEOUT_S = 120.0

pytestmark = pytest.mark.slow


@pytest.fixture
def stack(tiny_repo: Path, tmp_path: Path) -> Iterator[tuple[list[Proc], Proc, Path]]:
    """(two replicas, nginx, nginx access log); every process is killed on teardown."""
    with lb_stack(tiny_repo, tmp_path) as parts:
        yield parts


def small_png() -> bytes:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class Result:
    rid: str
    started: float
    finished: float
    status: int
    ok: bool
    detail: str = ""


async def drive(lb: Proc, victim: Proc) -> tuple[list[Result], float]:
    """TOTAL_REQUESTS upscales at CONCURRENCY; SIGKILL ``victim`` after KILL_AFTER completions."""
    import httpx

    png = small_png()
    results: list[Result] = []
    next_id = iter(range(TOTAL_REQUESTS))
    killed_at: list[float] = []

    async def worker(client: httpx.AsyncClient) -> None:
        for i in next_id:
            rid = f"lbtest-{i:04d}"
            t0 = time.monotonic()
            try:
                res = await client.post(
                    "/upscale?scale=2",
                    content=png,
                    headers={"content-type": "image/png", "x-request-id": rid},
                )
                ok = res.status_code == 200 and res.content[:8] == b"\x89PNG\r\n\x1a\n"
                results.append(
                    Result(rid, t0, time.monotonic(), res.status_code, ok, "" if ok else res.text[:200])
                )
            except httpx.HTTPError as exc:
                results.append(Result(rid, t0, time.monotonic(), 0, False, repr(exc)))
            if len(results) >= KILL_AFTER and not killed_at:
                killed_at.append(time.monotonic())
                os.killpg(victim.popen.pid, signal.SIGKILL)

    async with httpx.AsyncClient(base_url=f"http://{lb.addr}", timeout=30.0) as client:
        await asyncio.wait_for(asyncio.gather(*(worker(client) for _ in range(CONCURRENCY))), RUN_TIMEOUT_S)
    assert killed_at, "the victim was never killed"
    return results, killed_at[0]


def read_access_log(path: Path) -> dict[str, dict[str, object]]:
    entries = {}
    for line in path.read_text().splitlines():
        entry = json.loads(line)
        if entry["uri"].startswith("/upscale"):
            entries[entry["request_id"]] = entry
    return entries


def test_failover_loses_no_request(stack: tuple[list[Proc], Proc, Path]) -> None:
    (victim, survivor), lb, access_log = stack
    results, t_kill = asyncio.run(drive(lb, victim))
    victim.popen.wait(timeout=10)
    assert victim.popen.poll() is not None, "the victim survived SIGKILL"

    failures = [r for r in results if not r.ok]
    assert len(results) == TOTAL_REQUESTS
    assert not failures, f"{len(failures)} failed requests, e.g. {failures[:3]}"

    rids = {r.rid for r in results}
    deadline = time.monotonic() + 5  # nginx writes a request's log line just after its response
    while set(log := read_access_log(access_log)) != rids and time.monotonic() < deadline:
        time.sleep(0.05)
    assert set(log) == rids, f"not in the access log: {sorted(rids - set(log))[:5]}"

    def final(rid: str) -> str:
        return str(log[rid]["upstream_addr"]).split(",")[-1].strip()

    before = Counter(final(r.rid) for r in results if r.finished < t_kill)
    after = Counter(final(r.rid) for r in results if r.started > t_kill)
    during = [r for r in results if r.started <= t_kill <= r.finished]
    retried = [rid for rid, e in log.items() if "," in str(e["upstream_addr"])]
    tried_dead_after = sum(
        1 for r in results if r.started > t_kill and victim.addr in str(log[r.rid]["upstream_addr"])
    )
    print(
        f"\nLB failover: {len(results)} requests, {len(failures)} failed; "
        f"before kill {dict(before)}; in flight at kill {len(during)}; after kill {dict(after)}; "
        f"retried by nginx {len(retried)} (after the kill, {tried_dead_after} tried the dead replica first); "
        f"victim {victim.addr}, survivor {survivor.addr}"
    )
    assert before[victim.addr] > 0 and before[survivor.addr] > 0, f"both replicas must serve first: {before}"
    assert after and set(after) == {survivor.addr}, f"after the kill only the survivor may serve: {after}"
    assert sum(after.values()) >= TOTAL_REQUESTS - KILL_AFTER - 2 * CONCURRENCY
