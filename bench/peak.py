"""Machine peaks measured in-process, the yardsticks for a model's effective GFLOP/s.

- GEMM: a float32 ``n x n`` matrix product with numpy (its BLAS, default threads) and with torch at each
  thread count asked for. The best of a few runs: it approximates what the cores can do at all.
- Conv: one 3x3, C -> C, stride 1, padded float32 conv in torch at the model's width C, on a
  ``batch x C x size x size`` input. This is the best case of the op DRRN is made of, so a model's ratio to it
  says how much the rest (ReLU/add passes, the thin first and last convs, framework overhead) costs.

FLOPs count a multiply-add as 2, as :meth:`model_export.model.DRRNConfig.flops_per_pixel` does.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from typing import Any

import numpy as np


def _best_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warmup: thread pools, packing buffers, algorithm choice
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


@contextmanager
def torch_threads(n: int):
    """Run the block with ``torch.set_num_threads(n)``, restoring the previous value after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def gemm_numpy_gflops(n: int = 2048, repeats: int = 3) -> float:
    """float32 ``n x n @ n x n`` GFLOP/s with numpy (best of ``repeats``)."""
    rng = np.random.default_rng(0)
    a = rng.random((n, n), dtype=np.float32)
    b = rng.random((n, n), dtype=np.float32)
    out = np.empty((n, n), dtype=np.float32)
    seconds = _best_seconds(lambda: np.matmul(a, b, out=out), repeats)
    return 2.0 * n**3 / seconds / 1e9


def gemm_torch_gflops(n: int = 2048, threads: int = 1, repeats: int = 3) -> float:
    """float32 ``n x n @ n x n`` GFLOP/s with torch on ``threads`` threads (best of ``repeats``)."""
    import torch

    with torch_threads(threads), torch.no_grad():
        g = torch.Generator().manual_seed(0)
        a, b = torch.rand(n, n, generator=g), torch.rand(n, n, generator=g)
        out = torch.empty(n, n)
        seconds = _best_seconds(lambda: torch.mm(a, b, out=out), repeats)
    return 2.0 * n**3 / seconds / 1e9


def conv_torch_gflops(
    channels: int, threads: int = 1, size: int = 128, batch: int = 4, repeats: int = 3
) -> float:
    """GFLOP/s of one 3x3 ``channels -> channels`` float32 conv (padding 1, no bias) in torch."""
    import torch
    import torch.nn.functional as F

    with torch_threads(threads), torch.no_grad():
        g = torch.Generator().manual_seed(0)
        x = torch.rand(batch, channels, size, size, generator=g)
        w = torch.randn(channels, channels, 3, 3, generator=g) * 0.05
        seconds = _best_seconds(lambda: F.conv2d(x, w, padding=1), repeats)
    flops = 2.0 * 9 * channels * channels * batch * size * size
    return flops / seconds / 1e9


def measure_peaks(channels: Iterable[int], threads: Iterable[int], quick: bool = False) -> dict[str, Any]:
    """All peaks for the given model widths and thread counts.

    Returns ``{"gemm_n", "conv_input", "gemm_numpy_gflops", "by_threads": {"<t>": {"gemm_torch_gflops",
    "conv_torch_gflops": {"<C>": GFLOP/s}, "gemm_best_gflops"}}}``; ``gemm_best_gflops`` is the larger of
    numpy's and torch's GEMM (numpy's counts only for the all-core entry, as its BLAS uses every core).
    """
    n = 256 if quick else 2048
    size, batch = (32, 1) if quick else (128, 4)
    repeats = 1 if quick else 3
    threads = sorted(set(threads))
    numpy_gemm = gemm_numpy_gflops(n, repeats)
    by_threads: dict[str, Any] = {}
    for t in threads:
        torch_gemm = gemm_torch_gflops(n, t, repeats)
        conv = {str(c): conv_torch_gflops(c, t, size, batch, repeats) for c in sorted(set(channels))}
        best = max(torch_gemm, numpy_gemm) if t == max(threads) else torch_gemm
        by_threads[str(t)] = {
            "gemm_torch_gflops": torch_gemm,
            "gemm_best_gflops": best,
            "conv_torch_gflops": conv,
        }
    return {
        "gemm_n": n,
        "conv_input": f"{batch}xCx{size}x{size}",
        "gemm_numpy_gflops": numpy_gemm,
        "by_threads": by_threads,
    }


def peak_for(peaks: dict[str, Any], threads: int, channels: int) -> tuple[float | None, float | None]:
    """``(gemm_best_gflops, conv_torch_gflops)`` measured at ``threads`` for width ``channels``."""
    entry = peaks.get("by_threads", {}).get(str(threads))
    if not entry:
        return None, None
    return entry.get("gemm_best_gflops"), entry.get("conv_torch_gflops", {}).get(str(channels))


def gemm_ort_int8_gops(n: int = 2048, repeats: int = 3) -> float:
    """u8 x s8 ``n x n @ n x n`` integer GOP/s with ONNX Runtime's ``MatMulInteger`` on the CPU (its MLAS
    kernels, the ones int8 convs run on; default threads): the yardstick for an int8 model."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (n, n), dtype=np.uint8)
    b = numpy_helper.from_array(rng.integers(-128, 128, (n, n), dtype=np.int8), "b")
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["y"])],
        "int8_gemm",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [n, n])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [n, n])],
        [b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    onnx.checker.check_model(model)
    seconds = _best_seconds(lambda: session.run(None, {"a": a}), repeats)
    return 2.0 * n**3 / seconds / 1e9
