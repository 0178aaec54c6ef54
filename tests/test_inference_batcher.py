"""TileBatcher with fake engines: routing, cross-request batching (response ratio or oldest), limits,
deadlines, cancellation, errors, worker death (one lane, "m"), then several models on one device: the
rotation over ready lanes, no starvation behind a backlog, per-lane limits, errors and observer hooks.

Ordering is made deterministic with a gated engine: its first run blocks (in the batcher's executor thread)
until the test releases it, so everything submitted meanwhile is queued when the next batches form. The
tests assert orders and counts, never durations.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable

import numpy as np
import pytest

from engines.repository import UnknownModelError
from inference.batch_types import (
    BatcherObserver,
    DeadlineExceededError,
    EngineError,
    Lane,
    QueueFullError,
    RequestTooLargeError,
    ShuttingDownError,
)
from inference.batcher import TileBatcher
from tests.conftest import until

T = 4  # tile side: small, the fake engine does no real work


def tiles(request: int, n: int, side: int = T) -> np.ndarray:
    """``float32[n, 1, side, side]``; tile i of request r is filled with ``100 r + i``, so outputs are
    traceable."""
    return np.stack([np.full((1, side, side), 100 * request + i, np.float32) for i in range(n)])


def ids(batch: np.ndarray) -> list[int]:
    return [int(x) for x in batch[:, 0, 0, 0]]


class FakeEngine:
    """``x -> x + 1``; records every batch (and ``(name, size)`` in a ``log`` shared by several engines, in
    call order); optionally blocks its first run; refuses negative tiles."""

    def __init__(
        self, gated: bool = False, name: str = "m", log: list[tuple[str, int]] | None = None
    ) -> None:
        self.calls: list[np.ndarray] = []
        self.gate, self.entered, self.gated = threading.Event(), threading.Event(), gated
        self.name, self.log = name, log if log is not None else []

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.calls.append(x.copy())
        self.log.append((self.name, len(x)))
        self.entered.set()
        if self.gated and len(self.calls) == 1:
            assert self.gate.wait(30), "test never released the gate"
        if (x < 0).any():
            raise RuntimeError("poisoned tile")
        return x + 1

    def seen(self) -> list[int]:
        return [i for c in self.calls for i in ids(c)]


class Recorder(BatcherObserver):
    """Every hook call, with the lane (model) it names."""

    def __init__(self) -> None:
        self.batches: list[tuple[str, int, int]] = []
        self.depths: list[tuple[str, int]] = []
        self.rejects: list[tuple[str, str]] = []
        self.waits: list[tuple[str, float]] = []
        self.engine_errors: list[str] = []
        self.crashes: list[BaseException] = []

    def on_batch(self, model: str, size: int, requests: int, seconds: float) -> None:
        self.batches.append((model, size, requests))

    def on_queue_depth(self, model: str, tiles: int) -> None:
        self.depths.append((model, tiles))

    def on_reject(self, model: str, reason: str) -> None:
        self.rejects.append((model, reason))

    def on_first_dispatch(self, model: str, queue_wait_s: float) -> None:
        self.waits.append((model, queue_wait_s))

    def on_engine_error(self, model: str, exc: BaseException) -> None:
        self.engine_errors.append(model)

    def on_worker_crash(self, exc: BaseException) -> None:
        self.crashes.append(exc)


def run_lanes(
    lanes: dict[str, Lane],
    body: Callable[[TileBatcher, Recorder], Awaitable[None]],
    rec: Recorder | None = None,
    **kw: float,
) -> Recorder:
    """Run ``body`` against a started batcher; always releases the engines' gates and stops the batcher."""
    rec = rec or Recorder()

    async def main() -> None:
        b = TileBatcher(
            lanes,
            max_delay_ms=kw.get("max_delay_ms", 1.0),
            max_queue_tiles=int(kw.get("max_queue_tiles", 64)),
            observer=rec,
            retry_after_s=kw.get("retry_after_s", 3),
        )
        b.start()
        try:
            await body(b, rec)
        finally:
            for lane in lanes.values():
                if isinstance(lane.run, FakeEngine):
                    lane.run.gate.set()
            await b.stop(grace_s=5)

    asyncio.run(main())
    return rec


def run_with(
    engine: FakeEngine,
    body: Callable[[TileBatcher, Recorder], Awaitable[None]],
    rec: Recorder | None = None,
    **kw: float,
) -> Recorder:
    """:func:`run_lanes` with one lane, "m": ``engine`` on TxT tiles, ``max_batch`` (default 4)."""
    return run_lanes({"m": Lane(engine, T, int(kw.pop("max_batch", 4)))}, body, rec, **kw)


def far() -> float:
    return asyncio.get_running_loop().time() + 60


async def block_engine(b: TileBatcher, engine: FakeEngine) -> asyncio.Task:
    """Submit request 0 (one tile) and wait until the engine is stuck running it."""
    task = asyncio.create_task(b.submit("m", tiles(0, 1), far(), "r0"))
    await asyncio.to_thread(engine.entered.wait, 30)
    return task


def test_outputs_overwrite_the_submitted_tiles_in_place() -> None:
    """One buffer per request: outputs land in the submitted array, each after the run that read it."""
    engine = FakeEngine()

    async def body(b: TileBatcher, rec: Recorder) -> None:
        x, y = tiles(1, 7), tiles(2, 3)
        rx, ry = await asyncio.gather(b.submit("m", x, far(), "x"), b.submit("m", y, far(), "y"))
        assert rx.outputs is x and ry.outputs is y
        np.testing.assert_array_equal(
            x, tiles(1, 7) + 1
        )  # each input ran exactly once, before its slot was reused
        np.testing.assert_array_equal(y, tiles(2, 3) + 1)

    run_with(engine, body, max_batch=3)
    assert sorted(engine.seen()) == [*range(100, 107), *range(200, 203)]


def test_arrays_that_cannot_take_outputs_in_place_are_refused_up_front() -> None:
    engine = FakeEngine()

    async def body(b: TileBatcher, rec: Recorder) -> None:
        frozen = tiles(1, 2)
        frozen.flags.writeable = False
        overlapping = np.broadcast_to(tiles(2, 1), (3, 1, T, T))  # three tiles, one buffer
        for bad in (frozen, overlapping):
            with pytest.raises(ValueError, match="writeable"):
                await b.submit("m", bad, far(), "bad")
        assert b.running and (await b.submit("m", tiles(3, 1), far(), "ok")).outputs[0, 0, 0, 0] == 301

    run_with(engine, body)


def test_results_go_to_their_requests_and_batches_mix_requests() -> None:
    engine = FakeEngine(gated=True)

    async def body(b: TileBatcher, rec: Recorder) -> None:
        first = await block_engine(b, engine)
        sizes = {1: 3, 2: 2, 3: 3}  # 8 tiles queue up behind the blocked run
        subs = {r: asyncio.create_task(b.submit("m", tiles(r, n), far(), f"r{r}")) for r, n in sizes.items()}
        await until(lambda: b.queue_depth == 8)
        engine.gate.set()
        for r, task in subs.items():
            res = await task
            np.testing.assert_array_equal(res.outputs, tiles(r, sizes[r]) + 1)
            assert res.engine_runs >= 1 and res.infer_s >= 0 and res.queue_wait_s >= 0
        await first
        assert b.queue_depth == 0 and b.inflight == 0

    rec = run_with(engine, body, max_batch=4)
    # Batches start with the oldest request's tiles or, every other batch, with those of the request with
    # the least queued work, and fill up by least queued work (each request's tiles in order; arrival order
    # among equals); at most max_batch per run, tiles of several requests share a run.
    assert [ids(c) for c in engine.calls] == [[0], [100, 101, 102, 200], [201, 300, 301, 302]]
    assert rec.batches == [("m", 1, 1), ("m", 4, 2), ("m", 4, 2)]
    assert rec.depths[-1] == ("m", 0)
    assert len(rec.waits) == 4  # every request's first dispatch was observed once


def test_a_small_request_overtakes_a_large_one() -> None:
    engine = FakeEngine(gated=True)

    async def body(b: TileBatcher, rec: Recorder) -> None:
        first = await block_engine(b, engine)
        # queued within microseconds of each other: they have waited alike when the engine frees up
        big = asyncio.create_task(b.submit("m", tiles(1, 9), far(), "big"))
        small = asyncio.create_task(b.submit("m", tiles(2, 1), far(), "small"))
        await until(lambda: b.queue_depth == 10)
        engine.gate.set()
        assert (await small).engine_runs == 1
        np.testing.assert_array_equal((await big).outputs, tiles(1, 9) + 1)
        await first

    run_with(engine, body, max_batch=4)
    # Strict FIFO would have run the small request's tile after all nine of the big one's.
    # The oldest's turn first, then the highest response ratio's (waited alike: the least queued work):
    # the small request is in the second batch.
    assert [ids(c) for c in engine.calls] == [[0], [100, 101, 102, 103], [200, 104, 105, 106], [107, 108]]


def test_partial_batch_delay_counts_from_the_oldest_tiles_arrival() -> None:
    """A tile that queued while the engine was busy has waited already: once the engine frees up, its partial
    batch must go at once, not wait another max_delay. The loop's clock is skewed (the loop's timers use
    it too) so "an hour later" needs no real waiting; max_delay is 10 minutes, the guard below 30 s."""
    engine = FakeEngine(gated=True)

    async def body(b: TileBatcher, rec: Recorder) -> None:
        loop = asyncio.get_running_loop()
        real_time, skew = loop.time, [0.0]
        loop.time = lambda: real_time() + skew[0]  # type: ignore[method-assign]
        try:
            never = loop.time() + 10**6
            first = asyncio.create_task(
                b.submit("m", tiles(0, 2), never, "full")
            )  # a full batch: runs at once
            await asyncio.to_thread(engine.entered.wait, 30)
            late = asyncio.create_task(b.submit("m", tiles(1, 1), never, "partial"))
            await until(lambda: b.queue_depth == 1)
            skew[0] += 3600.0  # the partial batch's tile has now waited an hour > max_delay
            engine.gate.set()
            await first
            res = await asyncio.wait_for(late, 30)
            np.testing.assert_array_equal(res.outputs, tiles(1, 1) + 1)
        finally:
            del loop.time

    run_with(engine, body, max_batch=2, max_delay_ms=600_000)
    assert [ids(c) for c in engine.calls] == [[0, 1], [100]]


def test_partial_batch_is_flushed_after_max_delay() -> None:
    engine = FakeEngine()

    async def body(b: TileBatcher, rec: Recorder) -> None:
        res = await b.submit("m", tiles(1, 3), far(), "r1")
        np.testing.assert_array_equal(res.outputs, tiles(1, 3) + 1)
        assert res.engine_runs == 1

    rec = run_with(engine, body, max_batch=8, max_delay_ms=5)
    assert rec.batches == [("m", 3, 1)]


def test_large_request_spans_runs_of_max_batch() -> None:
    engine = FakeEngine()

    async def body(b: TileBatcher, rec: Recorder) -> None:
        res = await b.submit("m", tiles(1, 7), far(), "r1")
        np.testing.assert_array_equal(res.outputs, tiles(1, 7) + 1)
        assert res.engine_runs == 3

    run_with(engine, body, max_batch=3, max_delay_ms=0)
    assert [len(c) for c in engine.calls] == [3, 3, 1]


def test_engine_failure_fails_only_that_batch_and_the_worker_continues() -> None:
    engine = FakeEngine(gated=True)

    async def body(b: TileBatcher, rec: Recorder) -> None:
        first = await block_engine(b, engine)
        shares = asyncio.create_task(b.submit("m", tiles(1, 1), far(), "shares"))
        poisoned = tiles(2, 3)
        poisoned[0] = -1  # run 1: [100, -1] fails both requests in it; 201 and 202 are dropped, never run
        bad = asyncio.create_task(b.submit("m", poisoned, far(), "bad"))
        good = asyncio.create_task(b.submit("m", tiles(3, 4), far(), "good"))  # the most work: runs last
        await until(lambda: b.queue_depth == 8)
        engine.gate.set()
        with pytest.raises(EngineError, match="poisoned tile") as err:
            await bad
        assert err.value.request_id == "bad"
        with pytest.raises(EngineError, match="poisoned tile"):
            await shares  # its tile was in the failed run
        np.testing.assert_array_equal((await good).outputs, tiles(3, 4) + 1)
        await first
        after = await b.submit("m", tiles(4, 1), far(), "after")  # still serving
        np.testing.assert_array_equal(after.outputs, tiles(4, 1) + 1)

    rec = run_with(engine, body, max_batch=2)
    assert 201 not in engine.seen() and 202 not in engine.seen()
    assert [ids(c) for c in engine.calls] == [[0], [100, -1], [300, 301], [302, 303], [400]]
    assert rec.engine_errors == ["m"]


def test_dead_worker_fails_every_pending_request_at_once() -> None:
    """A bug in the worker loop (here: an observer that raises) must not leave requests to their deadlines."""

    class BuggyObserver(Recorder):
        def on_batch(self, model: str, size: int, requests: int, seconds: float) -> None:
            raise RuntimeError("observer bug")

    engine = FakeEngine(gated=True)

    async def body(b: TileBatcher, rec: Recorder) -> None:
        first = await block_engine(b, engine)
        queued = asyncio.create_task(b.submit("m", tiles(1, 2), far(), "queued"))
        await until(lambda: b.queue_depth == 2)
        engine.gate.set()
        for task in (first, queued):
            with pytest.raises(EngineError, match="worker crashed"):
                await task
        assert b.failure is not None and not b.running
        assert b.inflight == 0 and b.queue_depth == 0
        with pytest.raises(ShuttingDownError):
            await b.submit("m", tiles(2, 1), far(), "after")

    rec = run_with(engine, body, BuggyObserver())
    assert [str(e) for e in rec.crashes] == ["observer bug"]
    assert engine.seen() == [0]


def test_deadline_drops_pending_tiles() -> None:
    engine = FakeEngine(gated=True)

    async def body(b: TileBatcher, rec: Recorder) -> None:
        first = await block_engine(b, engine)
        soon = asyncio.get_running_loop().time() + 0.5
        with pytest.raises(DeadlineExceededError):
            await b.submit("m", tiles(1, 2), soon, "late")  # expires while the engine is stuck
        assert b.queue_depth == 0 and b.inflight == 1
        engine.gate.set()
        await first
        with pytest.raises(DeadlineExceededError):  # already past: refused at once
            await b.submit("m", tiles(2, 1), asyncio.get_running_loop().time() - 1, "past")

    rec = run_with(engine, body)
    assert engine.seen() == [0]
    assert rec.rejects == [("m", "deadline"), ("m", "deadline")]


def test_queue_wait_is_observed_at_first_dispatch_even_if_the_request_then_times_out() -> None:
    engine = FakeEngine(gated=True)

    async def body(b: TileBatcher, rec: Recorder) -> None:
        soon = asyncio.get_running_loop().time() + 0.5
        slow = asyncio.create_task(
            b.submit("m", tiles(1, 2), soon, "slow")
        )  # its first tile blocks the engine
        # more work than "slow": it would go after it even if it were queued first
        never_ran = asyncio.create_task(b.submit("m", tiles(2, 3), soon, "never ran"))
        for task in (slow, never_ran):
            with pytest.raises(DeadlineExceededError):
                await task
        assert (
            len(rec.waits) == 1 and rec.waits[0][0] == "m" and rec.waits[0][1] >= 0
        )  # "slow" was dispatched; "never ran" was not

    rec = run_with(engine, body, max_batch=1)
    assert engine.seen() == [100]
    assert rec.rejects == [("m", "deadline"), ("m", "deadline")]


def test_cancelling_at_the_deadline_counts_as_a_deadline() -> None:
    """The service wraps submit in asyncio.timeout_at(deadline): that cancellation is a deadline, once."""
    engine = FakeEngine(gated=True)

    async def body(b: TileBatcher, rec: Recorder) -> None:
        first = await block_engine(b, engine)
        deadline = asyncio.get_running_loop().time() + 0.5
        with pytest.raises(TimeoutError):
            async with asyncio.timeout_at(deadline):
                await b.submit("m", tiles(1, 2), deadline, "late")
        assert b.queue_depth == 0
        engine.gate.set()
        await first

    rec = run_with(engine, body)
    assert rec.rejects == [("m", "deadline")]


def test_backpressure_is_counted_in_tiles() -> None:
    engine = FakeEngine(gated=True)

    async def body(b: TileBatcher, rec: Recorder) -> None:
        first = await block_engine(b, engine)  # its tile left the queue: depth 0
        queued = asyncio.create_task(b.submit("m", tiles(1, 3), far(), "fits"))
        await until(lambda: b.queue_depth == 3)
        b.check_capacity("m", 1)  # what the service asks before preparing a request's tiles
        with pytest.raises(QueueFullError):
            b.check_capacity("m", 2)
        with pytest.raises(QueueFullError) as full:
            await b.submit("m", tiles(2, 2), far(), "full")
        assert full.value.retry_after_s == 3 and full.value.max_queue_tiles == 4
        with pytest.raises(RequestTooLargeError) as big:
            await b.submit("m", tiles(3, 5), far(), "never fits")
        assert big.value.n_tiles == 5 and big.value.max_queue_tiles == 4
        fits = asyncio.create_task(b.submit("m", tiles(4, 1), far(), "exactly fits"))  # 3 + 1 == bound
        await until(lambda: b.queue_depth == 4)
        engine.gate.set()
        np.testing.assert_array_equal((await fits).outputs, tiles(4, 1) + 1)
        await queued
        await first

    rec = run_with(engine, body, max_queue_tiles=4, retry_after_s=3)
    assert rec.rejects == [("m", "queue_full"), ("m", "queue_full"), ("m", "too_large")]
    assert 200 not in engine.seen() and 300 not in engine.seen()


def test_cancelled_request_never_reaches_the_engine() -> None:
    engine = FakeEngine(gated=True)

    async def body(b: TileBatcher, rec: Recorder) -> None:
        first = await block_engine(b, engine)
        gone = asyncio.create_task(b.submit("m", tiles(1, 3), far(), "gone"))
        stays = asyncio.create_task(b.submit("m", tiles(2, 1), far(), "stays"))
        await until(lambda: b.queue_depth == 4)
        gone.cancel()  # what a client disconnect does to the awaiting route
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert b.queue_depth == 1 and b.inflight == 2
        engine.gate.set()
        np.testing.assert_array_equal((await stays).outputs, tiles(2, 1) + 1)
        await first
        assert b.queue_depth == 0 and b.inflight == 0

    rec = run_with(engine, body)
    assert engine.seen() == [0, 200]
    assert ("m", "cancelled") in rec.rejects
    assert rec.depths[-1] == ("m", 0)


def test_stop_drains_accepted_work_and_refuses_new() -> None:
    engine = FakeEngine(gated=True)

    async def body(b: TileBatcher, rec: Recorder) -> None:
        first = await block_engine(b, engine)
        accepted = asyncio.create_task(b.submit("m", tiles(1, 2), far(), "accepted"))
        await until(lambda: b.queue_depth == 2)
        stopping = asyncio.create_task(b.stop(grace_s=30))
        await until(lambda: not b.running)
        with pytest.raises(ShuttingDownError):
            await b.submit("m", tiles(2, 1), far(), "late")
        engine.gate.set()
        np.testing.assert_array_equal((await accepted).outputs, tiles(1, 2) + 1)
        await first
        await stopping

    run_with(engine, body)
    assert engine.seen() == [0, 100, 101]


def test_stop_fails_what_the_grace_period_did_not_finish() -> None:
    engine = FakeEngine(gated=True)

    async def body(b: TileBatcher, rec: Recorder) -> None:
        first = await block_engine(b, engine)
        queued = asyncio.create_task(b.submit("m", tiles(1, 1), far(), "queued"))
        await until(lambda: b.queue_depth == 1)
        await b.stop(grace_s=0.01)  # the engine is still stuck: nothing can finish
        for task in (first, queued):
            with pytest.raises(ShuttingDownError):
                await task
        assert b.inflight == 0

    run_with(engine, body)
    assert 100 not in engine.seen()


def test_bad_tiles_are_refused() -> None:
    async def body(b: TileBatcher, rec: Recorder) -> None:
        with pytest.raises(ValueError, match="float32"):
            await b.submit("m", tiles(1, 1).astype(np.float64), far(), "f64")
        with pytest.raises(ValueError, match=r"at most 4\*\*2 pixels"):
            await b.submit("m", np.zeros((1, 1, 5, 4), np.float32), far(), "too big a tile")
        with pytest.raises(ValueError):
            await b.submit("m", np.zeros((0, 1, T, T), np.float32), far(), "empty")

    run_with(FakeEngine(), body)


def test_submit_before_start_is_refused() -> None:
    async def main() -> None:
        b = TileBatcher({"m": Lane(FakeEngine(), T, max_batch=2)})
        with pytest.raises(ShuttingDownError):
            await b.submit("m", tiles(1, 1), far(), "early")

    asyncio.run(main())


# --- several models on one device ---------------------------------------------------------------------
TQ, TF = 4, 6  # the quality and fast lanes' tile sides: a batch mixing lanes could not even stack


def two_lanes(
    gated: str = "", q_batch: int = 4, f_batch: int = 4
) -> tuple[dict[str, Lane], list[tuple[str, int]]]:
    """Lanes "quality" and "fast" (in that order) with fake engines sharing one call log; ``gated`` names
    the lane whose engine blocks its first run."""
    log: list[tuple[str, int]] = []
    lanes = {
        "quality": Lane(FakeEngine(gated == "quality", "quality", log), TQ, q_batch),
        "fast": Lane(FakeEngine(gated == "fast", "fast", log), TF, f_batch),
    }
    return lanes, log


def engine(lanes: dict[str, Lane], name: str) -> FakeEngine:
    run = lanes[name].run
    assert isinstance(run, FakeEngine)
    return run


def test_fast_request_waits_for_at_most_one_quality_batch_behind_a_500_tile_backlog() -> None:
    lanes, log = two_lanes(gated="quality")
    quality = engine(lanes, "quality")

    async def body(b: TileBatcher, rec: Recorder) -> None:
        backlog = asyncio.create_task(b.submit("quality", tiles(1, 504, TQ), far(), "backlog"))
        await asyncio.to_thread(quality.entered.wait, 30)  # the first quality batch (4 tiles) is running
        await until(lambda: b.queued("quality") == 500)
        calls_at_submit = len(log)
        fast = asyncio.create_task(b.submit("fast", tiles(2, 3, TF), far(), "fast"))
        await until(lambda: b.queued("fast") == 3)
        quality.gate.set()
        res = await fast
        np.testing.assert_array_equal(res.outputs, tiles(2, 3, TF) + 1)
        assert res.engine_runs == 1 and not backlog.done()
        # The worker finishes a run's requests before it starts the next run, so the fast future was
        # resolved right after its own engine call: count the quality runs between its submit and that call.
        fast_call = log.index(("fast", 3))
        quality_runs_before = [c for c in log[calls_at_submit - 1 : fast_call] if c[0] == "quality"]
        assert len(quality_runs_before) <= 1  # the one running when it arrived (or the next one), never two
        assert log[:2] == [("quality", 4), ("fast", 3)]  # here: right after the running one
        np.testing.assert_array_equal((await backlog).outputs, tiles(1, 504, TQ) + 1)

    run_lanes(lanes, body, max_queue_tiles=1024, max_delay_ms=0)
    assert log[2:] == [("quality", 4)] * 125


def test_saturated_lanes_alternate_one_batch_per_turn() -> None:
    lanes, log = two_lanes(gated="quality")

    async def body(b: TileBatcher, rec: Recorder) -> None:
        q = asyncio.create_task(b.submit("quality", tiles(1, 16, TQ), far(), "q"))
        await asyncio.to_thread(engine(lanes, "quality").entered.wait, 30)
        f = asyncio.create_task(b.submit("fast", tiles(2, 12, TF), far(), "f"))
        await until(lambda: b.queued("quality") == 12 and b.queued("fast") == 12)
        engine(lanes, "quality").gate.set()
        np.testing.assert_array_equal((await q).outputs, tiles(1, 16, TQ) + 1)
        np.testing.assert_array_equal((await f).outputs, tiles(2, 12, TF) + 1)

    rec = run_lanes(lanes, body, max_delay_ms=0)
    assert [name for name, _ in log] == ["quality", "fast"] * 3 + ["quality"]
    assert [(m, size) for m, size, _ in rec.batches] == log


def test_batches_never_mix_lanes() -> None:
    lanes, _ = two_lanes(gated="quality", q_batch=4, f_batch=3)

    async def body(b: TileBatcher, rec: Recorder) -> None:
        blocker = asyncio.create_task(b.submit("quality", tiles(0, 1, TQ), far(), "blocker"))
        await asyncio.to_thread(engine(lanes, "quality").entered.wait, 30)
        plan = [("quality", 1, 3, TQ), ("fast", 2, 2, TF), ("quality", 3, 2, TQ), ("fast", 4, 3, TF)]
        subs = [
            (asyncio.create_task(b.submit(m, tiles(r, n, side), far(), f"r{r}")), r, n, side)
            for m, r, n, side in plan
        ]
        await until(lambda: b.queue_depth == 10)
        engine(lanes, "quality").gate.set()
        for task, r, n, side in subs:
            np.testing.assert_array_equal((await task).outputs, tiles(r, n, side) + 1)
        await blocker

    run_lanes(lanes, body, max_delay_ms=0)
    for name, side, requests in (("quality", TQ, {0, 1, 3}), ("fast", TF, {2, 4})):
        for call in engine(lanes, name).calls:
            assert call.shape[1:] == (1, side, side)
            assert {i // 100 for i in ids(call)} <= requests
    assert sorted(engine(lanes, "quality").seen()) == [0, 100, 101, 102, 300, 301]
    assert sorted(engine(lanes, "fast").seen()) == [200, 201, 400, 401, 402]


def test_queue_limit_is_per_lane() -> None:
    lanes, _ = two_lanes(gated="quality")

    async def body(b: TileBatcher, rec: Recorder) -> None:
        blocker = asyncio.create_task(b.submit("quality", tiles(0, 1, TQ), far(), "blocker"))
        await asyncio.to_thread(engine(lanes, "quality").entered.wait, 30)
        backlog = asyncio.create_task(b.submit("quality", tiles(1, 4, TQ), far(), "backlog"))
        await until(lambda: b.queued("quality") == 4)
        with pytest.raises(QueueFullError) as full:
            b.check_capacity("quality", 1)
        assert full.value.queued == 4 and full.value.max_queue_tiles == 4
        b.check_capacity("fast", 4)  # the quality backlog does not count against the fast lane
        fast = asyncio.create_task(b.submit("fast", tiles(2, 4, TF), far(), "fast"))
        await until(lambda: b.queued("fast") == 4)
        assert b.queue_depth == 8 and b.queued("quality") == 4
        with pytest.raises(QueueFullError):
            await b.submit("fast", tiles(3, 1, TF), far(), "fast, full")
        with pytest.raises(RequestTooLargeError):
            b.check_capacity("fast", 5)
        engine(lanes, "quality").gate.set()
        for task in (blocker, backlog, fast):
            await task

    rec = run_lanes(lanes, body, max_queue_tiles=4, max_delay_ms=0)
    assert rec.rejects == [("quality", "queue_full"), ("fast", "queue_full"), ("fast", "too_large")]


def test_unknown_model_is_refused_with_the_lane_names() -> None:
    lanes, log = two_lanes()

    async def body(b: TileBatcher, rec: Recorder) -> None:
        assert b.models == ("quality", "fast")
        with pytest.raises(UnknownModelError, match=r"'huge'.*quality, fast") as err:
            await b.submit("huge", tiles(1, 1, TQ), far(), "r1")
        assert err.value.valid == ["quality", "fast"]
        with pytest.raises(UnknownModelError, match="quality, fast"):
            b.check_capacity("huge", 1)
        with pytest.raises(UnknownModelError):
            b.queued("huge")
        with pytest.raises(ValueError, match=r"at most 4\*\*2"):  # a fast tile too big for the quality lane
            await b.submit("quality", tiles(1, 1, TF), far(), "too big")
        assert b.inflight == 0

    rec = run_lanes(lanes, body)
    assert log == [] and rec.rejects == []


def test_ready_lane_runs_while_another_lanes_partial_batch_waits() -> None:
    """max_delay is 10 minutes: the worker must not sit waiting for lane quality's partial batch to fill
    while lane fast has a full batch; the partial one goes once it is full (no waiting on the clock)."""
    lanes, log = two_lanes()

    async def body(b: TileBatcher, rec: Recorder) -> None:
        partial = asyncio.create_task(b.submit("quality", tiles(1, 1, TQ), far(), "partial"))
        await until(lambda: b.queued("quality") == 1)
        res = await asyncio.wait_for(b.submit("fast", tiles(2, 4, TF), far(), "full"), 30)
        np.testing.assert_array_equal(res.outputs, tiles(2, 4, TF) + 1)
        assert not partial.done() and b.queued("quality") == 1 and log == [("fast", 4)]
        rest = await asyncio.wait_for(b.submit("quality", tiles(3, 3, TQ), far(), "fills it"), 30)
        np.testing.assert_array_equal(rest.outputs, tiles(3, 3, TQ) + 1)
        np.testing.assert_array_equal((await partial).outputs, tiles(1, 1, TQ) + 1)

    run_lanes(lanes, body, max_delay_ms=600_000)
    assert log == [("fast", 4), ("quality", 4)]


def test_partial_batches_of_several_lanes_go_when_their_delay_passes() -> None:
    """Nothing is full and nothing new arrives: the worker wakes at the earliest lane readiness on its own.
    The loop's clock is skewed (its timers use it too), so the 10-minute delay needs no real waiting."""
    lanes, log = two_lanes()

    async def body(b: TileBatcher, rec: Recorder) -> None:
        loop = asyncio.get_running_loop()
        real_time, skew = loop.time, [0.0]
        loop.time = lambda: real_time() + skew[0]  # type: ignore[method-assign]
        try:
            never = loop.time() + 10**6
            q = asyncio.create_task(b.submit("quality", tiles(1, 2, TQ), never, "q"))
            f = asyncio.create_task(b.submit("fast", tiles(2, 1, TF), never, "f"))
            await until(lambda: b.queue_depth == 3)
            await asyncio.sleep(0.05)  # the worker had its chance: both partial batches still wait
            assert log == [] and b.queue_depth == 3
            skew[0] += 3600.0
            for task, expected in ((q, tiles(1, 2, TQ)), (f, tiles(2, 1, TF))):
                np.testing.assert_array_equal((await asyncio.wait_for(task, 30)).outputs, expected + 1)
        finally:
            del loop.time

    run_lanes(lanes, body, max_delay_ms=600_000)
    assert sorted(log) == [("fast", 1), ("quality", 2)]


def test_cancellation_and_deadline_in_one_lane_leave_the_other_untouched() -> None:
    lanes, _ = two_lanes(gated="quality")

    async def body(b: TileBatcher, rec: Recorder) -> None:
        blocker = asyncio.create_task(b.submit("quality", tiles(0, 1, TQ), far(), "blocker"))
        await asyncio.to_thread(engine(lanes, "quality").entered.wait, 30)
        gone = asyncio.create_task(b.submit("quality", tiles(1, 3, TQ), far(), "gone"))
        soon = asyncio.get_running_loop().time() + 0.5
        late = asyncio.create_task(b.submit("quality", tiles(2, 2, TQ), soon, "late"))
        stays = asyncio.create_task(b.submit("fast", tiles(3, 2, TF), far(), "stays"))
        await until(lambda: b.queued("quality") == 5 and b.queued("fast") == 2)
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        with pytest.raises(DeadlineExceededError):
            await late  # expires while the quality engine is stuck
        assert b.queued("quality") == 0 and b.queued("fast") == 2 and b.inflight == 2
        engine(lanes, "quality").gate.set()
        np.testing.assert_array_equal((await stays).outputs, tiles(3, 2, TF) + 1)
        await blocker

    rec = run_lanes(lanes, body, max_delay_ms=0)
    assert engine(lanes, "quality").seen() == [0] and engine(lanes, "fast").seen() == [300, 301]
    assert rec.rejects == [("quality", "cancelled"), ("quality", "deadline")]
    assert ("quality", 0) in rec.depths and rec.depths[-1] == ("fast", 0)


def test_observer_hooks_name_the_lane() -> None:
    lanes, _ = two_lanes(gated="quality")

    async def body(b: TileBatcher, rec: Recorder) -> None:
        blocker = asyncio.create_task(b.submit("quality", tiles(0, 1, TQ), far(), "blocker"))
        await asyncio.to_thread(engine(lanes, "quality").entered.wait, 30)
        poisoned = tiles(1, 2, TF)
        poisoned[1] = -1
        bad = asyncio.create_task(b.submit("fast", poisoned, far(), "bad"))
        await until(lambda: b.queued("fast") == 2)
        with pytest.raises(RequestTooLargeError):
            b.check_capacity("quality", 100)
        engine(lanes, "quality").gate.set()
        with pytest.raises(EngineError, match="poisoned"):
            await bad
        await blocker

    rec = run_lanes(lanes, body, max_queue_tiles=8, max_delay_ms=0)
    assert rec.batches == [("quality", 1, 1)]
    assert rec.engine_errors == ["fast"]
    assert rec.rejects == [("quality", "too_large")]
    assert [m for m, _ in rec.waits] == ["quality", "fast"]
    assert rec.depths == [("quality", 1), ("quality", 0), ("fast", 2), ("fast", 0)]
