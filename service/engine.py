"""Inference engines: fixed-size tile batches in, super-resolved tiles out. No HTTP, no asyncio.

:class:`Engine` is the seam between the service and a backend (ONNX Runtime here; a torch engine lives in
``model_export.torch_engine``). Contract of :meth:`Engine.run`: ``float32[N, 1, T, T]`` bicubic-upscaled
luminance in [0, 1] -> ``float32[N, 1, T, T]`` (not clipped), with ``1 <= N <= max_batch`` and ``T == tile``.
"""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from drrn.errors import UserError

if TYPE_CHECKING:
    import onnxruntime as ort

    from service.settings import Settings

INPUT_NAME, OUTPUT_NAME = "lr_bicubic", "sr"  # the graph contract of model_export.onnx_export
CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"
BUILD_HINT = "build it with `make default-onnx` or `drrn export weights/default.safetensors -o {path}`"
log = logging.getLogger(__name__)


class ModelNotFoundError(UserError):
    """The ONNX file does not exist (it is a build artifact, not checked in)."""


class ModelContractError(UserError):
    """The ONNX file exists but is not a DRRN export (wrong input/output names or metadata)."""


class ProviderUnavailableError(UserError):
    """``providers=cuda`` was asked for but onnxruntime offers no CUDA provider."""


class Engine(ABC):
    """A model that maps tile batches ``float32[N, 1, tile, tile]`` to the same shape, ``N <= max_batch``.

    Subclasses implement :meth:`run`, :meth:`info` and :attr:`depth`. Instances are used from one thread
    at a time (the batcher's single-thread executor), so implementations need not be re-entrant.
    """

    def __init__(self, tile: int, max_batch: int) -> None:
        if tile < 1 or max_batch < 1:
            raise ValueError(f"tile ({tile}) and max_batch ({max_batch}) must be positive")
        self.tile = tile
        self.max_batch = max_batch

    @abstractmethod
    def run(self, batch: np.ndarray) -> np.ndarray:
        """``float32[N, 1, T, T]`` in [0, 1] -> ``float32[N, 1, T, T]``; may raise on backend failure."""

    @abstractmethod
    def info(self) -> dict[str, Any]:
        """Model description: name, params, receptive_field, depth, scales, providers, precision, tile,
        max_batch, model_card (dict)."""

    @property
    @abstractmethod
    def depth(self) -> int:
        """Number of 3x3 conv layers on the longest path: the tile margin for exact tiled output."""

    def warmup(self) -> None:
        """Run every batch size ``1..max_batch`` at ``tile x tile`` once.

        Backends specialise per input shape (cuDNN algorithm choice, ORT memory arenas), so the first run of
        each shape is slow; doing them all before readiness keeps the first real requests fast. Raises
        :class:`ModelContractError` if the model returns the wrong shape or dtype.
        """
        rng = np.random.default_rng(0)
        t = self.tile
        for n in range(1, self.max_batch + 1):
            x = rng.random((n, 1, t, t), dtype=np.float32)
            y = self.run(x)
            if not isinstance(y, np.ndarray) or y.shape != x.shape or y.dtype != np.float32:
                raise ModelContractError(
                    f"engine returned {getattr(y, 'dtype', type(y))}{getattr(y, 'shape', '')} for "
                    f"float32{x.shape}; expected the same shape and dtype"
                )


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


def choose_model_path(model_path: Path, fp16_model_path: Path | None, on_cuda: bool) -> Path:
    """The fp16 model on CUDA when it exists (half the memory traffic), else the fp32 one.

    Raises :class:`ModelNotFoundError` with the build command when the chosen file is missing.
    """
    if on_cuda and fp16_model_path is not None and Path(fp16_model_path).is_file():
        return Path(fp16_model_path)
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
        depth = _int(self.metadata, "drrn.depth")
        if depth is None:
            raise ModelContractError(
                f"{self.model_path} lacks metadata drrn.depth; set DRRN_MARGIN explicitly or re-export it"
            )
        return depth

    def run(self, batch: np.ndarray) -> np.ndarray:
        if batch.ndim != 4 or batch.shape[1] != 1 or not 1 <= batch.shape[0] <= self.max_batch:
            raise ValueError(f"batch {batch.shape} is not [1..{self.max_batch}, 1, T, T]")
        x = np.ascontiguousarray(batch, dtype=np.float32)
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]

    def info(self) -> dict[str, Any]:
        meta = self.metadata
        return {
            "name": meta.get("drrn.name", self.model_path.stem),
            "architecture": "DRRN",
            "config": _json(meta, "drrn.config", None),
            "params": _int(meta, "drrn.params"),
            "receptive_field": _int(meta, "drrn.receptive_field"),
            "depth": _int(meta, "drrn.depth"),
            "flops_per_pixel": _int(meta, "drrn.flops_per_pixel"),
            "scales": _json(meta, "drrn.scales", None),
            "precision": meta.get("drrn.precision", "fp32"),
            "weights_sha256": meta.get("drrn.weights_sha256"),
            "model_path": str(self.model_path),
            "backend": "onnxruntime",
            "providers": list(self.providers),
            "provider": self.providers[0],
            "tile": self.tile,
            "max_batch": self.max_batch,
            "model_card": _json(meta, "drrn.model_card", {}),
        }


def engine_from_settings(settings: Settings) -> OrtEngine:
    """Build the :class:`OrtEngine` the settings describe (provider choice, fp16 model on CUDA, threads)."""
    providers = select_providers(settings.providers, settings.cuda_device_id, settings.cudnn_conv_algo_search)
    on_cuda = any(not isinstance(p, str) and p[0] == CUDA for p in providers)
    path = choose_model_path(settings.model_path, settings.fp16_model_path, on_cuda)
    return OrtEngine(
        path,
        tile=settings.tile,
        max_batch=settings.max_batch,
        providers=providers,
        intra_op_threads=settings.intra_op_threads,
        inter_op_threads=settings.inter_op_threads,
        graph_optimization=settings.graph_optimization,
    )
