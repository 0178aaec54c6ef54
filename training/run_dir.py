"""The files of one training run's directory that must survive a kill: the checkpoint, written
atomically, and the log, trimmed on resume to the checkpoint's step. Also what a resume may change."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from drrn.errors import UserError

# Recipe sections whose change alters the maths of the steps still to run. data is checked by its patch
# cache key (its folders may move between machines); runtime (threads, cadences) may change.
RESUME_MUST_MATCH = ("model", "optim", "schedule", "clip", "distill")


def atomic_torch_save(obj: dict, path: Path) -> None:
    """``torch.save`` to a temporary file renamed over ``path``: a kill leaves the old file or the new."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def check_resumable(saved: dict, now: dict) -> None:
    """Refuse (UserError) a resume whose recipe (``Recipe.to_dict()``) differs from the checkpoint's in a
    section of :data:`RESUME_MUST_MATCH`; a checkpoint from before a section existed is not held to it."""
    changed = [k for k in RESUME_MUST_MATCH if k in saved and saved[k] != now[k]]
    if changed:
        raise UserError(
            f"the checkpoint was trained with another recipe ([{'], ['.join(changed)}] differ); resume "
            "with the recipe it started with (its recipe.json) or start a new --out"
        )


def trim_log(path: Path, step: int) -> None:
    """Drop the rows of ``log.jsonl`` past ``step``: after a hard kill they describe steps the resume will
    train again, and a curve drawn from the log would hold both timelines. Rewritten atomically."""
    if not path.is_file():
        return
    rows = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = [r for r in rows if r.strip() and json.loads(r).get("step", 0) <= step]
    if len(kept) != len(rows):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(kept), encoding="utf-8")
        os.replace(tmp, path)
