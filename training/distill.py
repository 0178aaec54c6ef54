"""Distillation: a trained model's outputs as a second target for a cheaper student.

The teacher is opened with the same resolver and tiled pipeline as ``drrn eval`` and the service
(:func:`evaluation.runner.make_sr_function`), so the targets are exactly what the teacher serves: whole
images, every pixel computed with its full receptive field. It runs once, when the patch cache is built
(:func:`training.data.build_patch_cache`); training then reads its outputs from the memory-mapped cache.
"""

from __future__ import annotations

from pathlib import Path

import torch

from drrn.errors import UserError
from drrn.paths import PROJECT_ROOT, sha256_file
from training.data import Teacher
from training.recipe import DistillRecipe


def load_teacher(recipe: DistillRecipe) -> Teacher:
    """The teacher of ``recipe`` on the CPU (or :class:`UserError` when it cannot be opened).

    Its identity (spec, precision, tile, margin and the SHA-256 of the file it loaded) keys the patch cache
    and is recorded in the student's weights."""
    from evaluation.runner import make_sr_function

    if recipe.teacher == "bicubic":
        raise UserError("distill.teacher must be a model, not bicubic")
    spec = recipe.teacher
    if spec.endswith((".onnx", ".safetensors")) and not Path(spec).is_absolute():
        spec = str(PROJECT_ROOT / spec)  # like the recipe's data folders: relative to the checkout
    sr, tile, margin, model_file = make_sr_function(spec, None, precision=recipe.precision)
    identity = {
        "spec": recipe.teacher,
        "precision": recipe.precision,
        "tile": tile,
        "margin": margin,
        "sha256": sha256_file(model_file) if model_file else None,
    }
    return Teacher(sr=sr, identity=identity)


def pixel_loss(pred: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean squared (``mse``) or absolute (``l1``) error over all pixels; float32 tensors of one shape."""
    diff = pred - target
    return diff.pow(2).mean() if kind == "mse" else diff.abs().mean()


def student_loss(
    pred: torch.Tensor, target: torch.Tensor, teacher: torch.Tensor | None, kind: str, weight: float
) -> torch.Tensor:
    """``(1 - weight) * loss(pred, target) + weight * loss(pred, teacher)``; without a teacher's outputs,
    the ground-truth loss alone. Float32 ``[N, 1, h, w]`` tensors, Y in [0, 1]."""
    loss = pixel_loss(pred, target, kind)
    if teacher is None:
        return loss
    return (1 - weight) * loss + weight * pixel_loss(pred, teacher, kind)
