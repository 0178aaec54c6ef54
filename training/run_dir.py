"""The files of one training run's directory that must survive a kill: the checkpoint, written
atomically, and the log, trimmed on resume to the checkpoint's step. Also what a resume may change."""

from __future__ import annotations

import json
import os
import platform
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
    field of a section of :data:`RESUME_MUST_MATCH`; a field one side lacks (added to the recipe format
    since the checkpoint was written) is not compared."""
    changed = [
        f"{section}.{key}"
        for section in RESUME_MUST_MATCH
        for key in sorted(set(saved.get(section) or {}) & set(now.get(section) or {}))
        if saved[section][key] != now[section][key]
    ]
    if changed:
        raise UserError(
            f"the checkpoint was trained with another recipe ({', '.join(changed)} differ); resume with "
            "the recipe it started with (the run's recipe.json records it) or start a new --out"
        )


def trim_log(path: Path, step: int) -> None:
    """Drop the rows of ``log.jsonl`` past ``step``: after a hard kill they describe steps the resume will
    train again, and a curve drawn from the log would hold both timelines. Rewritten atomically."""
    if not path.is_file():
        return
    rows = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = [r for r in rows if (row := _row(r)) is not None and row.get("step", 0) <= step]
    if len(kept) != len(rows):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(kept), encoding="utf-8")
        os.replace(tmp, path)


def _row(line: str) -> dict | None:
    """A log line's object; None for a blank line or one a hard kill cut off mid-write."""
    try:
        row = json.loads(line)
    except ValueError:
        return None
    return row if isinstance(row, dict) else None


def hardware_summary(device: str) -> dict:
    """Where a run trained (recorded in its weights): platform, CPU, torch, threads and the GPU if any."""
    info = {
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info
