"""Cross-request dynamic batching of fixed-size tiles (plain asyncio + numpy; no HTTP, no metrics library).

Every request's tiles (``float32[N, 1, T, T]``) join one queue of tiles shared by all requests. A single
worker task takes up to ``max_batch`` tiles, round-robin over the requests with queued tiles
(:mod:`inference.scheduling`), stacks them, runs the engine once in a single-thread executor (one session
owns the device) and routes each output row back to the request it came from. So one engine run may mix
tiles of several requests, and a large request is spread over several runs. A partial batch waits for
more tiles until ``max_delay_ms`` after the arrival of the oldest queued tile, never longer.

Failure semantics (Triton-style per-request errors): an engine exception fails only the requests with tiles
in that run; a request past its deadline or whose awaiting task is cancelled has its queued tiles removed,
so they never reach the engine; the queue is bounded in tiles and full means an immediate rejection. If
the worker itself dies (a bug), every pending request fails with :class:`EngineError` at once and
:attr:`TileBatcher.failure` says why (the service then reports itself unhealthy).

Admission is all-or-nothing per request: a request needs room for all of its tiles at once. Under a
sustained load of small requests that keeps the queue near ``max_queue_tiles``, a very large request can
be refused (queue_full) again and again while small ones slip in. Size ``max_queue_tiles`` well above
the largest request, and watch ``drrn_rejections_total{reason="queue_full"}`` with ``drrn_request_tiles``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor

import numpy as np

from inference.batch_types import (
    BatcherError,
    BatcherObserver,
    BatchResult,
    DeadlineExceededError,
    EngineError,
    QueueFullError,
    RequestTooLargeError,
    ShuttingDownError,
)
from inference.scheduling import Job, RoundRobinQueue

__all__ = [
    "BatchResult",
    "BatcherError",
    "BatcherObserver",
    "DeadlineExceededError",
    "EngineError",
    "QueueFullError",
    "RequestTooLargeError",
    "ShuttingDownError",
    "TileBatcher",
]

log = logging.getLogger(__name__)


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
        self._queue = RoundRobinQueue()
        self._jobs: set[Job] = set()
        self._wakeup: asyncio.Event | None = None
        self._idle: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        self._accepting = False
        self.failure: BaseException | None = None  # why the worker died, if it did

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

    def _worker_done(self, task: asyncio.Task[None]) -> None:
        # The worker only ends by cancellation; anything else is a bug. `running` turns False so new
        # submits are refused, and every pending request fails now instead of waiting for its deadline.
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        log.error("batcher worker crashed; failing %d pending requests", len(self._jobs), exc_info=exc)
        self.failure, self._accepting = exc, False
        for job in list(self._jobs):
            self._fail(job, EngineError(f"batcher worker crashed: {exc!r}", job.request_id))
        self.observer.on_worker_crash(exc)

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
    def check_capacity(self, n_tiles: int) -> None:
        """Raise what :meth:`submit` would for ``n_tiles`` tiles right now (and count the rejection):
        :class:`ShuttingDownError`, :class:`RequestTooLargeError` or :class:`QueueFullError`. Lets a
        caller refuse before preparing the tiles; :meth:`submit` checks again."""
        if not self.running:
            self.observer.on_reject("shutting_down")
            raise ShuttingDownError("service is not accepting requests (starting up or shutting down)")
        if n_tiles > self.max_queue_tiles:
            self.observer.on_reject("too_large")
            raise RequestTooLargeError(n_tiles, self.max_queue_tiles)
        if len(self._queue) + n_tiles > self.max_queue_tiles:
            self.observer.on_reject("queue_full")
            raise QueueFullError(n_tiles, len(self._queue), self.max_queue_tiles, self.retry_after_s)

    async def submit(self, tiles: np.ndarray, deadline: float, request_id: str) -> BatchResult:
        """Run ``tiles`` (``float32[N, 1, T, T]``, N >= 1) through the engine by ``deadline`` (loop.time()).

        The outputs are written over ``tiles`` in place (``result.outputs is tiles``): each tile's output
        replaces it after the engine run that read it, so a large request costs one tile buffer, not two.
        If the request fails, ``tiles`` may hold a mix of inputs and outputs. ``tiles`` must be writeable
        and C-contiguous, and not shared with another concurrent submit.

        Raises :class:`QueueFullError`, :class:`RequestTooLargeError`, :class:`ShuttingDownError`,
        :class:`DeadlineExceededError` or :class:`EngineError`. Cancelling the awaiting task drops the
        request's queued tiles (counted as a ``deadline`` rejection when it happens at or after
        ``deadline``, e.g. by the caller's own ``asyncio.timeout_at(deadline)``, else ``cancelled``).
        """
        if tiles.ndim != 4 or tiles.shape[0] < 1 or tiles.shape[1] != 1 or tiles.dtype != np.float32:
            raise ValueError(f"tiles must be float32[N>=1, 1, T, T], got {tiles.dtype}{tiles.shape}")
        if not (tiles.flags.writeable and tiles.flags.c_contiguous):
            # Outputs are written over the tiles: a read-only or self-overlapping array (broadcast_to,
            # as_strided, frombuffer) would fail or corrupt later in the worker, for every request.
            raise ValueError("tiles must be a writeable, C-contiguous array (outputs are written in place)")
        if self.tile is not None and tiles.shape[2:] != (self.tile, self.tile):
            raise ValueError(f"tiles are {tiles.shape[2:]}, this batcher runs {self.tile}x{self.tile}")
        self.check_capacity(len(tiles))
        loop = asyncio.get_running_loop()
        job = Job(request_id, tiles, loop.create_future(), loop.time())
        if deadline <= job.submitted:
            self.observer.on_reject("deadline")
            raise DeadlineExceededError(f"request {request_id} reached its deadline before queueing")
        self._jobs.add(job)
        self._idle.clear()
        self._queue.add(job)
        self.observer.on_queue_depth(len(self._queue))
        self._wakeup.set()
        timer = loop.call_at(deadline, self._expire, job)
        try:
            # shield: a cancelled caller must not cancel the future the worker resolves; we clean up below.
            return await asyncio.shield(job.future)
        except asyncio.CancelledError:
            if not job.future.done():
                self.observer.on_reject("deadline" if loop.time() >= deadline else "cancelled")
                self._fail(job, None)
            raise
        finally:
            timer.cancel()

    def _expire(self, job: Job) -> None:
        if not job.future.done():
            self.observer.on_reject("deadline")
            self._fail(job, DeadlineExceededError(f"request {job.request_id} exceeded its deadline"))

    def _fail(self, job: Job, exc: BaseException | None) -> None:
        """Finish ``job`` with ``exc`` (None = cancel) and drop its queued tiles."""
        if not job.future.done():
            if exc is None:
                job.future.cancel()
            else:
                job.future.set_exception(exc)
        self._finish(job)

    def _finish(self, job: Job) -> None:
        dropped = self._queue.remove(job)
        self._jobs.discard(job)
        if not self._jobs:
            self._idle.set()
        if dropped:
            self.observer.on_queue_depth(len(self._queue))

    # --- worker -----------------------------------------------------------------------------------------
    async def _next_batch(self) -> list[tuple[Job, int]]:
        """Wait for tiles; take ``max_batch`` of them, or fewer once ``max_delay`` has passed since the
        oldest queued tile arrived (not since the worker looked: a tile that queued while the engine was
        busy has already waited)."""
        loop = asyncio.get_running_loop()
        while len(self._queue) < self.max_batch:
            oldest = self._queue.oldest_arrival()
            remaining = None if oldest is None else oldest + self.max_delay_s - loop.time()
            if remaining is not None and remaining <= 0:
                break
            self._wakeup.clear()
            try:  # woken by a submit; re-evaluated since the oldest tile may have been dropped meanwhile
                await asyncio.wait_for(self._wakeup.wait(), timeout=remaining)
            except TimeoutError:
                break
        # Tiles of a request that expired/was cancelled meanwhile were already removed from the queue.
        batch = self._queue.take(self.max_batch)
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
                    self.observer.on_first_dispatch(now - job.submitted)
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
                job.tiles[i] = y[row]
                job.remaining -= 1
                if job.remaining == 0:
                    job.future.set_result(
                        BatchResult(job.tiles, job.started - job.submitted, job.infer_s, job.runs)
                    )
                    self._finish(job)
