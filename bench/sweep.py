"""``drrn bench service --spawn --sweep``: choose the service's defaults from data.

For each setting combination a fresh service is spawned (``DRRN_<NAME>=value`` on top of ``--set``) and one
closed-loop level runs at ``--sweep-concurrency`` (default 8) for ``--duration`` seconds (default 15, after a
3 s warmup). Modes: ``oat`` (default) varies one parameter at a time around the current defaults; ``grid``
runs the full product. Parameters default to::

    max_batch=2,4,8,16  max_delay_ms=0,2,5,10  tile=96,128,192  intra_op_threads=1,<cores>

and ``--sweep-param NAME=V1,V2`` (repeatable) replaces that set. The report ranks runs by delivered output
Mpx/s and shows p50/p99 latency next to it, because the best throughput is not always an acceptable latency.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import sys
from typing import Any

from bench.loadgen import run_level
from bench.options import env_pairs
from bench.report import header, markdown_table, write_json
from bench.request_mix import build_mix
from bench.service_load import SPAWN_DEFAULTS, fetch_model, service_settings
from drrn.errors import UserError


def default_params(quick: bool) -> dict[str, list[Any]]:
    if quick:
        return {"max_batch": [2, 4]}
    cores = os.cpu_count() or 1
    return {
        "max_batch": [2, 4, 8, 16],
        "max_delay_ms": [0, 2, 5, 10],
        "tile": [96, 128, 192],
        "intra_op_threads": sorted({1, cores}),
    }


def parse_params(items: list[str] | None, quick: bool) -> dict[str, list[Any]]:
    """``["max_batch=4,8"]`` -> ``{"max_batch": ["4", "8"]}`` (values stay strings: they become env vars)."""
    if not items:
        return default_params(quick)
    out = {}
    for item in items:
        name, sep, values = item.partition("=")
        if not sep or not values:
            raise UserError(f"--sweep-param expects NAME=V1,V2, got {item!r}")
        out[name.strip().lower()] = [v.strip() for v in values.split(",") if v.strip()]
    return out


def combinations(params: dict[str, list[Any]], base: dict[str, Any], mode: str) -> list[dict[str, Any]]:
    """Settings to run, as ``{name: value}`` diffs from the base (``{}`` is the base itself)."""
    if mode == "grid":
        names = list(params)
        return [dict(zip(names, vals, strict=True)) for vals in itertools.product(*params.values())]
    combos: list[dict[str, Any]] = [{}]
    for name, values in params.items():
        combos += [{name: v} for v in values if not _same(v, base.get(name))]
    return combos


def _same(a: Any, b: Any) -> bool:
    """``8 == "8" == 8.0``: sweep values are strings or numbers, settings are typed."""
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return str(a) == str(b)


async def _one_level(url: str, concurrency: int, duration, n_requests, warmup) -> dict[str, Any]:
    import httpx

    info = fetch_model(url)
    serving = info["serving"]
    mix = build_mix(serving["tile"], serving["margin"], serving.get("tile_shape", "fit"))
    async with httpx.AsyncClient(timeout=httpx.Timeout(900.0)) as client:
        return await run_level(client, url, mix, concurrency, duration, n_requests, warmup)


COLUMNS = [
    ("label", "setting"), ("engine_output_mpx_per_s", "out Mpx/s"), ("engine_tiles_per_s", "tiles/s"),
    ("output_mpx_per_s", "completed Mpx/s"), ("req_per_s", "req/s"), ("p50", "p50 ms"),
    ("p99", "p99 ms"), ("mean_batch_tiles", "mean batch"), ("rejected_503", "503s"), ("errors", "errors"),
    ("startup_s", "startup s"),
]  # fmt: skip


def run_sweep(args: argparse.Namespace) -> dict[str, Any]:
    """Spawn one service per setting combination, load it, rank the results; writes JSON when asked."""
    from bench.spawn import SpawnedService, serve_model_path

    if not args.spawn:
        raise UserError("--sweep spawns one service per setting: add --spawn")
    quick = args.quick
    overrides = {**SPAWN_DEFAULTS, **env_pairs(args.set)}
    base_settings = service_settings(overrides)
    params = parse_params(args.sweep_param, quick)
    unknown = [p for p in params if p not in type(base_settings).model_fields]
    if unknown:
        raise UserError(f"unknown service settings {unknown} (see service/settings.py)")
    base = {p: getattr(base_settings, p) for p in params}
    n_requests = args.requests or (4 if quick else None)
    duration = None if n_requests else (args.duration or 15.0)
    warmup = 0.0 if n_requests else 3.0
    concurrency = args.sweep_concurrency
    model = serve_model_path(args.model)
    runs = []
    for diff in combinations(params, base, args.sweep_mode):
        label = ", ".join(f"{k}={v}" for k, v in diff.items()) or "base"
        env = {**overrides, **{f"DRRN_{k.upper()}": str(v) for k, v in diff.items()}}
        print(f"sweep: {label}", file=sys.stderr)
        try:
            with SpawnedService(env, model) as svc:
                level = asyncio.run(_one_level(svc.url, concurrency, duration, n_requests, warmup))
                runs.append(
                    {"label": label, "settings": {**base, **diff}, "startup_s": svc.startup_s, **level}
                )
        except Exception as exc:  # e.g. a tile too small for the margin: record it, go on
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            runs.append({"label": label, "settings": {**base, **diff}, "error": msg})
    ok = [r for r in runs if "error" not in r]
    # ranked on the engine's tile rate over the window (from /metrics) x the mix's output px per tile:
    # a 15 s window completes too few large requests on a CPU box to rank on completions alone
    ranked = sorted(ok, key=lambda r: -(r["engine_output_mpx_per_s"] or 0.0))
    report = header(
        "sweep",
        quick,
        model=str(model),
        mode=args.sweep_mode,
        params={k: [str(v) for v in vs] for k, vs in params.items()},
        base={k: str(v) for k, v in base.items()},
        concurrency=concurrency,
        load={"duration_s": duration, "warmup_s": warmup, "requests": n_requests},
        runs=runs,
        best=ranked[0]["label"] if ranked else None,
    )
    rows = [{**r, **r.get("latency_ms", {})} for r in ranked]
    print(markdown_table(rows, COLUMNS))
    for r in runs:
        if "error" in r:
            print(f"- {r['label']}: failed: {r['error']}")
    write_json(report, args.json_out)
    return report
