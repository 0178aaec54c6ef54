"""The Upscaler's settings and warmup become the batcher's lanes, bounds and first cost estimates."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from inference.batcher_setup import build_batcher
from inference.upscaler_types import ServedModel, UpscalerConfig, UpscalerObserver


class _Identity:
    """A stand-in engine: the batcher is only built here, never run."""

    def __init__(self, max_batch: int) -> None:
        self.max_batch = max_batch

    def run(self, x: np.ndarray) -> np.ndarray:
        return x


@pytest.mark.parametrize("deadline_admission", [True, False])
def test_each_lane_is_seeded_with_its_warmups_last_run_only(deadline_admission: bool) -> None:
    models = {
        "a": ServedModel("a", _Identity(4), tile=32, margin=4),
        "b": ServedModel("b", _Identity(1), tile=16, margin=2),
    }
    config = UpscalerConfig(max_delay_ms=5, request_timeout_s=12.0, deadline_admission=deadline_admission)
    with ThreadPoolExecutor(1) as pool:
        # a's cold first run (1 tile in 9 s) is not its cost; its last (4 full 32x32 tiles in 2 s) is
        batcher = build_batcher(
            models, config, pool, UpscalerObserver(), {"a": [(1, 9.0), (4, 2.0)], "b": []}
        )
    assert batcher.models == ("a", "b")
    assert {n: (lane.tile, lane.max_batch) for n, lane in batcher.lanes.items()} == {
        "a": (32, 4),
        "b": (16, 1),
    }
    assert batcher.pacer.costs["a"].runs == 1
    assert batcher.pacer.costs["a"].seconds(4.0) == pytest.approx(2.0)
    assert batcher.pacer.costs["b"].seconds(1.0) is None  # no warmup run: nothing refused on a guess
    assert batcher.max_delay_s == pytest.approx(0.005)
    assert batcher.deadline_budget_s == (12.0 if deadline_admission else None)
