"""The ONNX Runtime engine: one ``InferenceSession`` over a DRRN export, CUDA or CPU provider."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from drrn import contract as c
from drrn.contract import INPUT_NAME, OUTPUT_NAME
from engines.base import BUILD_HINT, Engine, ModelContractError, ModelNotFoundError, ProviderUnavailableError

if TYPE_CHECKING:
    import onnxruntime as ort

CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"
log = logging.getLogger(__name__)


_OPT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED"}


def _session_options(intra: int, inter: int, level: str) -> ort.SessionOptions:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = intra  # 0 lets ORT pick (physical cores)
    opts.inter_op_num_threads = inter
    opts.graph_optimization_level = getattr(
        ort.GraphOptimizationLevel, _OPT_LEVELS.get(level, "ORT_ENABLE_ALL")
    )
    return opts


def select_providers(
    choice: str, device_id: int = 0, cudnn_conv_algo_search: str = "HEURISTIC"
) -> list[str | tuple[str, dict[str, Any]]]:
    """ORT providers list for ``choice`` in {"auto", "cpu", "cuda"} (CPU is always the fallback)."""
    import onnxruntime as ort

    has_cuda = CUDA in ort.get_available_providers()
    if choice == "cuda" and not has_cuda:
        raise ProviderUnavailableError(
            f"DRRN_PROVIDERS=cuda but onnxruntime offers {ort.get_available_providers()} "
            "(install onnxruntime-gpu, or use DRRN_PROVIDERS=auto|cpu)"
        )
    if choice == "cpu" or not has_cuda:
        return [CPU]
    cuda_opts = {"device_id": device_id, "cudnn_conv_algo_search": cudnn_conv_algo_search}
    return [(CUDA, cuda_opts), CPU]


def choose_model_path(model_path: Path) -> Path:
    """``model_path``, or :class:`ModelNotFoundError` with the build command when it is missing."""
    path = Path(model_path)
    if not path.is_file():
        raise ModelNotFoundError(f"ONNX model {path} not found; " + BUILD_HINT.format(path=path))
    return path


def _int(meta: dict[str, str], key: str) -> int | None:
    try:
        return int(meta[key])
    except (KeyError, ValueError):
        return None


def _json(meta: dict[str, str], key: str, default: Any) -> Any:
    try:
        return json.loads(meta[key])
    except (KeyError, ValueError):
        return default


class OrtEngine(Engine):
    """One ``onnxruntime.InferenceSession`` over a DRRN export (see ``model_export.onnx_export``)."""

    def __init__(
        self,
        model_path: Path | str,
        tile: int,
        max_batch: int,
        providers: list[str | tuple[str, dict[str, Any]]] | None = None,
        intra_op_threads: int = 0,
        inter_op_threads: int = 0,
        graph_optimization: str = "all",
    ) -> None:
        import onnxruntime as ort

        super().__init__(tile, max_batch)
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise ModelNotFoundError(
                f"ONNX model {self.model_path} not found; " + BUILD_HINT.format(path=self.model_path)
            )
        try:
            self.session = ort.InferenceSession(
                str(self.model_path),
                sess_options=_session_options(intra_op_threads, inter_op_threads, graph_optimization),
                providers=providers or [CPU],
            )
        except Exception as exc:  # ORT raises its own Fail/InvalidProtobuf types
            raise ModelContractError(f"onnxruntime cannot load {self.model_path}: {exc}") from exc
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        if inputs != [INPUT_NAME] or OUTPUT_NAME not in outputs:
            raise ModelContractError(
                f"{self.model_path} has inputs {inputs} / outputs {outputs}; a DRRN export has "
                f"[{INPUT_NAME!r}] -> [{OUTPUT_NAME!r}] (" + BUILD_HINT.format(path=self.model_path) + ")"
            )
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        self.providers: list[str] = self.session.get_providers()
        requested = [p if isinstance(p, str) else p[0] for p in providers or [CPU]]
        if CUDA in requested and CUDA not in self.providers:
            # ORT silently falls back when the CUDA libraries fail to load; say so loudly.
            log.warning("CUDA provider requested but the session runs on %s", self.providers)

    @property
    def depth(self) -> int:
        depth = _int(self.metadata, c.META_DEPTH)
        if depth is None:
            raise ModelContractError(
                f"{self.model_path} lacks metadata drrn.depth; set DRRN_MARGIN explicitly or re-export it"
            )
        return depth

    def warmup_batch_sizes(self) -> range | tuple[int, ...]:
        # cuDNN picks algorithms per shape, so every batch size is warmed on CUDA. ORT's CPU kernels do not
        # specialise per shape, and one 256-pixel tile of the quality model alone is ~1 TFLOP (seconds on a
        # small CPU): warming all eight sizes there would only delay readiness by minutes.
        return range(1, self.max_batch + 1) if CUDA in self.providers else (1,)

    def close(self) -> None:
        # Dropping the session frees its arena (and device memory); later runs fail loudly.
        self.session = None

    def run(self, batch: np.ndarray) -> np.ndarray:
        if batch.ndim != 4 or batch.shape[1] != 1 or not 1 <= batch.shape[0] <= self.max_batch:
            raise ValueError(f"batch {batch.shape} is not [1..{self.max_batch}, 1, H, W]")
        x = np.ascontiguousarray(batch, dtype=np.float32)
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]

    def info(self) -> dict[str, Any]:
        meta = self.metadata
        return {
            "name": meta.get(c.META_NAME, self.model_path.stem),
            "architecture": "DRRN",
            "config": _json(meta, c.META_CONFIG, None),
            "params": _int(meta, c.META_PARAMS),
            "receptive_field": _int(meta, c.META_RECEPTIVE_FIELD),
            "depth": _int(meta, c.META_DEPTH),
            "flops_per_pixel": _int(meta, c.META_FLOPS_PER_PIXEL),
            "scales": _json(meta, c.META_SCALES, None),
            "precision": meta.get(c.META_PRECISION, "fp32"),
            "weights_sha256": meta.get(c.META_WEIGHTS_SHA256),
            "model_path": str(self.model_path),
            "backend": "onnxruntime",
            "providers": list(self.providers),
            "provider": self.providers[0],
            "tile": self.tile,
            "max_batch": self.max_batch,
            "model_card": _json(meta, c.META_MODEL_CARD, {}),
        }
