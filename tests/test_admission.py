"""Deadline-aware admission: the run-cost fit and finish estimate (pure), the batcher refusing what its
measured engine speed cannot finish in time (a fake engine of known speed; engine calls are counted, no
duration is asserted), and the HTTP answers (413 / 503 with a Retry-After computed from the queue)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from inference.batch_types import BacklogError, DeadlineUnreachableError, Lane
from inference.batcher import TileBatcher
from inference.linear_cost import LinearCost
from inference.pacing import LaneLoad, deadline_refusal, finish_estimate
from service.app import create_app
from tests.batcher_harness import FakeEngine, Recorder, T, tiles
from tests.conftest import until
from tests.fake_engines import ToneEngine
from tests.service_harness import metric_samples, png, rejections, serving, settings


def test_run_cost_fits_fixed_and_per_tile_costs() -> None:
    cpu = LinearCost()  # cost proportional to tiles
    for k in (1, 4, 2, 4, 1, 3):
        cpu.observe(k, 0.5 * k)
    assert cpu.seconds(8) == pytest.approx(4.0)
    gpu = LinearCost()  # a fixed cost per run
    for k in (1, 4, 2, 4, 1, 3):
        gpu.observe(k, 0.2)
    assert gpu.seconds(8) == pytest.approx(0.2)
    same = LinearCost()  # only 1-tile runs seen: no slope to fit, taken as proportional
    for _ in range(5):
        same.observe(1, 0.3)
    assert same.seconds(4) == pytest.approx(1.2)
    assert LinearCost().seconds(4) is None


def test_finish_estimate_follows_least_work_or_oldest_and_the_lane_rotation() -> None:
    cost = LinearCost()
    cost.observe(4, 1.0)  # 1 s per full run of 4, proportional
    lanes = {"m": LaneLoad(4, (100,), cost), "q": LaneLoad(4, (), cost)}
    small = finish_estimate("m", 1, lanes, busy_left_s=0.5)
    # a 1-tile request behind a 100-tile one: after the 0.5 s left of the running run, its own tile (0.25 s:
    # the cost is proportional, a partial run costs its tiles) and at most as much of the oldest (half of
    # the time), plus a batch (5 tiles, 1.25 s)
    assert small is not None
    assert small.total_s == pytest.approx(2.0) and small.alone_s == pytest.approx(0.25)
    lanes["m"] = LaneLoad(4, (10, 40), cost)
    big = finish_estimate("m", 40, lanes, busy_left_s=0.0)
    # after the 10-tile and the 40-tile one (equal work: it came first): (10 + 40 + 40) tiles / 4 per run
    assert big is not None and big.total_s == pytest.approx(22.5)
    lanes["m"] = LaneLoad(4, (100, 10, 40), cost)  # an older 100-tile one takes as much again: 90 + 4 tiles
    assert finish_estimate("m", 40, lanes, 0.0).total_s == pytest.approx(46.0)
    lanes["q"] = LaneLoad(4, (8,), cost)  # another lane with 2 runs queued interleaves with ours
    assert finish_estimate("m", 40, lanes, 0.0).total_s == pytest.approx(48.0)
    assert finish_estimate("m", 40, {"m": LaneLoad(4, (), LinearCost())}, 0.0) is None  # nothing measured
    tiny = LinearCost()
    for _ in range(5):
        tiny.observe(1e-4, 0.002)  # runs of a few pixels: their time is per-run overhead, not pixels
    # ... so no per-tile cost is guessed from them: they cost what they were seen to (nothing refused)
    assert tiny.coefficients() == pytest.approx((0.002, 0.0))
    assert deadline_refusal("m", 1.0, {"m": LaneLoad(1, (), tiny)}, 0.0, 0.1, 0.1) is None


def test_an_older_request_that_waited_long_for_its_work_counts_as_ahead_in_full() -> None:
    """The response-ratio turns serve an older, larger request first while seconds waited per queued work
    are higher for it than for the newcomer: a 4-tile newcomer behind a 12-tile request that has waited
    10 s runs after all 12 of its tiles (the scheduler, run forward, gives 16 s)."""
    cost = LinearCost()
    cost.observe(1, 1.0)  # 1 s per tile, one tile per run
    waited_long = {"m": LaneLoad(1, (12,), cost, (), (10.0,))}
    assert finish_estimate("m", 4, waited_long, 0.0).total_s == pytest.approx(16.0)
    # a 1-tile newcomer overtakes it at once (ratio 1/1 against 11/100): only the oldest-first turns count
    fresh = {"m": LaneLoad(1, (100,), cost, (), (10.0,))}
    assert finish_estimate("m", 1, fresh, 0.0).total_s == pytest.approx(3.0)  # 1 + min(100, 1 + 1)


def test_a_newcomer_that_would_push_an_admitted_request_past_its_deadline_is_refused() -> None:
    cost = LinearCost()
    cost.observe(4, 0.08)  # 20 ms per tile
    # 36 tiles queued, due in 1 s: alone they take 0.72 s; a 36-tile newcomer shares every run (1.44 s)
    lanes = {"m": LaneLoad(4, (36,), cost, time_left_s=(1.0,))}
    refusal = deadline_refusal("m", 36, lanes, busy_left_s=0.0, remaining_s=10.0, budget_s=10.0)
    assert isinstance(refusal, BacklogError)
    # the same newcomer is fine when the queued request has time to spare, or is doomed anyway
    for left in (2.0, 0.5):
        lanes = {"m": LaneLoad(4, (36,), cost, time_left_s=(left,))}
        assert deadline_refusal("m", 36, lanes, 0.0, 10.0, 10.0) is None


def test_a_large_newcomer_counts_the_engine_share_that_smaller_traffic_has_been_taking() -> None:
    """A 16-tile newcomer (16 s of its own work, 30 s left) is admitted on an idle engine. After 30 s in
    which 1-tile requests took 60% of the engine, and with one of them still queued, they will keep going
    first: its work gets half of the engine (the oldest's share, the floor), so it needs 32 s plus the
    queued tile and is refused with a Retry-After. Runs of larger requests, or before the window, do not
    count, and neither does any of it once the engine is idle with nothing queued."""
    from inference.lane_queue import Job
    from inference.pacer import LaneShape, Pacer
    from inference.recent_load import RecentLoad
    from inference.scheduling import LaneRotation

    pacer = Pacer({"f": LaneShape(2, 1)}, load_window_s=30.0)
    pacer.observe("f", 4, 1.0)  # 1 s per full 2x2 tile
    sched = LaneRotation({"f": 1}, max_delay_s=0.0)

    def verdict(now: float):
        return pacer.refusal(sched, "f", 16, now + 30.0, 30.0, 0.0, now)

    assert verdict(100.0) == (None, pytest.approx(16.0))
    pacer.served("f", 20.0, 60.0, 4)  # before the window
    for k in range(18):  # 18 s of 1-tile requests (4 px of work each) in the last 30 s
        pacer.served("f", 1.0, 71.0 + k * 1.5, 4)
    pacer.served("f", 9.0, 99.0, 64)  # a run of a 16-tile request: no more work than the newcomer
    assert len(pacer.recent) == 19  # the run before the window is forgotten
    assert pacer.recent.share_below("f", 16, 100.0) == pytest.approx(0.6)
    assert pacer.recent.share_below("other", 1, 100.0) == pytest.approx(0.9)  # another lane: all of it
    assert RecentLoad(30.0).share_below("f", 16, 100.0) == 0.0
    assert verdict(100.0) == (None, pytest.approx(16.0))  # idle, nothing queued: the stream has stopped
    loop = asyncio.new_event_loop()
    try:
        sched.add(Job("small", np.zeros((1, 1, 2, 2), np.float32), loop.create_future(), 99.5, "f"))
        refusal, est = verdict(100.0)
    finally:
        loop.close()
    assert isinstance(refusal, BacklogError) and est == pytest.approx(33.0)  # 1 + 16 x 2


def test_each_engine_run_is_remembered_with_the_whole_size_of_its_largest_request() -> None:
    """The batcher tells the pacer, after every run, when it ended (the loop's clock) and the whole work of
    the largest request it served, in full tiles: a 3-tile request of 2x2 tiles (a quarter of a 4x4 full
    tile each) is 0.75 full tiles in each of its three runs."""
    engine = FakeEngine()

    async def main() -> list[tuple[float, float, str, float]]:
        b = TileBatcher({"m": Lane(engine, T, 1)}, deadline_budget_s=60.0)
        b.start()
        loop = asyncio.get_running_loop()
        try:
            before = loop.time()
            await b.submit("m", tiles(1, 3, side=2), loop.time() + 60, "r")
            after = loop.time()
            runs = list(b.pacer.recent._runs)
        finally:
            await b.stop(grace_s=5)
        assert all(before <= end <= after for end, *_ in runs)
        return runs

    runs = asyncio.run(main())
    assert [(lane, size) for _, _, lane, size in runs] == [("m", 0.75)] * 3
    assert [seconds > 0 for _, seconds, _, _ in runs] == [True] * 3


def run_paced(body, engine: FakeEngine, budget_s: float, rec: Recorder | None = None) -> Recorder:
    rec = rec or Recorder()

    async def main() -> None:
        b = TileBatcher(
            {"m": Lane(engine, T, 4)}, max_queue_tiles=20_000, observer=rec, deadline_budget_s=budget_s
        )
        b.start()
        try:
            await body(b)
        finally:
            engine.gate.set()
            await b.stop(grace_s=30)

    asyncio.run(main())
    return rec


class PacedEngine(FakeEngine):
    """:class:`FakeEngine` whose runs take a known time per full T x T tile, in proportion to their pixels
    (so the batcher measures that speed)."""

    def __init__(self, per_tile_s: float, gated: bool = False) -> None:
        super().__init__(gated=gated)
        self.per_tile_s = per_tile_s

    def __call__(self, x):
        import time

        time.sleep(self.per_tile_s * x.shape[0] * x.shape[2] * x.shape[3] / T**2)
        return super().__call__(x)


def test_requests_that_cannot_finish_in_time_never_reach_the_engine() -> None:
    engine = PacedEngine(per_tile_s=0.01)

    async def body(b: TileBatcher) -> None:
        loop = asyncio.get_running_loop()
        for r in range(3):  # measure the engine: 3 full runs of 4 tiles (~0.04 s each)
            await b.submit("m", tiles(r, 4), loop.time() + 60, f"warm{r}")
        calls = len(engine.calls)
        # 4000 tiles need ~10 s alone: more than the whole 2-s budget, now or ever
        with pytest.raises(DeadlineUnreachableError) as never:
            await b.submit("m", tiles(9, 4000), loop.time() + 2, "huge")
        assert never.value.budget_s == 2 and never.value.alone_s > 2
        assert len(engine.calls) == calls  # refused before any of its tiles ran
        # what fits is admitted and runs
        out = await b.submit("m", tiles(8, 8), loop.time() + 2, "fits")
        assert out.engine_runs == 2

    rec = run_paced(body, engine, budget_s=2.0)
    assert ("m", "too_slow") in rec.rejects


def test_a_request_behind_too_much_queued_work_gets_backlog_with_a_retry_after() -> None:
    engine = PacedEngine(per_tile_s=0.01, gated=True)

    async def body(b: TileBatcher) -> None:
        loop = asyncio.get_running_loop()
        held = asyncio.create_task(b.submit("m", tiles(0, 4), loop.time() + 600, "held"))
        await asyncio.to_thread(engine.entered.wait, 30)
        engine.gate.set()
        await held  # one measured run of 4 tiles (>= 0.04 s)
        engine.gate.clear()
        engine.calls.clear()
        engine.gated, engine.entered = True, type(engine.entered)()
        blocker = asyncio.create_task(b.submit("m", tiles(1, 4), loop.time() + 600, "blocker"))
        await asyncio.to_thread(engine.entered.wait, 30)
        # >= 12 s of work queued behind it (1,200 tiles in 30-tile requests), deadlines far away
        queued = [
            asyncio.create_task(b.submit("m", tiles(2, 30), loop.time() + 600, f"q{i}")) for i in range(40)
        ]
        await until(lambda: b.queue_depth == 1_200)
        # a 40-tile request alone needs ~0.4 s, well within its 10 s; but every queued request has less
        # work, so goes first: 1,240 tiles, >= 12.4 s at the measured speed
        with pytest.raises(BacklogError) as busy:
            await b.submit("m", tiles(3, 40), loop.time() + 10, "late")
        assert busy.value.estimate_s > 10 and busy.value.retry_after_s >= 1
        assert b.queue_depth == 1_200
        # a 1-tile request goes before all of them: admitted (and cancelled again here)
        small = asyncio.create_task(b.submit("m", tiles(4, 1), loop.time() + 10, "small"))
        await until(lambda: b.queue_depth == 1_201)  # the refused request was never queued
        small.cancel()
        for task in [*queued, small]:
            task.cancel()
        await asyncio.gather(*queued, small, return_exceptions=True)
        engine.gate.set()
        await blocker
        assert len(engine.calls) == 1  # only the blocker ran: neither the refused nor the cancelled

    rec = run_paced(body, engine, budget_s=10.0)
    assert ("m", "backlog") in rec.rejects and ("m", "too_slow") not in rec.rejects


async def post(client, body: bytes):
    return await client.post("/upscale?scale=2", content=body, headers={"content-type": "image/png"})


def test_the_warmup_measures_the_engine_before_the_first_request(tiny_onnx) -> None:
    """Before the first real run, the lane's only measurement is its warmup: without it a large request
    arriving first would be admitted on no estimate at all, and burn its deadline in the engine."""
    engine = ToneEngine(32, 4, sleep_per_tile_s=0.05)  # the warmup runs at that speed too
    app = create_app(
        settings(tiny_onnx, request_timeout_s=2.0, max_upload_bytes=10_000_000), {"fast": engine}
    )

    async def main() -> None:
        async with serving(app) as client:
            # 1000x1000 output = 37^2 tiles: ~68 s at the warmup's 0.05 s per tile, > the 2-s deadline
            r = await post(client, png(500, 500))
            assert r.status_code == 413 and r.json()["error"] == "deadline_unreachable"
            assert engine.runs == []  # refused on the warmup's measurement alone
            assert (await post(client, png(8, 8))).status_code == 200  # 1 small tile: fits

    asyncio.run(main())


def test_http_answers_413_for_never_and_503_with_retry_after_for_not_now(tiny_onnx) -> None:
    engine = ToneEngine(32, 4, sleep_per_tile_s=0.02)
    app = create_app(
        settings(tiny_onnx, request_timeout_s=2.0, max_upload_bytes=10_000_000), {"fast": engine}
    )

    async def main() -> None:
        async with serving(app) as client:
            ok = await client.post(
                "/upscale?scale=2", content=png(40, 40), headers={"content-type": "image/png"}
            )
            assert ok.status_code == 200  # measures the engine: ~0.02 s per tile
            runs = len(engine.runs)
            # 1000x1000 output = 37^2 tiles of core 28: ~27 s of engine time > the 2-s deadline
            r = await client.post(
                "/upscale?scale=2", content=png(500, 500), headers={"content-type": "image/png"}
            )
            body = r.json()
            assert r.status_code == 413 and body["error"] == "deadline_unreachable"
            assert body["limit"] == {"name": "request_timeout_s", "value": 2.0}
            assert len(engine.runs) == runs
            # hold the engine and send 8 requests of 25 tiles (~0.5 s each): the first few fit the 2-s
            # deadline, then the queue ahead is too long and the rest are refused at once
            engine.hang = True
            held = asyncio.create_task(post(client, png(10, 10)))
            await asyncio.to_thread(engine.hanging.wait, 30)
            runs = len(engine.runs)
            sent = [asyncio.create_task(post(client, png(60, 60, seed=i))) for i in range(8)]
            await until(lambda: sum(t.done() for t in sent) >= 1)
            engine.release.set()
            answers = await asyncio.gather(held, *sent)
            busy = [r for r in answers if r.status_code == 503]
            assert busy and all(r.json()["error"] == "backlog" for r in busy)
            assert all(int(r.headers["retry-after"]) >= 1 for r in busy)
            admitted = len(sent) - len(busy)
            assert admitted >= 1
            # the refused requests' tiles never ran: every run after the held one is an admitted tile
            assert sum(engine.runs[runs:]) <= 25 * admitted
            counts = rejections(await client.get("/metrics"))
            assert counts["too_slow"] == 1 and counts["backlog"] == len(busy)

    asyncio.run(main())


def test_a_cpu_lane_of_mixed_small_and_full_tiles_fits_its_cost() -> None:
    """One tile per run (the CPU), sizes between a few pixels and a full tile: the fit must find the
    per-tile cost, or a lane of mostly small requests would never refuse a request that cannot finish."""
    cost = LinearCost()
    for k in [0.001, 0.01, 0.9, 0.002, 0.05, 1.0, 0.003, 0.02] * 3:
        cost.observe(k, 0.005 + 2.0 * k)  # 5 ms per run + 2 s per full tile
    coef = cost.coefficients()
    assert coef is not None and coef[1] == pytest.approx(2.0, rel=0.05) and coef[0] < 0.05
    refusal = deadline_refusal("m", 20.0, {"m": LaneLoad(1, (), cost)}, 0.0, 30.0, 30.0)
    assert refusal is not None and type(refusal).__name__ == "DeadlineUnreachableError"  # 40 s alone


def test_a_newcomer_on_another_lane_that_would_push_a_queued_request_past_its_deadline_is_refused() -> None:
    """The lane rotation gives the newcomer's lane a run per run of the queued request's lane: a slow
    lane's tile admitted behind a fast request delays it by that run (the soak's fast-model 504s)."""
    fast, quality = LinearCost(), LinearCost()
    fast.observe(1.0, 0.5)  # 0.5 s per full fast tile
    quality.observe(1.0, 20.0)  # 20 s per full quality tile
    # a fast request with 20 tiles left (10 s) and 12 s to go: it meets its deadline alone
    lanes = {"fast": LaneLoad(1, (20.0,), fast, (12.0,)), "quality": LaneLoad(1, (), quality, ())}
    refusal = deadline_refusal("quality", 0.2, lanes, 0.0, remaining_s=30.0, budget_s=30.0)
    assert isinstance(refusal, BacklogError)  # 0.2 quality tiles = 4 s more before its last tile
    assert refusal.retry_after_s == 10  # when the fast request is done; a retry before then is refused
    # the same newcomer is admitted when the fast request has time to spare for it
    lanes["fast"] = LaneLoad(1, (20.0,), fast, (18.0,))
    assert deadline_refusal("quality", 0.2, lanes, 0.0, 30.0, 30.0) is None


def test_cpu_stage_seconds_count_against_the_deadline() -> None:
    cost = LinearCost()
    cost.observe(1.0, 1.0)  # 1 s per full tile
    lanes = {"m": LaneLoad(1, (), cost)}
    assert deadline_refusal("m", 10.0, lanes, 0.0, remaining_s=20.0, budget_s=30.0) is None  # 10 s of 16
    # 7 s of decode and encode on top no longer fits the 16 s (0.8 of the 20 s left): try again later
    later = deadline_refusal("m", 10.0, lanes, 0.0, remaining_s=20.0, budget_s=30.0, cpu_s=7.0)
    assert isinstance(later, BacklogError) and later.retry_after_s == 1
    # ... and 15 s can never fit the 24 s (0.8 of the whole budget)
    never = deadline_refusal("m", 10.0, lanes, 0.0, remaining_s=30.0, budget_s=30.0, cpu_s=15.0)
    assert isinstance(never, DeadlineUnreachableError) and never.alone_s == pytest.approx(25.0)
    # a queued request's engine deadline is its deadline less its encode: 8 s of work, 12 s to its
    # deadline but 3 s of encode after the engine: a 1.5-tile newcomer (9.5 s) would make it miss
    lanes = {"m": LaneLoad(1, (8.0,), cost, (12.0 - 3.0,))}
    assert isinstance(deadline_refusal("m", 1.5, lanes, 0.0, 30.0, 30.0), BacklogError)
    lanes = {"m": LaneLoad(1, (8.0,), cost, (12.0,))}  # without the encode it would have fitted
    assert deadline_refusal("m", 1.5, lanes, 0.0, 30.0, 30.0) is None


def test_submit_counts_small_tiles_as_the_fraction_of_a_full_tile_they_are() -> None:
    """Tiles fit each image: 16 tiles of (T/4)^2 pixels are one full tile of work, not 16."""
    engine = PacedEngine(per_tile_s=0.05)

    async def body(b: TileBatcher) -> None:
        loop = asyncio.get_running_loop()
        for r in range(3):  # measure: 0.05 s per full T x T tile (4 per run)
            await b.submit("m", tiles(r, 4), loop.time() + 60, f"warm{r}")
        small = np.zeros((64, 1, T // 4, T // 4), np.float32)  # 64 tiles = 4 full tiles of work (~0.2 s)
        out = await b.submit("m", small, loop.time() + 0.5, "small")
        assert out.engine_runs == 16
        with pytest.raises(DeadlineUnreachableError):  # 64 full tiles: ~3.2 s > 0.8 x 0.5 s
            await b.submit("m", np.zeros((64, 1, T, T), np.float32), loop.time() + 0.5, "big")

    run_paced(body, engine, budget_s=0.5)


def test_an_encode_past_the_deadline_counts_its_engine_work_as_wasted_and_teaches_admission(
    tiny_onnx, monkeypatch
) -> None:
    """A request that times out while its PNG is encoded ends in 504 and its engine seconds are counted
    as thrown away; the encode's time, finished in the background, still reaches the cost fit, so the
    next request of that size is refused before it reaches the engine."""
    from inference import pipeline

    real_finish, slow = pipeline.finish, {"on": True}

    def finish(prepared, outputs):
        if slow["on"]:
            import time

            time.sleep(1.5)
        return real_finish(prepared, outputs)

    monkeypatch.setattr(pipeline, "finish", finish)
    engine = ToneEngine(32, 4, sleep_per_tile_s=0.02)
    app = create_app(
        settings(tiny_onnx, request_timeout_s=1.0, max_upload_bytes=10_000_000), {"fast": engine}
    )

    async def main() -> None:
        async with serving(app) as client:
            late = await post(client, png(40, 40))
            assert late.status_code == 504
            upscaler = app.state.upscaler
            await until(
                lambda: upscaler.cpu.costs["finish", 1].runs == 1
            )  # the thread finished after the 504
            samples = metric_samples((await client.get("/metrics")).text)["drrn_deadline_engine_seconds"]
            wasted = sum(s.value for s in samples if s.name.endswith("_total"))
            assert wasted > 0
            runs = len(engine.runs)
            again = await post(client, png(40, 40, seed=1))  # 1.5 s of encode can never fit 1 s
            assert again.status_code == 413 and again.json()["error"] == "deadline_unreachable"
            assert len(engine.runs) == runs

    asyncio.run(main())


def test_a_lane_that_served_only_small_images_for_a_while_still_knows_what_a_full_tile_costs() -> None:
    """The soak's 504s: a CPU lane's last ~10 runs were all tiny tiles, the fit lost its slope, and a
    15-Mpx request arriving then was admitted (and burnt 30 s of engine for a 504)."""
    cost = LinearCost()
    for k in [0.01, 1.0, 0.02, 0.9, 0.005] * 3:  # a mix: the slope (2 s per full tile) is fitted
        cost.observe(k, 0.005 + 2.0 * k)
    for _ in range(40):  # then only tiny runs: their sizes alone fit no slope
        cost.observe(0.002, 0.009)
    coef = cost.coefficients()
    assert coef is not None and coef[1] == pytest.approx(2.0, rel=0.05)
    refusal = deadline_refusal("m", 100.0, {"m": LaneLoad(1, (), cost)}, 0.0, 30.0, 30.0)
    assert isinstance(refusal, DeadlineUnreachableError)


def test_a_request_whose_slack_runs_out_goes_before_smaller_newcomers() -> None:
    """Least work first would run the small requests' tiles before the large request's, and a stream of
    them would stretch it to its deadline; once its slack (time left less its own work) is down to a
    quarter of its time, its tiles go first (alternating only with batches its slack can afford), and it
    finishes with a margin."""
    engine, holder = PacedEngine(per_tile_s=0.1), FakeEngine(gated=True)  # the holder's run blocks

    async def main() -> None:
        lanes = {"m": Lane(engine, T, 4), "hold": Lane(holder, T, 1)}  # own lanes: own cost fits
        b = TileBatcher(lanes, max_queue_tiles=100, deadline_budget_s=60.0)
        b.start()
        loop = asyncio.get_running_loop()
        try:
            for r in range(3):  # measure: 0.1 s per full tile (4 per run)
                await b.submit("m", tiles(r, 4), loop.time() + 60, f"warm{r}")
            engine.calls.clear()
            held = asyncio.create_task(b.submit("hold", tiles(3, 1), loop.time() + 60, "held"))
            await asyncio.to_thread(holder.entered.wait, 30)
            # 24 tiles = 6 runs of 4 = 2.4 s of work in 8 s: admitted, not urgent (slack 5.6 s > 2 s)
            big = asyncio.create_task(b.submit("m", tiles(4, 24), loop.time() + 8.0, "big"))
            smalls = [
                asyncio.create_task(b.submit("m", tiles(5 + i, 1), loop.time() + 60, f"s{i}"))
                for i in range(3)
            ]
            await until(lambda: b.queue_depth == 27)
            await asyncio.sleep(3.9)  # the engine is held: its slack shrinks to ~1.7 s (< 2 s: urgent)
            holder.gate.set()
            await asyncio.gather(held, big, *smalls)
        finally:
            holder.gate.set()
            await b.stop(grace_s=30)
        runs = [sorted({int(t) // 100 for t in call[:, 0, 0, 0]}) for call in engine.calls]
        assert runs[0] == [4]  # urgent: its batch first, though the small ones have less work
        # the small ones ran between two of its batches, in a batch its spare slack could afford (their
        # 0.3 s, topped up with its own tiles), or after it
        assert sum(len(call) for call in engine.calls) == 27 and {5, 6, 7} <= set().union(*runs)

    asyncio.run(main())


def test_the_queued_work_gauge_counts_tiles_by_their_pixels_at_the_measured_speed() -> None:
    """The HPA signal: 8 full tiles and 16 quarter tiles queued are 24 tiles but 12 full tiles of work."""
    engine = PacedEngine(per_tile_s=0.05)

    class Work(Recorder):
        def __init__(self) -> None:
            super().__init__()
            self.work: list[tuple[str, float]] = []

        def on_queued_work(self, model: str, seconds: float) -> None:
            self.work.append((model, seconds))

    async def body(b: TileBatcher) -> None:
        loop = asyncio.get_running_loop()
        for r in range(3):  # measure the speed first: nothing is reported before
            await b.submit("m", tiles(r, 4), loop.time() + 60, f"warm{r}")
        engine.calls.clear()
        engine.gated, engine.entered = True, type(engine.entered)()  # the next run blocks
        held = asyncio.create_task(b.submit("m", tiles(3, 1), loop.time() + 60, "held"))
        await asyncio.to_thread(engine.entered.wait, 30)
        full = asyncio.create_task(b.submit("m", tiles(4, 8), loop.time() + 60, "full"))
        quarter = np.zeros((16, 1, T // 2, T // 2), np.float32)
        small = asyncio.create_task(b.submit("m", quarter, loop.time() + 60, "small"))
        await until(lambda: b.queue_depth == 24)
        per_tile = b.pacer.costs["m"].seconds(1.0)
        assert rec.work[-1] == ("m", pytest.approx(12 * per_tile))
        engine.gate.set()
        await asyncio.gather(held, full, small)
        assert rec.work[-1] == ("m", 0.0)

    rec = Work()
    run_paced(body, engine, budget_s=60.0, rec=rec)
    assert rec.work and rec.depths


def test_a_kept_slope_never_claims_more_than_the_recent_runs_cost() -> None:
    """A slope fitted from noisy runs (one slow large event) and then kept through same-size traffic must
    not over-predict the size it keeps seeing: what admission refuses never runs to correct the fit."""
    cost = LinearCost()
    for k, s in [(1.0, 0.3), (0.25, 0.075), (1.0, 0.3), (16.0, 14.4)]:  # the 16-unit event ran 3x slow
        cost.observe(k, s)
    for _ in range(200):  # then only 1-unit events at the true 0.3 s
        cost.observe(1.0, 0.3)
    assert cost.seconds(1.0) == pytest.approx(0.3, rel=0.01)
    assert cost.seconds(16.0) <= 16 * 0.3 * 1.01
