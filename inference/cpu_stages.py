"""The CPU side of a request (decode + bicubic + tiling, and stitch + colour + PNG), on a thread pool,
with a running cost fit per stage for deadline admission.

The engine is not the only cost of a large output: bicubic and PNG encoding take seconds per megapixel
on a small CPU. Each stage's seconds are fitted against output megapixels (:class:`LinearCost`), keyed by
``(stage, ensemble)`` since an ensembled output costs several times more per megapixel.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from imaging.ensemble import ENSEMBLE_SIZES
from inference.linear_cost import LinearCost
from inference.upscaler_types import timed

STAGES = ("prepare", "finish")


class CpuStages:
    """A pool of ``workers`` threads for the CPU stages, and what each stage has been seen to cost."""

    def __init__(self, workers: int) -> None:
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="drrn-cpu")
        self.costs = {(stage, n): LinearCost() for stage in STAGES for n in ENSEMBLE_SIZES}

    def estimate(self, ensemble: int, megapixels: float) -> dict[str, float]:
        """Expected seconds of each stage for an output of ``megapixels`` (0.0 before any run)."""
        return {stage: self.costs[stage, ensemble].seconds(megapixels) or 0.0 for stage in STAGES}

    def run(
        self, stage: tuple[str, int], megapixels: float, fn: Callable[..., Any], *args: Any
    ) -> asyncio.Future:
        """``(fn(*args), seconds)`` from the pool; ``stage`` is the cost key ``(stage name, ensemble)``.
        The seconds feed the stage's cost fit from the thread, so a step that outlives its request's
        deadline (the request stops waiting; the thread cannot be interrupted) still teaches admission
        what such an output costs."""
        loop = asyncio.get_running_loop()

        def call() -> tuple[Any, float]:
            out, seconds = timed(fn, *args)
            loop.call_soon_threadsafe(self.costs[stage].observe, megapixels, seconds)
            return out, seconds

        return loop.run_in_executor(self.pool, call)

    def shutdown(self, wait: bool) -> None:
        self.pool.shutdown(wait=wait, cancel_futures=True)
