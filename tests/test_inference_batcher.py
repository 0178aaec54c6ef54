"""TileBatcher with fake engines, one lane ("m"): routing, cross-request batching (response ratio or
oldest), limits, deadlines, cancellation, errors, worker death, stop and drain. Several lanes on one
device are in ``test_inference_lanes.py``; the shared fakes in ``tests/batcher_harness.py``.

Ordering is made deterministic with a gated engine: its first run blocks (in the batcher's executor thread)
until the test releases it, so everything submitted meanwhile is queued when the next batches form. The
tests assert orders and counts, never durations.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from inference.batch_types import (
    DeadlineExceededError,
    EngineError,
    Lane,
    QueueFullError,
    RequestTooLargeError,
    ShuttingDownError,
)
from inference.batcher import TileBatcher
from tests.batcher_harness import (
    FakeEngine,
    Recorder,
    T,
    block_engine,
    far,
    ids,
    run_with,
    tiles,
)
from tests.conftest import until


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


def test_a_request_of_two_tile_shapes_runs_each_in_its_own_batches() -> None:
    """The x8 ensemble's tiles come in two groups, h x w and w x h: each run stacks one shape, a group's
    tiles may share a run with another request's tiles of that shape, and the outputs come back in the
    groups they were submitted in."""
    engine = FakeEngine(gated=True)

    async def body(b: TileBatcher, rec: Recorder) -> None:
        first = await block_engine(b, engine)
        wide = tiles(1, 3)[:, :, :2, :].copy()  # 2x4
        tall = tiles(2, 2)[:, :, :, :2].copy()  # 4x2
        other = tiles(3, 2)[:, :, :2, :].copy()  # another request's 2x4 tiles
        both = asyncio.create_task(b.submit("m", (wide, tall), far(), "ens"))
        alone = asyncio.create_task(b.submit("m", other, far(), "other"))
        await until(lambda: b.queue_depth == 7)
        engine.gate.set()
        res = await both
        assert isinstance(res.outputs, tuple) and res.outputs[0] is wide and res.outputs[1] is tall
        np.testing.assert_array_equal(wide, tiles(1, 3)[:, :, :2, :] + 1)
        np.testing.assert_array_equal(tall, tiles(2, 2)[:, :, :, :2] + 1)
        np.testing.assert_array_equal((await alone).outputs, tiles(3, 2)[:, :, :2, :] + 1)
        await first

    run_with(engine, body, max_batch=8)
    runs = engine.calls[1:]
    assert all(len({c.shape[2:]}) == 1 for c in runs) and {c.shape[2:] for c in runs} == {(2, 4), (4, 2)}
    assert sorted(engine.seen()[1:]) == [100, 101, 102, 200, 201, 300, 301]
    assert [sorted(ids(c)) for c in runs] == [[100, 101, 102, 300, 301], [200, 201]]  # 300 joins the 2x4 run


def test_tile_groups_must_hold_the_same_pixels_per_tile() -> None:
    async def body(b: TileBatcher, rec: Recorder) -> None:
        with pytest.raises(ValueError, match="differ in pixels per tile"):
            await b.submit("m", (tiles(1, 1), tiles(2, 1)[:, :, :2, :].copy()), far(), "bad")
        with pytest.raises(ValueError, match="at least one group"):
            await b.submit("m", (), far(), "empty")
        assert rec.rejects == []

    run_with(FakeEngine(), body)


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
