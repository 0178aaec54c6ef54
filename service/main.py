"""``drrn serve``: settings from ``DRRN_*`` env vars, JSON logs on stderr, one uvicorn worker.

One worker on purpose: one ONNX Runtime session and one batcher own the device, and batching only helps
when all requests meet in the same queue. Scale out with more containers, not more workers.
"""

from __future__ import annotations

import json
import logging
import logging.config
import math
from datetime import UTC, datetime
from types import FrameType
from typing import Any

import uvicorn

from service.app import create_app
from service.engine import choose_model_path, select_providers
from service.settings import Settings


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
    """uvicorn server that flips readiness to 503 the moment SIGTERM/SIGINT arrives (uvicorn only runs the
    lifespan shutdown after in-flight requests finished, i.e. too late for a load balancer to notice)."""

    def __init__(self, config: uvicorn.Config, app_state: Any) -> None:
        super().__init__(config)
        self._app_state = app_state

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Runs in a signal handler: a plain attribute write only (no locks, no logging).
        self._app_state.shutting_down = True
        super().handle_exit(sig, frame)


def serve(host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the service until SIGTERM/SIGINT; in-flight requests get ``shutdown_grace_s`` to finish.

    Raises :class:`service.engine.ModelNotFoundError` (a ``UserError``: one line from the CLI) before
    binding the port when the ONNX model is missing.
    """
    settings = Settings()
    logging.config.dictConfig(logging_config(settings.log_level))
    # Fail fast with the build command instead of a lifespan traceback.
    providers = select_providers(settings.providers, settings.cuda_device_id, settings.cudnn_conv_algo_search)
    choose_model_path(settings.model_path, settings.fp16_model_path, on_cuda=len(providers) > 1)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        workers=1,
        lifespan="on",
        log_config=None,  # keep the dictConfig above
        access_log=False,  # drrn.access logs each request with timings instead
        timeout_graceful_shutdown=math.ceil(settings.shutdown_grace_s),
    )
    _Server(config, app.state.drrn).run()
