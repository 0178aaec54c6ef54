"""Shared helpers of the benchmarks: timing statistics, machine description, markdown tables, JSON output.

Nothing here measures a model; :mod:`bench.engine`, :mod:`bench.service_load` and :mod:`bench.scaling` do,
and all of them describe the machine with :func:`machine_info` so a results file says where it came from
(including the load average, because a benchmark on a shared 2-core machine is only as good as its quiet).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation, like ``numpy.percentile``'s default."""
    if not values:
        return math.nan
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize_ms(seconds: Sequence[float]) -> dict[str, float | int]:
    """``{"n", "ms_median", "ms_p90", "ms_min", "ms_max"}`` of wall times given in seconds."""
    ms = [s * 1000.0 for s in seconds]
    return {
        "n": len(ms),
        "ms_median": percentile(ms, 50),
        "ms_p90": percentile(ms, 90),
        "ms_min": min(ms) if ms else math.nan,
        "ms_max": max(ms) if ms else math.nan,
    }


def time_calls(
    fn: Callable[[], object], warmup: int, min_repeats: int, max_repeats: int, budget_s: float
) -> list[float]:
    """Wall time (s) of ``fn`` after ``warmup`` untimed calls: at least ``min_repeats`` timed calls, then
    more until ``max_repeats`` or until ``budget_s`` seconds of timed calls have passed."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    spent = 0.0
    while len(times) < max_repeats and (len(times) < min_repeats or spent < budget_s):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        spent += times[-1]
    return times


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")
                return [f for f in line.split(":", 1)[1].split() if f in wanted]
    except OSError:
        pass
    return []


def _version(module: str) -> str | None:
    mod = sys.modules.get(module)
    if mod is None:
        try:
            mod = __import__(module)
        except ImportError:
            return None
    return getattr(mod, "__version__", "unknown")


def load_average() -> list[float] | None:
    """1/5/15-minute load averages (None where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_info(modules: Iterable[str] = ("numpy", "torch", "onnxruntime")) -> dict[str, Any]:
    """CPU model, core count, memory, library versions and the current load average."""
    mem_gib = None
    with contextlib.suppress(ValueError, OSError, AttributeError):
        mem_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    return {
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_flags": _cpu_flags(),
        "memory_gib": mem_gib,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {m: _version(m) for m in modules},
        "load_average": load_average(),
    }


def header(kind: str, quick: bool, version: int = 1, **extra: Any) -> dict[str, Any]:
    """The common top of every results file: ``schema``, ``created`` (UTC), ``quick``, ``machine``.

    Warns on stderr (and sets ``machine.busy``) when the 1-minute load average exceeds half the cores:
    other work on the machine makes every number here pessimistic, multi-threaded ones most of all.
    """
    machine = machine_info()
    load, cores = machine["load_average"], machine["cpu_count"] or 1
    machine["busy"] = bool(load and load[0] > 0.5 * cores)
    if machine["busy"]:
        print(f"warning: load average {load[0]} on {cores} cores: the machine is busy, results will be "
              "pessimistic and noisy (multi-threaded ones most)", file=sys.stderr)  # fmt: skip
    return {
        "schema": f"drrn-bench-{kind}/{version}",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": quick,
        "machine": machine,
        **extra,
    }


def write_json(data: dict[str, Any], path: str | Path | None) -> None:
    """Write ``data`` (pretty, NaN as null) to ``path`` when one is given; parents are created."""
    if not path:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_nan_to_none(data), indent=2, sort_keys=False) + "\n")
    print(f"wrote {path}", file=sys.stderr)


def _nan_to_none(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_nan_to_none(v) for v in x]
    return x


def fmt(value: Any, digits: int = 3) -> str:
    """A table cell: ints with separators, floats to ``digits`` significant figures, None as ``-``."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 10**digits:
            return f"{value:,.0f}"
        return f"{value:.{digits}g}"
    return str(value)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """A GitHub markdown table of ``rows`` with ``columns`` = ``[(key, title), ...]``."""
    head = "| " + " | ".join(title for _, title in columns) + " |"
    rule = "|" + "|".join("---:" if i else "---" for i in range(len(columns))) + "|"
    body = ["| " + " | ".join(fmt(r.get(key)) for key, _ in columns) + " |" for r in rows]
    return "\n".join([head, rule, *body])


def linear_fit(xs: Sequence[float], ys: Sequence[float]) -> dict[str, float]:
    """Least-squares ``y = a + b*x`` with R² (``nan`` where undefined)."""
    n = len(xs)
    if n < 2:
        return {"a": math.nan, "b": math.nan, "r2": math.nan}
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    b = sxy / sxx if sxx else math.nan
    a = my - b * mx
    ss_tot = sum((y - my) ** 2 for y in ys)
    ss_res = sum((y - (a + b * x)) ** 2 for x, y in zip(xs, ys, strict=True))
    r2 = 1.0 - ss_res / ss_tot if ss_tot else math.nan
    return {"a": a, "b": b, "r2": r2}


ENGINE_COLUMNS = [
    ("backend", "backend"), ("threads", "thr"), ("tile", "tile"), ("batch", "batch"), ("ms_median", "ms p50"),
    ("ms_p90", "ms p90"), ("mpx_per_s", "Mpx/s"), ("gflops", "GFLOP/s"), ("frac_gemm_peak", "÷ GEMM peak"),
    ("frac_conv_peak", "÷ conv peak"),
]  # fmt: skip


def render_engine(report: dict[str, Any]) -> str:
    """The markdown summary of a ``drrn bench engine`` report."""
    lines = []
    for t, p in report["peaks"]["by_threads"].items():
        convs = ", ".join(f"C={c}: {v:.1f}" for c, v in p["conv_torch_gflops"].items())
        lines.append(f"- peak @ {t} thread(s): GEMM {p['gemm_best_gflops']:.1f} GFLOP/s; 3x3 conv {convs}")
    for m in report["models"]:
        lines += ["", f"### {m['label']}: {m['name']} ({m['flops_per_pixel']:,} FLOP/px)", ""]
        lines.append(markdown_table(m["results"], ENGINE_COLUMNS))
        for s in m["skipped"]:
            lines.append(f"- skipped {s['backend']}: {s['reason']}")
        acc = m["accuracy"]
        diffs = ", ".join(f"{k} {v:.2g}" for k, v in acc["max_abs_diff"].items())
        lines.append(f"- max abs diff on a {acc['probe']} probe vs {acc['reference']}: {diffs}")
        h = m["headline"]
        if h:
            lines.append(
                f"- **ORT fp32 ÷ PyTorch eager fp32** at tile {h['tile']} batch {h['batch']} "
                f"({'as served' if h.get('served') else 'the largest cell; not the served one'}): "
                f"{h['speedup_ort_fp32_over_torch_fp32']:.2f}x speed-up "
                f"({h['torch_fp32_ms']:.1f} ms -> {h['ort_fp32_ms']:.1f} ms)"
            )
    return "\n".join(lines)
