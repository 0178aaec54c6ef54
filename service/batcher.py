"""Cross-request dynamic batching of fixed-size tiles (plain asyncio + numpy; no HTTP, no metrics library).

Every request's tiles (``float32[N, 1, T, T]``) join one FIFO of tiles shared by all requests. A single
worker task takes up to ``max_batch`` tiles (waiting at most ``max_delay_ms`` after the first for more),
stacks them, runs the engine once in a single-thread executor (one session owns the device) and routes
each output row back to the request it came from. So one engine run may mix tiles of several requests,
and a large request is spread over several runs.

Failure semantics (Triton-style per-request errors): an engine exception fails only the requests with tiles
in that run; a request past its deadline or whose awaiting task is cancelled has its queued tiles removed,
so they never reach the engine; the queue is bounded in tiles and full means an immediate rejection.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)


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

    def on_engine_error(self, exc: BaseException) -> None:
        """An engine run raised (its requests fail with :class:`EngineError`)."""


@dataclass
class BatchResult:
    """Outputs ``float32[N, 1, T, T]`` in submission order, plus where the request's time went."""

    outputs: np.ndarray
    queue_wait_s: float  # submit -> first of its tiles started running
    infer_s: float  # sum of engine time of the runs that held its tiles
    engine_runs: int


@dataclass(eq=False)
class _Job:
    request_id: str
    tiles: np.ndarray
    future: asyncio.Future[BatchResult]
    submitted: float
    outputs: np.ndarray = field(init=False)
    remaining: int = field(init=False)
    started: float | None = None
    infer_s: float = 0.0
    runs: int = 0

    def __post_init__(self) -> None:
        self.outputs = np.empty_like(self.tiles)
        self.remaining = len(self.tiles)


class TileBatcher:
    """Batches tiles of concurrent requests into engine runs of at most ``max_batch`` tiles."""

    def __init__(
        self,
        run: Callable[[np.ndarray], np.ndarray],
        max_batch: int,
        max_delay_ms: float = 2.0,
        max_queue_tiles: int = 256,
        executor: Executor | None = None,
        observer: BatcherObserver | None = None,
        retry_after_s: float = 1.0,
        tile: int | None = None,
    ) -> None:
        if max_batch < 1 or max_queue_tiles < 1 or max_delay_ms < 0:
            raise ValueError("max_batch and max_queue_tiles must be >= 1 and max_delay_ms >= 0")
        self._run = run
        self.tile = tile  # when set, submit() checks tiles are TxT (all tiles of a run must stack)
        self.max_batch, self.max_delay_s = max_batch, max_delay_ms / 1000.0
        self.max_queue_tiles, self.retry_after_s = max_queue_tiles, retry_after_s
        self._own_executor = executor is None
        self._executor = executor
        self.observer = observer or BatcherObserver()
        self._queue: deque[tuple[_Job, int]] = deque()  # (request, tile index), FIFO over all requests
        self._jobs: set[_Job] = set()
        self._wakeup: asyncio.Event | None = None
        self._idle: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        self._accepting = False

    # --- lifecycle --------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the worker on the running event loop."""
        if self._worker is not None:
            raise RuntimeError("batcher already started")
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="drrn-engine")
        self._wakeup, self._idle = asyncio.Event(), asyncio.Event()
        self._idle.set()
        self._accepting = True
        self._worker = asyncio.get_running_loop().create_task(self._work(), name="drrn-batcher")
        self._worker.add_done_callback(self._worker_done)

    @staticmethod
    def _worker_done(task: asyncio.Task[None]) -> None:
        # The worker only ends by cancellation; anything else is a bug. `running` turns False so new
        # submits are refused and readiness fails, and pending requests end at their deadlines.
        if not task.cancelled() and task.exception() is not None:
            log.error("batcher worker crashed", exc_info=task.exception())

    async def stop(self, grace_s: float) -> None:
        """Refuse new work, let accepted requests finish for up to ``grace_s``, then fail the rest with
        :class:`ShuttingDownError` and stop the worker."""
        self._accepting = False
        if self._idle is not None and self._jobs:
            try:
                await asyncio.wait_for(self._idle.wait(), timeout=grace_s)
            except TimeoutError:
                log.warning("batcher: %d requests unfinished after %.1fs grace", len(self._jobs), grace_s)
        for job in list(self._jobs):
            self._fail(job, ShuttingDownError("service shutting down before the request finished"))
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        if self._own_executor and self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    @property
    def running(self) -> bool:
        """True while accepting work (started, not stopping)."""
        return self._accepting and self._worker is not None and not self._worker.done()

    @property
    def queue_depth(self) -> int:
        """Tiles queued and not yet running."""
        return len(self._queue)

    @property
    def inflight(self) -> int:
        """Requests accepted and not yet finished."""
        return len(self._jobs)

    # --- requests ---------------------------------------------------------------------------------------
    async def submit(self, tiles: np.ndarray, deadline: float, request_id: str) -> BatchResult:
        """Run ``tiles`` (``float32[N, 1, T, T]``, N >= 1) through the engine by ``deadline`` (loop.time()).

        Raises :class:`QueueFullError`, :class:`RequestTooLargeError`, :class:`ShuttingDownError`,
        :class:`DeadlineExceededError` or :class:`EngineError`. Cancelling the awaiting task drops the
        request's queued tiles.
        """
        if tiles.ndim != 4 or tiles.shape[0] < 1 or tiles.shape[1] != 1 or tiles.dtype != np.float32:
            raise ValueError(f"tiles must be float32[N>=1, 1, T, T], got {tiles.dtype}{tiles.shape}")
        if self.tile is not None and tiles.shape[2:] != (self.tile, self.tile):
            raise ValueError(f"tiles are {tiles.shape[2:]}, this batcher runs {self.tile}x{self.tile}")
        n = len(tiles)
        if not self.running:
            self.observer.on_reject("shutting_down")
            raise ShuttingDownError("service is not accepting requests (starting up or shutting down)")
        if n > self.max_queue_tiles:
            self.observer.on_reject("too_large")
            raise RequestTooLargeError(n, self.max_queue_tiles)
        if len(self._queue) + n > self.max_queue_tiles:
            self.observer.on_reject("queue_full")
            raise QueueFullError(n, len(self._queue), self.max_queue_tiles, self.retry_after_s)
        loop = asyncio.get_running_loop()
        job = _Job(request_id, tiles, loop.create_future(), loop.time())
        if deadline <= job.submitted:
            self.observer.on_reject("deadline")
            raise DeadlineExceededError(f"request {request_id} reached its deadline before queueing")
        self._jobs.add(job)
        self._idle.clear()
        self._queue.extend((job, i) for i in range(n))
        self.observer.on_queue_depth(len(self._queue))
        self._wakeup.set()
        timer = loop.call_at(deadline, self._expire, job)
        try:
            # shield: a cancelled caller must not cancel the future the worker resolves; we clean up below.
            return await asyncio.shield(job.future)
        except asyncio.CancelledError:
            if not job.future.done():
                self.observer.on_reject("cancelled")
                self._fail(job, None)
            raise
        finally:
            timer.cancel()

    def _expire(self, job: _Job) -> None:
        if not job.future.done():
            self.observer.on_reject("deadline")
            self._fail(job, DeadlineExceededError(f"request {job.request_id} exceeded its deadline"))

    def _fail(self, job: _Job, exc: BaseException | None) -> None:
        """Finish ``job`` with ``exc`` (None = cancel) and drop its queued tiles."""
        if not job.future.done():
            if exc is None:
                job.future.cancel()
            else:
                job.future.set_exception(exc)
        self._finish(job)

    def _finish(self, job: _Job) -> None:
        before = len(self._queue)
        if any(j is job for j, _ in self._queue):
            self._queue = deque(item for item in self._queue if item[0] is not job)
        self._jobs.discard(job)
        if not self._jobs:
            self._idle.set()
        if len(self._queue) != before:
            self.observer.on_queue_depth(len(self._queue))

    # --- worker -----------------------------------------------------------------------------------------
    async def _next_batch(self) -> list[tuple[_Job, int]]:
        """Wait for a first tile, then up to ``max_delay`` for more, and take at most ``max_batch``."""
        while not self._queue:
            self._wakeup.clear()
            await self._wakeup.wait()
        loop = asyncio.get_running_loop()
        flush_at = loop.time() + self.max_delay_s
        while len(self._queue) < self.max_batch and (remaining := flush_at - loop.time()) > 0:
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout=remaining)
            except TimeoutError:
                break
        # Tiles of a request that expired/was cancelled meanwhile were already removed from the queue.
        batch = [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]
        self.observer.on_queue_depth(len(self._queue))
        return batch

    def _timed_run(self, x: np.ndarray) -> tuple[np.ndarray, float]:
        t0 = time.perf_counter()
        y = self._run(x)
        return y, time.perf_counter() - t0

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            if not batch:
                continue
            now = loop.time()
            jobs = list(dict.fromkeys(job for job, _ in batch))  # distinct, in order
            for job in jobs:
                if job.started is None:
                    job.started = now
            try:
                x = np.stack([job.tiles[i] for job, i in batch])
                y, seconds = await loop.run_in_executor(self._executor, self._timed_run, x)
                if not isinstance(y, np.ndarray) or y.shape != x.shape:
                    raise RuntimeError(f"engine returned {getattr(y, 'shape', type(y))} for {x.shape}")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # an engine failure fails this batch's requests, not the service
                log.exception(
                    "engine run of %d tiles failed (requests %s)", len(batch), [j.request_id for j in jobs]
                )
                self.observer.on_engine_error(exc)
                for job in jobs:
                    self._fail(job, EngineError(f"engine failed: {exc}", job.request_id))
                continue
            self.observer.on_batch(len(batch), len(jobs), seconds)
            for job in jobs:
                job.infer_s += seconds
                job.runs += 1
            for row, (job, i) in enumerate(batch):
                if job.future.done():  # expired or cancelled while its tiles ran: discard
                    continue
                job.outputs[i] = y[row]
                job.remaining -= 1
                if job.remaining == 0:
                    job.future.set_result(
                        BatchResult(job.outputs, job.started - job.submitted, job.infer_s, job.runs)
                    )
                    self._finish(job)
