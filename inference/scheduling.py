"""The batcher's scheduling policy: which queued tiles the next engine run takes (plain Python + numpy).

Round-robin over requests: a batch takes one tile from each request with queued tiles, in turn, until it
holds ``max_batch`` tiles; the rotation carries over from one batch to the next, and a new request joins
the end of it. Within a request, tiles run in order. So a 1-tile request that arrives behind a 2,000-tile
one runs in the next batch instead of after all 2,000 tiles, and k concurrent requests each get about
1/k of the engine. (Strict FIFO by tile would make every later request wait for the whole large one.)
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(eq=False)
class Job:
    """One submitted request: its tiles, how far they got, and the future its caller awaits.

    ``tiles`` also receives the outputs: a tile's output replaces it once the run that read it is done (the
    batch was stacked from copies), so a request holds one tile buffer instead of two.
    """

    request_id: str
    tiles: np.ndarray
    future: asyncio.Future[Any]
    submitted: float  # loop.time() when queued: the arrival time of all of its tiles
    remaining: int = field(init=False)  # tiles without an output yet
    next_tile: int = 0  # first tile not yet taken into a batch
    started: float | None = None  # when its first tile was taken into a batch
    infer_s: float = 0.0
    runs: int = 0

    def __post_init__(self) -> None:
        self.remaining = len(self.tiles)

    @property
    def queued(self) -> int:
        """Tiles not yet taken into a batch."""
        return len(self.tiles) - self.next_tile


class RoundRobinQueue:
    """Queued tiles of all requests, handed out one request at a time in rotation (see the module doc)."""

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

    def oldest_arrival(self) -> float | None:
        """Arrival time of the longest-waiting queued tile, or None when nothing is queued."""
        return min((job.submitted for job in self._jobs), default=None)

    def take(self, n: int) -> list[tuple[Job, int]]:
        """Up to ``n`` ``(job, tile index)`` pairs, one per request in turn; removes them from the queue."""
        batch: list[tuple[Job, int]] = []
        while self._jobs and len(batch) < n:
            job = self._jobs.popleft()
            batch.append((job, job.next_tile))
            job.next_tile += 1
            self._tiles -= 1
            if job.queued:
                self._jobs.append(job)
        return batch
