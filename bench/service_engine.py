"""The service benchmark's engine side: the engine the service runs, rebuilt in the benchmark's process,
timed on the request mix's own tiles, and the ratios of the service's rates to it (:mod:`bench.service_load`
runs the load)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.report import summarize_ms, time_calls
from bench.request_mix import Req

SATURATED_BUSY = 0.9  # a level whose engine was busy this share of its window counts as saturated


def served_file(info: dict[str, Any], fallback: Path | None) -> Path | str:
    """The ONNX file the service runs: the repository model ``fallback`` (its fp32 file) belongs to, at the
    precision the service reports (int8 on the CPU for a model whose card says so, fp16 on CUDA); or a
    reason it cannot be found on this machine."""
    from engines.repository import ModelRepository

    if fallback is None or not fallback.is_file():
        return f"model file {fallback} is not on this machine (pass --model FILE.onnx)"
    precision, folder = info.get("precision", "fp32"), fallback.parent
    if (folder / "card.json").is_file():
        path = ModelRepository(folder.parent).card(folder.name).precision_path(precision)
        return path if path.is_file() else f"the service runs {precision}, and {path} is not here"
    if precision != "fp32":
        return f"the service runs {precision}; pass a file of its model folder, not the loose {fallback}"
    return fallback


def open_served_engine(info: dict[str, Any], settings, fallback: Path | None):
    """The service's engine rebuilt here: the same file and precision (:func:`served_file`), tile,
    max_batch, threads and provider; or the reason it cannot be (a ``str``)."""
    from engines.ort_engine import CUDA, OrtEngine, select_providers

    path = served_file(info, fallback)
    if isinstance(path, str):
        return path
    serving = info["serving"]
    providers = (
        select_providers("cuda", settings.cuda_device_id, settings.cudnn_conv_algo_search)
        if info.get("provider") == CUDA
        else None
    )
    threads = settings.intra_op_threads, settings.inter_op_threads
    return OrtEngine(
        path, serving["tile"], serving["max_batch"], providers, *threads, settings.graph_optimization
    )


def probe_runner(engine, req: Req) -> Callable[[], None]:
    """Runs ``req``'s tiles through ``engine`` as the service runs that request alone (batches of at most
    ``max_batch``): the engine's share of the concurrency-1 probe."""
    n, b = req.tiles, engine.max_batch
    x = np.random.default_rng(1).random((min(n, b), 1, *req.tile_hw), dtype=np.float32)

    def run() -> None:
        for _ in range(-(-n // b)):
            engine.run(x)

    return run


def mix_pass_timer(engine, mix: list[Req]) -> Callable[[], float]:
    """A callable that runs one pass of the mix's tiles on ``engine`` (per tile shape, in full batches:
    the engine's best case) and returns the engine's tiles per second over it. Run between the levels,
    it measures the engine alone in the same minutes as each level, on a box whose speed drifts."""
    b = engine.max_batch
    rng = np.random.default_rng(2)
    per_shape: dict[tuple[int, int], int] = {}
    for r in mix:
        per_shape[r.tile_hw] = per_shape.get(r.tile_hw, 0) + r.tiles
    inputs = {hw: rng.random((b, 1, *hw), dtype=np.float32) for hw in per_shape}

    def one_pass() -> float:
        seconds = 0.0
        for hw, n in per_shape.items():
            runs = -(-n // b)
            t0 = time.perf_counter()
            for _ in range(runs):
                engine.run(inputs[hw])
            seconds += (time.perf_counter() - t0) * n / (runs * b)  # the share of the n tiles
        return sum(per_shape.values()) / seconds

    return one_pass


def measure_engine(engine, info: dict[str, Any], settings, seconds: float, quick: bool, mix: list[Req]):
    """``engine`` (:func:`open_served_engine`) timed on full batches of each tile shape the request mix is
    cut into.

    ``mix_engine_s`` is what one pass of the mix costs the engine alone (each request's tiles at the
    per-tile time of their shape, in full batches: the engine's best case), so ``tiles_per_s`` counts the
    mix's own tiles, as the service's ``/metrics`` does.
    """
    max_batch = engine.max_batch
    rng = np.random.default_rng(0)
    shapes = sorted({r.tile_hw for r in mix})
    per_shape = []
    for th, tw in shapes:
        x = rng.random((max_batch, 1, th, tw), dtype=np.float32)
        timing = (1, 2, 2, 0.0) if quick else (2, 3, 100_000, seconds / len(shapes))
        stats = summarize_ms(time_calls(lambda x=x: engine.run(x), *timing))
        per_shape.append({"tile_hw": [th, tw], **stats, "per_tile_ms": stats["ms_median"] / max_batch})
    per_tile = {tuple(r["tile_hw"]): r["per_tile_ms"] for r in per_shape}
    mix_s = sum(r.tiles * per_tile[r.tile_hw] for r in mix) / 1e3
    mix_tiles, mix_px = sum(r.tiles for r in mix), sum(r.out_w * r.out_h for r in mix)
    return {
        "model_path": str(engine.model_path),
        "precision": info.get("precision", "fp32"),
        "providers": engine.providers,
        "tile": engine.tile,
        "max_batch": max_batch,
        "intra_op_threads": settings.intra_op_threads,
        "inter_op_threads": settings.inter_op_threads,
        "shapes": per_shape,
        "mix_engine_s": mix_s,
        "mix_tiles": mix_tiles,
        "tiles_per_s": mix_tiles / mix_s,
        "output_mpx_per_s": mix_px / mix_s / 1e6,
    }


def overhead(levels: list[dict[str, Any]], engine: dict[str, Any]) -> dict[str, Any] | None:
    """The service's tile rate at saturation vs the raw engine's, on the mix's tiles and threads.

    The service side is the engine tile rate read from ``/metrics`` over each measured window (tiles of
    the same mix, whoever they belong to; none is wasted while nothing times out), averaged over the
    saturated levels: those whose engine was busy at least 90% of the window (else the busiest level).
    One level is noisy (a batch counts when it finishes; a window holds few), so neither the best level
    nor a single one is taken. ``delivered_in_window_over_engine`` is the same ratio from the requests
    that completed inside the windows (noisier when requests are long).
    """
    done = [lv for lv in levels if lv.get("engine_tiles_per_s")]
    if not done or "tiles_per_s" not in engine:
        return None
    sat = [lv for lv in done if (lv.get("engine_busy_frac") or 0.0) >= SATURATED_BUSY]
    sat = sat or [max(done, key=lambda lv: lv.get("engine_busy_frac") or 0.0)]
    rates = [lv["engine_tiles_per_s"] for lv in sat]
    service = sum(rates) / len(rates)
    delivered = sum(lv["tiles_per_s"] for lv in sat) / len(sat)
    px = engine["output_mpx_per_s"] * 1e6 / engine["tiles_per_s"]  # the mix's output pixels per tile
    # Each level against the engine alone timed right after it (same minutes), when the bench did that.
    paired = [
        lv["engine_tiles_per_s"] / lv["engine_alone_tiles_per_s"]
        for lv in sat
        if lv.get("engine_alone_tiles_per_s")
    ]
    return {
        "saturated_levels": [lv["concurrency"] for lv in sat],
        "service_tiles_per_s": service,
        "service_tiles_per_s_range": [min(rates), max(rates)],
        "engine_tiles_per_s": engine["tiles_per_s"],
        "service_over_engine": service / engine["tiles_per_s"],
        "service_over_engine_range": [min(rates) / engine["tiles_per_s"], max(rates) / engine["tiles_per_s"]],
        "paired_service_over_engine": sum(paired) / len(paired) if paired else None,
        "paired_range": [min(paired), max(paired)] if paired else None,
        "delivered_in_window_over_engine": delivered / engine["tiles_per_s"],
        "output_px_per_tile": px,
        "service_output_mpx_per_s": service * px / 1e6,
        "engine_output_mpx_per_s": engine["output_mpx_per_s"],
        "wasted": {
            "errors": sum(lv["errors"] for lv in sat),
            "rejected_503": sum(lv["rejected_503"] for lv in sat),
        },
        "pixel_convention": "output pixels per tile = the request mix's mean (cores incl. edge tiles)",
    }


def latency_check(probe: dict[str, Any] | None) -> dict[str, Any] | None:
    """Concurrency-1 latency of the probe request against the engine time of its tiles alone, both from
    the probe's alternating pairs (:func:`bench.loadgen.latency_probe`): same minutes, same machine load."""
    if not probe or probe.get("p50_ms") is None or probe.get("engine_p50_ms") is None:
        return None
    return {
        "request": probe["request"],
        "pairs": probe["n"],
        "service_p50_ms": probe["p50_ms"],
        "engine_ms": probe["engine_p50_ms"],
        "overhead_ms": probe["overhead_p50_ms"],
    }
