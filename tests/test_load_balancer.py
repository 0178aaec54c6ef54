"""Failover through the real load balancer, on loopback only.

Two real replicas (``drrn serve`` subprocesses on a tiny exported model) sit behind the real nginx, run from
docker/nginx.conf.template rendered by docker/render_nginx.sh (what the compose ``nginx`` service runs).
A bounded load of upscale requests at concurrency 8 runs through nginx, and one replica is SIGKILLed partway
through. Expected: no client-visible failure, both replicas served before the kill, and every request
started after the kill was served by the survivor (nginx retries what hit the dead one: POST /upscale is a
pure function of the request). Which replica served a request comes from nginx's JSON access log
(``upstream_addr``), joined on the X-Request-ID the test sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
TOTAL_REQUESTS = 240
CONCURRENCY = 8
KILL_AFTER = 80  # completed requests before replica 0 is killed
RUN_TIMEOUT_S = 120.0
START_TIMEOUT_S = 60.0

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nginx_binary() -> str:
    for candidate in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.skip("nginx is not installed (Debian nginx); run `make deploy-tools`")


def drrn_command() -> list[str]:
    exe = Path(sys.executable).parent / "drrn"
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "drrn"]


@dataclass
class Proc:
    """A subprocess in its own process group, with its output in a log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    port: int = 0
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def kill(self) -> None:
        """SIGKILL the whole process group (idempotent) and reap it."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=10)

    def tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"


def spawn(name: str, cmd: list[str], env: dict[str, str], log: Path) -> Proc:
    with open(log, "wb") as out:
        popen = subprocess.Popen(
            cmd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return Proc(name, popen, log)


def wait_http_ok(proc: Proc, url: str, timeout: float = START_TIMEOUT_S) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            pytest.fail(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.tail()}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    pytest.fail(f"{proc.name} not ready at {url} after {timeout:.0f}s:\n{proc.tail()}")


@pytest.fixture
def stack(tiny_repo: Path, tmp_path: Path) -> Iterator[tuple[list[Proc], Proc, Path]]:
    """(two replicas, nginx, nginx access log); every process is killed on teardown."""
    nginx = nginx_binary()
    if shutil.which("envsubst") is None:
        pytest.skip("envsubst is not installed (Debian gettext-base); run `make deploy-tools`")
    procs: list[Proc] = []
    try:
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("DRRN_", "NGINX_"))}
        replica_env = {
            **clean,
            "DRRN_MODEL_DIR": str(tiny_repo),
            "DRRN_MODELS": "fast",
            "DRRN_DEFAULT_MODEL": "fast",
            "DRRN_PROVIDERS": "cpu",
            "DRRN_TILE": "64",
            "DRRN_MAX_BATCH": "4",
            "DRRN_MAX_DELAY_MS": "1",
            "DRRN_INTRA_OP_THREADS": "1",
            "DRRN_INTER_OP_THREADS": "1",
            "DRRN_CPU_WORKERS": "1",
            "DRRN_SHUTDOWN_GRACE_S": "1",
            "DRRN_LOG_LEVEL": "WARNING",
        }
        replicas = []
        for i in range(2):
            port = free_port()
            cmd = [*drrn_command(), "serve", "--host", "127.0.0.1", "--port", str(port)]
            proc = spawn(f"replica-{i}", cmd, replica_env, tmp_path / f"replica-{i}.log")
            proc.port = port
            procs.append(proc)
            replicas.append(proc)
        for proc in replicas:
            wait_http_ok(proc, f"http://{proc.addr}/readyz")

        (tmp_path / "logs").mkdir()
        conf, access_log, lb_port = tmp_path / "nginx.conf", tmp_path / "logs" / "access.log", free_port()
        render_env = {
            **clean,
            "DRRN_UPSTREAMS": " ".join(p.addr for p in replicas),
            "NGINX_LISTEN": f"127.0.0.1:{lb_port}",
            "NGINX_CONF_OUT": str(conf),
            "NGINX_USER": pwd.getpwuid(os.getuid()).pw_name,
            "NGINX_WORKER_PROCESSES": "1",
            "NGINX_PID": str(tmp_path / "nginx.pid"),
            "NGINX_ERROR_LOG": str(tmp_path / "logs" / "error.log"),
            "NGINX_ACCESS_LOG": str(access_log),
            "NGINX_TEMP_DIR": str(tmp_path / "temp"),
        }
        rendered = subprocess.run(
            ["sh", str(DOCKER / "render_nginx.sh")],
            env=render_env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert rendered.returncode == 0, rendered.stderr
        cmd = [nginx, "-p", str(tmp_path), "-e", str(tmp_path / "logs" / "error.log"), "-c", str(conf)]
        lb = spawn("nginx", [*cmd, "-g", "daemon off;"], clean, tmp_path / "logs" / "nginx.out")
        lb.port = lb_port
        procs.append(lb)
        wait_http_ok(lb, f"http://{lb.addr}/nginx-health")
        wait_http_ok(lb, f"http://{lb.addr}/readyz")
        yield replicas, lb, access_log
    finally:
        for proc in reversed(procs):
            proc.kill()


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
