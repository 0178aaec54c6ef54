"""Training patches: the paper's 31x31 / stride 21 Y patches at mixed scales, cached once, sampled on the fly.

Cache layout (``cache/patches-<key>/``), memory-mapped so a later run starts in seconds:

- ``inputs.npy``: ``float32[P, 31, 31]``, bicubic-degraded Y in ~[0, 1] (unrounded, as in MATLAB)
- ``targets.npy``: ``float32[P, 31, 31]``, ground-truth Y in [0, 1]
- ``scales.npy``: ``uint8[P]``, the degradation scale of each patch
- ``teacher.npy`` (distillation only): ``float32[P, 31, 31]``, a teacher model's output on the whole
  degraded image, cut on the same grid (so every teacher pixel saw its full receptive field, as in serving)
- ``meta.json``: the inputs (file hashes, the teacher's identity) and parameters the key was computed from

The key is a hash of every source file's content and every parameter, so changing either rebuilds.
The 8 flip/rotation augmentations are applied on the fly (uniformly random dihedral transform per patch),
which is the same distribution as the paper's 8x pre-augmented set at 1/8 of the disk.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from drrn.errors import UserError
from imaging.crop import modcrop
from imaging.protocol import degrade, image_files, load_y

CACHE_VERSION = 1


@dataclass(frozen=True)
class Teacher:
    """A model whose outputs become extra training targets (distillation).

    ``sr(bicubic float64[H, W] ~[0, 1], scale) -> float32[H, W]``; ``identity`` names it in the cache key
    (spec, precision and the SHA-256 of its file), so another teacher never reuses these targets.
    """

    sr: Callable[[np.ndarray, int], np.ndarray]
    identity: dict


def list_images(folders: list[str | Path], max_images: int = 0) -> list[Path]:
    """All images in ``folders`` (non-recursive), sorted for a reproducible order; the first
    ``max_images`` of them when that is > 0."""
    try:
        files = [Path(p) for folder in folders for p in image_files(folder)]
    except ValueError as exc:  # an empty folder is as unusable for training as a missing one
        raise FileNotFoundError(str(exc)) from exc
    return files[:max_images] if max_images > 0 else files


def _cache_key(
    files: list[Path], scales: list[int], patch: int, stride: int, teacher: Teacher | None
) -> tuple[str, dict]:
    digests = {}
    for f in files:
        digests[f.name if f.parent.name == "" else f"{f.parent.name}/{f.name}"] = hashlib.sha256(
            f.read_bytes()
        ).hexdigest()
    info = {"version": CACHE_VERSION, "files": digests, "scales": scales, "patch": patch, "stride": stride}
    if teacher is not None:  # absent otherwise, so caches built before distillation keep their keys
        info["teacher"] = teacher.identity
    key = hashlib.sha256(json.dumps(info, sort_keys=True).encode()).hexdigest()[:16]
    return key, info


def _patches(img: np.ndarray, patch: int, stride: int) -> np.ndarray:
    """``float[H, W] -> float32[K, patch, patch]`` on a stride grid (top-left anchored, as in the paper)."""
    h, w = img.shape
    ys = range(0, h - patch + 1, stride)
    xs = range(0, w - patch + 1, stride)
    return np.stack([img[y : y + patch, x : x + patch] for y in ys for x in xs]).astype(np.float32)


@dataclass
class PatchSet:
    """Memory-mapped patch arrays (see module docstring for shapes)."""

    inputs: np.ndarray
    targets: np.ndarray
    scales: np.ndarray
    key: str
    teacher: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.targets)


def build_patch_cache(
    folders: list[str | Path],
    scales: list[int],
    patch: int,
    stride: int,
    cache_root: str | Path,
    max_images: int = 0,
    teacher: Teacher | None = None,
) -> PatchSet:
    """Build (or reuse) the cache for these folders and parameters, and open it memory-mapped.

    ``max_images`` > 0 keeps the first that many images (:func:`list_images`); ``teacher`` adds its
    outputs as ``teacher.npy`` (the teacher runs once per image and scale, at build time only)."""
    files = list_images(folders, max_images)
    key, info = _cache_key(files, scales, patch, stride, teacher)
    out = Path(cache_root) / f"patches-{key}"
    if not (out / "meta.json").is_file():
        arrays: dict[str, list[np.ndarray]] = {"inputs": [], "targets": [], "scales": [], "teacher": []}
        for f in tqdm(files, desc="patch cache" + (" + teacher" if teacher else ""), unit="img"):
            hr = load_y(f).astype(np.float64) / 255.0
            for s in scales:
                gt = modcrop(hr, s)
                if min(gt.shape) < patch:
                    continue
                bicubic = degrade(gt, s)
                t = _patches(gt, patch, stride)
                arrays["inputs"].append(_patches(bicubic, patch, stride))
                arrays["targets"].append(t)
                arrays["scales"].append(np.full(len(t), s, np.uint8))
                if teacher is not None:
                    arrays["teacher"].append(_patches(teacher.sr(bicubic, s), patch, stride))
        if not arrays["targets"]:  # else an empty cache would be committed, and every run fail on it
            raise UserError(f"no training image is at least {patch}x{patch} after modcrop (of {len(files)})")
        tmp = out.with_name(out.name + ".partial")
        tmp.mkdir(parents=True, exist_ok=True)
        for name, parts in arrays.items():
            if parts:
                np.save(tmp / f"{name}.npy", np.concatenate(parts))
        (tmp / "meta.json").write_text(json.dumps(info, indent=1))
        tmp.rename(out)
    return PatchSet(
        inputs=np.load(out / "inputs.npy", mmap_mode="r"),
        targets=np.load(out / "targets.npy", mmap_mode="r"),
        scales=np.load(out / "scales.npy", mmap_mode="r"),
        key=key,
        teacher=np.load(out / "teacher.npy", mmap_mode="r") if teacher is not None else None,
    )


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """One of the 8 flip/rotation transforms of ``x[..., H, W]`` (k in 0..7)."""
    if k >= 4:
        x = x.flip(-1)
    return torch.rot90(x, k % 4, dims=(-2, -1))


class PatchSampler:
    """Draws random augmented batches; all randomness comes from one ``torch.Generator`` so that a
    checkpoint of :meth:`state_dict` resumes the exact same stream.
    """

    def __init__(self, patches: PatchSet, batch: int, seed: int) -> None:
        self.patches = patches
        self.batch = batch
        self.gen = torch.Generator().manual_seed(seed)

    def next(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(inputs, targets, teacher)``, each ``float32[batch, 1, P, P]``; ``teacher`` is None unless
        the patch set has teacher outputs. All three get the same flip/rotation per patch."""
        idx = torch.randint(len(self.patches), (self.batch,), generator=self.gen).numpy()
        ks = torch.randint(8, (self.batch,), generator=self.gen)
        order = np.argsort(idx)  # sorted reads are kinder to the page cache of the memmap
        sources = [self.patches.inputs, self.patches.targets]
        if self.patches.teacher is not None:
            sources.append(self.patches.teacher)
        out = []
        for src in sources:
            t = torch.empty(self.batch, 1, *src.shape[1:])
            t[order, 0] = torch.from_numpy(np.asarray(src[idx[order]]))
            for k in range(1, 8):
                sel = (ks == k).nonzero().flatten()
                if len(sel):
                    t[sel] = dihedral(t[sel], k)
            out.append(t)
        return out[0], out[1], out[2] if len(out) > 2 else None

    def state_dict(self) -> dict:
        return {"gen": self.gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.gen.set_state(state["gen"])
