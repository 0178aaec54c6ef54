"""``drrn serve``: settings from ``DRRN_*`` env vars, JSON logs on stderr, one uvicorn worker.

One worker on purpose: one ONNX Runtime session and one batcher own the device, and batching only helps
when all requests meet in the same queue. Scale out with more containers, not more workers.

Shutdown: uvicorn, on SIGTERM/SIGINT, stops listening, waits up to ``timeout_graceful_shutdown`` for open
connections, then *cancels* the request tasks still running and only then runs the lifespan shutdown. So
the drain cannot wait for the lifespan: :class:`_Server` starts it from the signal handler
(:meth:`service.lifecycle.Lifecycle.begin_shutdown`), and uvicorn's timeout is ``ceil(shutdown_grace_s)`` plus
:data:`UVICORN_SHUTDOWN_SLACK_S`, so requests the drain fails at the end of the grace still send their
JSON 503 before uvicorn cancels anything.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import logging.config
import math
import os
import socket
from datetime import UTC, datetime
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI

from drrn.errors import UserError
from drrn.paths import WEIGHTS_DIR
from engines.repository import ModelRepository
from service.app import create_app
from service.http_protocol import ConnectionLimits, guarded_protocol
from service.settings import Settings, settings_from_env

UVICORN_SHUTDOWN_SLACK_S = 2  # uvicorn's graceful timeout beyond the drain grace, for the last responses
EXIT_ENGINE_STALLED = 70  # exit status after a shutdown with an engine call still hung (EX_SOFTWARE)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, plus a record's ``fields`` dict (access log)
    and the traceback, if any."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update(fields)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def logging_config(level: str) -> dict[str, Any]:
    """dictConfig routing root, uvicorn and drrn loggers through :class:`JsonFormatter` on stderr."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
        },
        "root": {"handlers": ["stderr"], "level": level},
        "loggers": {
            # uvicorn installs its own handlers unless told otherwise; make them propagate to ours.
            "uvicorn": {"handlers": [], "level": level, "propagate": True},
            "uvicorn.error": {"handlers": [], "level": level, "propagate": True},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": True},
        },
    }


class _Server(uvicorn.Server):
    """uvicorn server that starts the service's drain the moment SIGTERM/SIGINT arrives: ``/readyz`` and
    new ``/upscale`` requests answer 503 at once, and admitted requests get ``shutdown_grace_s`` (uvicorn
    itself would only run the lifespan shutdown after its own timeout, having cancelled what was left).

    The 503 from ``/readyz`` is not what takes the pod out of rotation: by the time SIGTERM arrives, the
    orchestrator has already begun removing the endpoint (Kubernetes runs the ``preStop`` sleep first so
    that removal reaches every load balancer before the drain starts). It keeps probes honest; the 503 on
    new ``/upscale`` requests is what sends a load balancer that still routes here (nginx retries 503s)
    to another replica.
    """

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self._app = app
        self._loop: asyncio.AbstractEventLoop | None = None
        self._exit_scheduled = False

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # A Python signal handler: it runs on the main (event-loop) thread between bytecodes, possibly in
        # the middle of loop code, so only a plain attribute write and call_soon_threadsafe (made for
        # this: a deque append plus a wake-up byte) happen here; the drain itself runs on the loop, and
        # it marks the service unready in its first step.
        # uvicorn closes its listener at once; connections still in the accept queue then are reset, and
        # a client sees a request lost. So the listener stays open for shutdown_linger_s, answering 503
        # shutting_down (which a client or load balancer retries elsewhere), before uvicorn is told.
        lifecycle, loop = self._app.state.lifecycle, self._loop
        if self._exit_scheduled or lifecycle is None or loop is None or loop.is_closed():
            super().handle_exit(sig, frame)  # a second signal, or nothing to drain: uvicorn's own way
            return
        self._exit_scheduled = True
        loop.call_soon_threadsafe(lifecycle.begin_shutdown)
        exit_later = functools.partial(uvicorn.Server.handle_exit, self, sig, frame)
        loop.call_soon_threadsafe(loop.call_later, self._app.state.settings.shutdown_linger_s, exit_later)


def serve(host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the service until SIGTERM/SIGINT; admitted requests get ``shutdown_grace_s`` to finish.

    Raises a ``UserError`` (one line from the CLI) before binding the port when the model repository lacks
    a model to serve (it names the build command) or the default model is not among the served ones.
    """
    settings = settings_from_env()
    logging.config.dictConfig(logging_config(settings.log_level))
    # Fail fast with the build command instead of a lifespan traceback.
    repo = ModelRepository(settings.model_dir)
    names = settings.models or [card.name for card in repo.cards()]  # cards(): names `make models` if empty
    for name in names:
        repo.card(name)
    if settings.default_model not in names:
        raise UserError(f"DRRN_DEFAULT_MODEL={settings.default_model!r} is not served (serving {names})")
    _warn_if_stale(repo, names)
    app = create_app(settings)
    _Server(uvicorn_config(app, settings, host, port), app).run()
    if app.state.upscaler is not None and app.state.upscaler.engine_stalled:
        # The hung engine call's thread cannot be stopped, and the interpreter would join it for ever at
        # exit: leave now, so the orchestrator's restart is not held up until its kill timeout.
        logging.getLogger("drrn.service").error("exiting with the engine call still hung")
        logging.shutdown()
        os._exit(EXIT_ENGINE_STALLED)


def uvicorn_config(app: FastAPI, settings: Settings, host: str, port: int) -> uvicorn.Config:
    """uvicorn's settings for the service: one worker, the guarded protocol (each response in one write,
    request heads bounded in time, bytes and count) and the connection limits from ``settings``."""
    metrics = getattr(app.state, "metrics", None)
    limits = ConnectionLimits(
        settings.header_timeout_s,
        settings.max_header_bytes,
        settings.max_headers,
        max(1, round(settings.retry_after_s)),
        on_reject=None if metrics is None else lambda reason: metrics.on_reject("", reason),
    )
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        workers=1,
        http=guarded_protocol(limits),  # head + body in one write: nginx can fail over a crash (see module)
        lifespan="on",
        log_config=None,  # keep the dictConfig above
        access_log=False,  # drrn.access logs each request with timings instead
        timeout_graceful_shutdown=math.ceil(settings.shutdown_grace_s) + UVICORN_SHUTDOWN_SLACK_S,
        timeout_keep_alive=settings.keep_alive_timeout_s,
        limit_concurrency=settings.max_connections,
        h11_max_incomplete_event_size=settings.max_header_bytes,  # the h11 parser's own bound, if used
    )


def _warn_if_stale(repo: ModelRepository, names: list[str]) -> None:
    """Log a warning for each served model whose shipped weights changed after it was built (`make serve`
    rebuilds first; a bare `drrn serve` after pulling new weights would otherwise serve the old export)."""
    from drrn.paths import sha256_file

    for name in names:
        weights = WEIGHTS_DIR / f"{name}.safetensors"
        card = repo.card(name)
        if weights.is_file() and sha256_file(weights) != card.weights_sha256:
            logging.getLogger("drrn.service").warning(
                "model %r in %s was built from other weights than %s: run `make models`",
                name, card.folder, weights,
            )  # fmt: skip
