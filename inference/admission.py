"""The checks a request passes before its tiles are queued (plain Python; no HTTP, no asyncio state).

Admission is all-or-nothing per request: a request needs room for all of its tiles at once. Under a
sustained load of small requests that keeps a lane near ``max_queue_tiles``, a very large request can be
refused (queue_full) again and again while small ones slip in. Size ``max_queue_tiles`` well above the
largest request, and watch ``drrn_rejections_total{reason="queue_full"}`` with ``drrn_request_tiles``.

Deadline-aware admission (``deadline_budget_s`` set): a request the measured engine speed cannot finish
by its deadline is refused before it is queued (:mod:`inference.pacing`):
:class:`DeadlineUnreachableError` when it alone needs more than the whole budget, :class:`BacklogError`
(with a Retry-After computed from the estimate) when the work ahead of it, or the share recent traffic
keeps taking, is the reason.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from inference.batch_types import (
    BatcherObserver,
    DeadlineUnreachableError,
    Lane,
    QueueFullError,
    RequestTooLargeError,
    ShuttingDownError,
)
from inference.pacer import Pacer
from inference.scheduling import LaneRotation


class Admission:
    """Refuses (and counts) what a lane cannot take now: the queue bound, then the deadline estimate."""

    def __init__(
        self,
        lanes: Mapping[str, Lane],
        sched: LaneRotation,
        pacer: Pacer,
        observer: BatcherObserver,
        max_queue_tiles: int,
        retry_after_s: float,
        deadline_budget_s: float | None,
        clock: Callable[[], float],
    ) -> None:
        """``clock``: the time deadlines are expressed in (the batcher's event loop time); read only when
        a deadline is checked."""
        self.lanes, self.sched, self.pacer, self.observer = lanes, sched, pacer, observer
        self.max_queue_tiles, self.retry_after_s = max_queue_tiles, retry_after_s
        self.deadline_budget_s, self.clock = deadline_budget_s, clock

    def check(
        self,
        model: str,
        n_tiles: int,
        *,
        accepting: bool,
        deadline: float | None = None,
        tile_pixels: int | None = None,
        cpu_s: float = 0.0,
    ) -> float | None:
        """Raise :class:`ShuttingDownError` (not ``accepting``), :class:`RequestTooLargeError` or
        :class:`QueueFullError` (the bound is per lane), and with a ``deadline`` (in ``clock`` time)
        and deadline admission on, :class:`DeadlineUnreachableError` or :class:`BacklogError`; each
        refusal is counted with the observer. ``tile_pixels``: the request's pixels per tile (None = full
        T*T tiles); ``cpu_s``: seconds its CPU stages still need besides the engine.

        Returns the estimated seconds until the request's engine work would be done if admitted now (None
        without deadline admission or before a run was measured)."""
        if not accepting:
            self.observer.on_reject(model, "shutting_down")
            raise ShuttingDownError("service is not accepting requests (starting up or shutting down)")
        if n_tiles > self.max_queue_tiles:
            self.observer.on_reject(model, "too_large")
            raise RequestTooLargeError(n_tiles, self.max_queue_tiles)
        queued = self.sched.queued(model)
        if queued + n_tiles > self.max_queue_tiles:
            self.observer.on_reject(model, "queue_full")
            raise QueueFullError(n_tiles, queued, self.max_queue_tiles, self.retry_after_s)
        if deadline is None or self.deadline_budget_s is None:
            return None
        # Deadline estimates count work in full tiles (T*T pixels): tiles fit each image, so a small
        # image's one tile is a fraction of a full one.
        full = self.lanes[model].tile ** 2
        work = n_tiles * (tile_pixels or full) / full
        refusal, estimate = self.pacer.refusal(
            self.sched, model, work, deadline, self.deadline_budget_s, cpu_s, self.clock()
        )
        if refusal is not None:
            reason = "too_slow" if isinstance(refusal, DeadlineUnreachableError) else "backlog"
            self.observer.on_reject(model, reason)
            raise refusal
        return estimate
