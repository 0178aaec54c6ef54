"""What the routes and the lifecycle (:mod:`service.lifecycle`) share: :class:`ServiceState`, built by
:func:`service.app.create_app` and filled in by its lifespan."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from engines.base import Engine
from inference.batcher import TileBatcher
from inference.pipeline import ImageLimits
from service.metrics import ServiceMetrics
from service.settings import Settings


@dataclass
class ServiceState:
    """Settings, metrics and the lifespan-owned engine, batcher and thread pool, plus serving flags."""

    settings: Settings
    metrics: ServiceMetrics
    limits: ImageLimits
    cpu_pool: ThreadPoolExecutor | None = None  # decode/encode threads, created by the lifespan
    engine: Engine | None = None
    batcher: TileBatcher | None = None
    margin: int = 0
    ready: bool = False
    shutting_down: bool = False  # also set from uvicorn's signal handler: plain bool writes only
    startup_error: str | None = None
    inflight: int = 0  # /upscale requests admitted and not finished
    model_info: dict[str, Any] = field(default_factory=dict)
    drain_task: asyncio.Task[None] | None = None  # started by the first shutdown trigger
    no_inflight: asyncio.Event | None = None  # set while inflight == 0; made by the lifespan (its loop)

    @property
    def is_ready(self) -> bool:
        return self.ready and not self.shutting_down and self.batcher is not None and self.batcher.running

    @property
    def failure(self) -> str | None:
        """Why this process can never become (or stay) ready, or None: a failed warmup or a dead batcher
        worker. ``/healthz`` reports it, so the orchestrator restarts the process."""
        if self.startup_error:
            return self.startup_error
        if self.batcher is not None and self.batcher.failure is not None:
            return f"batcher worker crashed: {self.batcher.failure!r}"
        return None

    def enter(self) -> None:
        """An /upscale request was admitted."""
        self.inflight += 1
        self.metrics.inflight.set(self.inflight)
        if self.no_inflight is not None:
            self.no_inflight.clear()

    def leave(self) -> None:
        """An admitted /upscale request finished (any outcome)."""
        self.inflight -= 1
        self.metrics.inflight.set(self.inflight)
        if self.inflight == 0 and self.no_inflight is not None:
            self.no_inflight.set()
