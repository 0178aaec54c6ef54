"""A PyTorch implementation of the service's :class:`engines.base.Engine` seam.

Used by ``drrn eval``/``drrn upscale`` for ``.safetensors`` models, so those run through the very same
tiling pipeline as ONNX models and the service; only the tensor math differs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from engines.base import Engine
from model_export.model import count_params
from model_export.weights import load_weights


class TorchEngine(Engine):
    """Eval-mode float32 DRRN on the CPU. ``run(float32[N,1,T,T]) -> float32[N,1,T,T]``."""

    def __init__(self, weights: Path | str, tile: int, max_batch: int) -> None:
        super().__init__(tile=tile, max_batch=max_batch)
        self.model, self.meta = load_weights(weights)
        self.path = Path(weights)

    @property
    def depth(self) -> int:
        return self.model.cfg.depth

    def run(self, batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.model(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))).numpy()

    def info(self) -> dict:
        cfg = self.model.cfg
        return {
            "name": cfg.name,
            "config": cfg.__dict__,
            "params": count_params(self.model),
            "depth": cfg.depth,
            "receptive_field": cfg.receptive_field,
            "scales": self.meta.scales,
            "provider": "torch-cpu",
            "precision": "fp32",
            "tile": self.tile,
            "max_batch": self.max_batch,
        }
