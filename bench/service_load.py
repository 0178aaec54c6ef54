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

from bench.loadgen import latency_probe, run_level
from bench.options import env_pairs, int_list
from bench.report import header, load_average, markdown_table, write_json
from bench.request_mix import Req, build_mix
from bench.service_engine import (
    latency_check,
    measure_engine,
    mix_pass_timer,
    open_served_engine,
    overhead,
    probe_runner,
)
from drrn.errors import UserError
from drrn.paths import PROJECT_ROOT

DEFAULT_PLOT = PROJECT_ROOT / "docs" / "bench" / "latency_throughput.png"
LEVELS, QUICK_LEVELS = (1, 2, 4, 8, 16, 32), (1, 4)
PROBE_REQUEST = "crop64_x2"
PAIR_SETTLE_S = 0.25  # before timing the engine alone right after the service worked
# 2: the engine is the served precision's file timed on the mix's tile shapes, the ratio a mean over the
# saturated levels, latency over the requests started in a window (p95/p99 None on few samples), and the
# concurrency-1 overhead from alternating pairs. Version 1 numbers are not comparable.
SCHEMA_VERSION = 2
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


async def _levels(
    url: str, mix, levels, duration_s, n_requests, warmup_s, probe_n: int, engine_run, mix_timer
):
    """``(level results, concurrency-1 probe)``: the probe runs first, on the idle service, alternating
    with ``engine_run`` (the probe's tiles on the rebuilt engine) when there is one; after each level, once
    the service is idle, ``mix_timer`` times the engine alone on one pass of the mix."""
    import httpx

    limits = httpx.Limits(max_connections=max(levels) + 4, max_keepalive_connections=max(levels) + 4)
    out = []
    async with httpx.AsyncClient(timeout=httpx.Timeout(900.0), limits=limits) as client:
        req = next(r for r in mix if r.name == PROBE_REQUEST)
        probe = await latency_probe(client, url, req, probe_n, engine_run, PAIR_SETTLE_S)
        print(f"  probe {req.name} at concurrency 1: p50 {probe['p50_ms']:.1f} ms", file=sys.stderr)
        for c in levels:
            level = await run_level(client, url, mix, c, duration_s, n_requests, warmup_s)
            if mix_timer is not None:
                await asyncio.sleep(PAIR_SETTLE_S)  # the service's threads idle first, as in the probe
                level["engine_alone_tiles_per_s"] = mix_timer()
            lat = level["latency_ms"]
            print(
                f"  concurrency {c}: {level['req_per_s']:.2f} req/s, {level['output_mpx_per_s']:.3f} Mpx/s, "
                f"p50 {lat['p50']:.0f} ms (n {lat['n']}), 503s {level['rejected_503']}, "
                f"errors {level['errors']}, engine {level['engine_tiles_per_s'] or 0:.2f} tiles/s",
                file=sys.stderr,
            )
            out.append(level)
    return out, probe


def measure(url: str, load: dict[str, Any], settings, fallback: Path | None, seconds: float, quick: bool):
    """``(model info, mix, level results, probe, engine)`` against a running service: the engine it runs is
    rebuilt here first (for the probe's pairs), and timed on the mix's tiles after the load."""
    info = fetch_model(url)
    serving = info["serving"]
    mix = build_mix(serving["tile"], serving["margin"], serving.get("tile_shape", "fit"))
    engine = open_served_engine(info, settings, fallback)
    probe_req = next(r for r in mix if r.name == PROBE_REQUEST)
    run = None if isinstance(engine, str) else probe_runner(engine, probe_req)
    timer = None if isinstance(engine, str) else mix_pass_timer(engine, mix)
    args = load["levels"], load["duration_s"], load["n_requests"], load["warmup_s"], load["probe_n"]
    results, probe = asyncio.run(_levels(url, mix, *args, run, timer))
    if isinstance(engine, str):
        return info, mix, results, probe, {"skipped": engine}
    try:
        return info, mix, results, probe, measure_engine(engine, info, settings, seconds, quick, mix)
    finally:
        engine.close()


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
        if ov.get("paired_service_over_engine"):
            lo, hi = ov["paired_range"]
            lines.append(
                f"- **paired**, each level against the engine alone right after it: "
                f"{ov['paired_service_over_engine']:.3f} (levels {lo:.3f}-{hi:.3f})"
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
    load = {"levels": levels, "duration_s": duration, "n_requests": n_requests, "warmup_s": warmup}
    load["probe_n"] = 3 if quick else 30
    seconds = args.engine_seconds or 10.0
    if args.spawn:
        from bench.spawn import SpawnedService, serve_model_path

        fallback = serve_model_path(args.model)
        with SpawnedService({**SPAWN_DEFAULTS, **overrides}, fallback) as svc:
            settings = service_settings(svc.overrides)
            info, mix_reqs, results, probe, engine = measure(
                svc.url, load, settings, fallback, seconds, quick
            )
            spawned = {"url": svc.url, "env": svc.overrides, "startup_s": svc.startup_s}
    else:
        check_loopback(args.url, args.allow_remote)
        fallback = Path(args.model) if Path(args.model).suffix == ".onnx" else None
        settings = service_settings(overrides)
        info, mix_reqs, results, probe, engine = measure(args.url, load, settings, fallback, seconds, quick)
        engine["threads_source"] = "this process's DRRN_* env (GET /v1/models does not report threads)"
        spawned = None
    report = header(
        "service",
        quick,
        SCHEMA_VERSION,
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
        latency_c1=latency_check(probe),
    )
    report["machine"]["load_average_end"] = load_average()
    print(render(report))
    write_json(report, args.json_out)
    plot_path = args.plot or (None if quick else str(DEFAULT_PLOT))
    if plot_path:
        from bench.plot import plot_latency_throughput

        plot_latency_throughput(report, plot_path)
    return report
