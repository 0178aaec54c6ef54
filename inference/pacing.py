"""How long the batcher's queue will take: a measured cost model per lane and a finish-time estimate for a
request about to be admitted (plain Python; no clock, no asyncio).

Why: on two CPU cores a 1-Mpx output takes ~14 s of engine time, so three such requests at once all run out
a 30-s deadline and burn their compute for a 504. The batcher knows each request's tile count, the tiles
queued ahead of it (per request, per lane) and how long runs take, so it can refuse such a request before
it reaches the engine (:meth:`inference.batcher.TileBatcher.check_capacity`).

Units: "tiles" here are *full* tiles of T*T pixels. Tiles fit each image (:mod:`imaging.tiling`), so the
batcher converts pixels to full tiles before asking (a 64x64 image's one tile is 1/16 of a 256-pixel one).

**Cost of a run** (:class:`RunCost`): an exponentially weighted least-squares fit of engine seconds per run
as ``a + b * tiles``, per lane. A run's cost grows with its size on CPU (``a ~ 0``) and hardly at all on a
GPU (``b ~ 0``); one EWMA of seconds per run would, after a quiet period of 1-tile runs, under-estimate the
full runs a burst brings by up to ``max_batch`` times. While every run seen had about the same size the fit
is undetermined, and the cost is taken as proportional to the tiles (exact on CPU; on a GPU it
over-estimates, but its runs are milliseconds against a deadline of seconds).

**Finish time** (:func:`finish_estimate`): within a lane, batches take one tile per request in turn
(:mod:`inference.scheduling`), so a new request's ``n``-th tile is taken once every queued request has had
``min(its queued tiles, n)`` taken: ``R = ceil((sum_j min(q_j, n) + n) / max_batch)`` runs of its lane. The
rotation over lanes gives every other lane with work one run per run of ours: ``min(R, its runs)`` runs each.
Plus what is left of the run on the device now.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from inference.batch_types import BacklogError, DeadlineUnreachableError

ALPHA = 0.2  # weight of the newest run: ~the last 10 runs count
# The estimate covers engine time only; decode, bicubic and encode run on the CPU pool around it (seconds
# for a multi-megapixel output on a small CPU). A request is admitted only if its engine work fits this
# share of its remaining time (the soak measured 15 x 504 of 5,000 without it).
HEADROOM = 0.8
# Below this (full tiles^2: a spread of 0.1 full tile) the sizes seen are too alike to fit a slope. Tiles fit
# each image, so on a CPU lane (one tile per run) every size lies in (0, 1]: a threshold in whole tiles
# (0.25) would never be reached there, and the lane would never refuse anything.
_MIN_SIZE_VARIANCE = 0.01


class RunCost:
    """EWMA least-squares fit of one lane's engine seconds per run: ``seconds(k) ~ a + b * k``."""

    def __init__(self, alpha: float = ALPHA) -> None:
        self.alpha, self.runs = alpha, 0
        self._k = self._s = self._kk = self._ks = 0.0  # weighted means of k, s, k^2, k*s

    def observe(self, tiles: int, seconds: float) -> None:
        """One run of ``tiles`` tiles took ``seconds``."""
        k, s = float(tiles), float(seconds)
        w = 1.0 if self.runs == 0 else self.alpha
        self._k += w * (k - self._k)
        self._s += w * (s - self._s)
        self._kk += w * (k * k - self._kk)
        self._ks += w * (k * s - self._ks)
        self.runs += 1

    def coefficients(self) -> tuple[float, float] | None:
        """``(a, b)``: seconds per run and per (full) tile; None before a run of about a full tile was seen.

        When the sizes seen are too alike to fit a slope, the cost is taken as proportional to the tiles,
        but only if those runs were at least half a tile: the time of runs of a few pixels is mostly fixed
        per-run overhead, and scaling it up to a full tile would refuse everything (nothing is refused on
        a guess)."""
        if self.runs == 0 or self._k <= 0:
            return None
        var = self._kk - self._k * self._k
        if var < _MIN_SIZE_VARIANCE:
            return (0.0, self._s / self._k) if self._k >= 0.5 else None
        slope = max(0.0, (self._ks - self._k * self._s) / var)
        return max(0.0, self._s - slope * self._k), slope

    def seconds(self, tiles: float) -> float | None:
        """Expected seconds of a run of ``tiles`` tiles; None while :meth:`coefficients` is."""
        return self.work_seconds(1, tiles)

    def work_seconds(self, runs: int, tiles: float) -> float | None:
        """Expected seconds of ``runs`` runs carrying ``tiles`` tiles in all (None as :meth:`seconds`)."""
        coef = self.coefficients()
        return None if coef is None else runs * coef[0] + coef[1] * tiles


@dataclass(frozen=True)
class LaneLoad:
    """One lane as the estimate sees it: its batch bound, queued tiles per request, and its cost model."""

    max_batch: int
    queued_per_request: tuple[int, ...]
    cost: RunCost
    time_left_s: tuple[float, ...] = ()  # seconds to each queued request's deadline (same order)


@dataclass(frozen=True)
class Estimate:
    """Seconds until a new request would finish (``total_s``) and what it needs alone (``alone_s``)."""

    total_s: float
    alone_s: float


def finish_estimate(
    lane: str, n_tiles: int, lanes: Mapping[str, LaneLoad], busy_left_s: float
) -> Estimate | None:
    """When a request of ``n_tiles`` tiles on ``lane`` would finish if admitted now (see the module doc);
    None while ``lane`` has no measured run yet (nothing is refused on a guess)."""
    own = lanes[lane]
    alone_s = own.cost.work_seconds(math.ceil(n_tiles / own.max_batch), n_tiles)
    if alone_s is None:
        return None
    ahead = sum(min(q, n_tiles) for q in own.queued_per_request)
    runs = math.ceil((ahead + n_tiles) / own.max_batch)
    total = busy_left_s + max(alone_s, own.cost.work_seconds(runs, ahead + n_tiles) or 0.0)
    for name, other in lanes.items():
        queued = sum(other.queued_per_request)
        if name == lane or not queued:
            continue
        other_runs = min(runs, math.ceil(queued / other.max_batch))
        total += other.cost.work_seconds(other_runs, min(queued, other_runs * other.max_batch)) or 0.0
    return Estimate(total, alone_s)


def deadline_refusal(
    lane: str,
    n_tiles: int,
    lanes: Mapping[str, LaneLoad],
    busy_left_s: float,
    remaining_s: float,
    budget_s: float,
) -> DeadlineUnreachableError | BacklogError | None:
    """Why a request of ``n_tiles`` tiles on ``lane`` with ``remaining_s`` left of its ``budget_s`` deadline
    must be refused now, or None to admit it: :class:`DeadlineUnreachableError` when it alone needs more
    than the whole budget, :class:`BacklogError` when the work ahead is the reason (its Retry-After is
    when the work ahead should have drained enough for a fresh deadline)."""
    est = finish_estimate(lane, n_tiles, lanes, busy_left_s)
    if est is None or (
        est.total_s <= remaining_s * HEADROOM and not _pushes_past_deadline(lanes[lane], n_tiles, busy_left_s)
    ):
        return None
    if est.alone_s > budget_s * HEADROOM:
        return DeadlineUnreachableError(n_tiles, est.alone_s, budget_s)
    return BacklogError(n_tiles, est.total_s, remaining_s, max(1, math.ceil(est.total_s - budget_s)))


def _pushes_past_deadline(own: LaneLoad, n_tiles: int, busy_left_s: float) -> bool:
    """Whether admitting ``n_tiles`` more tiles would make a queued request of this lane, which would
    finish in time without them, miss its deadline: round-robin gives the newcomer a tile in each of the
    queued requests' turns, so admitting it delays every one of them (by up to ``n_tiles`` tiles)."""
    cost, mb = own.cost, own.max_batch
    if cost.coefficients() is None or not own.time_left_s:
        return False
    queued = own.queued_per_request
    for q_j, left in zip(queued, own.time_left_s, strict=True):
        before = sum(min(q, q_j) for q in queued)
        after = before + min(n_tiles, q_j)
        without = busy_left_s + (cost.work_seconds(math.ceil(before / mb), before) or 0.0)
        with_new = busy_left_s + (cost.work_seconds(math.ceil(after / mb), after) or 0.0)
        if without <= left < with_new:
            return True
    return False
