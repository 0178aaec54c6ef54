"""The engine seam: tile batches in, super-resolved tiles out. No HTTP, no asyncio, no torch.

Contract of :meth:`Engine.run`: ``float32[N, 1, th, tw]`` bicubic-upscaled luminance in [0, 1] ->
``float32[N, 1, th, tw]`` (not clipped), with ``1 <= N <= max_batch`` and ``th * tw <= tile**2`` (tiles
fit each image's shape, :func:`imaging.tiling.plan_tiles`; ``tile`` bounds their memory). Backends:
:mod:`engines.ort_engine` (ONNX Runtime, what the service runs) and :mod:`engines.torch_engine` (PyTorch,
for ``drrn eval``/``upscale`` on weight files).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from drrn.errors import UserError

BUILD_HINT = "build the model repository with `make models` (or one file: `drrn export WEIGHTS -o {path}`)"


class ModelNotFoundError(UserError):
    """The ONNX file does not exist (it is a build artifact, not checked in)."""


class ModelContractError(UserError):
    """The ONNX file exists but is not a DRRN export (wrong input/output names or metadata)."""


class ProviderUnavailableError(UserError):
    """``providers=cuda`` was asked for but onnxruntime offers no CUDA provider."""


class Engine(ABC):
    """A model that maps tile batches ``float32[N, 1, th, tw]`` (``th * tw <= tile**2``) to the same shape,
    ``N <= max_batch``.

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
        """``float32[N, 1, th, tw]`` in [0, 1] -> the same shape; may raise on backend failure."""

    @abstractmethod
    def info(self) -> dict[str, Any]:
        """Model description: name, params, receptive_field, depth, scales, providers, precision, tile,
        max_batch, model_card (dict)."""

    @property
    @abstractmethod
    def depth(self) -> int:
        """Number of 3x3 conv layers on the longest path: the tile margin for exact tiled output."""

    def warmup_batch_sizes(self) -> range | tuple[int, ...]:
        """The batch sizes :meth:`warmup` runs: all of ``1..max_batch`` unless a backend knows better."""
        return range(1, self.max_batch + 1)

    def warmup(self) -> list[tuple[int, float]]:
        """Run each of :meth:`warmup_batch_sizes` at ``tile x tile`` once; returns ``(batch size,
        seconds)`` per run, in order (the batcher's first measurement of the engine's speed).

        Backends specialise per input shape (cuDNN algorithm choice, ORT memory arenas), so the first run of
        each shape is slow; doing them before readiness keeps the first real requests fast. Raises
        :class:`ModelContractError` if the model returns the wrong shape or dtype.
        """
        rng = np.random.default_rng(0)
        t = self.tile
        timings = []
        for n in self.warmup_batch_sizes():
            x = rng.random((n, 1, t, t), dtype=np.float32)
            t0 = time.perf_counter()
            y = self.run(x)
            timings.append((n, time.perf_counter() - t0))
            if not isinstance(y, np.ndarray) or y.shape != x.shape or y.dtype != np.float32:
                raise ModelContractError(
                    f"engine returned {getattr(y, 'dtype', type(y))}{getattr(y, 'shape', '')} for "
                    f"float32{x.shape}; expected the same shape and dtype"
                )
        return timings

    def close(self) -> None:  # noqa: B027 (a deliberate no-op default, not an abstract method)
        """Release the backend's resources (sessions, device memory); idempotent. Default: nothing."""
