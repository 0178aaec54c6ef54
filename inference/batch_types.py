"""What :class:`inference.batcher.TileBatcher` takes and hands its callers (import them from here): the
:class:`Lane` of each model it serves, the per-request errors :meth:`~inference.batcher.TileBatcher.submit`
raises (mapped to HTTP by :func:`service.errors.from_batcher_error`), the :class:`BatchResult` it returns,
and the :class:`BatcherObserver` metrics hooks (each names the lane, i.e. the model, it is about)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Lane:
    """One model's queue on the device: its engine call, tile side and batch bound."""

    run: Callable[[np.ndarray], np.ndarray]  # float32[N, 1, th, tw] -> same shape
    tile: int  # T: a tile submitted to this lane has at most T**2 pixels (a run stacks one shape only)
    max_batch: int  # at most this many tiles per engine run

    def __post_init__(self) -> None:
        if self.tile < 1 or self.max_batch < 1:
            raise ValueError(f"a lane needs tile >= 1 and max_batch >= 1, got {self.tile}, {self.max_batch}")

    def check_tiles(self, groups: Sequence[np.ndarray], model: str) -> None:
        """Raise ValueError unless each group is a writeable, C-contiguous ``float32[N >= 1, 1, th, tw]``
        with ``th * tw <= T**2``, the same ``th * tw`` in every group: what this lane can run, with its
        outputs written over its inputs (``groups`` is non-empty: :class:`inference.lane_queue.TileSet`)."""
        for tiles in groups:
            self._check_group(tiles, model)
        if len({g.shape[2] * g.shape[3] for g in groups}) != 1:
            raise ValueError(f"tile groups {[g.shape[2:] for g in groups]} differ in pixels per tile")

    def _check_group(self, tiles: np.ndarray, model: str) -> None:
        if tiles.ndim != 4 or tiles.shape[0] < 1 or tiles.shape[1] != 1 or tiles.dtype != np.float32:
            raise ValueError(f"tiles must be float32[N>=1, 1, th, tw], got {tiles.dtype}{tiles.shape}")
        if not (tiles.flags.writeable and tiles.flags.c_contiguous):
            # Outputs are written over the tiles: a read-only or self-overlapping array (broadcast_to,
            # as_strided, frombuffer) would fail or corrupt later in the worker, for every request.
            raise ValueError("tiles must be a writeable, C-contiguous array (outputs are written in place)")
        if tiles.shape[2] * tiles.shape[3] > self.tile * self.tile:
            raise ValueError(
                f"tiles are {tiles.shape[2:]}; model {model!r} runs at most {self.tile}**2 pixels"
            )


class BatcherError(Exception):
    """Base of the errors :meth:`TileBatcher.submit` raises for one request."""


class QueueFullError(BatcherError):
    """Accepting the request would exceed its lane's ``max_queue_tiles``; retry after ``retry_after_s``."""

    def __init__(self, n_tiles: int, queued: int, max_queue_tiles: int, retry_after_s: float) -> None:
        super().__init__(f"queue full: {queued} tiles queued + {n_tiles} > max_queue_tiles={max_queue_tiles}")
        self.n_tiles, self.queued, self.max_queue_tiles = n_tiles, queued, max_queue_tiles
        self.retry_after_s = retry_after_s


class RequestTooLargeError(BatcherError):
    """The request alone has more tiles than ``max_queue_tiles`` (per lane): it can never be accepted."""

    def __init__(self, n_tiles: int, max_queue_tiles: int) -> None:
        super().__init__(f"request needs {n_tiles} tiles > max_queue_tiles={max_queue_tiles}")
        self.n_tiles, self.max_queue_tiles = n_tiles, max_queue_tiles


class DeadlineUnreachableError(BatcherError):
    """At the measured engine speed the request alone needs more than the whole deadline: it never fits."""

    def __init__(self, n_tiles: int, alone_s: float, budget_s: float) -> None:
        super().__init__(
            f"{n_tiles} tiles need about {alone_s:.1f}s of engine time at the measured speed, more than "
            f"the {budget_s:g}s deadline"
        )
        self.n_tiles, self.alone_s, self.budget_s = n_tiles, alone_s, budget_s


class BacklogError(BatcherError):
    """The queue ahead would make the request miss its deadline now; ``retry_after_s`` is when enough of the
    queue should have drained for it to fit a fresh deadline."""

    def __init__(self, n_tiles: int, estimate_s: float, remaining_s: float, retry_after_s: int) -> None:
        super().__init__(
            f"{n_tiles} tiles behind the queue would finish in about {estimate_s:.1f}s, after the request's "
            f"deadline ({remaining_s:.1f}s left)"
        )
        self.n_tiles, self.estimate_s, self.remaining_s = n_tiles, estimate_s, remaining_s
        self.retry_after_s = retry_after_s


class EngineStalledError(BatcherError):
    """The watchdog saw one engine call run past ``engine_stall_s``: the process should be replaced."""


class DeadlineExceededError(BatcherError):
    """The request's deadline passed before all its tiles ran; its pending tiles were dropped."""


class ShuttingDownError(BatcherError):
    """The batcher is stopping (or stopped) and accepts no new work."""


class EngineError(BatcherError):
    """The engine raised while running a batch holding this request's tiles (message = original error)."""

    def __init__(self, message: str, request_id: str) -> None:
        super().__init__(message)
        self.request_id = request_id


class BatcherObserver:
    """Metrics hooks; subclass and override what you need (no-op defaults). Called on the event loop.
    ``model`` is the name of the lane the event is about."""

    def on_batch(self, model: str, size: int, requests: int, seconds: float) -> None:
        """One engine run of ``size`` tiles from ``requests`` distinct requests took ``seconds``."""

    def on_queue_depth(self, model: str, tiles: int) -> None:
        """The number of queued (not yet running) tiles of lane ``model`` changed to ``tiles``."""

    def on_queued_work(self, model: str, seconds: float) -> None:
        """The estimated engine seconds of lane ``model``'s queued tiles changed to ``seconds`` (tiles fit
        each image, so their count is not the work; called once the lane's speed was measured)."""

    def on_reject(self, model: str, reason: str) -> None:
        """A request was refused or abandoned: queue_full, too_large, too_slow (its deadline is out of
        reach), backlog (the queue ahead would make it miss its deadline), deadline, shutting_down,
        cancelled."""

    def on_deadline_work(self, model: str, seconds: float) -> None:
        """``seconds`` of engine time went to tiles of a request that then ended past its deadline."""

    def on_engine_stall(self, model: str, seconds: float) -> None:
        """An engine call of lane ``model`` has been running for ``seconds`` (> the stall bound)."""

    def on_first_dispatch(self, model: str, queue_wait_s: float) -> None:
        """A request's first tile was taken into a batch ``queue_wait_s`` after it was submitted (once per
        request, whether it later succeeds or not)."""

    def on_engine_error(self, model: str, exc: BaseException) -> None:
        """An engine run raised (its requests fail with :class:`EngineError`)."""

    def on_worker_crash(self, exc: BaseException) -> None:
        """The worker task died; the batcher accepts nothing more and failed every pending request."""


@dataclass
class BatchResult:
    """Outputs in submission order (the array submitted, or its tuple of groups, overwritten), plus where
    the request's time went."""

    outputs: np.ndarray | tuple[np.ndarray, ...]
    queue_wait_s: float  # submit -> first of its tiles started running
    infer_s: float  # sum of engine time of the runs that held its tiles
    engine_runs: int
    engine_s: float = 0.0  # its share of those runs (seconds x its tiles / run size)
