"""Deterministic fake engines for the fault and admission tests (a fake engine is fine for what the batcher
and service do around it; the pipeline, batcher and HTTP layers under test are the real ones).

:class:`ToneEngine` maps every tile ``x -> 0.9 x + 0.05`` element-wise, so a tile's output does not depend
on which batch it ran in: a run of the same requests in any batching gives byte-identical PNGs, and a tile
routed to the wrong request shows up as different bytes. Hooks: ``sleep_per_tile_s`` (a known speed, warmup
included),
``hang`` (a run that blocks until released) and ``fail_runs`` (run numbers that raise).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np

from engines.base import Engine


class ToneEngine(Engine):
    """Element-wise engine with test hooks; counts its runs (warmup excluded)."""

    def __init__(self, tile: int, max_batch: int, depth: int = 2, sleep_per_tile_s: float = 0.0) -> None:
        super().__init__(tile, max_batch)
        self._depth, self.sleep_per_tile_s = depth, sleep_per_tile_s
        self.runs: list[int] = []  # tiles per run, after warmup
        self.failed: list[np.ndarray] = []  # the inputs of the runs that raised
        self.fail_runs: set[int] = set()  # 1-based run numbers (after warmup) that raise
        self.hang = False  # the next run blocks until release is set
        self.hanging, self.release = threading.Event(), threading.Event()
        self._warm = False

    @property
    def depth(self) -> int:
        return self._depth

    def info(self) -> dict[str, Any]:
        return {"name": "tone", "depth": self._depth, "tile": self.tile, "max_batch": self.max_batch}

    def warmup(self) -> list[tuple[int, float]]:
        timings = super().warmup()
        self._warm = True
        return timings

    def run(self, batch: np.ndarray) -> np.ndarray:
        if self._warm:
            self.runs.append(len(batch))
            if self.hang:
                self.hang = False
                self.hanging.set()
                self.release.wait(120)
            if len(self.runs) in self.fail_runs:
                self.failed.append(batch.copy())
                raise RuntimeError(f"simulated device fault in run {len(self.runs)}")
        if self.sleep_per_tile_s:  # the warmup too: its timing is the batcher's first measurement
            time.sleep(self.sleep_per_tile_s * len(batch))
        return batch * np.float32(0.9) + np.float32(0.05)
