"""The batcher's accepted requests (plain asyncio; no HTTP): how each one ends and what it counts as.

A request (:class:`inference.lane_queue.Job`) is in the book from the moment it is queued until its future
is resolved: by its outputs (:mod:`inference.batch_runner`), an error, its deadline, or its caller giving up.
Ending it always removes its queued tiles from the scheduler, so abandoned work never reaches the engine.
A deadline, cancellation or shutdown ending is counted as a rejection exactly once; engine failures are
counted as errors by the service, not here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from inference.batch_types import BatcherObserver, DeadlineExceededError
from inference.lane_queue import Job
from inference.pacer import Pacer
from inference.scheduling import LaneRotation


class JobBook:
    """Accepted, unfinished requests, and the event that is set while there are none."""

    def __init__(self, sched: LaneRotation, pacer: Pacer, observer: BatcherObserver) -> None:
        self._sched, self._pacer, self._observer = sched, pacer, observer
        self._jobs: set[Job] = set()
        self._idle: asyncio.Event | None = None  # made on the running loop by start()

    def start(self) -> None:
        self._idle = asyncio.Event()
        self._idle.set()

    def __len__(self) -> int:
        return len(self._jobs)

    def add(self, job: Job) -> None:
        """Queue ``job``'s tiles and track it until it ends."""
        self._jobs.add(job)
        if self._idle is not None:
            self._idle.clear()
        self._sched.add(job)
        self.queue_changed(job.lane)

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for every request to end; True if they did."""
        if self._idle is None or not self._jobs:
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=timeout_s)
        except TimeoutError:
            return False
        return True

    def fail_all(
        self, error: Callable[[Job], BaseException], on_pending: Callable[[Job], None] | None = None
    ) -> None:
        """End every request with ``error(job)``; ``on_pending(job)`` first for those not yet resolved."""
        for job in list(self._jobs):
            if on_pending is not None and not job.future.done():
                on_pending(job)
            self.fail(job, error(job))

    def expire(self, job: Job) -> None:
        """The deadline timer: fail ``job`` if it is still running, counted as a ``deadline`` rejection."""
        if not job.future.done():
            self._observer.on_reject(job.lane, "deadline")
            self._mark_expired(job)
            self.fail(job, DeadlineExceededError(f"request {job.request_id} exceeded its deadline"))

    def abandon(self, job: Job, late: bool) -> None:
        """The caller stopped waiting (its task was cancelled; ``late``: at or after the deadline). Counted
        as a ``deadline`` or ``cancelled`` rejection, also when the result arrived in the same loop turn:
        the caller still abandons the request, and its 504/499 is not counted anywhere else. A future
        that failed was counted where it failed."""
        fut = job.future
        delivered = fut.done() and not fut.cancelled() and fut.exception() is None
        if not fut.done() or delivered:
            self._observer.on_reject(job.lane, "deadline" if late else "cancelled")
            if late:
                self._mark_expired(job)
        if not job.future.done():
            self.fail(job, None)

    def _mark_expired(self, job: Job) -> None:
        job.expired = True
        if job.engine_s:
            self._observer.on_deadline_work(job.lane, job.engine_s)

    def fail(self, job: Job, exc: BaseException | None) -> None:
        """Finish ``job`` with ``exc`` (None = cancel) and drop its queued tiles."""
        if not job.future.done():
            if exc is None:
                job.future.cancel()
            else:
                job.future.set_exception(exc)
        self.finish(job)

    def finish(self, job: Job) -> None:
        """Forget ``job`` (its future is resolved) and drop any of its tiles still queued."""
        dropped = self._sched.remove(job)
        self._jobs.discard(job)
        if not self._jobs and self._idle is not None:
            self._idle.set()
        if dropped:
            self.queue_changed(job.lane)

    def queue_changed(self, model: str) -> None:
        """Report ``model``'s queue depth and queued engine seconds to the observer."""
        self._observer.on_queue_depth(model, self._sched.queued(model))
        if (seconds := self._pacer.queued_seconds(self._sched, model)) is not None:
            self._observer.on_queued_work(model, seconds)
