"""``drrn upscale INPUT... -o OUTDIR --scale S [--url URL] [--model M] [--jobs N]``: files and folders.

Each INPUT is an image file (written as ``OUTDIR/<name>.png``) or a folder, searched recursively for images
(by extension, or by the file's first bytes for other names) and written as ``OUTDIR/<path relative to the
folder>.png`` (the suffix replaced; ``<name>.<ext>.png`` for the files whose names would otherwise collide).
An output that exists is skipped, so a rerun resumes; outputs are written to a temporary file and renamed,
so an interrupted run never leaves a truncated PNG.

With ``--url`` the images go to a server (a replica, or the load balancer in front of several) through
:class:`drrn.client.Client`, ``--jobs`` at a time: the client retries 503s and lost connections, and the
load balancer spreads the requests over the replicas. Without ``--url`` they run through the local pipeline
(the model loaded once, one image at a time). A file that fails is reported and the run goes on; the exit
status is 1 when any file failed.
"""

from __future__ import annotations

import os
import struct
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from drrn.errors import UserError

if TYPE_CHECKING:
    import argparse

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"})
_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM", b"II*\x00", b"MM\x00*")


@dataclass(frozen=True)
class Job:
    """One image: read ``src``, write ``dst`` (``rel`` is what the progress and summary show)."""

    src: Path
    dst: Path
    rel: str


@dataclass
class Summary:
    """``written`` new outputs, ``skipped`` existing ones, ``failed`` (rel, message), output pixels written,
    wall seconds, client retries."""

    written: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    out_pixels: int = 0
    seconds: float = 0.0
    retries: int | None = None  # requests the client re-sent (503, lost connection); None: local run

    def line(self) -> str:
        rate = self.written / self.seconds if self.seconds else 0.0
        mpx = self.out_pixels / 1e6 / self.seconds if self.seconds else 0.0
        return (
            f"{self.written + self.skipped + len(self.failed)} images: {self.written} written, "
            f"{self.skipped} skipped (output exists), {len(self.failed)} failed; "
            f"{self.seconds:.1f} s, {rate:.1f} images/s, {mpx:.2f} output Mpx/s"
            + ("" if self.retries is None else f", {self.retries} requests retried")
        )


def is_image(path: Path) -> bool:
    """An image by its extension, or for other names by its first bytes (PNG, JPEG, BMP, TIFF, WebP)."""
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError:
        return False
    return head.startswith(_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")


def find_jobs(inputs: Sequence[str | Path], out_dir: Path) -> list[Job]:
    """Every image under ``inputs`` and its output path, in a stable order. Files inside ``out_dir`` and
    hidden files (such as our own temporary files) are left out. Raises UserError for a missing input or
    two inputs that would write the same output."""
    out_abs = out_dir.resolve()
    found: list[tuple[Path, Path]] = []  # (source, path relative to its input)
    for item in map(Path, inputs):
        if item.is_dir():
            if item.resolve() == out_abs or out_abs in item.resolve().parents:
                raise UserError(f"the input {item} is inside the output folder {out_dir}; choose another -o")
            for src in sorted(item.rglob("*")):
                rel = src.relative_to(item)
                if any(p.startswith(".") for p in rel.parts) or out_abs in src.resolve().parents:
                    continue
                if src.is_file() and is_image(src):
                    found.append((src, rel))
        elif item.is_file():
            found.append((item, Path(item.name)))  # named explicitly: the server judges whether it is one
        else:
            raise UserError(f"no such file or folder: {item}")
    plain = Counter(rel.with_suffix(".png") for _, rel in found)
    jobs = []
    for src, rel in found:
        out_rel = rel.with_suffix(".png") if plain[rel.with_suffix(".png")] == 1 else Path(f"{rel}.png")
        jobs.append(Job(src, out_dir / out_rel, str(rel)))
    own = next((j for j in jobs if j.dst.resolve() == j.src.resolve()), None)
    if own is not None:  # it would be skipped as "output exists", and nothing written
        raise UserError(f"{own.src} would be its own output; choose another -o")
    clashes = [dst for dst, n in Counter(j.dst for j in jobs).items() if n > 1]
    if clashes:
        raise UserError(
            f"{len(clashes)} outputs would be written twice, e.g. {clashes[0]} (same name in two inputs)"
        )
    return jobs


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk (bytes 16-24), without decoding it."""
    return struct.unpack(">II", png[16:24])


def _write(job: Job, png: bytes) -> tuple[int, int]:
    from drrn.client import write_atomic

    job.dst.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(job.dst, png)
    return png_size(png)


def run_jobs(
    jobs: Iterable[Job], upscale: Callable[[Job], tuple[int, int]], workers: int, progress: bool | None = None
) -> Summary:
    """Run ``upscale(job) -> output (w, h)`` for every job whose output does not exist, ``workers`` at a
    time; an exception fails that job only. ``progress``: tqdm bar on stderr (None = only on a terminal)."""
    from tqdm import tqdm

    summary, t0 = Summary(), time.perf_counter()
    pending = []
    for job in jobs:
        if job.dst.exists():
            summary.skipped += 1
        else:
            pending.append(job)
    bar = tqdm(
        total=len(pending), unit="img", disable=None if progress is None else not progress, file=sys.stderr
    )
    pool = ThreadPoolExecutor(max_workers=max(1, workers))
    try:
        futures = {pool.submit(upscale, job): job for job in pending}
        for future in as_completed(futures):
            job = futures[future]
            try:
                w, h = future.result()
                summary.written += 1
                summary.out_pixels += w * h
            except Exception as exc:  # one bad file must not stop a 10,000-file run
                summary.failed.append((job.rel, str(exc) or type(exc).__name__))
                bar.write(f"failed: {job.rel}: {summary.failed[-1][1]}", file=sys.stderr)
            bar.update(1)
            elapsed = time.perf_counter() - t0
            bar.set_postfix_str(f"{summary.out_pixels / 1e6 / elapsed:.2f} Mpx/s", refresh=False)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # Ctrl-C: running images finish, queued ones don't
        bar.close()
        summary.seconds = time.perf_counter() - t0
    return summary


def remote_upscaler(client, scale: float, model: str | None) -> Callable[[Job], tuple[int, int]]:
    """Each job through ``client`` (a :class:`drrn.client.Client`, shared by the worker threads)."""

    def upscale(job: Job) -> tuple[int, int]:
        return _write(job, client.upscale(job.src, scale, model=model))

    return upscale


def local_upscaler(scale: float, model: str, options: dict) -> Callable[[Job], tuple[int, int]]:
    """Each job through the local pipeline; ``options`` are :func:`inference.local.upscale_file`'s keyword
    arguments (limits, tile, margin, engine options, root). The model loads once, here."""
    from engines.resolver import resolve_tiled
    from inference.pipeline import ImageError, ImageLimits, upscale_bytes
    from inference.request_params import parse_scale

    options = dict(options)
    limits, root, margin = (
        options.pop("limits", None) or ImageLimits(),
        options.pop("root", None),
        options.pop("margin", None),
    )
    try:
        value = parse_scale(str(scale), limits)
    except ImageError as exc:
        raise UserError(f"--scale {scale}: {exc.detail}") from exc
    engine, margin = resolve_tiled(model, root=root, margin=margin, providers="cpu", **options)

    def upscale(job: Job) -> tuple[int, int]:
        data = job.src.read_bytes()
        try:
            png = upscale_bytes(data, value, engine.run, limits, engine.tile, margin, engine.max_batch)
        except ImageError as exc:
            raise ValueError(f"{exc.code}: {exc.detail}") from exc
        return _write(job, png)

    return upscale


def run_folder_cli(args: argparse.Namespace, local_options: dict | None = None) -> int:
    """``drrn upscale INPUT... -o OUTDIR``: find the images, run them (``args.url``: on that server, else
    locally with ``local_options``), print the summary; 1 if any file failed."""
    inputs, out_dir, url, jobs = args.inputs, args.out_dir, args.url, max(1, args.jobs)
    todo = find_jobs(inputs, Path(out_dir))
    if not todo:
        raise UserError(f"no images found in {', '.join(inputs)}")
    os.makedirs(out_dir, exist_ok=True)
    if url:
        from drrn.client import Client, Unauthorized

        retries: list = []  # one RetryEvent per retry (list.append is atomic across the worker threads)
        api_key = getattr(args, "api_key", None) or os.environ.get("DRRN_API_KEY") or None
        with Client(url, max_connections=jobs, on_retry=retries.append, api_key=api_key) as client:
            if not client.ready():
                print(f"warning: {url}/readyz is not 200 yet; requests will be retried", file=sys.stderr)
            else:  # a refused key would fail every file: say so once, before starting
                try:
                    client.models()
                except Unauthorized as exc:
                    raise UserError(f"{url}: {exc.detail} (--api-key, or DRRN_API_KEY)") from None
            model = None if args.model in ("default", "") else args.model
            summary = run_jobs(todo, remote_upscaler(client, args.scale, model), jobs)
        summary.retries = len(retries)
    else:
        summary = run_jobs(todo, local_upscaler(args.scale, args.model, local_options or {}), 1)
    print(summary.line())  # each failure was printed when it happened
    return 1 if summary.failed else 0
