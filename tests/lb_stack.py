"""Two real ``drrn serve`` replicas (tiny exported model, loopback) behind the real nginx, rendered from
docker/nginx.conf.template by docker/render_nginx.sh (what the compose ``nginx`` service runs). Shared by
tests/test_load_balancer.py (failover) and tests/test_folder_upscale.py (folder mode through the LB)."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
START_TIMEOUT_S = 60.0


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


@contextlib.contextmanager
def lb_stack(tiny_repo: Path, tmp_path: Path) -> Iterator[tuple[list[Proc], Proc, Path]]:
    """(two replicas, nginx, nginx access log); every process is killed on exit. Skips the test when nginx
    or envsubst is missing."""
    nginx = nginx_binary()
    if shutil.which("envsubst") is None:
        pytest.skip("envsubst is not installed (Debian gettext-base); run `make deploy-tools`")
    procs: list[Proc] = []
    tmp_path.mkdir(parents=True, exist_ok=True)
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
