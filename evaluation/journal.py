"""A per-image record of an evaluation, so a run of hours survives interruption and splits across sittings.

``drrn eval --journal FILE`` appends one JSON line per scored image (dataset, image, scale, PSNR/SSIM of
the model and of bicubic) and flushes it to disk before the next image starts. Run the same command again
and the images already in the file are read back instead of recomputed; the summary is then the mean over
the recorded and the new images, exactly as one uninterrupted run would give (the per-image scores do not
depend on the order or on each other).

The file's first line is its identity: the protocol, the model spec, the SHA-256 of the model file the
engine loaded, tile, margin, ensemble and precision. A journal written under another identity is refused
(:class:`drrn.errors.UserError` naming the fields that differ) rather than mixed into the new run. Each
row also carries the SHA-256 of its image file, and an image whose file changed since it was scored is
refused. A last row cut off by a kill is dropped and recomputed; an unreadable first line or any other
unreadable row is refused. One writer at a time: two runs appending to one journal can interleave rows.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from drrn.errors import UserError

FORMAT = "drrn-eval-journal/1"
SCORE_FIELDS = ("psnr", "ssim", "bicubic_psnr", "bicubic_ssim")

Key = tuple[str, str, int]  # (dataset folder name, image file name, scale)


class EvalJournal:
    """The scores recorded so far under one identity; :meth:`record` appends and syncs one image."""

    def __init__(self, path: Path, identity: dict) -> None:
        self.path = Path(path)
        self.identity = identity
        self.scores: dict[Key, dict[str, float]] = {}
        self.image_sha: dict[Key, str] = {}
        if self.path.exists() and self.path.stat().st_size > 0:
            self._load()
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._append({"format": FORMAT, "identity": identity})

    def _load(self) -> None:
        raw = self.path.read_bytes()
        lines = raw.split(b"\n")
        complete, tail = lines[:-1], lines[-1]  # the part after the last newline is a cut-off write
        if not complete:
            raise UserError(f"{self.path}: not an eval journal (no complete first line)")
        try:
            head = json.loads(complete[0])
        except json.JSONDecodeError:
            raise UserError(f"{self.path}: not an eval journal (first line is not JSON)") from None
        if not isinstance(head, dict) or head.get("format") != FORMAT:
            raise UserError(f"{self.path}: not an eval journal (expected format {FORMAT!r})")
        theirs = head.get("identity", {})
        differ = sorted(k for k in set(theirs) | set(self.identity) if theirs.get(k) != self.identity.get(k))
        if differ:
            detail = ", ".join(f"{k}: {theirs.get(k)!r} != {self.identity.get(k)!r}" for k in differ)
            raise UserError(f"{self.path}: written by another run ({detail}); use a new journal file")
        for n, line in enumerate(complete[1:], start=2):
            try:
                row = json.loads(line)
                key = (str(row["dataset"]), str(row["image"]), int(row["scale"]))
                self.scores[key] = {f: float(row[f]) for f in SCORE_FIELDS}
                if "image_sha256" in row:  # rows written before images were hashed are taken as they are
                    self.image_sha[key] = str(row["image_sha256"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                raise UserError(f"{self.path}: line {n} is not a scored image") from None
        if tail:
            with self.path.open("r+b") as f:
                f.truncate(len(raw) - len(tail))

    def _append(self, row: dict) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def get(self, key: Key, image_sha256: str) -> dict[str, float] | None:
        """The recorded scores of ``(dataset, image, scale)``, or None when it has not been scored yet.
        Raises :class:`UserError` when the image file changed since (its ``image_sha256`` differs)."""
        recorded = self.scores.get(key)
        if recorded is not None and self.image_sha.get(key, image_sha256) != image_sha256:
            raise UserError(f"{self.path}: {key[0]}/{key[1]} changed since it was scored; use a new journal")
        return recorded

    def record(self, key: Key, image_sha256: str, scores: dict[str, float]) -> None:
        """Append one image's scores (the :data:`SCORE_FIELDS`) and sync them to disk."""
        dataset, image, scale = key
        self.scores[key] = {f: float(scores[f]) for f in SCORE_FIELDS}
        self.image_sha[key] = image_sha256
        row = {"dataset": dataset, "image": image, "scale": scale, "image_sha256": image_sha256}
        self._append(row | self.scores[key])
