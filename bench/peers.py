"""``drrn bench peers``: our models side by side with OpenCV's ``dnn_superres`` models, one process, one run.

Who runs (``--models``, default all that exist):

- ``bicubic``: the LR image upscaled with the project's MATLAB-compatible ``imresize`` (the baseline);
- ours, each through the pipeline ``drrn eval`` uses (:func:`engines.resolver.resolve_tiled`, then
  :func:`imaging.tiling.run_tiled` on the bicubic-upscaled Y), at its model card's tile and margin:
  ``fast``, ``quality`` and ``fast-int8`` (``drrn quantize`` of the fast model, built on first use under
  ``artifacts/int8/`` from training crops of T91 + BSD200, never from the benchmark sets);
- peers: ``FSRCNN``, ``ESPCN``, ``LapSRN``, ``EDSR`` from ``../shared/reference/opencv-superres/NAME_xS.pb``
  through ``cv2.dnn_superres.DnnSuperResImpl`` (``readModel``, ``setModel``, ``upsample``), exactly as a user
  calls it; a missing file (LapSRN has no x3, EDSR is not there) is listed under ``skipped``.

Inputs: one LR image per (image, scale), the same bytes for everyone: the ground truth is the image's MATLAB
Y, modcropped (:mod:`imaging.protocol`), and the LR image is the paper's degradation of it (MATLAB bicubic
with antialiasing, :func:`imaging.resize.imresize` at 1/s) rounded to uint8, i.e. a greyscale 8-bit photo.
Peers get it as the 3-channel BGR uint8 array ``cv2.imread`` returns for a grey photo (their Y-only models
then see that grey level as Y and leave the chroma flat); ours bicubic-upscale it to the output size and run
the network on that. Every output is scored with :func:`imaging.protocol.score` (Y, uint8, shave = scale).

Speed: seconds per output megapixel with 2 threads (``cv2.setNumThreads``, ORT intra-op 2), wall time of
the user's call: ``upsample`` for a peer, bicubic upscale + tiled network for ours. Each (image, scale) is
one round over all models, in an order that rotates from round to round, so load from other processes hits
everyone alike; a float32 GEMM probe between rounds records how much the machine's speed moved.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.peer_models import DEFAULT_MODELS, THREADS, Contender, bicubic_up, contenders
from bench.peers_report import aggregate, render_peers
from bench.report import header, write_json
from drrn.errors import UserError

SCHEMA_VERSION = 1
SETS = ("Set5", "Set14", "BSD100")
PROBE_EVERY = 3  # images between two GEMM probes


def _probe_gflops() -> float:
    """A 512x512 float32 GEMM (numpy's BLAS), best of 3: how fast the machine is right now."""
    from bench.peak import gemm_numpy_gflops

    return gemm_numpy_gflops(n=512, repeats=3)


def set_folder(spec: str) -> tuple[Path, int | None]:
    """``(folder, cap)`` for ``Set5``, ``BSD100:10`` (its first 10 images, sorted by name) or a folder path
    (a name is looked up under ``../shared/datasets``)."""
    from drrn.paths import datasets_dir

    name, _, cap = spec.partition(":")
    path = Path(name) if ("/" in name or Path(name).is_dir()) else datasets_dir() / name
    if not path.is_dir():
        raise UserError(f"dataset folder not found: {path}")
    if cap and not cap.isdigit():
        raise UserError(f"--sets expects NAME or NAME:COUNT, got {spec!r}")
    return path, int(cap) if cap else None


def degrade_lr(gt: np.ndarray, s: int, degradation: str) -> np.ndarray:
    """The LR uint8 image of ground truth ``gt`` (float Y in [0, 1]): ``matlab`` = the paper's protocol
    (MATLAB bicubic with antialiasing, :func:`imaging.resize.imresize`), rounded to 8 bits; ``cv2`` = the
    peers' training degradation (``cv2.resize`` INTER_CUBIC of the 8-bit image, no antialiasing)."""
    from imaging.protocol import quantize
    from imaging.resize import imresize

    if degradation == "matlab":
        return quantize(imresize(gt, 1 / s))
    import cv2

    h, w = gt.shape
    return cv2.resize(quantize(gt), (w // s, h // s), interpolation=cv2.INTER_CUBIC)


def _jobs(folders: list[tuple[Path, int | None]]) -> list[tuple[Path, Path]]:
    """``(folder, image)`` taking one image from each set in turn, so a run stopped by ``max_minutes``
    has measured every set about equally far instead of finishing one set and never starting the next."""
    from itertools import chain, zip_longest

    from imaging.protocol import image_files

    lists = [[(f, p) for p in image_files(f)[:cap]] for f, cap in folders]
    return [job for job in chain.from_iterable(zip_longest(*lists)) if job is not None]


def _one_image(entrants: list[Contender], folder: Path, path: Path, scales: list[int], degradation: str,
               first: int) -> list[dict[str, Any]]:  # fmt: skip
    """One record per contender and scale on one image; ``first`` rotates who runs first in each round."""
    from imaging.crop import modcrop
    from imaging.protocol import load_y, score

    y, records = load_y(path), []
    for i, s in enumerate(scales):
        gt = modcrop(y / 255.0, s)
        lr = degrade_lr(gt, s, degradation)  # the one LR image every contender gets
        bic_psnr, bic_ssim = score(bicubic_up(lr, s), gt, s)
        k = (first + i) % len(entrants)
        for c in entrants[k:] + entrants[:k]:
            if s not in c.runs or (
                c.sets is not None and not {folder.name, f"{folder.name}/{path.stem}"} & c.sets
            ):
                continue
            out, seconds = c.runs[s](lr, s)
            psnr, ssim = score(out, gt, s)
            records.append({
                "model": c.name, "set": folder.name, "image": path.stem, "scale": s, "psnr": psnr,
                "ssim": ssim, "bicubic_psnr": bic_psnr, "bicubic_ssim": bic_ssim, "output_px": int(gt.size),
                "seconds": seconds,
            })  # fmt: skip
    return records


def run_peers(
    models: list[str] | None = None,
    sets: list[str] | None = None,
    scales: list[int] | None = None,
    max_images: int | None = None,
    model_sets: dict[str, set[str]] | None = None,
    json_out: str | None = None,
    plot_out: str | None = None,
    quick: bool = False,
    root: Path | None = None,
    degradation: str = "matlab",
    max_minutes: float | None = None,
) -> dict[str, Any]:
    """Run every contender on every (set, image, scale), print the table, write JSON and the plot.

    ``max_minutes``: start no new image after that long (the report says ``stopped_early``); the JSON is
    rewritten after every image, so even a killed run leaves its measurements."""
    if degradation not in ("matlab", "cv2"):
        raise UserError(f"--degradation must be matlab or cv2, got {degradation!r}")
    scales = scales or [2, 3, 4]
    max_images = 1 if quick and max_images is None else max_images
    folders = [
        (f, min(filter(None, (c, max_images)), default=None)) for f, c in map(set_folder, sets or SETS)
    ]
    jobs = _jobs(folders)
    entrants, skipped = contenders(list(models or DEFAULT_MODELS), scales, root, model_sets or {})
    for c in entrants:  # warm-up: session arenas, thread pools and OpenCV's net setup, outside the timing
        for s, run in c.runs.items():
            run(np.full((24, 24), 128, np.uint8), s)
    records: list[dict[str, Any]] = []
    probes: list[float] = [_probe_gflops()]
    t0, done = time.monotonic(), 0
    meta = {"degradation": degradation, "scales": scales, "sets": [f.name for f, _ in folders]}
    for folder, path in jobs:
        if max_minutes is not None and time.monotonic() - t0 > 60 * max_minutes:
            break
        records += _one_image(entrants, folder, path, scales, degradation, done)
        done += 1
        if done % PROBE_EVERY == 0:
            probes.append(_probe_gflops())
        print(f"peers: {folder.name} {path.stem} done ({done}/{len(jobs)} images)", file=sys.stderr)
        write_json(_report(entrants, skipped, records, probes, meta, quick, complete=False), json_out)
    probes.append(_probe_gflops())
    report = _report(entrants, skipped, records, probes, meta, quick, complete=done == len(jobs))
    report["wall_s"] = time.monotonic() - t0
    print(render_peers(report))
    write_json(report, json_out)
    if plot_out:
        from bench.peers_plot import plot_peers

        plot_peers(report, plot_out)
    return report


def _report(entrants, skipped, records, probes, meta, quick, complete) -> dict[str, Any]:
    images = {s: len({r["image"] for r in records if r["set"] == s}) for s in meta["sets"]}
    return {
        **header("peers", quick, SCHEMA_VERSION),
        "threads": THREADS,
        **meta,
        "complete": complete,  # False: stopped by max_minutes, or a file rewritten while running
        "set_images": images,
        "models": [c.describe() for c in entrants],
        "skipped": skipped,
        "noise": _noise(probes),
        **aggregate(records, [(c.name, c.kind) for c in entrants]),
        "images": records,
    }


def _noise(probes: list[float]) -> dict[str, Any]:
    """The GEMM probe's GFLOP/s over the run and its spread ((max - min) / median)."""
    med = float(np.median(probes))
    return {
        "probe": f"numpy float32 GEMM 512x512, best of 3, every {PROBE_EVERY} images",
        "gflops": probes,
        "spread": (max(probes) - min(probes)) / med if med else None,
    }
