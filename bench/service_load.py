"""``drrn bench service``: closed-loop load on the HTTP service, then the raw engine on the same tiles.

Per concurrency level (1, 2, 4, 8, 16, 32; ``--quick``: 1 and 4 with a few requests) it reports req/s,
delivered output Mpx/s, p50/p95/p99 latency, 503 rejections and errors, and from the service's ``/metrics``
(deltas over the measured window) the mean engine batch size (``drrn_batch_size_tiles_sum / _count``), the
mean requests per batch and the engine busy fraction. See :mod:`bench.request_mix` for the request mix.

**Overhead ratio.** After the load, the same engine the service runs (model file, tile, max_batch and
threads from ``GET /v1/model`` and the service's ``DRRN_*`` settings) is built in this process with
:class:`engines.ort_engine.OrtEngine` and timed on full batches. Both sides are counted in *delivered output
pixels* for the *same tiles*: the engine delivers ``tiles/s x (output px / tile)``, where output px per tile
is that of the requests the service completed at saturation (core pixels, edge tiles and padding included).
So ``service_over_engine = service Mpx/s at saturation / engine Mpx/s`` equals the ratio of tile rates, and
1 - ratio is what HTTP, decode, bicubic, tiling, batching, stitching and PNG encoding cost on top of the
model (on a CPU box they share the cores with the engine, and with this load generator).

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
from bench.request_mix import build_mix
from drrn.errors import UserError
from drrn.paths import PROJECT_ROOT

DEFAULT_PLOT = PROJECT_ROOT / "docs" / "bench" / "latency_throughput.png"
LEVELS, QUICK_LEVELS = (1, 2, 4, 8, 16, 32), (1, 4)
PROBE_REQUEST = "crop64_x2"
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


def measure_engine(
    info: dict[str, Any], settings, seconds: float, quick: bool, fallback: Path | None, probe_tiles: int = 1
):
    """Full-batch runs of the service's engine rebuilt locally; ``{"tiles_per_s", ...}`` or a skip reason.

    Also times what one ``probe_tiles``-tile request costs the engine alone (``probe_engine_ms``: its
    batches run back to back), the baseline of the concurrency-1 latency check.
    """
    from engines.ort_engine import CUDA, OrtEngine, select_providers

    serving = info["serving"]
    path = Path(info.get("model_path") or "")
    if not path.is_file():
        if fallback is None or not fallback.is_file():
            return {"skipped": f"model file {path} is not on this machine (pass --model FILE.onnx)"}
        path = fallback
    on_cuda = info.get("provider") == CUDA
    providers = (
        select_providers("cuda", settings.cuda_device_id, settings.cudnn_conv_algo_search)
        if on_cuda
        else None
    )
    tile, max_batch = serving["tile"], serving["max_batch"]
    threads = settings.intra_op_threads, settings.inter_op_threads
    eng = OrtEngine(path, tile, max_batch, providers, *threads, settings.graph_optimization)
    x = np.random.default_rng(0).random((max_batch, 1, tile, tile), dtype=np.float32)
    timing = (1, 2, 2, 0.0) if quick else (2, 3, 100_000, seconds)
    stats = summarize_ms(time_calls(lambda: eng.run(x), *timing))
    n_probe = min(probe_tiles, max_batch)
    xp = np.ascontiguousarray(x[:n_probe])
    probe = summarize_ms(time_calls(lambda: eng.run(xp), *((1, 2, 2, 0.0) if quick else (2, 15, 15, 0.0))))
    return {
        "model_path": str(path),
        "providers": eng.providers,
        "tile": tile,
        "max_batch": max_batch,
        "intra_op_threads": settings.intra_op_threads,
        "inter_op_threads": settings.inter_op_threads,
        **stats,
        "tiles_per_s": max_batch / (stats["ms_median"] / 1e3),
        "tile_mpx_per_s": max_batch * tile * tile / (stats["ms_median"] / 1e3) / 1e6,
        "probe_batch": n_probe,
        "probe_batch_ms": probe["ms_median"],
        "probe_engine_ms": probe["ms_median"] * -(-probe_tiles // max_batch),
    }


def overhead(levels: list[dict[str, Any]], engine: dict[str, Any]) -> dict[str, Any] | None:
    """The service's tile rate at saturation vs the raw engine's, on the same tiles and threads.

    The service side is the engine tile rate read from ``/metrics`` over the measured window (every tile
    it ran belonged to a request; none is wasted while nothing times out), so a window that completes only
    a few large requests still measures it well. ``delivered_in_window_over_engine`` is the same ratio
    from the requests that completed inside the window (noisy when requests are long).
    """
    done = [lv for lv in levels if lv.get("engine_tiles_per_s")]
    if not done or "tiles_per_s" not in engine:
        return None
    sat = max(done, key=lambda lv: lv["engine_tiles_per_s"])
    px = sat.get("mix_px_per_tile") or 0.0
    return {
        "saturation_concurrency": sat["concurrency"],
        "service_tiles_per_s": sat["engine_tiles_per_s"],
        "engine_tiles_per_s": engine["tiles_per_s"],
        "service_over_engine": sat["engine_tiles_per_s"] / engine["tiles_per_s"],
        "delivered_in_window_over_engine": sat["tiles_per_s"] / engine["tiles_per_s"],
        "output_px_per_tile": px,
        "service_output_mpx_per_s": sat["engine_tiles_per_s"] * px / 1e6,
        "engine_output_mpx_per_s": engine["tiles_per_s"] * px / 1e6,
        "wasted": {"errors": sat["errors"], "rejected_503": sat["rejected_503"]},
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
                f"p50 {lat['p50']:.0f} ms, p99 {lat['p99']:.0f} ms, 503s {level['rejected_503']}, "
                f"errors {level['errors']}, engine {level['engine_tiles_per_s'] or 0:.2f} tiles/s",
                file=sys.stderr,
            )
            out.append(level)
    return out, probe


def load_phase(url: str, levels, duration_s, n_requests, warmup_s, probe_n: int) -> tuple:
    """``(model info, request mix summary, level results, probe)`` against a running service."""
    info = fetch_model(url)
    serving = info["serving"]
    mix = build_mix(serving["tile"], serving["margin"])
    results, probe = asyncio.run(_levels(url, mix, levels, duration_s, n_requests, warmup_s, probe_n))
    mix_doc = [
        {
            "name": r.name,
            "scale": r.scale,
            "output": f"{r.out_w}x{r.out_h}",
            "tiles": r.tiles,
            "source": r.source,
        }
        for r in mix
    ]
    return info, mix_doc, results, probe


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
        lines.append(
            f"- raw engine: {eng['ms_median']:.1f} ms per batch of {eng['max_batch']} x {eng['tile']}^2 "
            f"= {eng['tiles_per_s']:.1f} tiles/s"
        )
    else:
        lines.append(f"- raw engine: skipped ({eng.get('skipped')})")
    if ov:
        lines.append(
            f"- **service ÷ raw engine** at saturation (concurrency {ov['saturation_concurrency']}): "
            f"{ov['service_over_engine']:.3f} ({ov['service_tiles_per_s']:.2f} vs "
            f"{ov['engine_tiles_per_s']:.2f} tiles/s = {ov['service_output_mpx_per_s']:.4f} vs "
            f"{ov['engine_output_mpx_per_s']:.4f} output Mpx/s); from requests completed in the window: "
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
            info, mix, results, probe = load_phase(svc.url, levels, duration, n_requests, warmup, probe_n)
            settings = service_settings(svc.overrides)
            engine = measure_engine(
                info, settings, args.engine_seconds or 10.0, quick, fallback, probe["tiles"]
            )
            spawned = {"url": svc.url, "env": svc.overrides, "startup_s": svc.startup_s}
    else:
        check_loopback(args.url, args.allow_remote)
        if args.model != "default" and Path(args.model).suffix == ".onnx":
            fallback = Path(args.model)
        info, mix, results, probe = load_phase(args.url, levels, duration, n_requests, warmup, probe_n)
        settings = service_settings(overrides)
        engine = measure_engine(info, settings, args.engine_seconds or 10.0, quick, fallback, probe["tiles"])
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
        request_mix=mix,
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
