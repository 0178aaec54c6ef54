"""``drrn bench service``: closed-loop load on the HTTP service, then the raw engine on the same tiles.

Per concurrency level (1, 2, 4, 8, 16, 32; ``--quick``: 1 and 4 with a few requests) it reports req/s,
delivered output Mpx/s, p50/p95/p99 latency, 503 rejections and errors, and from the service's ``/metrics``
(deltas over the measured window) the mean engine batch size (``drrn_batch_size_tiles_sum / _count``), the
mean requests per batch and the engine busy fraction. See :mod:`bench.request_mix` for the request mix.

**Overhead ratio.** After the load, the engine the service runs (the same model file at the precision it
reports, tile, max_batch and threads from ``GET /v1/models`` and the service's ``DRRN_*`` settings) is built
in this process with :class:`engines.ort_engine.OrtEngine` and timed on full batches of each tile shape the
mix is cut into (the service's ``tile_shape``: fitted tiles on the CPU, uniform ones on CUDA). One pass of
the mix then costs the engine alone ``mix_engine_s``, which gives its rate in the mix's own tiles; the
service's rate is its engine's tiles per second from ``/metrics`` (windows timed by the scrapes), averaged
over the saturated levels. ``service_over_engine`` is their ratio, and 1 - ratio is what HTTP, decode,
bicubic, tiling, batching, stitching and PNG encoding cost on top of the model (on a CPU box they share the
cores with the engine, and with this load generator).

``--spawn`` starts ``drrn serve`` itself on a free port (env ``DRRN_*`` from ``--set``), so one command does
everything. A ``--url`` that is not loopback is refused unless ``--allow-remote``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from bench.loadgen import latency_probe, run_level
from bench.options import env_pairs, int_list
from bench.report import header, load_average, markdown_table, summarize_ms, time_calls, write_json
from bench.request_mix import Req, build_mix
from drrn.errors import UserError
from drrn.paths import PROJECT_ROOT

DEFAULT_PLOT = PROJECT_ROOT / "docs" / "bench" / "latency_throughput.png"
LEVELS, QUICK_LEVELS = (1, 2, 4, 8, 16, 32), (1, 4)
PROBE_REQUEST = "crop64_x2"
SATURATED_BUSY = 0.9  # a level whose engine was busy this share of its window counts as saturated
# A 2-core CPU needs ~15 s for the 88-tile photo alone, and concurrent requests share the engine, so each
# is stretched by the others in flight: the service's 30 s production deadline would turn the high levels
# into 504s (or, with deadline admission, refusals).
# Spawned services get a deadline long enough that the bench measures throughput, not timeouts.
SPAWN_DEFAULTS = {"DRRN_REQUEST_TIMEOUT_S": "900"}


def check_loopback(url: str, allow_remote: bool) -> None:
    """Load tests target this machine only, unless explicitly allowed."""
    host = urlparse(url).hostname or ""
    if not allow_remote and not (host == "localhost" or host.startswith("127.") or host == "::1"):
        raise UserError(f"--url {url} is not a loopback address; pass --allow-remote to load it anyway")


def fetch_model(url: str) -> dict[str, Any]:
    import httpx

    try:
        resp = httpx.get(f"{url}/v1/model", timeout=10)
    except httpx.HTTPError as exc:
        raise UserError(f"cannot reach the service at {url}: {exc}") from exc
    if resp.status_code != 200:
        raise UserError(f"GET {url}/v1/model answered {resp.status_code}")
    info = resp.json()
    if not info.get("ready"):
        raise UserError(f"service at {url} is not ready yet (GET /readyz)")
    return info


def service_settings(overrides: dict[str, str]):
    """The :class:`service.settings.Settings` a service started with ``overrides`` (+ this env) uses."""
    from service.settings import Settings

    return Settings(**{k[5:].lower(): v for k, v in overrides.items() if k.startswith("DRRN_")})


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


def measure_engine(
    info: dict[str, Any], settings, seconds: float, quick: bool, fallback: Path | None, mix: list[Req]
) -> dict[str, Any]:
    """The service's engine rebuilt here (same file and precision, tile, max_batch, threads, provider) and
    timed on full batches of each tile shape the request mix is cut into; or ``{"skipped": reason}``.

    ``mix_engine_s`` is what one pass of the mix costs the engine alone (each request's tiles at the
    per-tile time of their shape, in full batches: the engine's best case), so ``tiles_per_s`` counts the
    mix's own tiles, as the service's ``/metrics`` does. ``probe_engine_ms``: the concurrency-1 probe
    request's tiles alone, run as the service runs that request by itself.
    """
    from engines.ort_engine import CUDA, OrtEngine, select_providers

    path = served_file(info, fallback)
    if isinstance(path, str):
        return {"skipped": path}
    serving = info["serving"]
    on_cuda = info.get("provider") == CUDA
    providers = (
        select_providers("cuda", settings.cuda_device_id, settings.cudnn_conv_algo_search)
        if on_cuda
        else None
    )
    tile, max_batch = serving["tile"], serving["max_batch"]
    threads = settings.intra_op_threads, settings.inter_op_threads
    eng = OrtEngine(path, tile, max_batch, providers, *threads, settings.graph_optimization)
    rng = np.random.default_rng(0)
    shapes = sorted({r.tile_hw for r in mix})
    per_shape = []
    for th, tw in shapes:
        x = rng.random((max_batch, 1, th, tw), dtype=np.float32)
        timing = (1, 2, 2, 0.0) if quick else (2, 3, 100_000, seconds / len(shapes))
        stats = summarize_ms(time_calls(lambda x=x: eng.run(x), *timing))
        per_shape.append({"tile_hw": [th, tw], **stats, "per_tile_ms": stats["ms_median"] / max_batch})
    per_tile = {tuple(r["tile_hw"]): r["per_tile_ms"] for r in per_shape}
    mix_s = sum(r.tiles * per_tile[r.tile_hw] for r in mix) / 1e3
    mix_tiles, mix_px = sum(r.tiles for r in mix), sum(r.out_w * r.out_h for r in mix)
    req = next(r for r in mix if r.name == PROBE_REQUEST)
    xp = rng.random((min(req.tiles, max_batch), 1, *req.tile_hw), dtype=np.float32)
    probe = summarize_ms(time_calls(lambda: eng.run(xp), *((1, 2, 2, 0.0) if quick else (2, 15, 15, 0.0))))
    return {
        "model_path": str(path),
        "precision": info.get("precision", "fp32"),
        "providers": eng.providers,
        "tile": tile,
        "max_batch": max_batch,
        "intra_op_threads": settings.intra_op_threads,
        "inter_op_threads": settings.inter_op_threads,
        "shapes": per_shape,
        "mix_engine_s": mix_s,
        "mix_tiles": mix_tiles,
        "tiles_per_s": mix_tiles / mix_s,
        "output_mpx_per_s": mix_px / mix_s / 1e6,
        "probe_batch": len(xp),
        "probe_batch_ms": probe["ms_median"],
        "probe_engine_ms": probe["ms_median"] * -(-req.tiles // max_batch),
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
    return {
        "saturated_levels": [lv["concurrency"] for lv in sat],
        "service_tiles_per_s": service,
        "service_tiles_per_s_range": [min(rates), max(rates)],
        "engine_tiles_per_s": engine["tiles_per_s"],
        "service_over_engine": service / engine["tiles_per_s"],
        "service_over_engine_range": [min(rates) / engine["tiles_per_s"], max(rates) / engine["tiles_per_s"]],
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


def latency_check(probe: dict[str, Any] | None, engine: dict[str, Any]) -> dict[str, Any] | None:
    """Concurrency-1 latency of the probe request against the engine time of its tiles alone."""
    if not probe or probe.get("p50_ms") is None or "probe_engine_ms" not in engine:
        return None
    return {
        "request": probe["request"],
        "service_p50_ms": probe["p50_ms"],
        "engine_ms": engine["probe_engine_ms"],
        "overhead_ms": probe["p50_ms"] - engine["probe_engine_ms"],
    }


async def _levels(url: str, mix, levels, duration_s, n_requests, warmup_s, probe_n: int):
    """``(level results, concurrency-1 probe)``: the probe runs first, on the idle service."""
    import httpx

    limits = httpx.Limits(max_connections=max(levels) + 4, max_keepalive_connections=max(levels) + 4)
    out = []
    async with httpx.AsyncClient(timeout=httpx.Timeout(900.0), limits=limits) as client:
        req = next(r for r in mix if r.name == PROBE_REQUEST)
        probe = await latency_probe(client, url, req, probe_n)
        print(f"  probe {req.name} at concurrency 1: p50 {probe['p50_ms']:.1f} ms", file=sys.stderr)
        for c in levels:
            level = await run_level(client, url, mix, c, duration_s, n_requests, warmup_s)
            lat = level["latency_ms"]
            print(
                f"  concurrency {c}: {level['req_per_s']:.2f} req/s, {level['output_mpx_per_s']:.3f} Mpx/s, "
                f"p50 {lat['p50']:.0f} ms (n {lat['n']}), 503s {level['rejected_503']}, "
                f"errors {level['errors']}, engine {level['engine_tiles_per_s'] or 0:.2f} tiles/s",
                file=sys.stderr,
            )
            out.append(level)
    return out, probe


def load_phase(url: str, levels, duration_s, n_requests, warmup_s, probe_n: int) -> tuple:
    """``(model info, request mix, level results, probe)`` against a running service."""
    info = fetch_model(url)
    serving = info["serving"]
    mix = build_mix(serving["tile"], serving["margin"], serving.get("tile_shape", "fit"))
    results, probe = asyncio.run(_levels(url, mix, levels, duration_s, n_requests, warmup_s, probe_n))
    return info, mix, results, probe


def mix_summary(mix: list[Req]) -> list[dict[str, Any]]:
    return [
        {
            "name": r.name,
            "scale": r.scale,
            "output": f"{r.out_w}x{r.out_h}",
            "tiles": r.tiles,
            "tile_hw": list(r.tile_hw),
            "source": r.source,
        }
        for r in mix
    ]


COLUMNS = [
    ("concurrency", "conc."), ("req_per_s", "req/s"), ("output_mpx_per_s", "out Mpx/s"), ("p50", "p50 ms"),
    ("p95", "p95 ms"), ("p99", "p99 ms"), ("rejected_503", "503s"), ("errors", "errors"),
    ("mean_batch_tiles", "mean batch"), ("engine_busy_frac", "engine busy"),
    ("engine_tiles_per_s", "engine tiles/s"), ("ok", "completed"),
]  # fmt: skip


def render(report: dict[str, Any]) -> str:
    rows = [{**lv, **lv["latency_ms"]} for lv in report["levels"]]
    lines = [markdown_table(rows, COLUMNS)]
    eng, ov = report["engine"], report["overhead"]
    if "tiles_per_s" in eng:
        shapes = ", ".join(
            f"{a}x{b} {r['per_tile_ms']:.1f} ms" for r in eng["shapes"] for a, b in [r["tile_hw"]]
        )
        lines.append(
            f"- raw engine ({eng['precision']}, batch {eng['max_batch']}), per tile: {shapes}; one pass of "
            f"the mix {eng['mix_engine_s']:.2f} s = {eng['tiles_per_s']:.2f} tiles/s"
        )
    else:
        lines.append(f"- raw engine: skipped ({eng.get('skipped')})")
    if ov:
        lo, hi = ov["service_over_engine_range"]
        lines.append(
            f"- **service ÷ raw engine** at saturation (mean of concurrency {ov['saturated_levels']}): "
            f"{ov['service_over_engine']:.3f} (levels {lo:.3f}-{hi:.3f}; {ov['service_tiles_per_s']:.2f} vs "
            f"{ov['engine_tiles_per_s']:.2f} tiles/s = {ov['service_output_mpx_per_s']:.4f} vs "
            f"{ov['engine_output_mpx_per_s']:.4f} output Mpx/s); from requests completed in the windows: "
            f"{ov['delivered_in_window_over_engine']:.3f}"
        )
    lc = report.get("latency_c1")
    if lc:
        lines.append(
            f"- concurrency 1, {lc['request']}: p50 {lc['service_p50_ms']:.1f} ms vs engine alone "
            f"{lc['engine_ms']:.1f} ms: overhead **{lc['overhead_ms']:+.1f} ms**"
        )
    return "\n".join(lines)


def run_service_bench(args: argparse.Namespace) -> dict[str, Any]:
    """``drrn bench service`` (without ``--sweep``): load levels, raw engine, overhead ratio, plot."""
    quick = args.quick
    levels = int_list(args.concurrency) or list(QUICK_LEVELS if quick else LEVELS)
    n_requests = args.requests or (4 if quick else None)
    duration = None if n_requests else (args.duration or 20.0)
    warmup = 0.0 if n_requests else min(5.0, duration / 4)
    overrides = env_pairs(args.set)
    probe_n = 3 if quick else 30
    fallback = None
    if args.spawn:
        from bench.spawn import SpawnedService, serve_model_path

        fallback = serve_model_path(args.model)
        with SpawnedService({**SPAWN_DEFAULTS, **overrides}, fallback) as svc:
            info, mix_reqs, results, probe = load_phase(
                svc.url, levels, duration, n_requests, warmup, probe_n
            )
            settings = service_settings(svc.overrides)
            engine = measure_engine(info, settings, args.engine_seconds or 10.0, quick, fallback, mix_reqs)
            spawned = {"url": svc.url, "env": svc.overrides, "startup_s": svc.startup_s}
    else:
        check_loopback(args.url, args.allow_remote)
        if args.model != "default" and Path(args.model).suffix == ".onnx":
            fallback = Path(args.model)
        info, mix_reqs, results, probe = load_phase(args.url, levels, duration, n_requests, warmup, probe_n)
        settings = service_settings(overrides)
        engine = measure_engine(info, settings, args.engine_seconds or 10.0, quick, fallback, mix_reqs)
        engine["threads_source"] = "this process's DRRN_* env (GET /v1/model does not report threads)"
        spawned = None
    report = header(
        "service",
        quick,
        url=spawned["url"] if spawned else args.url,
        spawned=spawned,
        model={k: info.get(k) for k in ("name", "provider", "precision", "depth", "flops_per_pixel")},
        serving=info["serving"],
        load={"levels": levels, "duration_s": duration, "warmup_s": warmup, "requests_per_level": n_requests},
        request_mix=mix_summary(mix_reqs),
        levels=results,
        engine=engine,
        overhead=overhead(results, engine),
        probe=probe,
        latency_c1=latency_check(probe, engine),
    )
    report["machine"]["load_average_end"] = load_average()
    print(render(report))
    write_json(report, args.json_out)
    plot_path = args.plot or (None if quick else str(DEFAULT_PLOT))
    if plot_path:
        from bench.plot import plot_latency_throughput

        plot_latency_throughput(report, plot_path)
    return report
