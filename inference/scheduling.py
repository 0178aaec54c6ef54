"""The batcher's scheduling policy: which queued tiles the next engine run takes (plain Python + numpy).

**Across lanes** (:class:`LaneRotation`; one lane per model, one engine run at a time on the device, each
run holding tiles of one lane only): a lane is *ready* when it has a full batch queued (``max_batch``
tiles) or its oldest queued tile has waited ``max_delay``. The next run serves the next ready lane in a
fixed rotation, one batch per turn, and the rotation carries over from one run to the next. So a lane with
a deep backlog cannot starve another (except while a request is urgent, see
:meth:`LaneRotation.next_batch`: a request about to miss its deadline goes first, whatever its lane): once
a lane is ready it waits for at most one run of each other lane (with two lanes, a fast-model request
that arrives behind 500 queued quality-model tiles runs right after the quality batch that is running, or
the next one). While no lane is ready, the worker sleeps
until the earliest time one becomes ready (:meth:`LaneRotation.wake_at`) or a new request arrives; a lane
waiting for its partial batch to fill never holds up a lane that is ready.

**Within a lane** (:class:`RoundRobinQueue`): a batch takes one tile from each request with queued tiles
of the same shape as the first in turn (tiles fit each image's shape, and a run stacks one shape), until
it holds ``max_batch`` tiles; the rotation carries over from one batch to the next, and a
new request joins the end of it. Within a request, tiles run in order. So a 1-tile request that arrives
behind a 2,000-tile one runs in the next batch of its lane instead of after all 2,000 tiles, and k
concurrent requests each get about 1/k of the lane. (Strict FIFO by tile would make every later request
wait for the whole large one.)
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(eq=False)
class Job:
    """One submitted request: its lane, its tiles, how far they got, and the future its caller awaits.

    ``tiles`` also receives the outputs: a tile's output replaces it once the run that read it is done (the
    batch was stacked from copies), so a request holds one tile buffer instead of two.
    """

    request_id: str
    tiles: np.ndarray
    future: asyncio.Future[Any]
    submitted: float  # loop.time() when queued: the arrival time of all of its tiles
    lane: str  # the model whose queue (and engine) its tiles go to
    remaining: int = field(init=False)  # tiles without an output yet
    next_tile: int = 0  # first tile not yet taken into a batch
    started: float | None = None  # when its first tile was taken into a batch
    infer_s: float = 0.0
    engine_s: float = 0.0  # its share of the runs that held its tiles (seconds x its tiles / run size)
    runs: int = 0
    deadline: float = float("inf")  # loop.time() by which it must be done
    cpu_after_s: float = 0.0  # what its CPU stages need after the engine (the encode), as estimated
    expired: bool = False  # ended past its deadline (engine time spent on it after that is wasted)

    def __post_init__(self) -> None:
        self.remaining = len(self.tiles)

    @property
    def queued(self) -> int:
        """Tiles not yet taken into a batch."""
        return len(self.tiles) - self.next_tile


class RoundRobinQueue:
    """Queued tiles of one lane's requests, handed out one request at a time in rotation (see the module
    doc)."""

    def __init__(self) -> None:
        self._jobs: deque[Job] = deque()  # requests with queued tiles, in rotation order
        self._tiles = 0

    def __len__(self) -> int:
        """Queued tiles over all requests."""
        return self._tiles

    def add(self, job: Job) -> None:
        """Queue all of ``job``'s remaining tiles at the end of the rotation."""
        if job.queued:
            self._jobs.append(job)
            self._tiles += job.queued

    def remove(self, job: Job) -> int:
        """Drop ``job``'s queued tiles (it expired, was cancelled or failed); returns how many."""
        if job not in self._jobs:  # identity: Job has eq=False
            return 0
        self._jobs.remove(job)
        self._tiles -= job.queued
        return job.queued

    def per_request(self) -> tuple[int, ...]:
        """Queued pixels (tiles x tile pixels) of each request with any, in rotation order: tiles fit
        each image, so a tile is not a unit of work, its pixels are."""
        return tuple(job.queued * job.tiles.shape[2] * job.tiles.shape[3] for job in self._jobs)

    def engine_deadlines(self) -> tuple[float, ...]:
        """When each request with queued tiles must have had its engine work done (its deadline less
        ``cpu_after_s``), in the order of :meth:`per_request`."""
        return tuple(job.deadline - job.cpu_after_s for job in self._jobs)

    def oldest_arrival(self) -> float | None:
        """Arrival time of the longest-waiting queued tile, or None when nothing is queued."""
        return min((job.submitted for job in self._jobs), default=None)

    def __contains__(self, job: Job) -> bool:
        """Whether ``job`` has tiles queued here (identity: Job has eq=False)."""
        return job in self._jobs

    def jobs(self) -> tuple[Job, ...]:
        """The requests with queued tiles, in rotation order."""
        return tuple(self._jobs)

    def take(self, n: int, first: Job | None = None, max_pixels: int | None = None) -> list[tuple[Job, int]]:
        """Up to ``n`` ``(job, tile index)`` pairs, one per request in turn; removes them from the queue.

        A batch stacks tiles of one shape: the shape of the request whose turn it is. Requests with other
        shapes are passed over and keep their place at the front of the rotation. ``first``, a queued
        request (an urgent one, :meth:`inference.pacing.Pacer.urgent`), fills the batch with its own tiles
        before the others get their turns, and then keeps its place. With ``max_pixels``, requests whose
        tiles are larger are passed over too (a batch of cheap tiles only)."""
        batch: list[tuple[Job, int]] = []
        if not self._jobs:
            return batch
        if first is not None and first in self._jobs:
            k = min(n, first.queued)
            batch = [(first, first.next_tile + i) for i in range(k)]
            first.next_tile += k
            self._tiles -= k
            if not first.queued:
                self._jobs.remove(first)
        if not self._jobs or len(batch) >= n:
            return batch
        shape = batch[0][0].tiles.shape[2:] if batch else None
        passed: deque[Job] = deque()
        while self._jobs and len(batch) < n:
            job = self._jobs.popleft()
            tile_shape = job.tiles.shape[2:]
            if max_pixels is not None and tile_shape[0] * tile_shape[1] > max_pixels:
                passed.append(job)
                continue
            shape = shape or tile_shape
            if tile_shape != shape:
                passed.append(job)
                continue
            batch.append((job, job.next_tile))
            job.next_tile += 1
            self._tiles -= 1
            if job.queued:
                self._jobs.append(job)
        passed.extend(self._jobs)
        self._jobs = passed
        return batch


class LaneRotation:
    """One :class:`RoundRobinQueue` per lane and the rotation over the ready lanes (see the module doc).

    ``max_batch`` maps each lane name to its batch bound, in rotation order. Times are the caller's clock
    (the batcher passes ``loop.time()``); nothing here reads a clock or awaits.
    """

    def __init__(self, max_batch: Mapping[str, int], max_delay_s: float) -> None:
        if not max_batch:
            raise ValueError("at least one lane is needed")
        self.max_batch, self.max_delay_s = dict(max_batch), max_delay_s
        self._queues = {name: RoundRobinQueue() for name in self.max_batch}
        self._order = list(self.max_batch)
        self._turn = 0  # index in _order of the lane that is asked first next time
        self._urgent_ran_last = False  # the last batch was an urgent request's (see next_batch)

    def __len__(self) -> int:
        """Queued tiles over all lanes."""
        return sum(len(q) for q in self._queues.values())

    def queued(self, lane: str) -> int:
        """Queued tiles of one lane."""
        return len(self._queues[lane])

    def queued_per_request(self, lane: str) -> tuple[int, ...]:
        """Queued pixels of each request in one lane (:meth:`RoundRobinQueue.per_request`)."""
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
        self, now: float, urgent: Job | None = None, cheap_pixels: int = 0
    ) -> tuple[str, list[tuple[Job, int]]] | None:
        """The next lane in the rotation that is ready at ``now`` and up to ``max_batch`` of its tiles
        (removed from its queue; the rotation moves past that lane), or None when no lane is ready.

        An ``urgent`` queued request goes first, whatever the rotation and readiness: its lane serves a
        batch filled with its tiles, and the rotation stays where it was. With ``cheap_pixels``, its
        batches alternate with batches of its lane's tiles of at most that many pixels, if any are
        queued: small requests keep moving behind a large urgent one, at a small cost to it."""
        if urgent is not None and urgent in self._queues[urgent.lane]:
            queue, n = self._queues[urgent.lane], self.max_batch[urgent.lane]
            if cheap_pixels and self._urgent_ran_last:
                self._urgent_ran_last = False
                if cheap := queue.take(n, max_pixels=cheap_pixels):
                    return urgent.lane, cheap
            self._urgent_ran_last = True
            return urgent.lane, queue.take(n, first=urgent)
        self._urgent_ran_last = False
        n = len(self._order)
        for k in range(n):
            i = (self._turn + k) % n
            lane = self._order[i]
            at = self.ready_at(lane)
            if at is not None and at <= now:
                self._turn = (i + 1) % n
                return lane, self._queues[lane].take(self.max_batch[lane])
        return None
