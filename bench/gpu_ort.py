"""The ONNX Runtime CUDA EP cells of the GPU engine benchmark (:mod:`bench.gpu_engine`): fp32 and fp16
exports x ``cudnn_conv_algo_search`` HEURISTIC/EXHAUSTIVE x host numpy I/O, IOBinding, or IOBinding with
``enable_cuda_graph``. onnxruntime is imported only when the cells run.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from bench.gpu_timing import Budget, result_row, time_cell
from drrn.contract import INPUT_NAME, OUTPUT_NAME

__all__ = ["bench_ort", "ort_cuda_status"]


def ort_cuda_status() -> tuple[bool, str]:
    """Whether ORT's CUDA EP really runs a session here (not just listed), with the reason if not."""
    try:
        import onnxruntime as ort
    except ImportError:
        return False, "onnxruntime is not installed"
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False, f"onnxruntime {ort.__version__} has no CUDA EP (install onnxruntime-gpu)"
    return True, f"onnxruntime {ort.__version__} lists CUDAExecutionProvider"


class _NoCuda(RuntimeError):
    """The CUDA EP is listed but a session does not run on it (missing CUDA/cuDNN libraries)."""


def _ort_cell(ort, path: Path, opts: dict, mode: str, tile: int, batch: int, fpp: int, name: str, budget):
    """One timed ORT CUDA cell: host numpy I/O, or IOBinding with device-resident input and output."""
    sess = ort.InferenceSession(str(path), providers=[("CUDAExecutionProvider", opts)])
    if sess.get_providers()[0] != "CUDAExecutionProvider":
        raise _NoCuda(f"CUDA EP did not load (session runs on {sess.get_providers()})")
    x = np.random.default_rng(0).random((batch, 1, tile, tile), dtype=np.float32)
    if mode == "numpy":
        fn = lambda: sess.run([OUTPUT_NAME], {INPUT_NAME: x})  # noqa: E731
    else:
        xo = ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0)
        yo = ort.OrtValue.ortvalue_from_shape_and_type(x.shape, np.float32, "cuda", 0)
        io = sess.io_binding()
        io.bind_ortvalue_input(INPUT_NAME, xo)
        io.bind_ortvalue_output(OUTPUT_NAME, yo)
        fn = lambda: sess.run_with_iobinding(io)  # noqa: E731
    stats = time_cell(fn, lambda: None, budget)
    print(f"  {name} {tile}x{batch}: {stats['ms_median']:.2f} ms", file=sys.stderr)
    return result_row(name, tile, batch, stats, fpp)


def bench_ort(onnx_paths: dict[str, Path], fpp: int, cells, budget: Budget) -> tuple[list, list]:
    """``(rows, skipped)`` for each precision's export (``onnx_paths``) over ``cells`` (``(tile, batch)``
    pairs), sharing ``budget`` evenly among the configurations still to run."""
    import onnxruntime as ort

    rows, skipped = [], []
    combos = [
        (precision, path, algo, mode)
        for precision, path in onnx_paths.items()
        for algo in ("HEURISTIC", "EXHAUSTIVE")
        for mode in ("numpy", "iobinding", "cudagraph")
        if not (mode == "cudagraph" and algo == "EXHAUSTIVE")
    ]
    for ci, (precision, path, algo, mode) in enumerate(combos):
        share = Budget(max(0.0, budget.left) / (len(combos) - ci))
        opts = {"device_id": 0, "cudnn_conv_algo_search": algo}
        if mode == "cudagraph":
            opts["enable_cuda_graph"] = "1"
        name = f"ort-{precision}-{algo.lower()}-{mode}"
        for tile, batch in cells:
            if share.left <= 0:
                skipped.append(f"{name} {tile}x{batch}: budget")
                continue
            try:
                rows.append(_ort_cell(ort, path, opts, mode, tile, batch, fpp, name, share))
            except _NoCuda as exc:
                return rows, [*skipped, str(exc)]
            except Exception as exc:  # e.g. a graph that cannot be captured: record, go on
                skipped.append(f"{name} {tile}x{batch}: {type(exc).__name__}: {str(exc)[:200]}")
    return rows, skipped
