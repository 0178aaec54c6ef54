"""One lane's queue: which of its requests' tiles the next batch takes (plain Python + numpy).

In :class:`ResponseRatioQueue`, the lane's time (counted in pixels: a tile's cost on a
CPU) goes half to the request with the highest *response ratio* (seconds waited per queued pixel, plus
one full tile: :data:`WORK_OFFSET_TILES`), half to the oldest request (:data:`OLDEST_SHARE`). A batch
starts with the tiles of one or the other, and fills up in response-ratio order with tiles of the shape
of the first one taken (tiles fit each image's shape, and a run stacks one shape), until it holds
``max_batch`` tiles. Within a request, tiles run in order.

- A 1-tile request that arrives behind a 2,000-tile one runs after at most about one batch of it (strict
  FIFO would make it wait for the whole large one).
- Requests of a tile or more wait about in proportion to their work; much smaller ones go about in
  arrival order. Least queued work first (or a ratio without the offset) would serve the smallest first
  and starve the middle: under a steady stream of tiny requests, a 200x200 one waited 20 s.
- The oldest request keeps half of the lane's time however many smaller ones arrive, and of two
  large requests the older finishes first, instead of both finishing late as round-robin over requests
  would make them.
- A request whose slack still runs low goes first (:meth:`inference.pacer.Pacer.urgent`).

The rotation over lanes (one per model) is :mod:`inference.scheduling`.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["DEFAULT_MIN_WORK", "OLDEST_SHARE", "WORK_OFFSET_TILES", "Job", "ResponseRatioQueue", "TileSet"]

# The share of a lane's time (its pixels) that goes to batches that start with the oldest request: what
# a large request gets however many smaller ones keep arriving. The rest goes by response ratio, which
# serves small requests first; a large request that still runs short of time turns urgent. (A third left
# 3 requests of 4,631 to end in 504 in the soak, and made small requests only ~10% faster.)
OLDEST_SHARE = 1 / 2
# Work added to every request's queued pixels before its response ratio divides by it, in full tiles of
# its lane (T x T pixels): requests much smaller than a tile rank by their wait more than by their size.
# Ranking them by size gains them little (each costs ~0.01-0.5 s on a 2-core CPU) and starved the
# mid-size ones: with 256 pixels here, a steady stream of tiny requests (70% of the soak's traffic)
# outranked a 212x144 one for 20 s while a large request held the oldest turns.
WORK_OFFSET_TILES = 1.0
# The offset in pixels when no tile size is given (the unit tests' tiny tiles): a run's fixed overhead
# (~1 ms against ~0.5 s for a 384x384 tile), so a request of a few pixels does not outrank all on arrival.
DEFAULT_MIN_WORK = 256


class TileSet:
    """A request's tiles as one sequence: one or more groups ``float32[N_g, 1, h_g, w_g]`` whose tiles all
    have the same pixel count ``h_g * w_g`` (the x8 ensemble sends its upright tiles and their transposed
    ``w x h`` twins), indexed in group order. A batch stacks one shape, so it can take a group's tiles only.

    ``outputs()`` gives back what was submitted: the array itself, or the tuple of groups.
    """

    def __init__(self, tiles: np.ndarray | Sequence[np.ndarray]) -> None:
        self.single = isinstance(tiles, np.ndarray)
        self.groups: tuple[np.ndarray, ...] = (tiles,) if self.single else tuple(tiles)
        if not self.groups:
            raise ValueError("a request needs at least one group of tiles")
        self._ends = list(itertools.accumulate(len(g) for g in self.groups))

    def __len__(self) -> int:
        return self._ends[-1]

    def _where(self, i: int) -> tuple[np.ndarray, int]:
        g = bisect.bisect_right(self._ends, i)
        return self.groups[g], i - (self._ends[g - 1] if g else 0)

    def __getitem__(self, i: int) -> np.ndarray:
        group, j = self._where(i)
        return group[j]

    def __setitem__(self, i: int, value: np.ndarray) -> None:
        group, j = self._where(i)
        group[j] = value

    def shape_at(self, i: int) -> tuple[int, int]:
        """``(h, w)`` of tile ``i``."""
        return self._where(i)[0].shape[2:]

    @property
    def pixels(self) -> int:
        """Pixels of one tile (the same in every group)."""
        return self.groups[0].shape[2] * self.groups[0].shape[3]

    def outputs(self) -> np.ndarray | tuple[np.ndarray, ...]:
        return self.groups[0] if self.single else self.groups

    def runs_from(self, start: int, max_batch: int) -> int:
        """Engine runs that tiles ``start:`` need at ``max_batch`` tiles per run with no other request's
        tiles: a run stacks one tile shape, so the rest of each stretch of groups of one shape (two groups
        of square tiles stack together) is rounded up on its own."""
        runs, begin, left, shape = 0, 0, 0, None
        for group, end in zip(self.groups, self._ends, strict=True):
            if group.shape[2:] != shape:
                runs, left, shape = runs + math.ceil(left / max_batch), 0, group.shape[2:]
            left += max(0, end - max(start, begin))
            begin = end
        return runs + math.ceil(left / max_batch)


@dataclass(eq=False)
class Job:
    """One submitted request: its lane, its tiles, how far they got, and the future its caller awaits.

    ``tiles`` also receives the outputs: a tile's output replaces it once the run that read it is done (the
    batch was stacked from copies), so a request holds one tile buffer instead of two.
    """

    request_id: str
    tiles: TileSet  # an ndarray is taken as a TileSet of one group
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
        if not isinstance(self.tiles, TileSet):
            self.tiles = TileSet(self.tiles)
        self.remaining = len(self.tiles)

    @property
    def queued(self) -> int:
        """Tiles not yet taken into a batch."""
        return len(self.tiles) - self.next_tile

    def queued_runs(self, max_batch: int) -> int:
        """Engine runs its queued tiles need alone at ``max_batch`` per run (:meth:`TileSet.runs_from`)."""
        return self.tiles.runs_from(self.next_tile, max_batch)

    @property
    def tile_pixels(self) -> int:
        """Pixels of one of its tiles (all of a request's tiles have one pixel count)."""
        return self.tiles.pixels

    @property
    def queued_pixels(self) -> int:
        """Pixels of its tiles not yet taken into a batch: tiles fit each image, so its queued work."""
        return self.queued * self.tile_pixels


class ResponseRatioQueue:
    """Queued tiles of one lane's requests: the lane's time alternates between the request that waited
    longest for its queued work and the oldest request (see the module doc)."""

    def __init__(self, min_work: int = DEFAULT_MIN_WORK) -> None:
        self.min_work = min_work  # pixels added to each request's queued work in its response ratio
        self._jobs: list[Job] = []  # requests with queued tiles, in arrival order (which breaks ties)
        self._tiles = 0
        # OLDEST_SHARE x pixels run in response-ratio turns less (1 - OLDEST_SHARE) x pixels run in oldest
        # turns, within +-(the largest batch seen): the oldest's turn comes when it is positive
        self._balance, self._cap = 0, 0

    def __len__(self) -> int:
        """Queued tiles over all requests."""
        return self._tiles

    def add(self, job: Job) -> None:
        """Queue all of ``job``'s remaining tiles (after every request already queued, among equals)."""
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
        """Queued pixels (tiles x tile pixels) of each request with any, in arrival order: tiles fit
        each image, so a tile is not a unit of work, its pixels are."""
        return tuple(job.queued_pixels for job in self._jobs)

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
        """The requests with queued tiles, in arrival order."""
        return tuple(self._jobs)

    def take(
        self, n: int, now: float, first: Job | None = None, max_pixels: int | None = None
    ) -> list[tuple[Job, int]]:
        """Up to ``n`` ``(job, tile index)`` pairs, removed from the queue. A batch starts with the tiles of
        the request with the highest response ratio at ``now`` (seconds waited since it arrived per
        queued pixel plus ``min_work``), or with those of the oldest request when the batches that
        started with it have run less than :data:`OLDEST_SHARE` of the pixels (give or take one
        batch); either way the rest of the batch takes the tiles of the requests in response-ratio
        order (earlier arrival first among equals).

        A batch stacks tiles of one shape: the shape of the first tile taken. Requests whose next tiles
        have another shape are passed over for this batch (a request of two groups, :class:`TileSet`,
        runs its second group's tiles in later batches). ``first``, a queued request (an urgent one,
        :meth:`inference.pacer.Pacer.urgent`), fills the batch with its own tiles before any other (and
        the alternation waits). With ``max_pixels``, the batch holds at most that many pixels (tiles that
        do not fit are passed over): a batch that costs at most a given time."""
        turn = 0 if first is not None or not self._jobs else (-1 if self._balance > 0 else 1)
        if turn < 0:
            first = self._jobs[0]
        # stable: arrival order among equals (with equal waits, the least queued work first)
        floor = self.min_work
        order = sorted(self._jobs, key=lambda job: -(now - job.submitted) / (job.queued_pixels + floor))
        if first is not None and first in self._jobs:
            order.remove(first)
            order.insert(0, first)
        batch: list[tuple[Job, int]] = []
        shape, room = None, max_pixels
        for job in order:
            tile_pixels = job.tile_pixels
            while job.queued and len(batch) < n and (room is None or tile_pixels <= room):
                tile_shape = job.tiles.shape_at(job.next_tile)
                if shape is not None and tile_shape != shape:
                    break  # its next tiles are of another shape (the next group): a later batch's
                batch.append((job, job.next_tile))
                job.next_tile += 1
                self._tiles -= 1
                shape = tile_shape
                room = None if room is None else room - tile_pixels
            if len(batch) >= n:
                break
        self._jobs = [job for job in self._jobs if job.queued]
        if turn < 0 and all(job is not first for job, _ in batch):
            turn = 1  # the oldest's tiles did not fit (max_pixels): its share is not used up
        pixels = sum(job.tile_pixels for job, _ in batch)
        self._cap = max(self._cap, pixels)
        credit = pixels * (OLDEST_SHARE if turn > 0 else 1.0 - OLDEST_SHARE)
        self._balance = max(-self._cap, min(self._cap, self._balance + turn * credit))
        return batch
