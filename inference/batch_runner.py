"""One engine run of a batch, and the routing of its outputs: the batcher's worker half (plain asyncio +
numpy; no HTTP, no metrics library).

:class:`BatchRunner` stacks the tiles the scheduler picked (one lane, one tile shape), runs the lane's
engine once in the batcher's single-thread executor (one engine call at a time on the device), and writes
each output row over the tile it came from. A request whose last tile is done gets its
:class:`BatchResult`.

Failure semantics (Triton-style per-request errors): an engine exception, or an output of the wrong shape,
fails only the requests with tiles in that run. A request that expired or was cancelled while its tiles
ran has those outputs discarded; an expired one's share of the run counts as wasted engine time. A watchdog
(``engine_stall_s``) notices a call that hangs: the call cannot be interrupted, so the runner only reports
it (the batcher then stops accepting work and reports itself unhealthy).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Executor

import numpy as np

from inference.batch_types import BatcherObserver, BatchResult, EngineError, Lane
from inference.lane_queue import Job
from inference.pacer import Pacer

log = logging.getLogger(__name__)


class BatchRunner:
    """Runs batches on their lane's engine, one at a time, for :class:`inference.batcher.TileBatcher`.

    ``fail(job, exc)`` ends a request with an error; ``finish(job)`` forgets a request that is done;
    ``on_stall(model)`` is called when an engine call has run for ``engine_stall_s`` (None: no watchdog).
    Every successful run is timed and fed to ``pacer`` (the measured cost and recent load that admission
    and urgency use)."""

    def __init__(
        self,
        lanes: Mapping[str, Lane],
        pacer: Pacer,
        observer: BatcherObserver,
        executor: Executor,
        fail: Callable[[Job, BaseException], None],
        finish: Callable[[Job], None],
        on_stall: Callable[[str], None],
        engine_stall_s: float | None = None,
    ) -> None:
        self.lanes, self.pacer, self.observer, self.executor = lanes, pacer, observer, executor
        self._fail, self._finish, self._on_stall = fail, finish, on_stall
        self.engine_stall_s = engine_stall_s

    async def run(self, model: str, batch: list[tuple[Job, int]]) -> None:
        """Run ``batch`` (``(job, tile index)`` pairs of lane ``model``, one tile shape) and deliver its
        outputs; an engine failure fails the batch's requests (never raises, except cancellation)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        jobs = list(dict.fromkeys(job for job, _ in batch))  # distinct, in order
        for job in jobs:
            if job.started is None:
                job.started = now
                self.observer.on_first_dispatch(model, now - job.submitted)
        try:
            x = np.stack([job.tiles[i] for job, i in batch])
            y, seconds = await self._engine_call(model, x)
            if not isinstance(y, np.ndarray) or y.shape != x.shape:
                raise RuntimeError(f"engine returned {getattr(y, 'shape', type(y))} for {x.shape}")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # an engine failure fails this batch's requests, not the service
            rids = [j.request_id for j in jobs]
            log.exception("%s engine run of %d tiles failed (requests %s)", model, len(batch), rids)
            self.observer.on_engine_error(model, exc)
            for job in jobs:
                self._fail(job, EngineError(f"engine failed: {exc}", job.request_id))
            return
        self.observer.on_batch(model, len(batch), len(jobs), seconds)
        self.pacer.observe(model, x.size, seconds)
        self.pacer.served(model, seconds, loop.time(), max(len(job.tiles) * job.tile_pixels for job in jobs))
        self._account(model, batch, jobs, seconds)
        self._deliver(batch, y)

    async def _engine_call(self, model: str, x: np.ndarray) -> tuple[np.ndarray, float]:
        """``(outputs, engine seconds)`` of one call of ``model``'s engine on ``x``, under the watchdog."""
        loop = asyncio.get_running_loop()
        self.pacer.run_started(model, x.size, loop.time())
        watchdog = None
        if self.engine_stall_s is not None:
            watchdog = loop.call_later(self.engine_stall_s, self._on_stall, model)
        try:
            return await loop.run_in_executor(self.executor, _timed_run, self.lanes[model].run, x)
        finally:
            self.pacer.run_ended()
            if watchdog is not None:
                watchdog.cancel()

    def _account(self, model: str, batch: list[tuple[Job, int]], jobs: list[Job], seconds: float) -> None:
        """Charge the run to its requests: each its share of the seconds by tiles; an expired request's
        share is wasted engine time."""
        share = seconds / len(batch)
        for job in jobs:
            job.infer_s += seconds
            job.runs += 1
        for job, _ in batch:
            job.engine_s += share
            if job.expired:  # its deadline passed while this run held its tiles: work thrown away
                self.observer.on_deadline_work(model, share)

    def _deliver(self, batch: list[tuple[Job, int]], y: np.ndarray) -> None:
        """Write each output row over its tile; resolve the requests whose last tile this was."""
        for row, (job, i) in enumerate(batch):
            if job.future.done():  # expired or cancelled while its tiles ran: discard
                continue
            job.tiles[i] = y[row]
            job.remaining -= 1
            if job.remaining == 0:
                wait = job.started - job.submitted
                job.future.set_result(
                    BatchResult(job.tiles.outputs(), wait, job.infer_s, job.runs, job.engine_s)
                )
                self._finish(job)


def _timed_run(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    y = run(x)
    return y, time.perf_counter() - t0
