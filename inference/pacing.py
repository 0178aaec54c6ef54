"""How long the batcher's queue will take: a measured cost model per lane and a finish-time estimate for a
request about to be admitted (plain Python; no clock, no asyncio).

Why: on two CPU cores a 1-Mpx output takes ~14 s of engine time, so three such requests at once all run out
a 30-s deadline and burn their compute for a 504. The batcher knows each request's tile count, the tiles
queued ahead of it (per request, per lane) and how long runs take, so it can refuse such a request before
it reaches the engine (:meth:`inference.batcher.TileBatcher.check_capacity`).

Units: "tiles" here are *full* tiles of T*T pixels. Tiles fit each image (:mod:`imaging.tiling`), so the
batcher converts pixels to full tiles before asking (a 64x64 image's one tile is 1/16 of a 256-pixel one).

**Cost of a run**: :class:`inference.linear_cost.LinearCost`, fitted per lane to engine seconds per run
against its size in full tiles.

**Engine work done** (:func:`finish_estimate`): within a lane, the lane's time alternates between the
request that has waited longest for its queued work and the oldest one (:mod:`inference.lane_queue`). The
estimate takes as ahead of a request every queued request of its lane with at most as much queued work
(equals count as ahead), and every older one with more work whose response ratio (waited per queued work
plus one full tile) would still be the higher one when those are done: ``A`` tiles in ``ceil(A /
max_batch)`` runs. The other older requests with more work get the oldest-first turns (half of the time):
up to ``A + max_batch`` tiles. The rotation over lanes gives every other lane with work one run per run
of ours: ``min(runs, its runs)`` runs each. Plus what is left of the run on the device now. This is a
model, not the scheduler run forward: requests that arrive later with less work overtake it in the
response-ratio turns. Admission counts them as a rate (:meth:`inference.pacer.Pacer.refusal`: while
traffic flows, the newcomer's own work is stretched by the share of the engine that smaller requests and
other lanes took over the last deadline, :mod:`inference.recent_load`, at most 2x), and
:meth:`inference.pacer.Pacer.urgent` protects a request whose slack they eat anyway.

**Who a newcomer delays**: the same formula for every queued request of every lane, with and without the
newcomer. A newcomer that would turn a request that meets its deadline into one that misses it is refused
(503), whichever lane either is on: a quality tile takes ~20 s on two CPU cores, so one admitted behind a
fast request interleaves with it and can push it past its deadline.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from inference.batch_types import BacklogError, DeadlineUnreachableError
from inference.lane_queue import OLDEST_SHARE, WORK_OFFSET_TILES
from inference.linear_cost import LinearCost

# A request is admitted only if its estimated time (engine work from the queue model, plus its CPU stages
# from :class:`LinearCost` fits of decode and encode) fits this share of its remaining time: the rest
# absorbs estimate noise (runs slow down while CPU stages of other requests share the cores).
HEADROOM = 0.8


@dataclass(frozen=True)
class LaneLoad:
    """One lane as the estimate sees it: its batch bound, queued (full) tiles per request (in arrival
    order), its cost model, seconds until each queued request's engine work must end (its deadline less
    what its CPU stages still need after the engine; same order; empty = not checked), and seconds each
    has waited since it arrived (same order; empty = none yet)."""

    max_batch: int
    queued_per_request: tuple[float, ...]
    cost: LinearCost
    time_left_s: tuple[float, ...] = ()
    waited_s: tuple[float, ...] = ()


@dataclass(frozen=True)
class Estimate:
    """Seconds until a new request's engine work would end (``total_s``) and what it needs alone
    (``alone_s``)."""

    total_s: float
    alone_s: float


def _engine_done_s(lane: str, index: int, lanes: Mapping[str, LaneLoad], busy_left_s: float) -> float | None:
    """Seconds until request ``index`` of ``lane``'s queued requests (arrival order) has had its tiles all
    run: its lane's runs that come first (see the module doc), and one run of every other lane with work
    per run of its own."""
    own = lanes[lane]
    queued, waited = own.queued_per_request, own.waited_s or (0.0,) * len(own.queued_per_request)
    q, offset = queued[index], WORK_OFFSET_TILES  # the scheduler's response ratio: waited / (work + offset)
    ahead = sum(qi for qi in queued if qi <= q)
    own_s = own.cost.work_seconds(max(1, math.ceil(ahead / own.max_batch)), ahead)
    if own_s is None:
        return None
    # An older request with more work goes first as a whole if its response ratio (waited per queued
    # work plus the offset) is still the higher one when this request's own share would be done;
    # otherwise it runs in the oldest-first turns only, which take OLDEST_SHARE of the time, give or
    # take a batch. (Its ratio only grows as it runs, so one that is ahead then stays ahead.)
    older = 0.0
    for i in sorted(range(index), key=lambda i: -waited[i] / (queued[i] + offset)):
        if queued[i] <= q:
            continue  # in ``ahead`` already
        if (waited[i] + own_s) / (queued[i] + offset) >= (waited[index] + own_s) / (q + offset):
            ahead += queued[i]
            own_s = own.cost.work_seconds(max(1, math.ceil(ahead / own.max_batch)), ahead) or own_s
        else:
            older += queued[i]
    runs = max(1, math.ceil(ahead / own.max_batch))
    if older:
        taken = min(older, ahead * OLDEST_SHARE / (1 - OLDEST_SHARE) + own.max_batch)
        oldest_runs = math.ceil(taken / own.max_batch)
        own_s += own.cost.work_seconds(oldest_runs, taken) or 0.0
        runs += oldest_runs
    total = busy_left_s + own_s
    for name, other in lanes.items():
        queued = sum(other.queued_per_request)
        if name == lane or not queued:
            continue
        other_runs = min(runs, math.ceil(queued / other.max_batch))
        total += other.cost.work_seconds(other_runs, min(queued, other_runs * other.max_batch)) or 0.0
    return total


def _with_newcomer(lanes: Mapping[str, LaneLoad], lane: str, n_tiles: float) -> dict[str, LaneLoad]:
    own = lanes[lane]
    queued = (*own.queued_per_request, n_tiles)
    waited = (*own.waited_s, 0.0) if own.waited_s else ()
    return {**lanes, lane: LaneLoad(own.max_batch, queued, own.cost, own.time_left_s, waited)}


def finish_estimate(
    lane: str, n_tiles: float, lanes: Mapping[str, LaneLoad], busy_left_s: float
) -> Estimate | None:
    """When a request of ``n_tiles`` tiles on ``lane`` would have had its engine work done if admitted
    now (see the module doc); None while ``lane`` has no measured run yet (nothing is refused on a
    guess)."""
    own = lanes[lane]
    alone_s = own.cost.work_seconds(math.ceil(n_tiles / own.max_batch), n_tiles)
    total_s = _engine_done_s(
        lane, len(own.queued_per_request), _with_newcomer(lanes, lane, n_tiles), busy_left_s
    )
    if alone_s is None or total_s is None:
        return None
    return Estimate(max(total_s, busy_left_s + alone_s), alone_s)


def deadline_refusal(
    lane: str,
    n_tiles: float,
    lanes: Mapping[str, LaneLoad],
    busy_left_s: float,
    remaining_s: float,
    budget_s: float,
    cpu_s: float = 0.0,
) -> DeadlineUnreachableError | BacklogError | None:
    """Why a request of ``n_tiles`` tiles on ``lane`` with ``remaining_s`` left of its ``budget_s`` deadline
    must be refused now, or None to admit it. ``cpu_s``: what its CPU stages still need besides the
    engine (decode and encode, measured). :class:`DeadlineUnreachableError` when it alone needs more
    than the whole budget, :class:`BacklogError` when the work ahead is the reason, or when admitting
    it would make a queued request of any lane miss a deadline it would otherwise meet (its Retry-After
    is when the work ahead should have drained enough for a fresh deadline, and the requests it would
    have endangered have left the engine)."""
    est = finish_estimate(lane, n_tiles, lanes, busy_left_s)
    return verdict(est, lane, n_tiles, lanes, busy_left_s, remaining_s, budget_s, cpu_s)


def verdict(
    est: Estimate | None,
    lane: str,
    n_tiles: float,
    lanes: Mapping[str, LaneLoad],
    busy_left_s: float,
    remaining_s: float,
    budget_s: float,
    cpu_s: float,
) -> DeadlineUnreachableError | BacklogError | None:
    """:func:`deadline_refusal` given the request's :func:`finish_estimate` ``est``."""
    if est is None:
        return None
    need_s = est.total_s + cpu_s
    endangered_s = None
    if need_s <= remaining_s * HEADROOM:
        endangered_s = _endangered_done_s(lane, n_tiles, lanes, busy_left_s)
        if endangered_s is None:
            return None
    if est.alone_s + cpu_s > budget_s * HEADROOM:
        return DeadlineUnreachableError(n_tiles, est.alone_s + cpu_s, budget_s)
    # Retry once the work ahead leaves a fresh deadline enough room, and once the requests it would
    # have endangered are done: retrying sooner is refused again.
    wait_s = max(need_s - budget_s * HEADROOM, endangered_s or 0.0)
    return BacklogError(n_tiles, need_s, remaining_s, max(1, math.ceil(wait_s)))


def _endangered_done_s(
    lane: str, n_tiles: float, lanes: Mapping[str, LaneLoad], busy_left_s: float
) -> float | None:
    """When (seconds from now) the last queued request that admitting ``n_tiles`` more tiles on ``lane``
    would make miss its deadline, though it finishes in time without them, leaves the engine; None when
    there is no such request. A newcomer with less work goes before a queued
    request of its own lane, and the lane rotation gives its lane a run per run of every other lane:
    admitting it can delay a queued request of any lane. (A stream of small newcomers, each harmless
    alone, could still take a large request's whole margin: :meth:`inference.pacer.Pacer.urgent`
    then serves the large one first.)"""
    after, last = _with_newcomer(lanes, lane, n_tiles), None
    for name, load in lanes.items():
        if not load.time_left_s:
            continue
        for j, left in enumerate(load.time_left_s):
            without = _engine_done_s(name, j, lanes, busy_left_s)
            with_new = _engine_done_s(name, j, after, busy_left_s)
            if without is not None and with_new is not None and without <= left < with_new:
                last = max(last or 0.0, without)
    return last
