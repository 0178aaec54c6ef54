"""Windows, pass criteria, markdown summary and plot of a ``drrn bench soak`` run (:mod:`bench.soak`).

Windows are consecutive runs of ``window`` requests in the order their answers arrived. Per window: status
counts, p50/p99 latency of the 200s and of every answer, and the median and max of the server RSS samples
taken while it ran.

Pass criteria (all must hold):

- no 5xx other than 503 (500, 502, 504 ... are failures; a deliberate abort that saw one counts too), and
  every 503 carries ``Retry-After``;
- every request not deliberately aborted got an answer; every 200 has the expected output size; no valid
  image got a 4xx other than 413/503 (refusals by size or load); every malformed input got a 4xx;
- RSS growth after the first 1,000 requests < 10%: the median RSS of the last window over the median of
  the window that starts at request 1,000 (medians, so a large request's transient peak is not a trend);
- p99 latency of the 200s in the last window within 1.5x of the second window's;
- the service's in-flight, uploading and queue gauges back at 0 once it is idle.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from bench.plot import save_figure
from bench.report import markdown_table, percentile

RSS_GROWTH_LIMIT, P99_RATIO_LIMIT, RSS_BASELINE_REQUESTS = 0.10, 1.5, 1000
REFUSALS = (413, 429, 503)  # correct answers to a valid image the service cannot take (now or ever)


def _status_key(status: int) -> str:
    return {0: "no_answer", -1: "aborted"}.get(status, str(status))


def _counts(records: list[Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in records:
        out[_status_key(r.status)] = out.get(_status_key(r.status), 0) + 1
    return dict(sorted(out.items()))


def windows(records: list[Any], samples: list[tuple[float, int, int]], size: int) -> list[dict[str, Any]]:
    """Per ``size`` requests in answer order: statuses, latency percentiles (ms), RSS (MiB)."""
    order = sorted(records, key=lambda r: r.t_done)
    out, t_prev = [], -math.inf
    for k in range(0, len(order), size):
        chunk = order[k : k + size]
        t_end = chunk[-1].t_done
        ok = [(r.t_done - r.t_start) * 1e3 for r in chunk if r.status == 200 and r.wrong_output is None]
        answered = [(r.t_done - r.t_start) * 1e3 for r in chunk if r.status > 0]
        rss = [kib / 1024 for t, kib, _ in samples if t_prev < t <= t_end]
        if not rss:  # a window shorter than the sampling interval: the RSS in force at its end
            rss = [kib / 1024 for t, kib, _ in samples if t <= t_end][-1:]
        out.append({
            "window": len(out),
            "requests": [k, k + len(chunk)],
            "t_end_s": round(t_end, 1),
            "statuses": _counts(chunk),
            "ok": len(ok),
            "ok_p50_ms": percentile(ok, 50),
            "ok_p99_ms": percentile(ok, 99),
            "answered_p50_ms": percentile(answered, 50),
            "answered_p99_ms": percentile(answered, 99),
            "rss_median_mib": percentile(rss, 50),
            "rss_max_mib": max(rss) if rss else None,
        })  # fmt: skip
        t_prev = t_end
    return out


def _failures(records: list[Any]) -> dict[str, list[int]]:
    """Indices of the requests that break each answer criterion."""

    def bad_5xx(s: int | None) -> bool:
        return s is not None and 500 <= s < 600 and s != 503

    valid_4xx = [r for r in records if r.kind == "valid" and 400 <= r.status < 500]
    return {
        "server_errors_5xx": [r.index for r in records if bad_5xx(r.status) or bad_5xx(r.seen_status)],
        "503_without_retry_after": [r.index for r in records if r.status == 503 and r.retry_after is None],
        "no_answer": [r.index for r in records if r.status == 0],
        "wrong_output_size": [r.index for r in records if r.wrong_output is not None],
        "valid_image_refused_4xx": [r.index for r in valid_4xx if r.status not in REFUSALS],
        "malformed_not_4xx": [r.index for r in records if r.kind == "malformed" and r.status // 100 != 4],
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)) or b <= 0:
        return None
    return a / b


def criteria(records: list[Any], wins: list[dict], samples: list, server: dict, size: int) -> dict[str, Any]:
    """The verdict: every criterion's figure, its limit and whether it holds; ``passed`` when all do."""
    fails = _failures(records)
    base = min(RSS_BASELINE_REQUESTS // size, max(1, len(wins) - 2)) if len(wins) > 1 else 0
    growth = _ratio(wins[-1]["rss_median_mib"], wins[base]["rss_median_mib"]) if wins else None
    idle_growth = _ratio(samples[-1][1] / 1024, wins[base]["rss_median_mib"]) if samples and wins else None
    p99 = _ratio(wins[-1]["ok_p99_ms"], wins[1]["ok_p99_ms"]) if len(wins) > 1 else None
    gauges = [server.get(k) for k in ("inflight_after", "queue_depth_tiles_after", "uploading_after")]
    checks = {
        **{name: {"count": len(idx), "limit": 0, "ok": not idx} for name, idx in fails.items()},
        "rss_growth": {
            "value": None if growth is None else round(growth - 1, 4),
            "limit": RSS_GROWTH_LIMIT,
            "baseline_window": base,
            "ok": growth is not None and growth - 1 < RSS_GROWTH_LIMIT,
        },
        "p99_last_over_second_window": {
            "value": None if p99 is None else round(p99, 3),
            "limit": P99_RATIO_LIMIT,
            "ok": p99 is not None and p99 <= P99_RATIO_LIMIT,
        },
        "gauges_back_to_zero": {"value": gauges, "ok": all(g == 0 for g in gauges)},
    }
    by_kind: dict[str, dict[str, int]] = {}
    for kind in ("valid", "malformed", "abort"):
        by_kind[kind] = _counts([r for r in records if r.kind == kind])
    return {
        "passed": all(c["ok"] for c in checks.values()),
        "checks": checks,
        "statuses": _counts(records),
        "statuses_by_kind": by_kind,
        "deadline_engine_seconds": server.get("deadline_engine_seconds"),
        "rss_growth_to_idle_end": None if idle_growth is None else round(idle_growth - 1, 4),
        "failed_indices": sorted({i for idx in fails.values() for i in idx}),
    }


COLUMNS = [
    ("window", "window"), ("requests", "requests"), ("t_end_s", "ends at s"), ("ok", "200s"),
    ("ok_p50_ms", "p50 ms (200s)"), ("ok_p99_ms", "p99 ms (200s)"), ("answered_p99_ms", "p99 ms (all)"),
    ("rss_median_mib", "RSS median MiB"), ("rss_max_mib", "RSS max MiB"), ("statuses", "statuses"),
]  # fmt: skip


def render(report: dict[str, Any]) -> str:
    """Markdown: the per-window table, then the verdict and the service's own counters."""
    rows = [
        {**w, "requests": f"{w['requests'][0]}-{w['requests'][1]}",
         "statuses": " ".join(f"{k}:{v}" for k, v in w["statuses"].items())}
        for w in report["windows"]
    ]  # fmt: skip
    v, s = report["verdict"], report["server"]
    lines = [markdown_table(rows, COLUMNS), ""]
    for name, c in v["checks"].items():
        figure = c.get("count", c.get("value"))
        lines.append(f"- {name}: {figure} (limit {c.get('limit', '-')}) {'ok' if c['ok'] else 'FAILED'}")
    lines += [
        f"- statuses by kind: {v['statuses_by_kind']}",
        f"- engine seconds spent on requests that ended in 504: {s['deadline_engine_seconds']} "
        f"(of {s['engine_seconds']} engine seconds in all)",
        f"- rejections by reason: {s['rejections_by_reason']}; server errors by kind: {s['errors_by_kind']}",
        f"- verdict: **{'PASS' if v['passed'] else 'FAIL'}**",
    ]
    return "\n".join(lines)


def plot_soak(report: dict[str, Any], out: str | Path) -> Path:
    """Two panels against requests answered: server RSS (each second), p50/p99 of the 200s per window."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 5.2), dpi=120, sharex=True)
    samples = report["rss_samples"]
    top.plot([d for _, _, d in samples], [kib / 1024 for _, kib, _ in samples], lw=1, label="server RSS")
    check = report["verdict"]["checks"]["rss_growth"]
    wins = report["windows"]
    base = wins[check["baseline_window"]] if wins else None
    if base and base["rss_median_mib"]:
        top.axvspan(*base["requests"], color="grey", alpha=0.15, label="baseline window")
        top.axhline(base["rss_median_mib"] * (1 + check["limit"]), color="red", ls=":", label="baseline +10%")
    top.set_ylabel("RSS (MiB)")
    mids = [sum(w["requests"]) / 2 for w in wins]
    for key, style in (("ok_p50_ms", "o-"), ("ok_p99_ms", "s--")):
        bottom.plot(mids, [(w[key] or math.nan) / 1e3 for w in wins], style, label=key[3:6] + ", 200s")
    if len(wins) > 1 and wins[1]["ok_p99_ms"]:
        bottom.axhline(wins[1]["ok_p99_ms"] * 1.5 / 1e3, color="red", ls=":", label="1.5x window-2 p99")
    bottom.set_yscale("log")  # p50 (~0.1 s) and p99 (~20 s) differ by two orders of magnitude
    bottom.set_ylabel("latency (s, log)")
    bottom.set_xlabel("requests answered")
    for ax, where in ((top, "lower right"), (bottom, "center right")):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc=where)
    load = report["load"]
    verdict = "PASS" if report["verdict"]["passed"] else "FAIL"
    fig.suptitle(f"soak: {load['requests']:,} requests at concurrency {load['concurrency']} in "
                 f"{load['wall_s'] / 60:.1f} min, {report['machine']['cpu_count']} CPUs: {verdict}",
                 fontsize=10)  # fmt: skip
    fig.tight_layout()
    return save_figure(fig, out)
