"""What :class:`inference.batcher.TileBatcher` hands its callers (re-exported by :mod:`inference.batcher`):
the per-request errors :meth:`~inference.batcher.TileBatcher.submit` raises (mapped to HTTP by
:func:`service.errors.from_batcher_error`), the :class:`BatchResult` it returns, and the
:class:`BatcherObserver` metrics hooks."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class BatcherError(Exception):
    """Base of the errors :meth:`TileBatcher.submit` raises for one request."""


class QueueFullError(BatcherError):
    """Accepting the request would exceed ``max_queue_tiles``; retry after ``retry_after_s``."""

    def __init__(self, n_tiles: int, queued: int, max_queue_tiles: int, retry_after_s: float) -> None:
        super().__init__(f"queue full: {queued} tiles queued + {n_tiles} > max_queue_tiles={max_queue_tiles}")
        self.n_tiles, self.queued, self.max_queue_tiles = n_tiles, queued, max_queue_tiles
        self.retry_after_s = retry_after_s


class RequestTooLargeError(BatcherError):
    """The request alone has more tiles than ``max_queue_tiles``: it can never be accepted (not retryable)."""

    def __init__(self, n_tiles: int, max_queue_tiles: int) -> None:
        super().__init__(f"request needs {n_tiles} tiles > max_queue_tiles={max_queue_tiles}")
        self.n_tiles, self.max_queue_tiles = n_tiles, max_queue_tiles


class DeadlineExceededError(BatcherError):
    """The request's deadline passed before all its tiles ran; its pending tiles were dropped."""


class ShuttingDownError(BatcherError):
    """The batcher is stopping (or stopped) and accepts no new work."""


class EngineError(BatcherError):
    """The engine raised while running a batch holding this request's tiles (message = original error)."""

    def __init__(self, message: str, request_id: str) -> None:
        super().__init__(message)
        self.request_id = request_id


class BatcherObserver:
    """Metrics hooks; subclass and override what you need (no-op defaults). Called on the event loop."""

    def on_batch(self, size: int, requests: int, seconds: float) -> None:
        """One engine run of ``size`` tiles from ``requests`` distinct requests took ``seconds``."""

    def on_queue_depth(self, tiles: int) -> None:
        """The number of queued (not yet running) tiles changed."""

    def on_reject(self, reason: str) -> None:
        """A request was refused or abandoned: queue_full, too_large, deadline, shutting_down, cancelled."""

    def on_first_dispatch(self, queue_wait_s: float) -> None:
        """A request's first tile was taken into a batch ``queue_wait_s`` after it was submitted (once per
        request, whether it later succeeds or not)."""

    def on_engine_error(self, exc: BaseException) -> None:
        """An engine run raised (its requests fail with :class:`EngineError`)."""

    def on_worker_crash(self, exc: BaseException) -> None:
        """The worker task died; the batcher accepts nothing more and failed every pending request."""


@dataclass
class BatchResult:
    """Outputs ``float32[N, 1, T, T]`` in submission order, plus where the request's time went."""

    outputs: np.ndarray
    queue_wait_s: float  # submit -> first of its tiles started running
    infer_s: float  # sum of engine time of the runs that held its tiles
    engine_runs: int
