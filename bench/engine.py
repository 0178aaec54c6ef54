"""``drrn bench engine``: the model alone, tile batches in and out, on every CPU backend we could serve with.

Backends (ids as in the JSON):

- ``torch-fp32``: PyTorch eager, float32, all cores (``torch.inference_mode``).
- ``torch-bf16``: PyTorch eager under ``torch.autocast("cpu", dtype=torch.bfloat16)``, all cores.
- ``ort-fp32-1t`` / ``ort-fp32``: ONNX Runtime CPU on the fp32 export with 1 intra-op thread / all cores,
  through :class:`engines.ort_engine.OrtEngine` (the service's own code path).
- ``ort-fp16``: ONNX Runtime CPU on the fp16 export (float32 I/O), all cores. x86 CPUs without native fp16
  math run it through casts, so it is often *slower* than fp32 here; it is reported as measured.

For each model (``--model``, plus DRRN B1U25 C=128 unless ``--no-b1u25``) and each tile x batch cell it
reports ms per run (median and p90 of the timed repeats, after warmup), output Mpx/s counting every tile
pixel (``batch * tile^2 / time``), effective GFLOP/s (``cfg.flops_per_pixel() * pixels / time``) and that
as a fraction of the GEMM and 3x3-conv peaks measured in the same process (:mod:`bench.peak`) at the same
thread count. The headline is ``speedup_ort_fp32_over_torch_fp32`` = PyTorch fp32 ms / ORT fp32 (all
cores) ms at the service's default tile and batch (>1: ORT is faster).

B1U25 is an untrained-but-real weight file (MSRA init, output conv scaled like a trained residual) built by
:func:`make_bench_weights`: speed does not depend on the weight values. Its default grid is reduced to tiles
64/128 (it costs 11x the default model per pixel); ``--full`` sweeps it over the whole grid too.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from bench.peak import measure_peaks, peak_for
from bench.report import header, load_average, render_engine, summarize_ms, time_calls, write_json
from drrn.errors import UserError
from drrn.paths import ARTIFACTS

BENCH_ARTIFACTS = ARTIFACTS / "bench"
TILES, BATCHES = (64, 128, 192, 256), (1, 2, 4, 8)
B1U25_TILES = (64, 128)
BACKENDS = ("torch-fp32", "torch-bf16", "ort-fp32-1t", "ort-fp32", "ort-fp16")


@dataclass
class BenchModel:
    """A model to benchmark: its config and whichever of the weights / fp32 / fp16 ONNX files exist."""

    label: str
    config: Any  # model_export.model.DRRNConfig
    weights: Path | None = None
    onnx: Path | None = None
    onnx_fp16: Path | None = None
    skipped: list[dict[str, str]] = field(default_factory=list)


def make_bench_weights(
    path: Path, blocks: int = 1, units: int = 25, channels: int = 128, seed: int = 0
) -> Path:
    """Write an untrained DRRN weight file (MSRA init; output conv x0.02 so the residual has a trained-like
    magnitude and the fp16 export passes its parity check). Reused when it already exists."""
    if path.is_file():
        return path
    import torch

    from model_export.model import DRRN, DRRNConfig
    from model_export.weights import WeightsMeta, save_weights

    torch.manual_seed(seed)
    cfg = DRRNConfig(blocks=blocks, units=units, channels=channels)
    model = DRRN(cfg)
    with torch.no_grad():
        model.output.weight.mul_(0.02)
    provenance = {"source": "bench.engine.make_bench_weights", "trained": False, "seed": seed}
    save_weights(model, WeightsMeta(config=cfg, provenance=provenance), path)
    return path


def resolve_bench_model(spec: str) -> BenchModel:
    """``b1u25`` or any :mod:`engines.resolver` spec: a repository name (``default``, ``fast``, ...),
    ``FILE.safetensors`` (exported to ONNX under ``BENCH_ARTIFACTS/models``) or ``FILE.onnx`` (ONNX only:
    no PyTorch backends)."""
    from engines.resolver import resolve_engine, resolve_files
    from model_export.model import DRRNConfig

    label = spec
    if spec == "b1u25":
        spec = str(make_bench_weights(BENCH_ARTIFACTS / "b1u25_c128_untrained.safetensors"))
    elif spec.endswith((".onnx", ".safetensors")):
        label = Path(spec).stem
    # An ONNX file is benched as it is (fp32 or fp16); the rest as repository models (fp32 + fp16).
    files = resolve_files(spec, export=not spec.endswith(".onnx"), exports_root=BENCH_ARTIFACTS / "models")
    if files.card is not None:
        m = BenchModel(label, DRRNConfig.from_dict(files.card.config), files.weights, files.onnx)
        m.onnx_fp16 = files.onnx_fp16
        if m.onnx_fp16 is None:
            m.skipped.append({"backend": "ort-fp16", "reason": "no fp16 export (not built or failed parity)"})
        return m
    meta = resolve_engine(spec, tile=1, max_batch=1).metadata  # an ONNX file: its config from metadata
    if "drrn.config" not in meta:
        raise UserError(f"{spec} lacks drrn.config metadata; re-export it with `drrn export`")
    m = BenchModel(label, DRRNConfig.from_dict(json.loads(meta["drrn.config"])))
    if meta.get("drrn.precision") == "fp16":
        m.onnx_fp16 = files.onnx
    else:
        m.onnx = files.onnx
    return m


def _make_runner(backend: str, m: BenchModel, max_tile: int, max_batch: int, cores: int):
    """``(run(x) -> y, threads)`` for ``backend``, or ``(None, reason)`` when it cannot run."""
    if backend.startswith("torch"):
        if m.weights is None:
            return None, "no weights (ONNX-only model)"
        import torch

        from model_export.weights import load_weights

        model, _ = load_weights(m.weights)
        bf16 = backend == "torch-bf16"

        def run_torch(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                return model(torch.from_numpy(x)).float().numpy()

        torch.set_num_threads(cores)
        return run_torch, cores
    from engines.ort_engine import CPU, OrtEngine

    path = m.onnx_fp16 if backend == "ort-fp16" else m.onnx
    if path is None:
        return None, "no ONNX file for this precision"
    threads = 1 if backend == "ort-fp32-1t" else cores
    eng = OrtEngine(path, max_tile, max_batch, [CPU], intra_op_threads=threads, graph_optimization="all")
    return eng.run, threads


def bench_model(
    m: BenchModel, tiles, batches, backends, peaks: dict, quick: bool, budget_s: float, max_repeats: int
) -> dict[str, Any]:
    """Every backend x tile x batch cell of one model; see the module docstring for the fields."""
    cfg, cores = m.config, os.cpu_count() or 1
    fpp = cfg.flops_per_pixel()
    rng = np.random.default_rng(0)
    probe = rng.random((1, 1, 64, 64), dtype=np.float32)
    reference = None
    results, skipped = [], list(m.skipped)
    accuracy: dict[str, Any] = {"reference": None, "probe": "1x1x64x64 uniform [0,1)", "max_abs_diff": {}}
    for backend in backends:
        if any(s["backend"] == backend for s in skipped):
            continue
        run, threads = _make_runner(backend, m, max(tiles), max(batches), cores)
        if run is None:
            skipped.append({"backend": backend, "reason": threads})
            continue
        out = run(probe)
        if reference is None:  # torch-fp32 when it runs, else the first backend that does
            reference, accuracy["reference"] = out, backend
        accuracy["max_abs_diff"][backend] = float(np.max(np.abs(out - reference)))
        gemm_peak, conv_peak = peak_for(peaks, threads, cfg.channels)
        timing = (1, 2, 2, 0.0) if quick else (1, 3, max_repeats, budget_s)
        for tile in tiles:
            for batch in batches:
                x = rng.random((batch, 1, tile, tile), dtype=np.float32)
                stats = summarize_ms(time_calls(partial(run, x), *timing))
                px = batch * tile * tile
                gflops = fpp * px / (stats["ms_median"] / 1e3) / 1e9
                results.append(
                    {
                        "backend": backend,
                        "precision": "bf16" if "bf16" in backend else "fp16" if "fp16" in backend else "fp32",
                        "threads": threads,
                        "tile": tile,
                        "batch": batch,
                        **stats,
                        "mpx_per_s": px / (stats["ms_median"] / 1e3) / 1e6,
                        "gflops": gflops,
                        "frac_gemm_peak": gflops / gemm_peak if gemm_peak else None,
                        "frac_conv_peak": gflops / conv_peak if conv_peak else None,
                    }
                )
                msg = f"  {m.label} {backend} tile {tile} batch {batch}: {stats['ms_median']:.1f} ms"
                print(msg, file=sys.stderr)
    return {
        "label": m.label,
        "name": cfg.name,
        "config": dataclasses.asdict(cfg),
        "flops_per_pixel": fpp,
        "depth": cfg.depth,
        "weights": str(m.weights) if m.weights else None,
        "onnx": str(m.onnx) if m.onnx else None,
        "onnx_fp16": str(m.onnx_fp16) if m.onnx_fp16 else None,
        "skipped": skipped,
        "accuracy": accuracy,
        "results": results,
        "headline": headline(results),
    }


def served_cpu_cell() -> tuple[int, int] | None:
    """``(tile, max_batch)`` the service runs its default model with on the CPU: ``DRRN_TILE`` or the
    model card's tile, ``DRRN_MAX_BATCH`` or the CPU default; None when the model is not built."""
    from engines.repository import ModelRepository, RepositoryError, UnknownModelError
    from engines.resolver import DEFAULT_MAX_BATCH
    from service.settings import Settings

    s = Settings()
    try:
        card = ModelRepository(s.model_dir).card(s.default_model)
    except (RepositoryError, UnknownModelError):  # not built (`make models`): no cell to prefer
        return None
    return s.tile or card.tile, s.max_batch or DEFAULT_MAX_BATCH["cpu"]


def headline(results: list[dict[str, Any]]) -> dict[str, Any] | None:
    """ORT fp32 (all cores) vs PyTorch eager fp32 at the tile and batch the service serves the default
    model with on the CPU (``served``: True), else at the largest cell both measured (False)."""
    cells = {(r["backend"], r["tile"], r["batch"]): r for r in results}
    both = [(t, b) for (k, t, b) in cells if k == "ort-fp32" and ("torch-fp32", t, b) in cells]
    if not both:
        return None
    served = served_cpu_cell()
    tile, batch = served if served in both else max(both, key=lambda c: c[0] ** 2 * c[1])
    ort_ms, torch_ms = (
        cells["ort-fp32", tile, batch]["ms_median"],
        cells["torch-fp32", tile, batch]["ms_median"],
    )
    return {
        "tile": tile,
        "batch": batch,
        "served": (tile, batch) == served,
        "ort_fp32_ms": ort_ms,
        "torch_fp32_ms": torch_ms,
        "speedup_ort_fp32_over_torch_fp32": torch_ms / ort_ms,
    }


def _estimate(models, grids, backends, peaks) -> float:
    """A floor on the run time: 4 runs (warmup + 3) per cell per backend at the 3x3-conv peak."""
    total = 0.0
    for m in models:
        conv = max(peak_for(peaks, int(t), m.config.channels)[1] or 0.0 for t in peaks["by_threads"])
        t, b = grids[m.label]
        flops = m.config.flops_per_pixel() * sum(tile * tile for tile in t) * sum(b) * 4 * len(backends)
        total += flops / ((conv or 50.0) * 1e9)
    return total


def run_engine_bench(
    model: str = "default",
    json_out: str | None = None,
    quick: bool = False,
    b1u25: bool = True,
    full: bool = False,
    tiles: list[int] | None = None,
    batches: list[int] | None = None,
    backends: list[str] | None = None,
    budget_s: float = 2.0,
    max_repeats: int = 10,
) -> dict[str, Any]:
    """Run the engine benchmark, print the markdown summary, write JSON; returns the report."""
    backends = backends or list(BACKENDS)
    unknown = set(backends) - set(BACKENDS)
    if unknown:
        raise UserError(f"unknown backends {sorted(unknown)}; choose from {', '.join(BACKENDS)}")
    specs = [model] + (["b1u25"] if b1u25 and model != "b1u25" else [])
    models, skipped_models = [], []
    for spec in specs:
        try:
            models.append(resolve_bench_model(spec))
        except UserError as exc:
            if spec != "default" or not b1u25:
                raise
            print(f"warning: skipping model 'default': {exc}", file=sys.stderr)
            skipped_models.append({"model": spec, "reason": str(exc)})
    cores = os.cpu_count() or 1
    peaks = measure_peaks({m.config.channels for m in models}, {1, cores}, quick=quick)
    settings = {"budget_s": budget_s, "max_repeats": max_repeats, "backends": backends}
    report = header("engine", quick, peaks=peaks, settings=settings, skipped_models=skipped_models, models=[])
    grids = {
        m.label: (
            tiles or ([64] if quick else list(B1U25_TILES if m.label == "b1u25" and not full else TILES)),
            batches or ([1] if quick else list(BATCHES)),
        )
        for m in models
    }
    report["estimate_min_s"] = _estimate(models, grids, backends, peaks)
    print(f"engine bench: at least ~{report['estimate_min_s'] / 60:.0f} min on this machine", file=sys.stderr)
    for m in models:
        t, b = grids[m.label]
        report["models"].append(bench_model(m, t, b, backends, peaks, quick, budget_s, max_repeats))
    report["machine"]["load_average_end"] = load_average()
    print(render_engine(report))
    write_json(report, json_out)
    return report
