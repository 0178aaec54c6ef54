"""``drrn bench soak``: a spawned ``drrn serve`` under thousands of mixed requests, with its memory watched.

``concurrency`` closed-loop workers (default 16) send ``requests`` requests (default 5,000) drawn by
:mod:`bench.soak_traffic` (every accepted format and mode, sizes from 16 px to the output limit, scales
1.5 to 4, both models, 5% malformed, 2% client aborts). A 503 makes its worker wait its ``Retry-After``
(capped at 1 s), as :mod:`bench.loadgen` does. A thread reads the server process's ``VmRSS`` from
``/proc/<pid>/status`` each second. ``/metrics`` is scraped before and after (deltas: engine seconds
thrown away on requests that ended in 504, rejections by reason), and once the service is idle again its
in-flight and queue gauges must be back at 0. :mod:`bench.soak_report` turns the records into windows,
pass criteria, a markdown summary and the plot; the command exits non-zero when a criterion fails.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlparse

from bench.loadgen import parse_metrics, wait_idle
from bench.options import env_pairs, int_list
from bench.report import header, load_average, write_json
from bench.request_mix import png_size
from bench.soak_report import criteria, plot_soak, render, windows
from bench.soak_traffic import SoakRequest, make_request
from drrn.paths import PROJECT_ROOT

DEFAULT_PLOT = PROJECT_ROOT / "docs" / "bench" / "soak.png"
CLIENT_TIMEOUT_S = 120.0  # well past the service's 30 s deadline: a request still unanswered then is lost


@dataclass
class SoakRecord:
    """What happened to one request. ``status``: HTTP status; 0 = no answer (transport failure or
    client timeout); -1 = deliberately aborted by the client (``seen_status``: what it saw before, if any).
    """

    index: int
    kind: str
    detail: str
    model: str
    status: int
    t_start: float
    t_done: float
    code: str | None = None  # the JSON error code of a non-200 answer
    retry_after: float | None = None  # a 503's Retry-After; None when the header was missing
    wrong_output: str | None = None  # a 200 whose PNG is not the expected size
    seen_status: int | None = None
    output: str = ""  # "WxH @ scale" asked for (valid and aborted requests)


def rss_kib(pid: int) -> int | None:
    """``VmRSS`` of process ``pid`` in KiB, or None once it has gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


class RssSampler(threading.Thread):
    """Samples ``(seconds since t0, RSS KiB, requests answered so far)`` every ``period_s``."""

    def __init__(self, pid: int, records: list[SoakRecord], t0: float, period_s: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.pid, self.records, self.t0, self.period_s = pid, records, t0, period_s
        self.samples: list[tuple[float, int, int]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            kib = rss_kib(self.pid)
            if kib is not None:
                self.samples.append((time.perf_counter() - self.t0, kib, len(self.records)))
            self._halt.wait(self.period_s)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)


def _error_code(resp: Any) -> str | None:
    try:
        body = resp.json()
    except ValueError:
        return None
    return body.get("error") if isinstance(body, dict) else None


async def post(client: Any, url: str, req: SoakRequest) -> SoakRecord:
    """Send a ``valid`` or ``malformed`` request; check a 200's PNG size against the expected output."""
    import httpx

    rec = SoakRecord(req.index, req.kind, req.detail, req.model, 0, time.perf_counter(), 0.0)
    rec.output = f"{req.out_w}x{req.out_h} @ {req.scale:g}" if req.out_w else ""
    try:
        resp = await client.post(
            f"{url}/upscale", params=req.params, content=req.body, headers={"content-type": req.content_type}
        )
    except httpx.HTTPError as exc:
        rec.t_done, rec.code = time.perf_counter(), f"transport:{type(exc).__name__}"
        return rec
    rec.t_done, rec.status = time.perf_counter(), resp.status_code
    if resp.status_code == 200:
        if req.kind == "valid" and png_size(resp.content) != (req.out_w, req.out_h):
            rec.wrong_output = f"got {png_size(resp.content)}, expected {(req.out_w, req.out_h)}"
        return rec
    rec.code = _error_code(resp)
    if resp.status_code == 503 and "retry-after" in resp.headers:
        try:
            rec.retry_after = float(resp.headers["retry-after"])
        except ValueError:
            rec.retry_after = None
    return rec


async def abort(url: str, req: SoakRequest, rng_delay: float) -> SoakRecord:
    """Send ``req`` on a raw socket and close it: mid-upload (half the body sent), mid-wait (whole body
    sent, closed ``rng_delay`` s later, before any answer), or mid-response (after the first bytes)."""
    rec = SoakRecord(req.index, "abort", req.detail, req.model, -1, time.perf_counter(), 0.0)
    u = urlparse(url)
    head = (
        f"POST /upscale?{urlencode(req.params)} HTTP/1.1\r\nHost: {u.netloc}\r\n"
        f"Content-Type: {req.content_type}\r\nContent-Length: {len(req.body)}\r\n\r\n"
    ).encode()
    try:
        reader, writer = await asyncio.open_connection(u.hostname, u.port)
    except OSError as exc:
        rec.t_done, rec.status, rec.code = time.perf_counter(), 0, f"transport:{type(exc).__name__}"
        return rec
    try:
        if req.detail == "mid_upload":
            writer.write(head + req.body[: len(req.body) // 2])
            await writer.drain()
            await asyncio.sleep(rng_delay)
        else:
            writer.write(head + req.body)
            await writer.drain()
            if req.detail == "mid_wait":
                await asyncio.sleep(rng_delay)
            else:
                first = await asyncio.wait_for(reader.read(64), CLIENT_TIMEOUT_S)
                parts = first.split(b" ", 2)
                if len(parts) >= 2 and parts[1].isdigit():
                    rec.seen_status = int(parts[1])
    except (OSError, TimeoutError):
        pass  # the abort is the point: whatever the socket did meanwhile is not a result
    finally:
        writer.transport.abort()  # reset, not a graceful close: the rudest client
    rec.t_done = time.perf_counter()
    return rec


async def _scrape(client: Any, url: str) -> dict[str, float]:
    resp = await client.get(f"{url}/metrics")
    resp.raise_for_status()
    return parse_metrics(resp.text)


async def drive(url: str, n: int, concurrency: int, seed: int, models: list[str], limits: dict, mix: dict,
                records: list[SoakRecord]) -> dict[str, Any]:  # fmt: skip
    """Send the ``n`` requests with ``concurrency`` workers, appending to ``records`` as answers come;
    returns ``{"before", "after", "idle_wait_s"}`` (metrics dicts, scraped before and once idle after)."""
    import httpx

    next_index = 0
    t0 = time.perf_counter()
    limits_http = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(CLIENT_TIMEOUT_S), limits=limits_http) as client:

        async def worker() -> None:
            nonlocal next_index
            while next_index < n:
                i, next_index = next_index, next_index + 1
                req = await asyncio.to_thread(make_request, i, seed, models, limits, mix)
                if req.kind == "abort":
                    rec = await abort(url, req, 0.05 + (i % 10) * 0.05)
                else:
                    rec = await post(client, url, req)
                records.append(rec)
                if len(records) % 250 == 0:
                    ok = sum(r.status == 200 for r in records)
                    print(f"  {len(records)}/{n} answered ({ok} ok) after {time.perf_counter() - t0:.0f} s",
                          file=sys.stderr, flush=True)  # fmt: skip
                if rec.status == 503:
                    await asyncio.sleep(min(rec.retry_after or 1.0, 1.0))
                elif rec.status == 0:
                    await asyncio.sleep(0.2)  # no answer: do not spin on a dead service

        before = await _scrape(client, url)
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        idle_wait = await wait_idle(client, url, timeout_s=120.0)
        after = await _scrape(client, url)
    return {"before": before, "after": after, "idle_wait_s": round(idle_wait, 2)}


def server_counters(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """Deltas of the service's own counters over the soak, and its gauges once idle."""

    def d(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    rejections = {
        k.split('reason="')[1].split('"')[0]: int(d(k))
        for k in after
        if k.startswith("drrn_rejections_total{") and d(k) > 0
    }
    errors = {k: int(d(k)) for k in after if k.startswith("drrn_errors_total") and d(k) > 0}
    return {
        "deadline_engine_seconds": round(d("drrn_deadline_engine_seconds_total"), 3),
        "rejections_by_reason": rejections,
        "errors_by_kind": errors,
        "engine_seconds": round(d("drrn_inference_batch_seconds_sum"), 1),
        "engine_tiles": int(d("drrn_batch_size_tiles_sum")),
        "inflight_after": after.get("drrn_inflight_requests"),
        "queue_depth_tiles_after": after.get("drrn_queue_depth_tiles"),
        "uploading_after": after.get("drrn_uploading_requests"),
    }


def run_soak(args: argparse.Namespace) -> dict[str, Any]:
    """``drrn bench soak``: spawn, drive, summarise, write JSON and plot; ``report["verdict"]["passed"]``."""
    import httpx

    from bench.spawn import SpawnedService

    n = args.requests or 5000
    concurrency = (int_list(args.concurrency) or [16])[0]
    window = args.window or 500
    mix = {"large_frac": args.large_frac, "quality_frac": args.quality_frac, "max_side": args.max_side}
    records: list[SoakRecord] = []
    load_start = load_average()  # other work on a shared box slows the service; the JSON says how much
    with SpawnedService(env_pairs(args.set)) as svc:
        assert svc.proc is not None
        listing = httpx.get(f"{svc.url}/v1/models", timeout=10).json()
        default = listing["default"]
        models = [default] + [m["name"] for m in listing["models"] if m["name"] != default]
        entry = next(m for m in listing["models"] if m["name"] == default)
        t0 = time.perf_counter()
        sampler = RssSampler(svc.proc.pid, records, t0)
        sampler.start()
        try:
            run = drive(svc.url, n, concurrency, args.seed, models, entry["limits"], mix, records)
            scraped = asyncio.run(run)
            time.sleep(1.5)  # one more RSS sample with the service idle
        finally:
            sampler.stop()
        spawned = {"url": svc.url, "env": svc.overrides, "startup_s": svc.startup_s, "pid": svc.proc.pid}
    for r in records:
        r.t_start, r.t_done = r.t_start - t0, r.t_done - t0
    wins = windows(records, sampler.samples, window)
    server = server_counters(scraped["before"], scraped["after"])
    verdict = criteria(records, wins, sampler.samples, server, window)
    report = header(
        "soak",
        False,
        spawned=spawned,
        models=models,
        serving=entry["serving"],
        limits=entry["limits"],
        load={
            "requests": n,
            "concurrency": concurrency,
            "window": window,
            "seed": args.seed,
            "mix": mix,
            "wall_s": round(max((r.t_done for r in records), default=0.0), 1),
            "idle_wait_s": scraped["idle_wait_s"],
        },
        sent={
            "by_kind_detail": dict(sorted(Counter(f"{r.kind}:{r.detail}" for r in records).items())),
            "by_model": dict(Counter(r.model for r in records if r.kind == "valid")),
        },
        verdict=verdict,
        server=server,
        windows=wins,
        rss_samples=[[round(t, 1), kib, done] for t, kib, done in sampler.samples],
        failures=[asdict(r) for r in records if r.index in verdict["failed_indices"]][:50],
    )
    report["machine"]["load_average_start"] = load_start
    report["machine"]["load_average_end"] = load_average()
    print(render(report))
    write_json(report, args.json_out)
    plot_path = args.plot or (str(DEFAULT_PLOT) if n >= 5000 else None)
    if plot_path:
        plot_soak(report, plot_path)
    return report
