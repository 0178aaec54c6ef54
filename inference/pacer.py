"""The batcher's measured view of time (plain Python; no clock, no asyncio): per lane a cost fit fed by
every engine run, the load recent traffic puts on the engine, and from them the admission verdict
(:meth:`Pacer.refusal`, with the estimate of :mod:`inference.pacing`) and the queued request that must go
first to meet its deadline (:meth:`Pacer.urgent`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from inference.batch_types import BacklogError, DeadlineUnreachableError
from inference.lane_queue import OLDEST_SHARE
from inference.linear_cost import LinearCost
from inference.pacing import Estimate, LaneLoad, finish_estimate, verdict
from inference.recent_load import RecentLoad

# A queued request whose slack (time left before its engine deadline, less its own remaining engine work)
# is down to this share of its whole time goes before every other tile of every lane (least slack first).
# The response-ratio turns serve small requests first, and a stream of newcomers would otherwise stretch
# a large request right up to its deadline, where the estimate's error ends it in a 504. A share of the
# request's time, not of its work: urgency then leaves the same margin to every request (a rule on work /
# time left converges on finishing at the deadline itself).
URGENT_SLACK_SHARE = 0.25
# Above this share, an urgent request's batches alternate with other batches (so small requests behind it
# keep moving) that cost at most ALTERNATE_SHARE of its slack above this share: each alternation spends
# part of what is left, so the urgent request nears this share but does not cross it on their account. At
# or below it, the urgent request has the engine to itself.
CRITICAL_SLACK_SHARE = 0.1
ALTERNATE_SHARE = 0.5


class QueuedJob(Protocol):
    """What :class:`Pacer` reads of a queued request (:class:`inference.lane_queue.Job`)."""

    lane: str
    submitted: float
    deadline: float
    cpu_after_s: float

    @property
    def queued(self) -> int: ...

    @property
    def queued_pixels(self) -> int: ...

    def queued_runs(self, max_batch: int) -> int: ...


class QueueState(Protocol):
    """What :class:`Pacer` reads of the scheduler (:class:`inference.scheduling.LaneRotation`)."""

    def queued_jobs(self) -> Iterable[QueuedJob]: ...

    def queued_per_request(self, lane: str) -> tuple[int, ...]: ...

    def queued_engine_deadlines(self, lane: str) -> tuple[float, ...]: ...


@dataclass(frozen=True)
class LaneShape:
    """A lane's tile side (a full tile is ``tile * tile`` pixels) and batch bound."""

    tile: int
    max_batch: int


class Pacer:
    """The batcher's measured view of time: one :class:`LinearCost` per lane, fed by every engine run, and
    from it the admission verdict (:meth:`refusal`) and the request that must go first (:meth:`urgent`).
    Times are the caller's clock (``loop.time()``)."""

    def __init__(self, lanes: Mapping[str, LaneShape], load_window_s: float = 30.0) -> None:
        self.lanes = dict(lanes)
        self.costs = {name: LinearCost() for name in self.lanes}
        # what the traffic took of the engine over the last load_window_s (the deadline), by request size
        self.recent = RecentLoad(load_window_s)
        self._running: tuple[str, float, float] | None = None  # (lane, full tiles, start)

    def run_started(self, lane: str, pixels: int, now: float) -> None:
        """A run of ``pixels`` (tiles x their pixels) of ``lane`` started at ``now``."""
        self._running = (lane, self.full_tiles(lane, pixels), now)

    def run_ended(self) -> None:
        """The run started last ended (done or failed)."""
        self._running = None

    @property
    def running_since(self) -> float | None:
        """When the run in progress started, or None."""
        return None if self._running is None else self._running[2]

    def observe(self, lane: str, pixels: int, seconds: float) -> None:
        """A run of ``pixels`` of ``lane`` took ``seconds`` of engine time."""
        self.costs[lane].observe(self.full_tiles(lane, pixels), seconds)

    def served(self, lane: str, seconds: float, now: float, request_pixels: int) -> None:
        """A run of ``lane`` ended at ``now`` after ``seconds``; the largest request it served has
        ``request_pixels`` of work in all (tiles x their pixels)."""
        self.recent.record(lane, seconds, now, self.full_tiles(lane, request_pixels))

    def full_tiles(self, lane: str, pixels: float) -> float:
        return pixels / self.lanes[lane].tile ** 2

    def refusal(
        self,
        sched: QueueState,
        lane: str,
        n_tiles: float,
        deadline: float,
        budget_s: float,
        cpu_s: float,
        now: float,
    ) -> tuple[DeadlineUnreachableError | BacklogError | None, float | None]:
        """:func:`deadline_refusal` for ``n_tiles`` full tiles on ``lane`` against the queue now, and the
        estimated seconds until its engine work would be done (None before a run was measured). While the
        engine is busy or anything is queued, its own work is stretched by the share of the engine that
        smaller requests and other lanes took over the last ``load_window_s``
        (:class:`inference.recent_load.RecentLoad`, at most ``1 - OLDEST_SHARE``): they keep arriving
        after it and go first."""
        busy_left = 0.0
        if self._running is not None:
            running_lane, size, started = self._running
            busy_left = max(0.0, (self.costs[running_lane].seconds(size) or 0.0) - (now - started))
        loads = {
            name: LaneLoad(
                shape.max_batch,
                tuple(self.full_tiles(name, px) for px in sched.queued_per_request(name)),
                self.costs[name],
                tuple(d - now for d in sched.queued_engine_deadlines(name)),
                tuple(now - job.submitted for job in sched.queued_jobs() if job.lane == name),
            )
            for name, shape in self.lanes.items()
        }
        est = finish_estimate(lane, n_tiles, loads, busy_left)
        live = self._running is not None or any(load.queued_per_request for load in loads.values())
        if est is not None and live:
            # while traffic flows, requests that arrive after it with less work go first in the
            # response-ratio turns: its own work gets the share of the engine they leave, at least the
            # oldest's (see recent_load). An idle engine with nothing queued: no stream to share with.
            share = min(self.recent.share_below(lane, n_tiles, now), 1.0 - OLDEST_SHARE)
            est = Estimate(est.total_s + est.alone_s * share / (1.0 - share), est.alone_s)
        refusal = verdict(est, lane, n_tiles, loads, busy_left, deadline - now, budget_s, cpu_s)
        return refusal, None if est is None else est.total_s

    def queued_seconds(self, sched: QueueState, lane: str) -> float | None:
        """Estimated engine seconds of ``lane``'s queued tiles (None before a run was measured). The runs are
        counted as if any tiles could stack (the lane's gauge: requests of one tile shape do share runs),
        unlike :meth:`urgent`'s count for one request alone."""
        shape = self.lanes[lane]
        jobs = [job for job in sched.queued_jobs() if job.lane == lane]
        tiles = sum(job.queued for job in jobs)
        pixels = sum(job.queued_pixels for job in jobs)
        return self.costs[lane].work_seconds(
            math.ceil(tiles / shape.max_batch), self.full_tiles(lane, pixels)
        )

    def urgent(self, sched: QueueState, now: float) -> tuple[QueuedJob, float] | None:
        """The queued request with the least slack among those whose slack (seconds left before its
        engine deadline less its own remaining engine work) is at most :data:`URGENT_SLACK_SHARE` of its
        time in the queue (``deadline - submitted``) and not negative, and its *spare* seconds: its slack
        above :data:`CRITICAL_SLACK_SHARE` of that time (<= 0: critical). None if none is urgent."""
        best, best_slack, best_spare = None, math.inf, 0.0
        for job in sched.queued_jobs():
            shape = self.lanes[job.lane]
            pixels = job.queued_pixels
            work = self.costs[job.lane].work_seconds(
                job.queued_runs(shape.max_batch), self.full_tiles(job.lane, pixels)
            )
            if work is None or not math.isfinite(job.deadline):
                continue
            slack, span = job.deadline - job.cpu_after_s - now - work, job.deadline - job.submitted
            # one that cannot make it anyway (by the estimate) would only take others down with it
            if 0 <= slack <= URGENT_SLACK_SHARE * span and slack < best_slack:
                best, best_slack, best_spare = job, slack, slack - CRITICAL_SLACK_SHARE * span
        return None if best is None else (best, best_spare)

    def alternate_pixels(self, spare_s: float) -> dict[str, int]:
        """Per lane, the pixels one run may hold to cost at most :data:`ALTERNATE_SHARE` of ``spare_s``
        (by the lane's measured cost; 0 for a lane never measured, or when ``spare_s <= 0``): what an
        urgent request can let others run between its own batches."""
        budget, out = ALTERNATE_SHARE * spare_s, {}
        for name, shape in self.lanes.items():
            cost = self.costs[name]
            coef = cost.coefficients()
            if coef is None or budget <= 0 or coef[0] > budget:
                out[name] = 0
                continue
            a, b = coef
            # no slope (only alike runs seen): no more than the runs that were measured
            full_tiles = min(shape.max_batch, cost.typical_size if b <= 0 else (budget - a) / b)
            out[name] = int(full_tiles * shape.tile**2)
        return out
