"""The contenders of ``drrn bench peers``: bicubic, our models through the ``drrn eval`` pipeline, and
OpenCV's ``dnn_superres`` models called as a user calls them (see :mod:`bench.peers` for the protocol).

Each contender has, per scale it supports, an ``Upscale``: ``(lr uint8[h, w], scale) -> (float Y[h*s, w*s]
in ~[0, 1], seconds of the user's call)``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from drrn.errors import UserError

THREADS = 2  # cv2.setNumThreads and ORT intra-op threads
OURS = ("fast", "fast-int8", "quality")
PEERS = {"FSRCNN": "fsrcnn", "ESPCN": "espcn", "LapSRN": "lapsrn", "EDSR": "edsr"}
DEFAULT_MODELS = ("bicubic", *OURS, *PEERS)

#: ``upscale(lr uint8[h, w], scale) -> (float Y[h*s, w*s] in ~[0, 1], seconds of the user's call)``
Upscale = Callable[[np.ndarray, int], tuple[np.ndarray, float]]


@dataclass
class Contender:
    """One model: how it upscales at each scale it has, and what the report says about it."""

    name: str
    kind: str  # "baseline" | "ours" | "peer"
    runs: dict[int, Upscale]
    info: dict[str, Any] = field(default_factory=dict)
    sets: set[str] | None = None  # None: every set of the run

    def describe(self) -> dict[str, Any]:
        sets = sorted(self.sets) if self.sets is not None else None
        return {"name": self.name, "kind": self.kind, "scales": sorted(self.runs), "sets": sets, **self.info}


def peer_dir() -> Path:
    from drrn.paths import shared_dir

    return shared_dir() / "reference" / "opencv-superres"


def bicubic_up(lr: np.ndarray, s: int) -> np.ndarray:
    from imaging.resize import imresize

    return imresize(lr / 255.0, s)


def _bicubic(lr: np.ndarray, s: int) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    out = bicubic_up(lr, s)
    return out, time.perf_counter() - t0


def _ours(spec: str, root: Path | None, precision: str) -> tuple[Upscale, dict]:
    from engines.resolver import resolve_tiled
    from imaging.tiling import run_tiled

    engine, margin = resolve_tiled(
        spec, root=root, providers="cpu", intra_op_threads=THREADS, inter_op_threads=1, precision=precision,
    )  # fmt: skip

    def run(lr: np.ndarray, s: int) -> tuple[np.ndarray, float]:
        t0 = time.perf_counter()
        bic = bicubic_up(lr, s).astype(np.float32)
        out = run_tiled(bic, engine.run, engine.tile, margin, engine.max_batch)
        return out, time.perf_counter() - t0

    file = str(getattr(engine, "model_path", spec))
    return run, {"tile": engine.tile, "margin": margin, "file": file, "precision": engine.info()["precision"]}


def _peer(name: str, algo: str, scales: list[int], folder: Path, skipped: list[dict]) -> Contender:
    import cv2

    runs: dict[int, Upscale] = {}
    for s in scales:
        path = folder / f"{name}_x{s}.pb"
        if not path.is_file():
            skipped.append({"model": name, "scale": s, "reason": f"no {path.name} in {folder}"})
            continue
        model = cv2.dnn_superres.DnnSuperResImpl_create()
        model.readModel(str(path))
        model.setModel(algo, s)

        def run(lr: np.ndarray, _s: int, model=model) -> tuple[np.ndarray, float]:
            bgr = cv2.merge([lr, lr, lr])  # what cv2.imread returns for a grey photo
            t0 = time.perf_counter()
            out = model.upsample(bgr)
            seconds = time.perf_counter() - t0
            return cv2.cvtColor(out, cv2.COLOR_BGR2YCrCb)[..., 0] / 255.0, seconds

        runs[s] = run
    return Contender(name, "peer", runs, {"algorithm": algo, "folder": str(folder)})


def contenders(
    models: list[str], scales: list[int], root: Path | None, model_sets: dict[str, set[str]]
) -> tuple[list[Contender], list[dict]]:
    """The contenders named by ``models`` (see the module docstring) and what was skipped, with why."""
    skipped: list[dict] = []
    out: list[Contender] = []
    for name in models:
        if name == "bicubic":
            out.append(Contender(name, "baseline", dict.fromkeys(scales, _bicubic), {"resize": "matlab"}))
        elif name in ("fast", "quality"):  # fp32, so the int8 row below is the only int8 one
            run, info = _ours(name, root, "fp32")
            out.append(Contender(name, "ours", dict.fromkeys(scales, run), info))
        elif name == "fast-int8":  # the repository's int8 file (built from weights/fast.int8.json)
            run, info = _ours("fast", root, "int8")
            out.append(Contender(name, "ours", dict.fromkeys(scales, run), info))
        elif name in PEERS:
            try:
                import cv2
            except ImportError as exc:
                raise UserError("the peers need OpenCV: pip install -e '.[bench]'") from exc
            cv2.setNumThreads(THREADS)
            c = _peer(name, PEERS[name], scales, peer_dir(), skipped)
            if c.runs:
                out.append(c)
        else:
            raise UserError(f"unknown model {name!r}; choose from {', '.join(DEFAULT_MODELS)}")
    for c in out:
        c.sets = model_sets.get(c.name)
    return out, skipped
