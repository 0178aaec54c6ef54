"""TileBatcher with several models on one device: the rotation over ready lanes, no starvation behind a
backlog, batches that never mix lanes, per-lane limits, errors and observer hooks (fakes:
``tests/batcher_harness.py``). Tests assert orders and counts, never durations.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from engines.repository import UnknownModelError
from inference.batch_types import (
    DeadlineExceededError,
    EngineError,
    QueueFullError,
    RequestTooLargeError,
)
from inference.batcher import TileBatcher
from tests.batcher_harness import (
    TF,
    TQ,
    Recorder,
    engine,
    far,
    ids,
    run_lanes,
    tiles,
    two_lanes,
)
from tests.conftest import until


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
