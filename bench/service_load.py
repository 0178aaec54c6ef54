"""``drrn bench service``: closed-loop load on the HTTP service, then the raw engine on the same tiles.

Per concurrency level (1, 2, 4, 8, 16, 32; ``--quick``: 1 and 4 with a few requests) it reports req/s,
delivered output Mpx/s, p50/p95/p99 latency, 503 rejections and errors, and from the service's ``/metrics``
(deltas over the measured window) the mean engine batch size (``drrn_batch_size_tiles_sum / _count``), the
mean requests per batch and the engine busy fraction. See :mod:`bench.loadgen` for the request mix.

**Overhead ratio.** After the load, the same engine the service runs (model file, tile, max_batch and
threads from ``GET /v1/model`` and the service's ``DRRN_*`` settings) is built in this process with
:class:`service.engine.OrtEngine` and timed on full batches. Both sides are counted in *delivered output
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

from bench.cli import env_pairs, int_list
from bench.loadgen import build_mix, run_level
from bench.report import header, load_average, markdown_table, summarize_ms, time_calls, write_json
from drrn.errors import UserError
from drrn.paths import PROJECT_ROOT

DEFAULT_PLOT = PROJECT_ROOT / "docs" / "bench" / "latency_throughput.png"
LEVELS, QUICK_LEVELS = (1, 2, 4, 8, 16, 32), (1, 4)


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


def measure_engine(info: dict[str, Any], settings, seconds: float, quick: bool, fallback: Path | None):
    """Full-batch runs of the service's engine rebuilt locally; ``{"tiles_per_s", ...}`` or a skip reason."""
    from service.engine import CUDA, OrtEngine, select_providers

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
    }


def overhead(levels: list[dict[str, Any]], engine: dict[str, Any]) -> dict[str, Any] | None:
    """Service Mpx/s at saturation vs the engine's Mpx/s for the same tiles (see the module docstring)."""
    done = [lv for lv in levels if lv["tiles"] > 0]
    if not done or "tiles_per_s" not in engine:
        return None
    sat = max(done, key=lambda lv: lv["output_mpx_per_s"])
    px_per_tile = sat["output_px"] / sat["tiles"]
    engine_mpx = engine["tiles_per_s"] * px_per_tile / 1e6
    return {
        "saturation_concurrency": sat["concurrency"],
        "service_output_mpx_per_s": sat["output_mpx_per_s"],
        "engine_output_mpx_per_s": engine_mpx,
        "output_px_per_tile": px_per_tile,
        "service_tiles_per_s": sat["tiles_per_s"],
        "engine_tiles_per_s": engine["tiles_per_s"],
        "service_over_engine": sat["output_mpx_per_s"] / engine_mpx,
        "pixel_convention": "delivered output pixels of the same tiles (cores incl. edge tiles)",
    }


async def _levels(url: str, mix, levels, duration_s, n_requests, warmup_s) -> list[dict[str, Any]]:
    import httpx

    limits = httpx.Limits(max_connections=max(levels) + 4, max_keepalive_connections=max(levels) + 4)
    out = []
    async with httpx.AsyncClient(timeout=httpx.Timeout(300.0), limits=limits) as client:
        for c in levels:
            level = await run_level(client, url, mix, c, duration_s, n_requests, warmup_s)
            lat = level["latency_ms"]
            print(
                f"  concurrency {c}: {level['req_per_s']:.2f} req/s, {level['output_mpx_per_s']:.3f} Mpx/s, "
                f"p50 {lat['p50']:.0f} ms, p99 {lat['p99']:.0f} ms, 503s {level['rejected_503']}, "
                f"errors {level['errors']}",
                file=sys.stderr,
            )
            out.append(level)
    return out


def load_phase(url: str, levels, duration_s, n_requests, warmup_s) -> tuple[dict, list, list]:
    """``(model info, request mix summary, level results)`` against a running service."""
    info = fetch_model(url)
    serving = info["serving"]
    mix = build_mix(serving["tile"], serving["margin"])
    results = asyncio.run(_levels(url, mix, levels, duration_s, n_requests, warmup_s))
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
    return info, mix_doc, results


COLUMNS = [
    ("concurrency", "conc."), ("req_per_s", "req/s"), ("output_mpx_per_s", "out Mpx/s"), ("p50", "p50 ms"),
    ("p95", "p95 ms"), ("p99", "p99 ms"), ("rejected_503", "503s"), ("errors", "errors"),
    ("mean_batch_tiles", "mean batch"), ("engine_busy_frac", "engine busy"),
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
            f"{ov['service_over_engine']:.2f} ({ov['service_output_mpx_per_s']:.3f} vs "
            f"{ov['engine_output_mpx_per_s']:.3f} output Mpx/s)"
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
    fallback = None
    if args.spawn:
        from bench.spawn import SpawnedService, serve_model_path

        fallback = serve_model_path(args.model)
        with SpawnedService(overrides, fallback) as svc:
            info, mix, results = load_phase(svc.url, levels, duration, n_requests, warmup)
            settings = service_settings(svc.overrides)
            engine = measure_engine(info, settings, args.engine_seconds or 10.0, quick, fallback)
            spawned = {"url": svc.url, "env": svc.overrides, "startup_s": svc.startup_s}
    else:
        check_loopback(args.url, args.allow_remote)
        if args.model != "default" and Path(args.model).suffix == ".onnx":
            fallback = Path(args.model)
        info, mix, results = load_phase(args.url, levels, duration, n_requests, warmup)
        settings = service_settings(overrides)
        engine = measure_engine(info, settings, args.engine_seconds or 10.0, quick, fallback)
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
    )
    report["machine"]["load_average_end"] = load_average()
    print(render(report))
    write_json(report, args.json_out)
    plot_path = args.plot or (None if quick else str(DEFAULT_PLOT))
    if plot_path:
        from bench.plot import plot_latency_throughput

        plot_latency_throughput(report, plot_path)
    return report
