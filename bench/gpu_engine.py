"""GPU engine benchmark for a session lent an H100/H200 (driven by ``bench/gpu.sh``; no venv needed there).

Run:  python -m bench.gpu_engine --out DIR [--quick] [--budget-s 300] [--models default,b1u25]

It uses whatever is installed and says what is missing instead of failing:

- PyTorch CUDA (device-resident tensors, timed with ``torch.cuda.synchronize``): fp32 (TF32 off), TF32,
  bf16 autocast, fp16 channels_last with cuDNN heuristics, fp16 channels_last with ``cudnn.benchmark``
  (the exhaustive search), and the latter replayed as a CUDA graph (fixed shape per graph).
- ONNX Runtime CUDA EP (only if ``CUDAExecutionProvider`` really loads: ORT silently falls back to the CPU
  when the CUDA/cuDNN libraries it was built for are missing, so this checks ``session.get_providers()``):
  fp32 and fp16 exports x ``cudnn_conv_algo_search`` HEURISTIC/EXHAUSTIVE x host numpy I/O vs IOBinding
  (input and output bound on the device), plus ``enable_cuda_graph`` with IOBinding on a fixed shape.
- ``serve-torch``: the real FastAPI app (:func:`service.app.create_app`) with a PyTorch CUDA engine, for a
  GPU service load test where onnxruntime-gpu is unavailable (``bench/gpu.sh`` uses it as a fallback).

Every cell stops when the global ``--budget-s`` runs out (recorded as skipped), so the script ends in time.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from bench.gpu_ort import bench_ort, ort_cuda_status
from bench.gpu_timing import Budget, result_row, time_cell
from bench.report import header, write_json

TILES, BATCHES = (128, 256, 512), (1, 8, 32)
QUICK_TILES, QUICK_BATCHES = (128,), (8,)
TORCH_VARIANTS = ("fp32", "tf32", "bf16-autocast", "fp16-cl", "fp16-cl-cudnn-bench", "fp16-cl-cudagraph")


def torch_peaks() -> dict[str, float]:
    """fp16 / TF32 / strict-fp32 GEMM TFLOP/s (8192^3, best of 5) and a 3x3 C=128 fp16 conv."""
    import torch

    out = {}
    n = 8192
    for name, dtype, tf32 in (("gemm_fp16", torch.float16, False), ("gemm_tf32", torch.float32, True),
                              ("gemm_fp32", torch.float32, False)):  # fmt: skip
        torch.backends.cuda.matmul.allow_tf32 = tf32
        a = torch.randn(n, n, device="cuda", dtype=dtype)
        b = torch.randn(n, n, device="cuda", dtype=dtype)
        st = time_cell(lambda a=a, b=b: a @ b, torch.cuda.synchronize, Budget(10))
        out[name + "_tflops"] = 2 * n**3 / (st["ms_min"] / 1e3) / 1e12
    torch.backends.cuda.matmul.allow_tf32 = False
    x = torch.randn(32, 128, 256, 256, device="cuda", dtype=torch.float16).to(
        memory_format=torch.channels_last
    )
    w = torch.randn(128, 128, 3, 3, device="cuda", dtype=torch.float16).to(memory_format=torch.channels_last)
    torch.backends.cudnn.benchmark = True
    st = time_cell(lambda: torch.nn.functional.conv2d(x, w, padding=1), torch.cuda.synchronize, Budget(10))
    out["conv3x3_c128_fp16_tflops"] = 2 * 9 * 128 * 128 * x.numel() / 128 / (st["ms_min"] / 1e3) / 1e12
    return out


def _torch_runner(model, variant: str, x):
    """A zero-argument callable running ``model`` on ``x`` as ``variant`` describes."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = variant == "tf32"
    torch.backends.cudnn.benchmark = "cudnn-bench" in variant or "cudagraph" in variant
    if variant.startswith("fp16"):
        x = x.half().to(memory_format=torch.channels_last)
    if variant == "fp16-cl-cudagraph":
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.inference_mode():
            for _ in range(3):
                model(x)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), torch.inference_mode():
            model(x)
        return graph.replay

    def run():
        with (
            torch.inference_mode(),
            torch.autocast("cuda", torch.bfloat16, enabled=variant == "bf16-autocast"),
        ):
            return model(x)

    return run


def bench_torch(weights: Path, tiles, batches, budget: Budget) -> tuple[list, list]:
    import torch

    from model_export.weights import load_weights

    base, _ = load_weights(weights)
    fpp = base.cfg.flops_per_pixel()
    rows, skipped = [], []
    for vi, variant in enumerate(TORCH_VARIANTS):
        share = Budget(max(0.0, budget.left) / (len(TORCH_VARIANTS) - vi))  # later variants get their turn
        model = copy.deepcopy(base).to("cuda").eval()
        if variant.startswith("fp16"):
            model = model.half().to(memory_format=torch.channels_last)
        for tile in tiles:
            for batch in batches:
                if share.left <= 0:
                    skipped.append(f"torch-{variant} tile {tile} batch {batch}: budget")
                    continue
                x = torch.rand(batch, 1, tile, tile, device="cuda")
                try:
                    stats = time_cell(_torch_runner(model, variant, x), torch.cuda.synchronize, share)
                except torch.cuda.OutOfMemoryError:
                    skipped.append(f"torch-{variant} tile {tile} batch {batch}: out of memory")
                    continue
                rows.append(result_row(f"torch-{variant}", tile, batch, stats, fpp))
                print(f"  torch-{variant} {tile}x{batch}: {stats['ms_median']:.2f} ms", file=sys.stderr)
        del model
        torch.cuda.empty_cache()
    return rows, skipped


def _models(names: list[str]) -> list[tuple[str, Path | None, str]]:
    """``(label, weight file or None, why not)`` per ``--models`` entry: ``b1u25`` or an
    :mod:`engines.resolver` spec (``default``, ``fast``, ``quality``, ``FILE.safetensors``)."""
    from bench.engine import BENCH_ARTIFACTS, make_bench_weights
    from drrn.errors import UserError
    from engines.resolver import weights_for

    out: list[tuple[str, Path | None, str]] = []
    for name in names:
        if name == "b1u25":
            out.append((name, make_bench_weights(BENCH_ARTIFACTS / "b1u25_c128_untrained.safetensors"), ""))
            continue
        try:
            weights = weights_for(name)
        except UserError as exc:
            out.append((name, None, str(exc)))
            continue
        ok = weights is not None and weights.is_file()
        out.append((name, weights if ok else None, "" if ok else f"no weight file for {name!r}"))
    return out


def _onnx_files(label: str, weights: Path) -> dict[str, Path]:
    """fp32 (and fp16 when it passed parity) ONNX exports of a model, through the one resolver."""
    from engines.resolver import resolve_files

    files = resolve_files(str(weights) if label == "b1u25" else label, export=True)
    return {"fp32": files.onnx} | ({"fp16": files.onnx_fp16} if files.onnx_fp16 else {})


def run(out_dir: Path, quick: bool, budget_s: float, model_names: list[str]) -> dict[str, Any]:
    budget = Budget(budget_s)
    report = header("gpu", quick, models=[])
    try:
        import torch

        cuda = torch.cuda.is_available()
    except ImportError:
        cuda = False
    if not cuda:
        report["error"] = "torch is missing or sees no CUDA device"
        print(f"error: {report['error']}", file=sys.stderr)
        write_json(report, out_dir / "gpu_engine.json")
        return report
    report["gpu"] = torch.cuda.get_device_name(0)
    report["peaks"] = torch_peaks()
    ort_ok, ort_note = ort_cuda_status()
    report["ort_cuda"] = ort_note
    tiles, batches = (QUICK_TILES, QUICK_BATCHES) if quick else (TILES, BATCHES)
    models = _models(model_names)
    for i, (label, weights, problem) in enumerate(models):
        per_model_s = max(0.0, budget.left) / (len(models) - i)
        entry: dict[str, Any] = {"label": label, "results": [], "skipped": [problem] if problem else []}
        report["models"].append(entry)
        if weights is None:
            continue
        from model_export.weights import read_meta

        cfg = read_meta(weights).config
        entry.update(name=cfg.name, flops_per_pixel=cfg.flops_per_pixel())
        rows, skipped = bench_torch(weights, tiles, batches, Budget(per_model_s * (0.6 if ort_ok else 1.0)))
        entry["results"] += rows
        entry["skipped"] += skipped
        if ort_ok:
            try:
                paths = _onnx_files(label, weights)
                cells = [(tiles[-1], batches[-1])] if quick else [(256, 8), (512, 8), (128, 32)]
                rows, skipped = bench_ort(paths, cfg.flops_per_pixel(), cells, Budget(per_model_s * 0.4))
                entry["results"] += rows
                entry["skipped"] += skipped
            except Exception as exc:  # export or ORT failure: keep the torch numbers
                entry["skipped"].append(f"onnxruntime CUDA: {type(exc).__name__}: {exc}")
        else:
            entry["skipped"].append(f"onnxruntime CUDA: {ort_note}")
    write_json(report, out_dir / "gpu_engine.json")
    return report


def serve_torch(weights: Path, host: str, port: int) -> None:
    """The real service app over a PyTorch CUDA fp16 engine (settings from ``DRRN_*`` as usual)."""
    import torch
    import uvicorn

    from engines.torch_engine import TorchEngine
    from service.app import create_app
    from service.settings import Settings

    class TorchCudaEngine(TorchEngine):
        def __init__(self, path: Path, tile: int, max_batch: int) -> None:
            super().__init__(path, tile, max_batch)
            self.model = self.model.to("cuda").half().to(memory_format=torch.channels_last)
            torch.backends.cudnn.benchmark = True

        def run(self, batch: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                x = torch.from_numpy(np.ascontiguousarray(batch)).to("cuda").half()
                return self.model(x.to(memory_format=torch.channels_last)).float().cpu().numpy()

        def info(self) -> dict[str, Any]:
            return {**super().info(), "provider": "torch-cuda", "precision": "fp16"}

    s = Settings()
    engine = TorchCudaEngine(weights, s.tile or 128, s.max_batch)
    app = create_app(s, engines={s.default_model: engine})
    uvicorn.run(app, host=host, port=port, log_level="warning")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("command", nargs="?", default="bench", choices=["bench", "serve-torch"])
    p.add_argument("--out", default="docs/bench/gpu")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--budget-s", type=float, default=300.0)
    p.add_argument("--models", default="default,b1u25")
    p.add_argument("--weights", default="artifacts/bench/b1u25_c128_untrained.safetensors")
    p.add_argument("--port", type=int, default=8100)
    a = p.parse_args(argv)
    if a.command == "serve-torch":
        serve_torch(Path(a.weights), "127.0.0.1", a.port)
        return 0
    report = run(Path(a.out), a.quick, a.budget_s, a.models.split(","))
    print(json.dumps({"gpu": report.get("gpu"), "ort_cuda": report.get("ort_cuda")}))
    return 0 if "error" not in report else 1


if __name__ == "__main__":
    sys.exit(main())
