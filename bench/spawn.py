"""Start ``drrn serve`` as a subprocess on a free loopback port for one benchmark run (``--spawn``).

The child inherits this process's environment plus the ``DRRN_*`` overrides given (``--set``); its JSON logs
go to a file under ``artifacts/bench/`` so a failed start can be explained. :class:`SpawnedService` is a
context manager: it waits for ``/readyz`` (model loaded and warmed up) and sends SIGTERM on exit.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from drrn.errors import UserError
from drrn.paths import ARTIFACTS, PROJECT_ROOT

LOG_DIR = ARTIFACTS / "bench" / "logs"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _exports_root() -> Path:
    from bench import engine as bench_engine  # read at call time: tests redirect BENCH_ARTIFACTS

    return bench_engine.BENCH_ARTIFACTS / "models"


def serve_model_path(spec: str) -> Path:
    """The fp32 ONNX file of the repository model a spawned service serves for ``--model``: any
    :mod:`engines.resolver` spec (a name is built on first use; a ``*.safetensors`` or a lone ``*.onnx``
    becomes a model under ``artifacts/bench/models``)."""
    from engines.resolver import resolve_files

    files = resolve_files(spec, export=True, exports_root=_exports_root())
    assert files.card is not None and files.onnx is not None  # export=True always gives a card
    return files.onnx


def model_env(model: Path) -> dict[str, str]:
    """``DRRN_*`` variables that make a service serve exactly the repository model holding ``model``
    (any ONNX file: one outside a model folder is imported first, see :func:`serve_model_path`)."""
    folder = serve_model_path(str(model)).parent
    return {
        "DRRN_MODEL_DIR": str(folder.parent),
        "DRRN_MODELS": folder.name,
        "DRRN_DEFAULT_MODEL": folder.name,
    }


class _PortTaken(UserError):
    """The child could not bind its port: something else took it after :func:`free_port` chose it."""


class SpawnedService:
    """``with SpawnedService(env) as svc: svc.url`` -> a ready service; stopped (SIGTERM) on exit."""

    def __init__(
        self, env: dict[str, str] | None = None, model: Path | None = None, ready_timeout_s: float = 300.0
    ) -> None:
        self.overrides = dict(env or {})
        if model is not None:
            for key, value in model_env(Path(model)).items():
                self.overrides.setdefault(key, value)
        self.overrides.setdefault("DRRN_LOG_LEVEL", "WARNING")  # no per-request access log lines
        self.ready_timeout_s = ready_timeout_s
        self._use_port(free_port())
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup_s: float | None = None

    def __enter__(self) -> SpawnedService:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start and wait for ``/readyz``. A port taken between :func:`free_port` and the child's bind
        (another process on a shared machine) is retried on a fresh port, twice."""
        for _ in range(2):
            try:
                self._start_once()
                return
            except _PortTaken:
                self._use_port(free_port())
        self._start_once()

    def _use_port(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = LOG_DIR / f"serve-{port}.log"

    def _start_once(self) -> None:
        import httpx

        LOG_DIR.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.overrides, "PYTHONUNBUFFERED": "1"}
        cmd = [sys.executable, "-m", "drrn", "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        t0 = time.perf_counter()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=PROJECT_ROOT)
        deadline = t0 + self.ready_timeout_s
        with httpx.Client(timeout=5.0) as client:
            while time.perf_counter() < deadline:
                if self.proc.poll() is not None:
                    tail = self.log_tail()
                    if "address already in use" in tail.lower():
                        raise _PortTaken(tail)
                    raise UserError(f"spawned service exited with {self.proc.returncode}:\n{tail}")
                try:
                    if client.get(f"{self.url}/readyz").status_code == 200:
                        self.startup_s = time.perf_counter() - t0
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
        self.stop()
        raise UserError(f"spawned service not ready after {self.ready_timeout_s:.0f}s:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 30 s; only the process this object started."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
