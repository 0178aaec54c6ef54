"""The scheduling policy alone (no batcher, no clock): round-robin over requests within a lane, and the
rotation over ready lanes (full batch, or the oldest tile waited ``max_delay``) across lanes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import numpy as np
import pytest

from inference.scheduling import Job, LaneRotation, RoundRobinQueue

INF = float("inf")


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
    return [int(job.tiles[i, 0, 0, 0]) for job, i in batch]


def drain(rot: LaneRotation, now: float = INF) -> list[tuple[str, list[int]]]:
    """Every batch the rotation hands out at ``now`` until no lane is ready, as ``(lane, tile ids)``."""
    out = []
    while (picked := rot.next_batch(now)) is not None:
        out.append((picked[0], ids(picked[1])))
    return out


def test_round_robin_within_a_lane_carries_over_between_batches(loop: asyncio.AbstractEventLoop) -> None:
    q = RoundRobinQueue()
    big, small = make_job(loop, "m", 1, 5), make_job(loop, "m", 2, 2)
    q.add(big)
    q.add(small)
    assert len(q) == 7
    assert ids(q.take(3)) == [100, 200, 101]
    late = make_job(loop, "m", 3, 1)
    q.add(late)  # joins the end of the rotation
    assert ids(q.take(3)) == [201, 102, 300]
    assert q.remove(big) == 2 and len(q) == 0 and q.take(3) == []
    assert q.remove(big) == 0


def test_a_batch_stacks_one_tile_shape_and_passed_over_requests_keep_their_turn(
    loop: asyncio.AbstractEventLoop,
) -> None:
    q = RoundRobinQueue()
    a, thin, b = make_job(loop, "m", 1, 3), make_job(loop, "m", 2, 2, shape=(1, 4)), make_job(loop, "m", 3, 2)
    for job in (a, thin, b):
        q.add(job)
    assert ids(q.take(4)) == [100, 300, 101, 301]  # the 1x4 request is passed over, not dropped
    assert ids(q.take(4)) == [200, 201]  # ... and its turn comes before a's last tile
    assert ids(q.take(4)) == [102] and len(q) == 0


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
    assert picked is not None and picked[0] == "a" and ids(picked[1]) == [100, 200]
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
    from inference.pacing import LaneShape, Pacer

    pacer = Pacer({"f": LaneShape(2, 1)})
    pacer.observe("f", 4, 1.0)  # 1 s per full 2x2 tile
    rot = LaneRotation({"f": 1}, max_delay_s=0.0)
    relaxed, tight, doomed = (make_job(loop, "f", r, n) for r, n in ((1, 2), (2, 4), (3, 4)))
    # all queued at 0 with 20 s: urgent once their slack is down to 5 s
    relaxed.deadline, tight.deadline, doomed.deadline = 20.0, 20.0, 20.0  # work 2 s, 4 s, 4 s
    doomed.cpu_after_s = 17.0  # its encode is estimated to need most of its time
    for job in (relaxed, tight, doomed):
        rot.add(job)
    assert pacer.urgent(rot, now=0.0) is None  # slack 18 s, 16 s (and -2 s: doomed, never chosen)
    assert pacer.urgent(rot, now=12.0) == (tight, False)  # slack 4 s <= 5 s; the relaxed one has 6 s
    assert pacer.urgent(rot, now=14.0) == (tight, True)  # 2 s <= 10% of 20 s: critical, and least slack
    tight.cpu_after_s = 3.0  # its encode comes out of its time too: slack 4 s - 3 s < 0, doomed
    assert pacer.urgent(rot, now=14.0) == (relaxed, False)


def test_an_urgent_request_alternates_with_cheap_tiles_unless_critical(
    loop: asyncio.AbstractEventLoop,
) -> None:
    rot = LaneRotation({"f": 1}, max_delay_s=0.0)
    big = make_job(loop, "f", 1, 4, shape=(4, 4))
    mid = make_job(loop, "f", 2, 2, shape=(4, 3))  # 12 pixels: not cheap at 4
    small = make_job(loop, "f", 3, 2, shape=(2, 2))  # 4 pixels: cheap
    for job in (big, mid, small):
        rot.add(job)
    order = [ids(rot.next_batch(0.0, big, cheap_pixels=4)[1]) for _ in range(4)]
    assert order == [[100], [300], [101], [301]]  # urgent, cheap, urgent, cheap: the mid one waits
    assert ids(rot.next_batch(0.0, big, cheap_pixels=4)[1]) == [102]
    assert ids(rot.next_batch(0.0, big, cheap_pixels=4)[1]) == [103]  # no cheap tile left: urgent again
    assert drain(rot) == [("f", [200]), ("f", [201])]
    rot.add(big := make_job(loop, "f", 4, 2, shape=(4, 4)))
    rot.add(make_job(loop, "f", 5, 1, shape=(2, 2)))
    assert [ids(rot.next_batch(0.0, big)[1]) for _ in range(2)] == [[400], [401]]  # critical: alone
