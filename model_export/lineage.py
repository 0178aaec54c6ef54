"""Training lineage: the stages a weight file went through, oldest first, kept in its metadata.

A model warm-started with ``drrn train --init PARENT`` records the parent's stages followed by its own, so
the shipped file alone says every recipe, command, step count, wall-clock and machine that produced it.
Each stage is a plain dict (JSON in the safetensors header)::

    {"recipe": "cpu", "command": "drrn train --recipe cpu --out runs/x", "run": "x", "steps": 4500,
     "batch": 64, "patch": 31, "stride": 21, "patches_seen": 288000, "wall_clock_s": 3706.6,
     "hardware": {...}, "init_sha256": null}

Pure Python: the model card reads it without training anything.
"""

from __future__ import annotations

from model_export.weights import WeightsMeta


def stage_summary(meta: WeightsMeta, command: str | None = None, init_sha256: str | None = None) -> dict:
    """The one stage that ``meta.training`` describes (the run that wrote the file)."""
    t = meta.training
    recipe = t.get("recipe", {})
    return {
        "recipe": recipe.get("name", meta.provenance.get("recipe")),
        "command": command or meta.provenance.get("command"),
        "run": meta.provenance.get("run"),
        "steps": t.get("steps", 0),
        "batch": recipe.get("optim", {}).get("batch"),
        "patch": recipe.get("data", {}).get("patch"),
        "stride": recipe.get("data", {}).get("stride"),
        "patches_seen": t.get("patches_seen", 0),
        "wall_clock_s": t.get("wall_clock_s", 0.0),
        "hardware": t.get("hardware", {}),
        "init_sha256": init_sha256,
        "teacher": meta.provenance.get("teacher"),  # distillation: spec, precision, sha256 of its file
    }


def stages_of(meta: WeightsMeta) -> list[dict]:
    """Every stage behind a weight file, oldest first; ``[]`` for files not made by ``drrn train``."""
    if "stages" in meta.training:
        return list(meta.training["stages"])
    return [stage_summary(meta)] if meta.training.get("steps") else []


def totals(stages: list[dict]) -> dict:
    """Summed steps, patches and wall-clock seconds over ``stages``."""
    return {
        "steps": sum(s["steps"] for s in stages),
        "patches_seen": sum(s["patches_seen"] for s in stages),
        "wall_clock_s": round(sum(s["wall_clock_s"] for s in stages), 1),
    }
