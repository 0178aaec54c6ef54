"""Training patches: the paper's 31x31 / stride 21 Y patches at mixed scales, cached once, sampled on the fly.

Cache layout (``cache/patches-<key>/``), memory-mapped so a later run starts in seconds:

- ``inputs.npy``: ``float32[P, 31, 31]``, bicubic-degraded Y in ~[0, 1] (unrounded, as in MATLAB)
- ``targets.npy``: ``float32[P, 31, 31]``, ground-truth Y in [0, 1]
- ``scales.npy``: ``uint8[P]``, the degradation scale of each patch
- ``meta.json``: the inputs (file hashes) and parameters the key was computed from

The key is a hash of every source file's content and every parameter, so changing either rebuilds.
The 8 flip/rotation augmentations are applied on the fly (uniformly random dihedral transform per patch),
which is the same distribution as the paper's 8x pre-augmented set at 1/8 of the disk.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from imaging.crop import modcrop
from imaging.protocol import degrade, image_files, load_y

CACHE_VERSION = 1


def list_images(folders: list[str | Path]) -> list[Path]:
    """All images in ``folders`` (non-recursive), sorted for a reproducible order."""
    try:
        return [Path(p) for folder in folders for p in image_files(folder)]
    except ValueError as exc:  # an empty folder is as unusable for training as a missing one
        raise FileNotFoundError(str(exc)) from exc


def _cache_key(files: list[Path], scales: list[int], patch: int, stride: int) -> tuple[str, dict]:
    digests = {}
    for f in files:
        digests[f.name if f.parent.name == "" else f"{f.parent.name}/{f.name}"] = hashlib.sha256(
            f.read_bytes()
        ).hexdigest()
    info = {"version": CACHE_VERSION, "files": digests, "scales": scales, "patch": patch, "stride": stride}
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

    def __len__(self) -> int:
        return len(self.targets)


def build_patch_cache(
    folders: list[str | Path], scales: list[int], patch: int, stride: int, cache_root: str | Path
) -> PatchSet:
    """Build (or reuse) the cache for these folders and parameters, and open it memory-mapped."""
    files = list_images(folders)
    key, info = _cache_key(files, scales, patch, stride)
    out = Path(cache_root) / f"patches-{key}"
    if not (out / "meta.json").is_file():
        inputs, targets, scale_ids = [], [], []
        for f in tqdm(files, desc="patch cache", unit="img"):
            hr = load_y(f).astype(np.float64) / 255.0
            for s in scales:
                gt = modcrop(hr, s)
                if min(gt.shape) < patch:
                    continue
                t = _patches(gt, patch, stride)
                inputs.append(_patches(degrade(gt, s), patch, stride))
                targets.append(t)
                scale_ids.append(np.full(len(t), s, np.uint8))
        tmp = out.with_name(out.name + ".partial")
        tmp.mkdir(parents=True, exist_ok=True)
        np.save(tmp / "inputs.npy", np.concatenate(inputs))
        np.save(tmp / "targets.npy", np.concatenate(targets))
        np.save(tmp / "scales.npy", np.concatenate(scale_ids))
        (tmp / "meta.json").write_text(json.dumps(info, indent=1))
        tmp.rename(out)
    return PatchSet(
        inputs=np.load(out / "inputs.npy", mmap_mode="r"),
        targets=np.load(out / "targets.npy", mmap_mode="r"),
        scales=np.load(out / "scales.npy", mmap_mode="r"),
        key=key,
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

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(inputs, targets)``, each ``float32[batch, 1, P, P]``."""
        idx = torch.randint(len(self.patches), (self.batch,), generator=self.gen).numpy()
        ks = torch.randint(8, (self.batch,), generator=self.gen)
        order = np.argsort(idx)  # sorted reads are kinder to the page cache of the memmap
        x = torch.empty(self.batch, 1, *self.patches.inputs.shape[1:])
        y = torch.empty_like(x)
        x[order, 0] = torch.from_numpy(np.asarray(self.patches.inputs[idx[order]]))
        y[order, 0] = torch.from_numpy(np.asarray(self.patches.targets[idx[order]]))
        for k in range(1, 8):
            sel = (ks == k).nonzero().flatten()
            if len(sel):
                x[sel] = dihedral(x[sel], k)
                y[sel] = dihedral(y[sel], k)
        return x, y

    def state_dict(self) -> dict:
        return {"gen": self.gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.gen.set_state(state["gen"])
