"""Closed-loop HTTP load against ``POST /upscale`` (asyncio + httpx); the request mix is
:mod:`bench.request_mix`.

Closed loop: ``concurrency`` workers each send a request, wait for the answer, send the next. A 503 makes
that worker wait its ``Retry-After`` (capped at 1 s) before the next request, so a saturated service is not
hammered by a busy loop. Time-based levels discard a warmup period and count the requests that *complete*
inside the measured window, and read the engine's tile rate over the same window from ``/metrics``;
count-based levels (``--requests``, ``--quick``) count everything.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from bench.report import percentile
from bench.request_mix import Req, png_size


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text format -> ``{"name{labels}": value}`` summed over the ``model`` label (the bench
    measures the whole service; a sample without other labels is keyed by its bare name)."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = {k: v for k, v in s.labels.items() if k != "model"}
            inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
            key = f"{s.name}{{{inner}}}" if inner else s.name
            out[key] = out.get(key, 0.0) + s.value
    return out


def metrics_delta(before: dict[str, float], after: dict[str, float], wall_s: float) -> dict[str, Any]:
    """Mean tiles per engine run, requests per run, engine busy fraction and rejections by reason."""

    def d(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    runs = d("drrn_batch_size_tiles_count")
    rejections = {
        k.split('reason="')[1].rstrip('"}'): int(d(k))
        for k in after
        if k.startswith("drrn_rejections_total{") and d(k) > 0
    }
    return {
        "engine_runs": int(runs),
        # tiles the service's engine finished inside the window, whoever they belong to: on a slow box a
        # 20 s window completes only a few large requests, but the engine's tile rate is well sampled
        "engine_tiles_per_s": d("drrn_batch_size_tiles_sum") / wall_s if wall_s > 0 else None,
        "mean_batch_tiles": d("drrn_batch_size_tiles_sum") / runs if runs else None,
        "mean_batch_requests": d("drrn_batch_requests_sum") / runs if runs else None,
        "engine_busy_frac": d("drrn_inference_batch_seconds_sum") / wall_s if wall_s > 0 else None,
        "server_rejections": rejections,
    }


@dataclass
class Record:
    name: str
    status: int  # HTTP status, or 0 for a transport failure
    t_start: float
    t_done: float
    out_px: int = 0
    tiles: int = 0
    error: str | None = None
    retry_after: float = 0.0


async def send(client: Any, url: str, req: Req) -> Record:
    """POST one request; a 200 whose PNG has the wrong size counts as an error."""
    import httpx

    t0 = time.perf_counter()
    try:
        resp = await client.post(
            f"{url}/upscale",
            params={"scale": f"{req.scale:g}"},
            content=req.body,
            headers={"content-type": "image/png"},
        )
    except httpx.HTTPError as exc:
        return Record(req.name, 0, t0, time.perf_counter(), error=type(exc).__name__)
    rec = Record(req.name, resp.status_code, t0, time.perf_counter())
    if resp.status_code == 200:
        if png_size(resp.content) != (req.out_w, req.out_h):
            rec.error = f"bad output size {png_size(resp.content)}"
        else:
            rec.out_px, rec.tiles = req.out_w * req.out_h, req.tiles
    elif resp.status_code == 503:
        try:
            rec.retry_after = float(resp.headers.get("retry-after", "1"))
        except ValueError:
            rec.retry_after = 1.0
    else:
        rec.error = f"http {resp.status_code}"
    return rec


async def _scrape(client: Any, url: str) -> dict[str, float]:
    return (await _timed_scrape(client, url))[0]


async def _timed_scrape(client: Any, url: str) -> tuple[dict[str, float], float]:
    """The metrics and when (``perf_counter``) they were read: the midpoint of the scrape, which on a busy
    box can come well after it was asked for."""
    t0 = time.perf_counter()
    resp = await client.get(f"{url}/metrics")
    resp.raise_for_status()
    return parse_metrics(resp.text), (t0 + time.perf_counter()) / 2


async def latency_probe(
    client: Any,
    url: str,
    req: Req,
    n: int,
    engine_run: Callable[[], None] | None = None,
    settle_s: float = 0.25,
) -> dict[str, Any]:
    """``n`` sequential requests of one kind on an otherwise idle service (concurrency 1). With
    ``engine_run`` (the same tiles on the engine alone), each request is followed by one timed engine run,
    so both sides are measured in the same minutes, and the overhead is the median of the pairs'
    differences."""
    lat, eng = [], []
    if engine_run is not None:
        engine_run()  # untimed: the first run of a session pays its allocations
    for _ in range(n):
        await asyncio.sleep(settle_s)
        rec = await send(client, url, req)
        if rec.status != 200 or rec.error is not None:
            continue
        lat.append((rec.t_done - rec.t_start) * 1000)
        if engine_run is not None:
            # On a small box the two processes' thread pools share the cores: let the service's threads
            # go idle (ONNX Runtime's spin after a run, the access log) before timing the engine alone.
            await asyncio.sleep(settle_s)
            t0 = time.perf_counter()
            engine_run()
            eng.append((time.perf_counter() - t0) * 1000)
    out = {
        "request": req.name,
        "tiles": req.tiles,
        "n": len(lat),
        "p50_ms": percentile(lat, 50),
        "p90_ms": percentile(lat, 90),
        "min_ms": min(lat) if lat else None,
        "engine_p50_ms": percentile(eng, 50) if eng else None,
    }
    out["overhead_p50_ms"] = percentile([a - b for a, b in zip(lat, eng, strict=True)], 50) if eng else None
    return out


async def wait_idle(client: Any, url: str, timeout_s: float = 60.0) -> float:
    """Wait until the service has no queued tiles and no request in flight; returns the seconds waited."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout_s:
        m = await _scrape(client, url)
        if m.get("drrn_queue_depth_tiles", 0.0) == 0 and m.get("drrn_inflight_requests", 0.0) == 0:
            break
        await asyncio.sleep(0.2)
    return time.perf_counter() - t0


async def run_level(
    client: Any,
    url: str,
    mix: list[Req],
    concurrency: int,
    duration_s: float | None = None,
    n_requests: int | None = None,
    warmup_s: float = 0.0,
    drain_s: float = 120.0,
) -> dict[str, Any]:
    """One closed-loop level: ``n_requests`` in total, or ``warmup_s`` + ``duration_s`` of time.

    A time-based level stops issuing at the end of the window and lets the requests in flight finish
    (up to ``drain_s``, then they are cancelled and counted in ``cancelled_at_drain``), so that the slow
    requests are in the latency percentiles, which are over the requests *started* in the window. Rates
    are over the window: the client's from the requests that completed in it, the engine's from the
    ``/metrics`` deltas between two scrapes, over the time between the scrapes. It then waits for the
    service to go idle, so levels do not overlap.
    """
    if (duration_s is None) == (n_requests is None):
        raise ValueError("give exactly one of duration_s and n_requests")
    records: list[Record] = []
    issued = 0
    t0 = time.perf_counter()
    start = t0 + (warmup_s if duration_s is not None else 0.0)
    stop = start + duration_s if duration_s is not None else float("inf")

    async def worker(i: int) -> None:
        nonlocal issued
        k = i
        while (issued < n_requests) if n_requests is not None else time.perf_counter() < stop:
            issued += 1
            rec = await send(client, url, mix[k % len(mix)])
            k += 1
            records.append(rec)
            if rec.status == 503:
                await asyncio.sleep(min(rec.retry_after, 1.0))
            elif rec.status == 0:
                await asyncio.sleep(0.2)  # transport failure: do not spin on a dead service

    extra: dict[str, Any] = {}
    if n_requests is not None:
        before, t_before = await _timed_scrape(client, url)
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        after, t_after = await _timed_scrape(client, url)
        window = started = list(records)
        wall = max(r.t_done for r in records) - t0 if records else 0.0
    else:
        tasks = [asyncio.create_task(worker(i)) for i in range(concurrency)]
        await asyncio.sleep(max(0.0, start - time.perf_counter()))
        before, t_before = await _timed_scrape(client, url)
        await asyncio.sleep(max(0.0, stop - time.perf_counter()))
        after, t_after = await _timed_scrape(client, url)
        in_flight = sum(not t.done() for t in tasks)
        _, pending = await asyncio.wait(tasks, timeout=drain_s)
        for t in pending:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        window = [r for r in records if start <= r.t_done <= stop]
        started = [r for r in records if start <= r.t_start < stop]
        wall = stop - start
        extra = {
            "in_flight_at_stop": in_flight,
            "cancelled_at_drain": len(pending),
            "idle_wait_s": round(await wait_idle(client, url), 2),
        }
    px_per_tile = sum(r.out_w * r.out_h for r in mix) / max(1, sum(r.tiles for r in mix))
    server = metrics_delta(before, after, t_after - t_before)
    return {**summarize_level(window, concurrency, wall, server, px_per_tile, started), **extra}


# Fewer samples than these give a percentile that is only the largest value or two: reported as None.
MIN_SAMPLES = {"p95": 20, "p99": 100}


def latency_summary(records: list[Record]) -> dict[str, Any]:
    """p50/p95/p99/mean/max latency (ms) of the successful ``records`` and their number ``n``; a tail
    percentile with fewer than :data:`MIN_SAMPLES` samples is None."""
    lat = [(r.t_done - r.t_start) * 1000 for r in records if r.status == 200 and r.error is None]
    out: dict[str, Any] = {"n": len(lat), "p50": percentile(lat, 50)}
    for key, q in (("p95", 95), ("p99", 99)):
        out[key] = percentile(lat, q) if len(lat) >= MIN_SAMPLES[key] else None
    out["mean"], out["max"] = (sum(lat) / len(lat), max(lat)) if lat else (None, None)
    return out


def p50_by_request(records: list[Record]) -> dict[str, float]:
    by_name: dict[str, list[float]] = {}
    for r in records:
        if r.status == 200 and r.error is None:
            by_name.setdefault(r.name, []).append((r.t_done - r.t_start) * 1000)
    return {k: percentile(v, 50) for k, v in sorted(by_name.items())}


def summarize_level(
    records: list[Record],
    concurrency: int,
    wall_s: float,
    server: dict[str, Any],
    mix_px_per_tile: float | None = None,
    started: list[Record] | None = None,
) -> dict[str, Any]:
    """Throughput and failure counts of the requests completed in a window, and the latency of those
    ``started`` in it (default: the same records; see :func:`latency_summary`).

    ``engine_output_mpx_per_s`` is the service engine's tile rate (from ``/metrics``) times the mix's mean
    output pixels per tile: what the service delivers in steady state, when no tile is wasted.
    """
    ok = [r for r in records if r.status == 200 and r.error is None]
    errors: dict[str, int] = {}
    for r in records:
        if r.error is not None:
            errors[r.error] = errors.get(r.error, 0) + 1
    w = wall_s if wall_s > 0 else float("nan")
    out_px, tiles = sum(r.out_px for r in ok), sum(r.tiles for r in ok)
    timed = records if started is None else started
    return {
        "concurrency": concurrency,
        "wall_s": wall_s,
        "completed": len(records),
        "ok": len(ok),
        "rejected_503": sum(r.status == 503 for r in records),
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "req_per_s": len(ok) / w,
        "output_mpx_per_s": out_px / w / 1e6,
        "tiles_per_s": tiles / w,
        "output_px": out_px,
        "tiles": tiles,
        "latency_ms": latency_summary(timed),
        "p50_ms_by_request": p50_by_request(timed),
        **server,
        "mix_px_per_tile": mix_px_per_tile,
        "engine_output_mpx_per_s": (
            server["engine_tiles_per_s"] * mix_px_per_tile / 1e6
            if mix_px_per_tile and server.get("engine_tiles_per_s") is not None
            else None
        ),
    }
