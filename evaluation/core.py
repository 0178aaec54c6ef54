"""Score a super-resolution function on image folders under the DRRN (MATLAB) protocol.

The function under test maps the bicubic-upscaled Y (``float64[H, W]``, ~[0, 1], unrounded) to the
super-resolved Y (same shape). Everything else (Y extraction, modcrop, degradation, uint8 rounding, shaving,
PSNR/SSIM) is :mod:`imaging.protocol`, shared with training and tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from drrn.paths import sha256_file
from evaluation.journal import EvalJournal
from imaging.protocol import image_files, prepare, quantize, score

SRFunction = Callable[[np.ndarray, int], np.ndarray]


@dataclass
class ScaleResult:
    psnr: list[float] = field(default_factory=list)
    ssim: list[float] = field(default_factory=list)
    bicubic_psnr: list[float] = field(default_factory=list)
    bicubic_ssim: list[float] = field(default_factory=list)

    def summary(self) -> dict:
        mean = lambda v: float(np.mean(v)) if v else float("nan")  # noqa: E731
        return {
            "psnr": mean(self.psnr),
            "ssim": mean(self.ssim),
            "bicubic_psnr": mean(self.bicubic_psnr),
            "bicubic_ssim": mean(self.bicubic_ssim),
            "images": len(self.psnr),
        }


def evaluate(
    folders: list[Path],
    scales: list[int],
    sr: SRFunction | None,
    progress: bool = True,
    save_dir: Path | None = None,
    journal: EvalJournal | None = None,
) -> dict[str, dict[str, dict]]:
    """``{dataset: {str(scale): summary}}``; ``sr=None`` scores bicubic only (psnr = bicubic_psnr).

    ``sr(bicubic_y, scale) -> sr_y`` gets ``float64[H, W]`` and returns ``float[H, W]``. With a
    ``journal``, images it already holds are read back, not recomputed, and each new one is recorded as
    soon as it is scored (so it cannot be combined with ``save_dir``: resumed images would be missing).
    Folder names must be distinct (results are keyed by them).
    """
    results: dict[str, dict[str, dict]] = {}
    names = [f.name for f in folders]
    if len(set(names)) != len(names):  # results (and journal rows) are keyed by the folder's name
        raise ValueError(f"dataset folders must have distinct names, got {[str(f) for f in folders]}")
    jobs = [(folder, img, s) for folder in folders for img in image_files(folder) for s in scales]
    if journal is not None and save_dir is not None:
        raise ValueError(
            "a journal cannot be combined with saving images (resumed images would not be saved)"
        )
    per: dict[tuple[str, int], ScaleResult] = {}
    digests: dict[Path, str] = {}  # one hash per image file, however many scales
    for folder, path, s in tqdm(jobs, desc="eval", unit="img", disable=not progress, leave=False):
        r = per.setdefault((folder.name, s), ScaleResult())
        key = (folder.name, path.name, s)
        if journal is not None and path not in digests:
            digests[path] = sha256_file(path)
        digest = digests.get(path, "")
        recorded = journal.get(key, digest) if journal is not None else None
        if recorded is not None:
            for name, values in vars(r).items():
                values.append(recorded[name])
            continue
        gt, bicubic = prepare(path, s)
        out = bicubic if sr is None else np.asarray(sr(bicubic, s), dtype=np.float64)
        if out.shape != gt.shape:
            raise ValueError(f"{path}: model output {out.shape} != ground truth {gt.shape}")
        p, q = score(out, gt, s)
        bp, bq = score(bicubic, gt, s)
        r.psnr.append(p)
        r.ssim.append(q)
        r.bicubic_psnr.append(bp)
        r.bicubic_ssim.append(bq)
        if journal is not None:
            journal.record(key, digest, {"psnr": p, "ssim": q, "bicubic_psnr": bp, "bicubic_ssim": bq})
        if save_dir is not None:
            from PIL import Image

            dst = save_dir / folder.name / f"x{s}"
            dst.mkdir(parents=True, exist_ok=True)
            Image.fromarray(quantize(out)).save(dst / f"{path.stem}.png")
    for (name, s), r in per.items():
        results.setdefault(name, {})[str(s)] = r.summary()
    return results


def markdown_table(results: dict[str, dict[str, dict]], model: str) -> str:
    """One row per dataset and scale: model and bicubic PSNR/SSIM."""
    lines = [
        f"| dataset | scale | {model} PSNR | {model} SSIM | bicubic PSNR | bicubic SSIM | images |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, per_scale in results.items():
        for s, r in per_scale.items():
            lines.append(
                f"| {name} | x{s} | {r['psnr']:.2f} | {r['ssim']:.4f} | {r['bicubic_psnr']:.2f} | "
                f"{r['bicubic_ssim']:.4f} | {r['images']} |"
            )
    return "\n".join(lines)
