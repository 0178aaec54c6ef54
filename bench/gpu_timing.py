"""Timing helpers shared by the GPU engine benchmark's PyTorch and ONNX Runtime cells."""

from __future__ import annotations

import time
from typing import Any

from bench.report import summarize_ms

__all__ = ["Budget", "result_row", "time_cell"]


class Budget:
    """A wall-clock allowance: ``left`` is the seconds until it runs out (negative after)."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.perf_counter() + seconds

    @property
    def left(self) -> float:
        return self.deadline - time.perf_counter()


def time_cell(fn, sync, budget: Budget, min_s: float = 0.5) -> dict[str, Any]:
    """Warm up twice, then time >= 3 runs (up to ``min_s`` seconds or 50 runs)."""
    for _ in range(2):
        fn()
    sync()
    times: list[float] = []
    while len(times) < 3 or (sum(times) < min_s and len(times) < 50 and budget.left > 0):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return summarize_ms(times)


def result_row(backend: str, tile: int, batch: int, stats: dict, fpp: int) -> dict[str, Any]:
    """One result row: the cell, its timing stats, and its throughput in Mpx/s and TFLOP/s (``fpp`` is
    the model's FLOPs per output pixel)."""
    s = stats["ms_median"] / 1e3
    px = batch * tile * tile
    return {"backend": backend, "tile": tile, "batch": batch, **stats, "mpx_per_s": px / s / 1e6,
            "tflops": fpp * px / s / 1e12}  # fmt: skip
