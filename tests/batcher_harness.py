"""What the batcher tests share: fake engines that log their calls (the first run can block until the test
releases it, so everything submitted meanwhile is queued when the next batches form), an observer that
records its hooks, and helpers that run a :class:`~inference.batcher.TileBatcher` over one lane ("m") or
two ("quality" and "fast", with different tile sides so a batch mixing them could not even stack).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable

import numpy as np

from inference.batch_types import (
    BatcherObserver,
    Lane,
)
from inference.batcher import TileBatcher

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
