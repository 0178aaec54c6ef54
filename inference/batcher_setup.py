"""The Upscaler's settings and its warmed models, as a :class:`~inference.batcher.TileBatcher` (not started):
one lane per model, and each lane's measured cost seeded from its warmup."""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import Executor

from inference.batch_types import Lane
from inference.batcher import TileBatcher
from inference.upscaler_types import ServedModel, UpscalerConfig, UpscalerObserver

# What a model's warmup returns: ``(tiles, seconds)`` per run, in the order run (possibly none).
WarmupRuns = list[tuple[int, float]]


def build_batcher(
    models: Mapping[str, ServedModel],
    config: UpscalerConfig,
    executor: Executor,
    observer: UpscalerObserver,
    warm: Mapping[str, WarmupRuns],
) -> TileBatcher:
    """A batcher over ``models`` (engine calls on ``executor``, the engine thread) with ``config``'s
    bounds, its deadline admission on when ``config.deadline_admission``."""
    lanes = {n: Lane(m.engine.run, m.tile, m.engine.max_batch) for n, m in models.items()}
    c = config
    batcher = TileBatcher(
        lanes,
        max_delay_ms=c.max_delay_ms,
        max_queue_tiles=c.max_queue_tiles,
        executor=executor,
        observer=observer,
        retry_after_s=c.retry_after_s,
        deadline_budget_s=c.request_timeout_s if c.deadline_admission else None,
        engine_stall_s=c.engine_stall_s,
    )
    for name, runs in warm.items():
        # Admission's first estimate: without it a lane that has only run tiny tiles has no per-pixel
        # cost, and a large request arriving then is admitted on a guess. The warmup's last run (on
        # CUDA the largest batch, after the cold first one) errs towards refusing: a CPU's one warmup
        # run is its cold one. Real runs then take over.
        if runs:
            n, seconds = runs[-1]
            batcher.calibrate(name, n * models[name].tile ** 2, seconds)
    return batcher
