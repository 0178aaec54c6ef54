"""What :class:`inference.upscaler.Upscaler` is built from and hands back: readiness phases, the domain
errors of a request (mapped to HTTP in one place, ``service.errors``), served models, config, observer
hooks and results. Plain data; no asyncio besides :func:`race`."""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from engines.base import Engine
from inference.batch_types import BatcherObserver, DeadlineExceededError

T = TypeVar("T")


class Phase(enum.Enum):
    """Readiness: STARTING -> READY -> DRAINING -> STOPPED; FAILED (terminal) from STARTING or READY."""

    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    STOPPED = "stopped"
    FAILED = "failed"


class UpscalerError(Exception):
    """Base of the request outcomes the Upscaler itself raises (batcher and image errors pass through)."""


class NotReadyError(UpscalerError):
    """Starting up, failed, or shutting down; ``code`` is ``not_ready`` or ``shutting_down``."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code


class OverloadedError(UpscalerError):
    """A concurrency bound is reached: ``limit`` (``max_inflight_requests``: requests past their upload;
    ``max_uploads``: bodies being received) is ``value``."""

    def __init__(self, limit: str = "max_inflight_requests", value: int = 0) -> None:
        what = "bodies being received" if limit == "max_uploads" else "requests in flight"
        super().__init__(f"too many {what} ({limit}={value}); retry later")
        self.limit, self.value = limit, value


class UploadTimeoutError(UpscalerError):
    """The request body did not arrive within ``upload_timeout_s`` of the request's arrival."""

    def __init__(self, upload_timeout_s: float) -> None:
        super().__init__(f"the request body did not arrive within upload_timeout_s={upload_timeout_s:g}s")
        self.upload_timeout_s = upload_timeout_s


class StageDeadlineError(DeadlineExceededError):
    """The deadline passed outside the batcher (read, decode or encode): ``stage`` says where."""

    def __init__(self, stage: str, request_id: str) -> None:
        super().__init__(f"request {request_id} exceeded its deadline during {stage}")
        self.stage = stage


class ClientGoneError(UpscalerError):
    """The client went away mid-upload or while its tiles waited (``in_queue``: the batcher dropped them and
    counted a ``cancelled`` rejection itself)."""

    def __init__(self, detail: str, in_queue: bool = False) -> None:
        super().__init__(detail)
        self.in_queue = in_queue


@dataclass(frozen=True)
class ServedModel:
    """A loaded model and how it is tiled: tiles of at most ``tile**2`` pixels shaped per ``tile_shape``
    (``fit`` each image, or ``uniform`` T x T where the image allows, so tiles of different requests stack:
    GPU batching), with ``margin`` context pixels (:func:`imaging.tiling.plan_tiles`)."""

    name: str
    engine: Engine
    tile: int
    margin: int
    card: Mapping[str, Any] = field(default_factory=dict)  # public description (API, metrics)
    tile_shape: str = "fit"

    def __post_init__(self) -> None:
        if 2 * self.margin >= self.tile:
            raise ValueError(f"model {self.name!r}: margin {self.margin} leaves no core in tile {self.tile}")


@dataclass(frozen=True)
class UpscalerConfig:
    """Scheduling and admission knobs (the service builds this from its settings)."""

    max_delay_ms: float = 0.0
    max_queue_tiles: int = 4096
    max_inflight: int = 64
    request_timeout_s: float = 30.0
    retry_after_s: int = 1
    cpu_workers: int = 2
    upload_timeout_s: float = 20.0  # its own bound on receiving the body (inside request_timeout_s)
    max_uploads: int = 128  # bodies being received at once (they hold no in-flight slot)
    deadline_admission: bool = True  # refuse what the measured engine speed cannot finish in time
    engine_stall_s: float | None = 120.0  # watchdog bound on one engine call; None = no watchdog


class UpscalerObserver(BatcherObserver):
    """Metrics hooks on top of the batcher's; no-op defaults, called on the event loop."""

    def on_prepared(self, model: str, seconds: float, input_megapixels: float, tiles: int) -> None:
        """A request was decoded and tiled (``seconds`` on its CPU thread)."""

    def on_encoded(self, model: str, seconds: float) -> None:
        """A result was stitched and encoded."""

    def on_inflight(self, requests: int) -> None:
        """The number of admitted, unfinished requests (body received) changed."""

    def on_uploading(self, requests: int) -> None:
        """The number of requests whose body is being received changed."""

    def on_phase(self, phase: Phase) -> None:
        """Readiness changed."""


@dataclass
class UpscaleResult:
    """A finished request: the PNG, stage seconds (read, decode, queue, infer, encode, total) and facts."""

    png: bytes
    timings: dict[str, float]
    facts: dict[str, Any]  # input/output sizes, tiles, engine runs, cpu wait: for the access log


def timed(fn: Callable[..., T], *args: Any) -> tuple[T, float]:
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


async def race(work: Awaitable[T], disconnected: Awaitable[None] | None) -> T:
    """Await ``work``; if ``disconnected`` completes first, cancel ``work`` and raise ClientGoneError."""
    task = asyncio.ensure_future(work)
    if disconnected is None:
        return await task
    watch = asyncio.ensure_future(disconnected)
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done() and watch.exception() is not None:
            await asyncio.wait({task})  # a failing receive() is not a disconnect: keep waiting
    finally:
        watch.cancel()
        if not task.done():  # disconnected, or we were cancelled ourselves (server shutdown)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    if task.cancelled():
        raise ClientGoneError("client closed the connection; work cancelled", in_queue=True)
    return task.result()
