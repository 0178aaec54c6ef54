"""The scheduling policy alone (no batcher, no clock): within a lane, batches alternate between the highest
response ratio (waited per queued pixel; the least queued work among equal waits) and the oldest request;
across lanes, the
rotation over ready lanes (full batch, or the oldest tile waited ``max_delay``) across lanes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import numpy as np
import pytest

from inference.lane_queue import Job, ResponseRatioQueue
from inference.scheduling import LaneRotation

INF = float("inf")
NOW = 1.0  # the queue tests' clock: every job there arrived at 0, so all have waited alike


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """Only to create the jobs' futures; nothing here runs on it."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def make_job(
    loop: asyncio.AbstractEventLoop, lane: str, request: int, n: int, at: float = 0.0, shape: tuple = (2, 2)
) -> Job:
    """Request ``request``: ``n`` tiles of ``shape`` in ``lane`` queued at ``at``; tile i holds
    ``100 request + i``."""
    x = np.stack([np.full((1, *shape), 100 * request + i, np.float32) for i in range(n)])
    return Job(f"r{request}", x, loop.create_future(), at, lane)


def ids(batch: list[tuple[Job, int]]) -> list[int]:
    return [int(job.tiles[i][0, 0, 0]) for job, i in batch]


def drain(rot: LaneRotation, now: float = INF) -> list[tuple[str, list[int]]]:
    """Every batch the rotation hands out at ``now`` until no lane is ready, as ``(lane, tile ids)``."""
    out = []
    while (picked := rot.next_batch(now)) is not None:
        out.append((picked[0], ids(picked[1])))
    return out


def test_the_lanes_pixels_alternate_between_the_least_queued_work_and_the_oldest_request(
    loop: asyncio.AbstractEventLoop,
) -> None:
    q = ResponseRatioQueue()
    big, small = make_job(loop, "m", 1, 6), make_job(loop, "m", 2, 2)  # 4-pixel tiles
    q.add(big)
    q.add(small)
    assert len(q) == 8
    assert ids(q.take(3, NOW)) == [200, 201, 100]  # least work: the small one whole, the big one fills up
    for r in (3, 4):  # smaller newcomers (1-pixel tiles) ...
        q.add(make_job(loop, "m", r, 1, shape=(1, 1)))
    # ... wait while the oldest catches up: half of the time is as many pixels in its own turns as the
    # other turns ran (12 px: 3 tiles)
    assert [ids(q.take(1, NOW)) for _ in range(3)] == [[101], [102], [103]]
    # then the turns alternate by pixels: 1 px by response ratio (all waited alike: the least work
    # first), 4 of the oldest, 1, then 4 px more by response ratio (the big one, now the least work)
    assert [ids(q.take(1, NOW)) for _ in range(4)] == [[300], [104], [400], [105]]
    assert len(q) == 0 and q.take(3, NOW) == []
    late = make_job(loop, "m", 5, 2)
    q.add(late)
    assert q.remove(late) == 2 and len(q) == 0
    assert q.remove(late) == 0


def test_a_request_that_waited_long_for_its_size_goes_before_smaller_fresh_ones(
    loop: asyncio.AbstractEventLoop,
) -> None:
    q = ResponseRatioQueue()
    for r, n, at in ((1, 4, 0.0), (2, 1, 9.0), (3, 1, 9.9)):  # 32x32 tiles, in arrival order
        q.add(make_job(loop, "m", r, n, at=at, shape=(32, 32)))
    # at 10 s, seconds waited per queued pixel (+ 256 for a run's overhead): 10 / 4,352 for the 4-tile
    # one, 1 / 1,280 and 0.1 / 1,280 for the 1-tile ones (least queued work first would run it last)
    assert ids(q.take(6, 10.0)) == [100, 101, 102, 103, 200, 300]


@pytest.mark.parametrize(("offset", "first"), [(256, 200), (384 * 384, 100)])
def test_a_mid_size_request_outranks_fresh_tiny_ones_once_work_has_a_tile_offset(
    loop: asyncio.AbstractEventLoop, offset: int, first: int
) -> None:
    # the soak's case: a 212x144 output (30,528 px) that waited 2 s against a 45x45 one (2,025 px) that
    # waited 0.5 s. With the 256-pixel offset the tiny one goes first (0.5 / 2,281 > 2 / 30,784), and a
    # stream of tiny ones kept it waiting 20 s; with one 384x384 tile added to both, the wait decides.
    q = ResponseRatioQueue(min_work=offset)
    q.add(make_job(loop, "m", 1, 1, at=0.0, shape=(144, 212)))
    q.add(make_job(loop, "m", 2, 1, at=1.5, shape=(45, 45)))
    assert ids(q.take(1, 2.0)) == [first]


def test_each_lane_offsets_work_by_its_own_amount_and_the_batcher_uses_one_full_tile(
    loop: asyncio.AbstractEventLoop,
) -> None:
    from inference.batch_types import Lane
    from inference.batcher import TileBatcher

    rot = LaneRotation({"a": 1, "b": 1}, max_delay_s=0.0, min_work={"a": 384 * 384})  # "b": the default
    for lane in ("a", "b"):
        rot.add(make_job(loop, lane, 1, 1, at=0.0, shape=(144, 212)))
        rot.add(make_job(loop, lane, 2, 1, at=1.5, shape=(45, 45)))
    # the rotation serves "a" then "b": "a" takes the mid-size request first, "b" the tiny one
    assert drain(rot, 2.0) == [("a", [100]), ("b", [200]), ("a", [200]), ("b", [100])]
    lanes = {name: Lane(lambda x: x, tile=t, max_batch=1) for name, t in (("fast", 384), ("quality", 640))}
    assert TileBatcher(lanes)._sched.min_work == {"fast": 384 * 384, "quality": 640 * 640}


def test_work_is_counted_in_pixels_not_tiles(loop: asyncio.AbstractEventLoop) -> None:
    q = ResponseRatioQueue()
    two_big, three_small = make_job(loop, "m", 1, 2, shape=(4, 4)), make_job(loop, "m", 2, 3, shape=(2, 2))
    q.add(two_big)
    q.add(three_small)
    assert ids(q.take(1, NOW)) == [200]  # 12 pixels queued against 32


def test_an_oldest_turn_that_cannot_take_the_oldest_does_not_use_up_its_share(
    loop: asyncio.AbstractEventLoop,
) -> None:
    q = ResponseRatioQueue()
    q.add(make_job(loop, "m", 1, 2, shape=(4, 4)))  # the oldest: 16-pixel tiles
    q.add(make_job(loop, "m", 2, 3, shape=(2, 2)))
    assert ids(q.take(1, NOW)) == [200]  # response ratio: the least work
    assert ids(q.take(1, NOW, max_pixels=4)) == [201]  # the oldest's turn, but its tile does not fit
    assert ids(q.take(1, NOW)) == [100]  # ... so its turn is still owed


def test_a_batch_stacks_one_tile_shape_and_passed_over_requests_keep_their_place(
    loop: asyncio.AbstractEventLoop,
) -> None:
    q = ResponseRatioQueue()
    a, thin, b = make_job(loop, "m", 1, 3), make_job(loop, "m", 2, 2, shape=(1, 4)), make_job(loop, "m", 3, 2)
    for job in (a, thin, b):
        q.add(job)
    assert ids(q.take(4, NOW)) == [200, 201]  # the least work (8 px) sets the shape; 2x2 tiles wait
    assert ids(q.take(4, NOW)) == [100, 101, 102, 300]  # the oldest's turn, filled up by least work
    assert ids(q.take(4, NOW)) == [301] and len(q) == 0


def test_a_pixel_budget_passes_over_tiles_that_do_not_fit(loop: asyncio.AbstractEventLoop) -> None:
    q = ResponseRatioQueue()
    small, big = make_job(loop, "m", 1, 3, shape=(2, 2)), make_job(loop, "m", 2, 1, shape=(4, 4))
    q.add(big)
    q.add(small)
    # 12 px of small queued < 16 px of big; 2 of its tiles fit
    assert ids(q.take(4, NOW, max_pixels=10)) == [100, 101]
    assert q.take(4, NOW, max_pixels=3) == []  # the oldest's turn, but nothing fits
    assert ids(q.take(4, NOW, max_pixels=16)) == [200]  # the oldest's turn still: 8 px behind
    assert ids(q.take(4, NOW, max_pixels=16)) == [102]


def test_a_lane_is_ready_with_a_full_batch_or_once_its_oldest_tile_waited_max_delay(
    loop: asyncio.AbstractEventLoop,
) -> None:
    rot = LaneRotation({"a": 4, "b": 2}, max_delay_s=10.0)
    assert rot.next_batch(0.0) is None and rot.wake_at() is None  # nothing queued: sleep until a submit
    rot.add(make_job(loop, "a", 1, 1, at=5.0))
    rot.add(make_job(loop, "a", 2, 1, at=3.0))
    assert rot.ready_at("a") == 13.0 and rot.ready_at("b") is None  # the oldest tile, not the first job
    assert rot.next_batch(12.9) is None and rot.wake_at() == 13.0
    rot.add(make_job(loop, "b", 3, 2, at=12.0))  # a full batch: ready at once, whatever its age
    assert rot.wake_at() == -INF
    assert rot.next_batch(12.9) is not None
    assert rot.queued("b") == 0 and rot.queued("a") == 2 and len(rot) == 2
    assert rot.next_batch(12.9) is None
    picked = rot.next_batch(13.0)
    assert picked is not None and picked[0] == "a" and ids(picked[1]) == [200, 100]  # r2 waited longer
    assert len(rot) == 0 and rot.wake_at() is None


def test_earliest_readiness_over_lanes_and_dropped_tiles(loop: asyncio.AbstractEventLoop) -> None:
    rot = LaneRotation({"a": 8, "b": 8}, max_delay_s=1.0)
    old = make_job(loop, "a", 1, 2, at=10.0)
    rot.add(old)
    rot.add(make_job(loop, "b", 2, 1, at=4.0))
    rot.add(make_job(loop, "a", 3, 1, at=20.0))
    assert rot.wake_at() == 5.0
    assert rot.remove(old) == 2 and rot.queued("a") == 1  # dropped: lane a's oldest tile is now newer
    assert rot.ready_at("a") == 21.0 and rot.wake_at() == 5.0
    assert drain(rot, 6.0) == [("b", [200])]
    assert rot.wake_at() == 21.0 and drain(rot, 21.0) == [("a", [300])]


def test_saturated_lanes_alternate_and_the_turn_carries_over(loop: asyncio.AbstractEventLoop) -> None:
    rot = LaneRotation({"q": 2, "f": 2}, max_delay_s=0.0)
    rot.add(make_job(loop, "q", 1, 6))
    rot.add(make_job(loop, "f", 2, 3))
    assert drain(rot) == [
        ("q", [100, 101]),
        ("f", [200, 201]),
        ("q", [102, 103]),
        ("f", [202]),
        ("q", [104, 105]),
    ]
    rot.add(make_job(loop, "q", 3, 1))
    rot.add(make_job(loop, "f", 4, 1))
    assert drain(rot) == [("f", [400]), ("q", [300])]  # q ran last: f's turn comes first


def test_a_new_lane_request_waits_for_at_most_one_batch_of_a_backlogged_lane(
    loop: asyncio.AbstractEventLoop,
) -> None:
    rot = LaneRotation({"quality": 4, "fast": 8}, max_delay_s=0.0)
    rot.add(make_job(loop, "quality", 1, 504))
    first = rot.next_batch(0.0)  # the running quality batch
    assert first is not None and first[0] == "quality" and rot.queued("quality") == 500
    rot.add(make_job(loop, "fast", 2, 3))
    picked = rot.next_batch(0.0)
    assert picked is not None and picked[0] == "fast" and ids(picked[1]) == [200, 201, 202]
    # Arriving just after a fast batch ran: one quality batch, then the new fast request.
    rot.add(make_job(loop, "fast", 3, 1))
    assert [lane for lane, _ in drain(rot)][:3] == ["quality", "fast", "quality"]


def test_a_lane_that_is_not_ready_is_skipped_not_waited_for(loop: asyncio.AbstractEventLoop) -> None:
    rot = LaneRotation({"a": 4, "b": 4, "c": 1}, max_delay_s=100.0)
    rot.add(make_job(loop, "a", 1, 1, at=0.0))  # partial: ready at 100
    rot.add(make_job(loop, "b", 2, 4, at=0.0))  # full
    rot.add(make_job(loop, "c", 3, 2, at=0.0))  # two full batches of one
    assert drain(rot, 50.0) == [("b", [200, 201, 202, 203]), ("c", [300]), ("c", [301])]
    assert rot.queued("a") == 1 and rot.wake_at() == 100.0
    assert drain(rot, 100.0) == [("a", [100])]


def test_a_rotation_needs_a_lane() -> None:
    with pytest.raises(ValueError):
        LaneRotation({}, max_delay_s=0.0)


def test_an_urgent_request_goes_first_across_lanes_and_the_rotation_stays(
    loop: asyncio.AbstractEventLoop,
) -> None:
    rot = LaneRotation({"q": 1, "f": 2}, max_delay_s=10.0)
    small, big = make_job(loop, "f", 1, 1), make_job(loop, "f", 2, 4)
    rot.add(small)
    rot.add(big)
    rot.add(make_job(loop, "q", 3, 1))
    # q is ready (a full batch of 1), f is not (max_delay): the urgent request's lane is served anyway,
    # with a batch of its own tiles, ahead of the small request whose turn it was
    assert rot.next_batch(0.0, urgent=big) == ("f", [(big, 0), (big, 1)])
    assert ids(rot.next_batch(0.0)[1]) == [300]  # the rotation did not move: q's turn as before
    assert ids(rot.next_batch(0.0, urgent=big)[1]) == [202, 203]
    assert ids(rot.next_batch(INF)[1]) == [100]  # done with it: the small one keeps its turn
    other = make_job(loop, "q", 4, 1)
    assert rot.next_batch(0.0, urgent=other) is None  # not queued here: ignored (nothing ready)


def test_the_pacer_names_the_request_with_the_least_slack_among_the_urgent(
    loop: asyncio.AbstractEventLoop,
) -> None:
    from inference.pacer import LaneShape, Pacer

    pacer = Pacer({"f": LaneShape(2, 1)})
    pacer.observe("f", 4, 1.0)  # 1 s per full 2x2 tile
    rot = LaneRotation({"f": 1}, max_delay_s=0.0)
    relaxed, tight, doomed = (make_job(loop, "f", r, n) for r, n in ((1, 2), (2, 4), (3, 4)))
    # all queued at 0 with 20 s: urgent once their slack is down to 5 s, critical at 2 s
    relaxed.deadline, tight.deadline, doomed.deadline = 20.0, 20.0, 20.0  # work 2 s, 4 s, 4 s
    doomed.cpu_after_s = 17.0  # its encode is estimated to need most of its time
    for job in (relaxed, tight, doomed):
        rot.add(job)
    assert pacer.urgent(rot, now=0.0) is None  # slack 18 s, 16 s (and -2 s: doomed, never chosen)
    assert pacer.urgent(rot, now=12.0) == (tight, pytest.approx(2.0))  # slack 4 s <= 5 s; relaxed has 6 s
    assert pacer.urgent(rot, now=14.0) == (tight, pytest.approx(0.0))  # 2 s: critical, and least slack
    tight.cpu_after_s = 3.0  # its encode comes out of its time too: slack 4 s - 3 s < 0, doomed
    assert pacer.urgent(rot, now=14.0) == (relaxed, pytest.approx(2.0))


def test_what_an_urgent_request_can_spare_follows_each_lanes_measured_cost() -> None:
    from inference.pacer import ALTERNATE_SHARE, LaneShape, Pacer

    lanes = ("f", "q", "new", "tiny")
    pacer = Pacer({"f": LaneShape(10, 4), **{name: LaneShape(10, 1) for name in lanes[1:]}})
    for tiles in (1, 2, 4):
        pacer.observe("f", tiles * 100, 0.1 * tiles)  # 0.1 s per full tile
    pacer.observe("q", 100, 8.0)  # 8 s per full tile
    pacer.observe("tiny", 2, 0.001)  # only runs of 2 pixels seen: no per-pixel cost known
    spare = 2.0 / ALTERNATE_SHARE  # 2 s to spend
    # f: capped at max_batch; q: a quarter tile; new: never measured; tiny: no bigger than what it ran
    assert pacer.alternate_pixels(spare) == {"f": 400, "q": 25, "new": 0, "tiny": 2}
    assert pacer.alternate_pixels(0.0) == dict.fromkeys(lanes, 0)  # critical: nothing


def test_an_urgent_request_alternates_with_batches_its_slack_can_afford(
    loop: asyncio.AbstractEventLoop,
) -> None:
    rot = LaneRotation({"f": 1, "q": 1}, max_delay_s=0.0)
    big = make_job(loop, "f", 1, 4, shape=(4, 4))
    mid = make_job(loop, "f", 2, 2, shape=(4, 3))  # 12-pixel tiles: more than f's budget of 8
    small = make_job(loop, "f", 3, 2, shape=(2, 2))  # 4-pixel tiles: within it
    other_lane = make_job(loop, "q", 4, 1, shape=(2, 2))
    for job in (big, mid, small, other_lane):
        rot.add(job)
    budget = {"f": 8, "q": 4}
    order = [ids(rot.next_batch(0.0, big, budget)[1]) for _ in range(6)]
    # urgent, then the rotation's usual batches cut to the budget, lane by lane: f's small request, q's
    assert order == [[100], [300], [101], [400], [102], [301]]
    assert ids(rot.next_batch(0.0, big, budget)[1]) == [103]  # nothing else fits: urgent again (its last)
    assert drain(rot) == [("f", [200]), ("f", [201])]
    rot.add(big := make_job(loop, "f", 4, 2, shape=(4, 4)))
    rot.add(make_job(loop, "f", 5, 1, shape=(2, 2)))
    assert [ids(rot.next_batch(0.0, big)[1]) for _ in range(2)] == [[400], [401]]  # critical: alone


def test_a_requests_runs_left_round_up_per_tile_shape_not_over_all_its_tiles() -> None:
    from inference.lane_queue import TileSet

    upright, turned = np.zeros((3, 1, 2, 4), np.float32), np.zeros((3, 1, 4, 2), np.float32)
    two = TileSet((upright, turned))  # a run stacks one shape: 2 + 2 runs of 2, not ceil(6 / 2) = 3
    assert [two.runs_from(start, 2) for start in range(8)] == [4, 3, 3, 2, 1, 1, 0, 0]  # 7: past the end
    assert two.runs_from(0, 3) == 2 and two.runs_from(0, 1) == 6
    square = TileSet((np.zeros((3, 1, 4, 4), np.float32), np.zeros((3, 1, 4, 4), np.float32)))
    assert [square.runs_from(start, 2) for start in range(7)] == [3, 3, 2, 2, 1, 1, 0]  # they stack
    assert TileSet(upright).runs_from(1, 2) == 1
    aba = TileSet((upright, turned, upright))  # only neighbours of one shape stack
    assert aba.runs_from(0, 3) == 3 and aba.runs_from(2, 3) == 3 and aba.runs_from(3, 3) == 2


def test_the_pacers_slack_counts_a_two_group_requests_runs_per_group(
    loop: asyncio.AbstractEventLoop,
) -> None:
    from inference.pacer import LaneShape, Pacer

    pacer = Pacer({"f": LaneShape(2, 2)})
    pacer.observe("f", 4, 1.5)  # one full 2x2 tile: 1.5 s; two: 2 s (1 s per run + 0.5 s per tile)
    pacer.observe("f", 8, 2.0)
    rot = LaneRotation({"f": 2}, max_delay_s=0.0)
    tiles = (np.zeros((3, 1, 1, 4), np.float32), np.zeros((3, 1, 4, 1), np.float32))
    job = Job("r1", tiles, loop.create_future(), 0.0, "f", deadline=20.0)
    rot.add(job)
    # 6 tiles in 4 runs (2 per group): 4 s + 3 s = 7 s of work; as ceil(6 / 2) = 3 runs it would be 6 s
    # urgent at slack <= 5 s (share 0.25 of 20 s), critical at 2 s
    assert pacer.urgent(rot, now=8.2) == (job, pytest.approx(2.8))  # slack 20 - 8.2 - 7 = 4.8 s
    assert pacer.urgent(rot, now=7.8) is None  # slack 5.2 s: not yet
