"""``drrn bench scaling``: cost against image size through the local pipeline, with peak memory per size.

Each size (output megapixels at x2, 4:3 synthetic textured RGB PNG, made by the parent) runs in a fresh
subprocess (``python -m bench.scaling --child SPEC``): it loads the model the way ``drrn upscale`` does
(:func:`engines.resolver.resolve_engine` with the service's ``DRRN_*`` settings), warms it up, then times
:func:`inference.pipeline.upscale_bytes` ``repeats`` times, and reports its own peak RSS (``VmHWM``), so
sizes never share a high-water mark. Not ``ru_maxrss``: Linux carries a process's maximum across
``fork``/``exec``, so a child's ``ru_maxrss`` starts at its parent's RSS (hundreds of MiB for this CLI).

Reported: time = a + b * Mpx (least squares, R²), and peak RSS = a + b * Mpx. Tiling bounds the *model's*
working set (``max_batch`` tiles of ``tile^2`` x C channels), so the RSS slope is only what the pipeline
holds per output pixel (the tiles, the final samples, the PNG), not the conv activations;
``untiled_activation_mib`` shows what three live C-channel float32 feature maps of the whole image would
take without tiles, for contrast. The model costs ~14 s per Mpx on 2 cores, so a second sweep measures the
pipeline alone (an identity engine: tiles come back unchanged) up to the service's 16 Mpx output limit,
reported as request RSS per output pixel.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.report import header, linear_fit, load_average, markdown_table, write_json
from drrn.errors import UserError
from imaging.resize import output_shape_for_scale

DEFAULT_MPX, QUICK_MPX = (0.25, 0.5, 1.0, 2.0), (0.01, 0.02, 0.04, 0.08)
# The pipeline alone (no model: seconds, not minutes, per size) up to the service's 16 Mpx output limit.
PIPELINE_MPX, QUICK_PIPELINE_MPX = (1.0, 4.0, 15.9), (0.02, 0.08)
IDENTITY = "identity"
SCALE, ASPECT = 2.0, 4 / 3


def input_size(output_mpx: float, scale: float = SCALE) -> tuple[int, int]:
    """``(width, height)`` of a 4:3 input whose x``scale`` output has about ``output_mpx`` megapixels."""
    out_w = math.sqrt(output_mpx * 1e6 * ASPECT)
    return max(8, round(out_w / scale)), max(8, round(out_w / ASPECT / scale))


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs inside the fresh subprocess; returns what it prints as JSON.

    ``spec``: ``model`` (a model path, or ``"identity"``: no model, tiles come back unchanged, so only
    the pipeline's own memory is measured), ``input`` (PNG path, written by the parent so making the image
    doesn't raise this process's high-water mark), ``scale``, ``repeats`` and, for identity, ``margin``.
    """
    from imaging.tiling import plan_tiles
    from inference.pipeline import upscale_bytes
    from inference.png import png_header
    from service.settings import Settings

    s = Settings()
    if spec["model"] == IDENTITY:
        run, margin, channels, tile = (lambda x: x), int(spec["margin"]), None, s.tile or 128
    else:
        from engines.resolver import resolve_engine

        engine = resolve_engine(spec["model"], tile=s.tile, max_batch=s.max_batch)
        tile, margin = engine.tile, s.margin if s.margin is not None else engine.depth
        engine.warmup()
        run, channels = engine.run, (engine.info().get("config") or {}).get("channels")
    data = Path(spec["input"]).read_bytes()
    reset_peak_rss()  # the warmup's own peak (ORT arenas, export) is not the request's
    rss_ready = peak_rss_kib()
    times = []
    for _ in range(spec["repeats"]):
        t0 = time.perf_counter()
        png = upscale_bytes(data, spec["scale"], run, s.image_limits(), tile, margin, s.max_batch)
        times.append(time.perf_counter() - t0)
        del png
    width, height, _, _ = png_header(data)
    out_h, out_w = output_shape_for_scale((height, width), spec["scale"])
    return {
        "times_s": times,
        "rss_after_warmup_kib": rss_ready,
        "peak_rss_kib": peak_rss_kib(),
        "tiles": len(plan_tiles(out_h, out_w, tile, margin)),
        "tile": tile,
        "max_batch": s.max_batch,
        "margin": margin,
        "channels": channels,
    }


def peak_rss_kib() -> float:
    """This process's peak RSS since its ``exec``, in KiB: ``VmHWM`` (Linux), else ``ru_maxrss``."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return float(line.split()[1])
    except OSError:
        pass
    import resource

    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 1024 if sys.platform == "darwin" else kib


def reset_peak_rss() -> None:
    """Reset ``VmHWM`` to the current RSS (Linux >= 4.0: ``5`` to ``/proc/self/clear_refs``); else no-op."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _run_child(spec: dict[str, Any], width: int, height: int, env: dict[str, str]) -> tuple[dict, float]:
    """``(child's JSON, child's peak RSS in MiB)`` for a ``width x height`` textured input."""
    from bench.request_mix import png_bytes, textured_image

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "input.png"
        path.write_bytes(png_bytes(textured_image(width, height, seed=width)))
        cmd = [sys.executable, "-m", "bench.scaling", "--child", json.dumps({**spec, "input": str(path)})]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, env={**os.environ, **env}, check=False)
    if proc.returncode != 0:
        raise UserError(f"scaling child for {width}x{height} failed with exit code {proc.returncode}")
    res = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    return res, res["peak_rss_kib"] / 1024


def _measure(spec: dict[str, Any], mpx: float, env: dict[str, str]) -> tuple[dict[str, Any], dict]:
    w, h = input_size(mpx)
    res, peak_mib = _run_child(spec, w, h, env)
    out_h, out_w = output_shape_for_scale((h, w), SCALE)
    out_mpx = out_w * out_h / 1e6
    med = sorted(res["times_s"])[len(res["times_s"]) // 2]
    ready_mib = res["rss_after_warmup_kib"] / 1024
    row = {
        "target_mpx": mpx,
        "input": f"{w}x{h}",
        "output": f"{out_w}x{out_h}",
        "output_mpx": out_mpx,
        "tiles": res["tiles"],
        "times_s": res["times_s"],
        "time_s_median": med,
        "mpx_per_s": out_mpx / med,
        "peak_rss_mib": peak_mib,
        "rss_after_warmup_mib": ready_mib,
        "request_rss_mib": peak_mib - ready_mib,
        "request_bytes_per_output_px": (peak_mib - ready_mib) * 2**20 / (out_w * out_h),
    }
    print(f"  {spec['model']}: {out_w}x{out_h}: {med:.2f} s, peak RSS {peak_mib:.0f} MiB", file=sys.stderr)
    return row, res


def run_scaling(
    model: str = "default",
    json_out: str | None = None,
    quick: bool = False,
    megapixels: list[float] | None = None,
    env: dict[str, str] | None = None,
    pipeline_megapixels: list[float] | None = None,
) -> dict[str, Any]:
    """Measure every size with the model, then the pipeline alone up to the service's output limit; fit,
    print markdown tables, write JSON."""
    from bench.spawn import serve_model_path

    env = env or {}
    path = str(serve_model_path(model)) if not model.endswith(".safetensors") else model
    repeats = 1 if quick else 3
    rows, res = [], {}
    for mpx in megapixels or list(QUICK_MPX if quick else DEFAULT_MPX):
        row, res = _measure({"model": path, "scale": SCALE, "repeats": repeats}, mpx, env)
        row["untiled_activation_mib"] = row["output_mpx"] * 1e6 * (res["channels"] or 0) * 4 * 3 / 2**20
        rows.append(row)
    identity = {"model": IDENTITY, "scale": SCALE, "repeats": 1, "margin": res["margin"]}
    pipeline_rows = [
        _measure(identity, mpx, env)[0]
        for mpx in pipeline_megapixels or list(QUICK_PIPELINE_MPX if quick else PIPELINE_MPX)
    ]
    xs, pxs = [r["output_mpx"] for r in rows], [r["output_mpx"] for r in pipeline_rows]
    report = header(
        "scaling",
        quick,
        version=2,  # 2: peak RSS is the child's own (VmHWM, reset after warmup); pipeline_memory added
        model=path,
        scale=SCALE,
        repeats=repeats,
        pipeline={k: res[k] for k in ("tile", "max_batch", "margin", "channels")},
        sizes=rows,
        time_fit=linear_fit(xs, [r["time_s_median"] for r in rows]),
        rss_fit=linear_fit(xs, [r["peak_rss_mib"] for r in rows]),
        pipeline_memory=pipeline_rows,
        pipeline_rss_fit=linear_fit(pxs, [r["request_rss_mib"] for r in pipeline_rows]),
    )
    report["machine"]["load_average_end"] = load_average()
    cols = [("output", "output"), ("output_mpx", "Mpx"), ("tiles", "tiles"), ("time_s_median", "time s"),
            ("mpx_per_s", "Mpx/s"), ("peak_rss_mib", "peak RSS MiB"), ("request_rss_mib", "over warm MiB"),
            ("untiled_activation_mib", "untiled act. MiB")]  # fmt: skip
    tf, rf, pf = report["time_fit"], report["rss_fit"], report["pipeline_rss_fit"]
    print(markdown_table(rows, cols))
    print(f"- time = {tf['a']:.3f} s + {tf['b']:.3f} s/Mpx x Mpx (R² = {tf['r2']:.4f})")
    print(f"- peak RSS = {rf['a']:.0f} MiB + {rf['b']:.1f} MiB/Mpx x Mpx (R² = {rf['r2']:.3f})")
    pcols = [("output", "output"), ("output_mpx", "Mpx"), ("tiles", "tiles"), ("time_s_median", "time s"),
             ("peak_rss_mib", "peak RSS MiB"), ("request_rss_mib", "request MiB"),
             ("request_bytes_per_output_px", "B / output px")]  # fmt: skip
    print("\nPipeline alone (identity engine):\n" + markdown_table(pipeline_rows, pcols))
    print(f"- request RSS = {pf['a']:.0f} MiB + {pf['b']:.1f} MiB/Mpx x Mpx (R² = {pf['r2']:.3f})")
    write_json(report, json_out)
    return report


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        print(json.dumps(child(json.loads(sys.argv[2]))))
    else:
        sys.exit("usage: python -m bench.scaling --child SPEC_JSON")
