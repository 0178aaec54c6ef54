"""``drrn export``: trace a weight file to ONNX, stamp metadata, and prove parity with ONNX Runtime.

Graph contract (what the service relies on):

- input ``lr_bicubic``: ``float32[N, 1, H, W]``, the bicubic-upscaled Y in [0, 1]; N, H, W dynamic
- output ``sr``: ``float32[N, 1, H, W]``, global residual inside the graph
- BN folded (see :mod:`model_export.folding`); opset 17
- ``metadata_props``: ``drrn.config`` (JSON), ``drrn.receptive_field``, ``drrn.depth``, ``drrn.scales``
  (JSON), ``drrn.weights_sha256``, ``drrn.precision``, ``drrn.params``, ``drrn.flops_per_pixel``,
  ``drrn.model_card`` (JSON summary of provenance/training/evaluation)

The export is refused (:class:`ExportParityError`) unless ONNX Runtime on the CPU reproduces PyTorch to
max abs 1e-4 (fp32) or one 8-bit grey level, 1/255 (fp16), on random inputs and real images. The fp16
bound is a grey level because the deep C=128 model (52 layers) reaches 3.2e-3 on random noise.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from drrn import contract as c
from drrn.contract import INPUT_NAME, OUTPUT_NAME
from drrn.paths import sha256_file
from model_export.folding import Float16IO32, FoldedDRRN
from model_export.model import DRRN, count_params
from model_export.weights import WeightsMeta, load_weights

OPSET = 17
TOLERANCE = {"fp32": 1e-4, "fp16": 1 / 255}
log = logging.getLogger(__name__)


class ExportParityError(RuntimeError):
    """ONNX Runtime disagrees with PyTorch beyond the tolerance; the ONNX file is not written."""


@dataclass
class ParityReport:
    precision: str
    max_abs_diff: float
    tolerance: float
    cases: list[tuple[str, float]]


def _to_onnx(net: torch.nn.Module, path: Path) -> None:
    example = torch.rand(1, 1, 48, 48)
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter is deterministic, fast on deep convnets and needs no onnxscript;
        # its deprecation warning is noise for this graph of Conv/Relu/Add/Mul only.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (example,),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={
                INPUT_NAME: {0: "batch", 2: "height", 3: "width"},
                OUTPUT_NAME: {0: "batch", 2: "height", 3: "width"},
            },
            do_constant_folding=True,
        )


def _stamp_metadata(path: Path, model: DRRN, meta: WeightsMeta, sha: str, precision: str) -> None:
    proto = onnx.load(str(path))
    cfg = meta.config
    card = {"provenance": meta.provenance, "training": meta.training, "evaluation": meta.evaluation}
    props = {
        c.META_CONFIG: cfg.to_json(),
        c.META_NAME: cfg.name,
        c.META_DEPTH: str(cfg.depth),
        c.META_RECEPTIVE_FIELD: str(cfg.receptive_field),
        c.META_PARAMS: str(count_params(model)),
        c.META_FLOPS_PER_PIXEL: str(cfg.flops_per_pixel()),
        c.META_SCALES: json.dumps(meta.scales),
        c.META_WEIGHTS_SHA256: sha,
        c.META_PRECISION: precision,
        c.META_MODEL_CARD: json.dumps(card, sort_keys=True),
    }
    onnx.helper.set_model_props(proto, props)
    proto.producer_name = "drrn-export"
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def _parity_inputs(real_images: list[np.ndarray], seed: int = 0) -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    cases = [
        ("random 2x1x37x53", rng.random((2, 1, 37, 53), dtype=np.float32)),
        ("random 1x1x64x64", rng.random((1, 1, 64, 64), dtype=np.float32)),
        # Bicubic overshoots [0, 1] near edges; rectified_skips models treat x < 0 differently.
        ("overshoot 1x1x40x40", rng.random((1, 1, 40, 40), dtype=np.float32) * 1.1 - 0.05),
    ]
    for i, img in enumerate(real_images):
        cases.append((f"real image {i} {img.shape[0]}x{img.shape[1]}", img[None, None].astype(np.float32)))
    return cases


def verify_parity(
    onnx_path: Path, reference: torch.nn.Module, precision: str, real_images: list[np.ndarray]
) -> ParityReport:
    """Compare ORT (CPU) with the unfolded fp32 PyTorch model on random and real ``[H, W]`` images."""
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    cases = []
    for name, x in _parity_inputs(real_images):
        with torch.no_grad():
            expected = reference(torch.from_numpy(x)).numpy()
        got = session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
        cases.append((name, float(np.max(np.abs(got - expected)))))
    worst = max(d for _, d in cases)
    return ParityReport(precision, worst, TOLERANCE[precision], cases)


def export_onnx(
    weights: Path | str, out: Path | str, fp16: bool = False, real_images: list[np.ndarray] | None = None
) -> ParityReport:
    """Export ``weights`` to ``out``; raise :class:`ExportParityError` (writing nothing) on a parity miss.

    ``real_images``: ``float32[H, W]`` luminance images in [0, 1] for the parity check.
    """
    weights, out = Path(weights), Path(out)
    model, meta = load_weights(weights)
    precision = "fp16" if fp16 else "fp32"
    folded = FoldedDRRN(model).eval()
    net = Float16IO32(folded).eval() if fp16 else folded
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    try:
        _to_onnx(net, tmp)
        _stamp_metadata(tmp, model, meta, sha256_file(weights), precision)
        report = verify_parity(tmp, model, precision, real_images or [])
        if report.max_abs_diff > report.tolerance:
            raise ExportParityError(
                f"ONNX Runtime differs from PyTorch by {report.max_abs_diff:.3g} > {report.tolerance:g} "
                f"({precision}); cases: {report.cases}"
            )
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return report


def read_onnx_metadata(path: Path | str) -> dict[str, str]:
    """``metadata_props`` of an exported model as a dict (no graph load beyond the protobuf)."""
    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}
