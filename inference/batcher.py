"""Cross-request dynamic batching of fixed-size tiles for several models on one device (plain asyncio +
numpy; no HTTP, no metrics library).

Each model is a :class:`Lane` (engine call, tile side T, ``max_batch``); a request names one and its tiles
(``float32[N, 1, th, tw]``, at most T**2 pixels each; or two such groups with as many pixels per tile, as
the x8 ensemble sends, :class:`inference.lane_queue.TileSet`) join that lane's queue; a run stacks tiles of
one shape only. A single worker task takes the next ready lane's batch
(:mod:`inference.scheduling`: rotation over lanes with a full batch or whose oldest tile waited
``max_delay_ms``, so one model's backlog delays another's ready request by at most one run; within a
lane, time alternates between the request that has waited longest for its work and the oldest) and hands
it to :class:`inference.batch_runner.BatchRunner`, which runs the lane's engine once (one engine call at a
time on the device) and routes each output row back to its request. So a run holds tiles of one model but
may mix requests, and a large request spans several runs. A partial batch waits for more tiles until
``max_delay_ms`` after its lane's oldest queued tile arrived, never longer, and never while another lane
is ready.

Failure semantics (Triton-style per-request errors): an engine exception fails only the requests with tiles
in that run (:mod:`inference.batch_runner`); a request past its deadline or whose awaiting task is
cancelled has its queued tiles removed, so they never reach the engine; each lane's queue is bounded in
tiles (``max_queue_tiles`` per lane: one model's backlog never refuses another's requests) and full means
an immediate rejection. If the worker itself dies (a bug), every pending request fails with
:class:`EngineError` at once and :attr:`TileBatcher.failure` says why (the service then reports itself
unhealthy).

Admission (:mod:`inference.admission`): a request is refused before it is queued when its lane's queue
bound cannot take all its tiles, or, with deadline-aware admission (``deadline_budget_s``), when the
measured engine speed cannot finish it by its deadline; a queued request whose slack runs low goes
before the others (:meth:`inference.pacer.Pacer.urgent`). A watchdog (``engine_stall_s``) notices an
engine call that hangs: the call cannot be interrupted, so the batcher stops accepting work, sets
:attr:`TileBatcher.failure` (the service reports itself unhealthy) and lets the stuck requests end at
their deadlines.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor

import numpy as np

from engines.repository import UnknownModelError
from inference.admission import Admission
from inference.batch_runner import BatchRunner
from inference.batch_types import (
    BatcherObserver,
    BatchResult,
    DeadlineExceededError,
    EngineError,
    EngineStalledError,
    Lane,
    ShuttingDownError,
)
from inference.job_book import JobBook
from inference.lane_queue import WORK_OFFSET_TILES, Job, TileSet
from inference.pacer import LaneShape, Pacer
from inference.scheduling import LaneRotation

log = logging.getLogger(__name__)


class TileBatcher:
    """Batches tiles of concurrent requests, per model (``lanes``), into engine runs of at most the lane's
    ``max_batch`` tiles, one run at a time."""

    def __init__(
        self,
        lanes: Mapping[str, Lane],
        max_delay_ms: float = 0.0,
        max_queue_tiles: int = 256,
        executor: Executor | None = None,
        observer: BatcherObserver | None = None,
        retry_after_s: float = 1.0,
        deadline_budget_s: float | None = None,
        engine_stall_s: float | None = None,
    ) -> None:
        if not lanes or max_queue_tiles < 1 or max_delay_ms < 0:
            raise ValueError("need >= 1 lane, max_queue_tiles >= 1 and max_delay_ms >= 0")
        self.lanes = dict(lanes)
        self.max_delay_s = max_delay_ms / 1000.0
        self._own_executor, self._executor = executor is None, executor
        self.observer = observer or BatcherObserver()
        self.deadline_budget_s, self.engine_stall_s = deadline_budget_s, engine_stall_s
        # measured engine seconds per run, per lane: admission and urgency (inference.pacer)
        self.pacer = Pacer(
            {n: LaneShape(lane.tile, lane.max_batch) for n, lane in self.lanes.items()},
            load_window_s=deadline_budget_s or 30.0,
        )
        self._sched = LaneRotation(
            {n: lane.max_batch for n, lane in self.lanes.items()},
            self.max_delay_s,
            {n: int(WORK_OFFSET_TILES * lane.tile**2) for n, lane in self.lanes.items()},
        )
        self._admission = Admission(
            self.lanes,
            self._sched,
            self.pacer,
            self.observer,
            max_queue_tiles,
            retry_after_s,
            deadline_budget_s,
            clock=lambda: asyncio.get_running_loop().time(),
        )
        self._book = JobBook(self._sched, self.pacer, self.observer)
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        self._runner: BatchRunner | None = None  # the engine-run half, made at start (needs the executor)
        self._accepting = False
        self.failure: BaseException | None = None  # why the worker died, if it did

    # --- lifecycle --------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the worker on the running event loop."""
        if self._worker is not None:
            raise RuntimeError("batcher already started")
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="drrn-engine")
        self._runner = BatchRunner(
            self.lanes,
            self.pacer,
            self.observer,
            self._executor,
            self._book.fail,
            self._book.finish,
            self._stalled,
            self.engine_stall_s,
        )
        self._wakeup = asyncio.Event()
        self._book.start()
        self._accepting = True
        self._worker = asyncio.get_running_loop().create_task(self._work(), name="drrn-batcher")
        self._worker.add_done_callback(self._worker_done)

    def _worker_done(self, task: asyncio.Task[None]) -> None:
        # The worker only ends by cancellation; anything else is a bug. `running` turns False so new
        # submits are refused, and every pending request fails now instead of waiting for its deadline.
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        log.error("batcher worker crashed; failing %d pending requests", len(self._book), exc_info=exc)
        self.failure, self._accepting = exc, False
        self._book.fail_all(lambda job: EngineError(f"batcher worker crashed: {exc!r}", job.request_id))
        self.observer.on_worker_crash(exc)

    async def stop(self, grace_s: float) -> None:
        """Refuse new work, let accepted requests finish for up to ``grace_s``, then fail the rest with
        :class:`ShuttingDownError` and stop the worker."""
        self._accepting = False
        if not await self._book.wait_idle(grace_s):
            log.warning("batcher: %d requests unfinished after %.1fs grace", len(self._book), grace_s)
        self._book.fail_all(
            lambda job: ShuttingDownError("service shutting down before the request finished"),
            on_pending=lambda job: self.observer.on_reject(job.lane, "shutting_down"),
        )
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
    def models(self) -> tuple[str, ...]:
        """Lane names, in the order given (the order of the rotation)."""
        return tuple(self.lanes)

    @property
    def queue_depth(self) -> int:
        """Tiles queued and not yet running, over all lanes."""
        return len(self._sched)

    def queued(self, model: str) -> int:
        """Tiles of lane ``model`` queued and not yet running."""
        self._lane(model)
        return self._sched.queued(model)

    @property
    def inflight(self) -> int:
        """Requests accepted and not yet finished."""
        return len(self._book)

    def calibrate(self, model: str, pixels: int, seconds: float) -> None:
        """Count an engine run made outside the batcher (the warmup: ``pixels`` in ``seconds``) in
        ``model``'s measured cost, as if it had run here."""
        self._lane(model)
        self.pacer.observe(model, pixels, seconds)

    # --- requests ---------------------------------------------------------------------------------------
    def _lane(self, model: str) -> Lane:
        lane = self.lanes.get(model)
        if lane is None:
            raise UnknownModelError(model, list(self.lanes))
        return lane

    def check_capacity(
        self,
        model: str,
        n_tiles: int,
        deadline: float | None = None,
        tile_pixels: int | None = None,
        cpu_s: float = 0.0,
    ) -> float | None:
        """Raise what :meth:`submit` would for ``n_tiles`` tiles of ``model`` right now, and count the
        rejection (:meth:`inference.admission.Admission.check`; :class:`UnknownModelError` is not counted).
        Lets a caller refuse before preparing the tiles; :meth:`submit` checks again.

        Returns the estimated seconds until the request's engine work would be done if admitted now (None
        without deadline admission or before a run was measured): access logs set it beside the real
        time."""
        self._lane(model)
        return self._admission.check(
            model,
            n_tiles,
            accepting=self.running,
            deadline=deadline,
            tile_pixels=tile_pixels,
            cpu_s=cpu_s,
        )

    async def submit(
        self,
        model: str,
        tiles: np.ndarray | Sequence[np.ndarray],
        deadline: float,
        request_id: str,
        cpu_after_s: float = 0.0,
        on_abandoned: Callable[[], None] | None = None,
    ) -> BatchResult:
        """Run ``tiles`` (``float32[N, 1, th, tw]``, N >= 1, ``th * tw <= T**2`` for the lane's tile T; or a
        sequence of such groups with equal ``th * tw``, :class:`inference.lane_queue.TileSet`) through
        ``model``'s engine by ``deadline`` (loop.time()).

        The outputs are written over ``tiles`` in place (``result.outputs`` is the submitted array, or a
        tuple of the submitted groups): each tile's output
        replaces it after the engine run that read it, so a large request costs one tile buffer, not two.
        If the request fails, ``tiles`` may hold a mix of inputs and outputs. ``tiles`` must be writeable
        and C-contiguous, and not shared with another concurrent submit.

        Raises :class:`UnknownModelError`, :class:`QueueFullError`, :class:`RequestTooLargeError`,
        :class:`ShuttingDownError`, :class:`DeadlineExceededError` or :class:`EngineError` (ValueError for
        malformed tiles). Cancelling the awaiting task drops the request's queued tiles (counted as a
        ``deadline`` rejection when it happens at or after ``deadline``, e.g. by the caller's own
        ``asyncio.timeout_at(deadline)``, else ``cancelled``), and then calls ``on_abandoned``: the
        caller's way to know the batcher counted it (a request cancelled before or after its wait was not).
        """
        tile_set = TileSet(tiles)
        self._lane(model).check_tiles(tile_set.groups, model)
        self.check_capacity(model, len(tile_set), deadline, tile_set.pixels, cpu_after_s)
        loop = asyncio.get_running_loop()
        job = Job(
            request_id,
            tile_set,
            loop.create_future(),
            loop.time(),
            model,
            deadline=deadline,
            cpu_after_s=cpu_after_s,
        )
        if deadline <= job.submitted:
            self.observer.on_reject(model, "deadline")
            raise DeadlineExceededError(f"request {request_id} reached its deadline before queueing")
        self._book.add(job)
        self._wakeup.set()
        timer = loop.call_at(deadline, self._book.expire, job)
        try:
            # shield: a cancelled caller must not cancel the future the worker resolves; we clean up below.
            return await asyncio.shield(job.future)
        except asyncio.CancelledError:
            self._book.abandon(job, late=loop.time() >= deadline)
            if on_abandoned is not None:
                on_abandoned()
            raise
        finally:
            timer.cancel()

    # --- worker -----------------------------------------------------------------------------------------
    async def _next_batch(self) -> tuple[str, list[tuple[Job, int]]]:
        """Wait until a lane is ready (a full batch, or ``max_delay`` since its oldest queued tile arrived:
        not since the worker looked, so a tile that queued while the engine was busy has already waited);
        take the next ready lane's batch. Sleeps until the earliest lane readiness or the next submit."""
        loop = asyncio.get_running_loop()
        while (picked := self._next_from(loop.time())) is None:
            wake_at = self._sched.wake_at()
            self._wakeup.clear()
            try:  # re-evaluated on waking: a lane may have filled, or its oldest tiles been dropped
                timeout = None if wake_at is None else max(0.0, wake_at - loop.time())
                await asyncio.wait_for(self._wakeup.wait(), timeout=timeout)
            except TimeoutError:
                pass
        self._book.queue_changed(picked[0])
        return picked

    def _next_from(self, now: float) -> tuple[str, list[tuple[Job, int]]] | None:
        """The scheduler's next batch, with the request that must go first to meet its deadline (only
        with deadline admission): alone once critical, else alternating with batches its slack can
        afford."""
        urgent = None if self.deadline_budget_s is None else self.pacer.urgent(self._sched, now)
        if urgent is None:
            return self._sched.next_batch(now)
        job, spare_s = urgent
        return self._sched.next_batch(now, job, self.pacer.alternate_pixels(spare_s))  # type: ignore[arg-type]

    def _stalled(self, model: str) -> None:
        """Watchdog: the engine call started ``engine_stall_s`` ago is still running. It cannot be stopped,
        so accept nothing more and report the failure; pending requests end at their own deadlines."""
        started = self.pacer.running_since
        if started is None or self.failure is not None:
            return
        seconds = asyncio.get_running_loop().time() - started
        log.error("%s engine call running for %.1fs: marking the service unhealthy", model, seconds)
        self.failure = EngineStalledError(
            f"{model} engine call running for more than engine_stall_s={self.engine_stall_s:g}s"
        )
        self._accepting = False
        self.observer.on_engine_stall(model, seconds)

    async def _work(self) -> None:
        while True:
            model, batch = await self._next_batch()
            await self._runner.run(model, batch)
