"""The batcher's scheduling policy: which queued tiles the next engine run takes (plain Python + numpy).

**Across lanes** (:class:`LaneRotation`; one lane per model, one engine run at a time on the device, each
run holding tiles of one lane only): a lane is *ready* when it has a full batch queued (``max_batch``
tiles) or its oldest queued tile has waited ``max_delay``. The next run serves the next ready lane in a
fixed rotation, one batch per turn, and the rotation carries over from one run to the next. So a lane with
a deep backlog cannot starve another (except while a request is urgent, see
:meth:`LaneRotation.next_batch`: a request about to miss its deadline goes first, whatever its lane, its
batches alternating with others' batches that its slack can afford): once
a lane is ready it waits for at most one run of each other lane (with two lanes, a fast-model request
that arrives behind 500 queued quality-model tiles runs right after the quality batch that is running, or
the next one). While no lane is ready, the worker sleeps
until the earliest time one becomes ready (:meth:`LaneRotation.wake_at`) or a new request arrives; a lane
waiting for its partial batch to fill never holds up a lane that is ready.

**Within a lane**: :mod:`inference.lane_queue`.
"""

from __future__ import annotations

from collections.abc import Mapping

from inference.lane_queue import DEFAULT_MIN_WORK, Job, ResponseRatioQueue

__all__ = ["LaneRotation"]


class LaneRotation:
    """One :class:`ResponseRatioQueue` per lane and the rotation over the ready lanes (see the module doc).

    ``max_batch`` maps each lane name to its batch bound, in rotation order; ``min_work`` (optional, per
    lane) the pixels its response ratios add to each request's queued work (the batcher sets
    :data:`inference.lane_queue.WORK_OFFSET_TILES` full tiles). Times are the caller's clock (the
    batcher passes ``loop.time()``); nothing here reads a clock or awaits.
    """

    def __init__(
        self, max_batch: Mapping[str, int], max_delay_s: float, min_work: Mapping[str, int] | None = None
    ) -> None:
        if not max_batch:
            raise ValueError("at least one lane is needed")
        self.max_batch, self.max_delay_s = dict(max_batch), max_delay_s
        floors = dict(min_work or {})
        self._queues = {
            name: ResponseRatioQueue(floors.get(name, DEFAULT_MIN_WORK)) for name in self.max_batch
        }
        self._order = list(self.max_batch)
        self._turn = 0  # index in _order of the lane that is asked first next time
        self._urgent_ran_last = False  # the last batch was an urgent request's (see next_batch)

    def __len__(self) -> int:
        """Queued tiles over all lanes."""
        return sum(len(q) for q in self._queues.values())

    @property
    def min_work(self) -> dict[str, int]:
        """Per lane, the pixels its response ratios add to each request's queued work."""
        return {name: queue.min_work for name, queue in self._queues.items()}

    def queued(self, lane: str) -> int:
        """Queued tiles of one lane."""
        return len(self._queues[lane])

    def queued_per_request(self, lane: str) -> tuple[int, ...]:
        """Queued pixels of each request in one lane (:meth:`ResponseRatioQueue.per_request`)."""
        return self._queues[lane].per_request()

    def queued_engine_deadlines(self, lane: str) -> tuple[float, ...]:
        """Engine deadlines of the requests of :meth:`queued_per_request`, in the same order."""
        return self._queues[lane].engine_deadlines()

    def add(self, job: Job) -> None:
        """Queue ``job``'s tiles in its lane (``job.lane``)."""
        self._queues[job.lane].add(job)

    def remove(self, job: Job) -> int:
        """Drop ``job``'s queued tiles from its lane; returns how many."""
        return self._queues[job.lane].remove(job)

    def ready_at(self, lane: str) -> float | None:
        """When ``lane`` is (or was) ready: -inf with a full batch queued, else its oldest tile's arrival +
        ``max_delay``; None when it has nothing queued."""
        queue = self._queues[lane]
        if len(queue) >= self.max_batch[lane]:
            return float("-inf")
        oldest = queue.oldest_arrival()
        return None if oldest is None else oldest + self.max_delay_s

    def wake_at(self) -> float | None:
        """The earliest time a lane is ready (maybe already past), or None when nothing is queued."""
        return min((t for t in map(self.ready_at, self._order) if t is not None), default=None)

    def queued_jobs(self) -> tuple[Job, ...]:
        """Every request with queued tiles, lane by lane."""
        return tuple(job for queue in self._queues.values() for job in queue.jobs())

    def next_batch(
        self, now: float, urgent: Job | None = None, alternate_pixels: Mapping[str, int] | None = None
    ) -> tuple[str, list[tuple[Job, int]]] | None:
        """The next lane in the rotation that is ready at ``now`` and up to ``max_batch`` of its tiles
        (removed from its queue; the rotation moves past that lane), or None when no lane is ready.

        An ``urgent`` queued request goes first, whatever the rotation and readiness: its lane serves a
        batch filled with its tiles, and the rotation stays where it was. With ``alternate_pixels`` (a
        pixel budget per lane: what a run may hold without costing the urgent request its deadline), its
        batches alternate with the rotation's usual batches cut to that budget, any lane (a lane with no
        budget is skipped): other requests keep moving behind a large urgent one, at a bounded cost to
        it."""
        if urgent is not None and urgent in self._queues[urgent.lane]:
            if alternate_pixels and self._urgent_ran_last:
                self._urgent_ran_last = False
                if picked := self._rotate(now, alternate_pixels):
                    return picked
            self._urgent_ran_last = True
            lane = urgent.lane
            return lane, self._queues[lane].take(self.max_batch[lane], now, first=urgent)
        self._urgent_ran_last = False
        return self._rotate(now)

    def _rotate(
        self, now: float, max_pixels: Mapping[str, int] | None = None
    ) -> tuple[str, list[tuple[Job, int]]] | None:
        n = len(self._order)
        for k in range(n):
            i = (self._turn + k) % n
            lane = self._order[i]
            at = self.ready_at(lane)
            if at is None or at > now:
                continue
            room = None if max_pixels is None else max_pixels.get(lane, 0)
            if room is not None and room <= 0:
                continue
            if batch := self._queues[lane].take(self.max_batch[lane], now, max_pixels=room):
                self._turn = (i + 1) % n
                return lane, batch
        return None
