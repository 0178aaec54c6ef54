"""``drrn bench scaling``: cost against image size through the local pipeline, with peak memory per size.

Each size (output megapixels at x2, 4:3 synthetic textured RGB PNG) runs in a fresh subprocess
(``python -m bench.scaling --child ...``): it loads the model the way ``drrn upscale`` does
(:func:`drrn.models.resolve_engine` with the service's ``DRRN_*`` settings), warms it up, then times
:func:`service.pipeline.upscale_bytes` ``repeats`` times. The parent reads that child's peak RSS from
``os.wait4`` (``ru_maxrss``), so sizes never share a high-water mark.

Reported: time = a + b * Mpx (least squares, R²), and peak RSS = a + b * Mpx. Tiling bounds the *model's*
working set (``max_batch`` tiles of ``tile^2`` x C channels), so the RSS slope is only the pipeline's
whole-image buffers (decoded input, upscaled Y/Cb/Cr, the stitched output and the PNG: tens of bytes per
output pixel), not the conv activations; ``untiled_activation_mib`` shows what three live C-channel float32
feature maps of the whole image would take without tiles, for contrast.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from typing import Any

from bench.report import header, linear_fit, load_average, markdown_table, write_json
from drrn.errors import UserError

DEFAULT_MPX, QUICK_MPX = (0.25, 0.5, 1.0, 2.0), (0.01, 0.02, 0.04, 0.08)
SCALE, ASPECT = 2.0, 4 / 3


def input_size(output_mpx: float, scale: float = SCALE) -> tuple[int, int]:
    """``(width, height)`` of a 4:3 input whose x``scale`` output has about ``output_mpx`` megapixels."""
    out_w = math.sqrt(output_mpx * 1e6 * ASPECT)
    return max(8, round(out_w / scale)), max(8, round(out_w / ASPECT / scale))


def child(model: str, width: int, height: int, scale: float, repeats: int) -> dict[str, Any]:
    """Runs inside the fresh subprocess; returns what it prints as JSON."""
    import resource

    from bench.loadgen import png_bytes, textured_image
    from drrn.models import resolve_engine
    from imaging.tiling import plan_tiles
    from service.pipeline import upscale_bytes
    from service.settings import Settings

    s = Settings()
    engine = resolve_engine(model, tile=s.tile, max_batch=s.max_batch)
    margin = s.resolve_margin(engine.depth)
    engine.warmup()
    data = png_bytes(textured_image(width, height, seed=width))
    rss_ready = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        png = upscale_bytes(data, scale, engine.run, s.image_limits(), s.tile, margin, s.max_batch)
        times.append(time.perf_counter() - t0)
    out_w, out_h = math.ceil(width * scale), math.ceil(height * scale)
    channels = (engine.info().get("config") or {}).get("channels")
    return {
        "times_s": times,
        "rss_after_warmup_kib": rss_ready,
        "output_bytes": len(png),
        "tiles": len(plan_tiles(out_h, out_w, s.tile, margin)),
        "tile": s.tile,
        "max_batch": s.max_batch,
        "margin": margin,
        "channels": channels,
    }


def _run_child(model: str, w: int, h: int, repeats: int, env: dict[str, str]) -> tuple[dict, float]:
    """``(child's JSON, child's peak RSS in MiB)``."""
    cmd = [sys.executable, "-m", "bench.scaling", "--child", model, str(w), str(h), str(SCALE), str(repeats)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env={**os.environ, **env})
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise UserError(f"scaling child for {w}x{h} failed with exit code {proc.returncode}")
    kib = usage.ru_maxrss if sys.platform != "darwin" else usage.ru_maxrss / 1024
    return json.loads(out.decode().strip().splitlines()[-1]), kib / 1024


def run_scaling(
    model: str = "default",
    json_out: str | None = None,
    quick: bool = False,
    megapixels: list[float] | None = None,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Measure every size, fit, print a markdown table, write JSON."""
    from bench.spawn import serve_model_path

    path = str(serve_model_path(model)) if not model.endswith(".safetensors") else model
    sizes = megapixels or list(QUICK_MPX if quick else DEFAULT_MPX)
    repeats = 1 if quick else 3
    rows = []
    for mpx in sizes:
        w, h = input_size(mpx)
        res, peak_mib = _run_child(path, w, h, repeats, env or {})
        out_w, out_h = math.ceil(w * SCALE), math.ceil(h * SCALE)
        out_mpx = out_w * out_h / 1e6
        med = sorted(res["times_s"])[len(res["times_s"]) // 2]
        ready_mib = res["rss_after_warmup_kib"] / 1024
        untiled = out_w * out_h * (res["channels"] or 0) * 4 * 3 / 2**20
        rows.append(
            {
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
                "untiled_activation_mib": untiled,
            }
        )
        print(f"  {out_w}x{out_h}: {med:.2f} s, peak RSS {peak_mib:.0f} MiB", file=sys.stderr)
    xs = [r["output_mpx"] for r in rows]
    report = header(
        "scaling",
        quick,
        model=path,
        scale=SCALE,
        repeats=repeats,
        pipeline={k: res[k] for k in ("tile", "max_batch", "margin", "channels")},
        sizes=rows,
        time_fit=linear_fit(xs, [r["time_s_median"] for r in rows]),
        rss_fit=linear_fit(xs, [r["peak_rss_mib"] for r in rows]),
    )
    report["machine"]["load_average_end"] = load_average()
    cols = [("output", "output"), ("output_mpx", "Mpx"), ("tiles", "tiles"), ("time_s_median", "time s"),
            ("mpx_per_s", "Mpx/s"), ("peak_rss_mib", "peak RSS MiB"), ("request_rss_mib", "over warm MiB"),
            ("untiled_activation_mib", "untiled act. MiB")]  # fmt: skip
    tf, rf = report["time_fit"], report["rss_fit"]
    print(markdown_table(rows, cols))
    print(f"- time = {tf['a']:.3f} s + {tf['b']:.3f} s/Mpx x Mpx (R² = {tf['r2']:.4f})")
    print(f"- peak RSS = {rf['a']:.0f} MiB + {rf['b']:.1f} MiB/Mpx x Mpx (R² = {rf['r2']:.3f})")
    write_json(report, json_out)
    return report


if __name__ == "__main__":
    if len(sys.argv) == 7 and sys.argv[1] == "--child":
        _, _, m, w, h, sc, rep = sys.argv
        print(json.dumps(child(m, int(w), int(h), float(sc), int(rep))))
    else:
        sys.exit("usage: python -m bench.scaling --child MODEL WIDTH HEIGHT SCALE REPEATS")
