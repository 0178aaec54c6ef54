"""Distillation: the teacher's targets are its served whole-image output cut on the patch grid, and the
student's loss really is measured against them (a student that *is* its teacher starts at zero loss)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from drrn.cli import main
from drrn.paths import sha256_file
from evaluation.runner import make_sr_function
from imaging.crop import modcrop
from imaging.protocol import degrade, load_y
from model_export.weights import load_weights
from tests.test_training import images  # noqa: F401 (the textured training images fixture)
from training.data import build_patch_cache
from training.distill import load_teacher
from training.recipe import DistillRecipe, load_recipe


def test_teacher_targets_are_its_whole_image_output_cut_on_the_patch_grid(
    images: Path,  # noqa: F811
    tiny_onnx: Path,
    tmp_path: Path,
) -> None:
    teacher = load_teacher(DistillRecipe(teacher=str(tiny_onnx)))
    assert teacher.identity["sha256"] == sha256_file(tiny_onnx)
    plain = build_patch_cache([images], [2, 3], 31, 21, tmp_path, max_images=2)
    taught = build_patch_cache([images], [2, 3], 31, 21, tmp_path, max_images=2, teacher=teacher)
    assert plain.teacher is None and taught.key != plain.key
    assert taught.teacher is not None and taught.teacher.shape == taught.targets.shape
    np.testing.assert_array_equal(taught.inputs, plain.inputs)

    # the first image at x2 fills the first patches of the cache, row by row (stride 21)
    first = sorted(images.iterdir())[0]
    bicubic = degrade(modcrop(load_y(first).astype(np.float64) / 255.0, 2), 2)
    sr, *_ = make_sr_function(str(tiny_onnx), None)
    whole = sr(bicubic, 2)
    per_row = (bicubic.shape[1] - 31) // 21 + 1
    np.testing.assert_allclose(taught.teacher[0], whole[:31, :31], atol=1e-6)
    np.testing.assert_allclose(taught.teacher[per_row + 1], whole[21:52, 21:52], atol=1e-6)
    assert np.abs(taught.teacher[0] - taught.inputs[0]).max() > 1e-3  # the teacher changed its input


def _recipe(path: Path, weight: float) -> Path:
    smoke = (load_recipe("smoke").to_dict()) | {"name": f"distill-{weight}"}
    lines = [f'name = "{smoke["name"]}"']
    sections = {
        "model": {"blocks": 1, "units": 2, "channels": 8},  # the tiny teacher's own architecture
        "data": {"scales": [2, 3, 4], "patch": 31, "stride": 21},
        "optim": {"name": "adam", "lr": 1e-9, "weight_decay": 0.0, "batch": 16},
        "schedule": {"kind": "cosine", "total_steps": 2, "warmup_steps": 0},
        "runtime": {"threads": 1, "log_every": 1, "eval_every_minutes": 1000},
        "distill": {"teacher": "TEACHER", "weight": weight},
    }
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_the_student_loss_is_measured_against_the_teacher_by_the_recipe_weight(
    images: Path,  # noqa: F811
    tiny_weights: Path,
    tiny_onnx: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The student starts as its teacher, so against the teacher its loss is only the patch-border term
    (the teacher saw each patch's surroundings, the student sees zero padding) and against the ground
    truth it is the model's whole error; the same first batch at weight 0.5 is their mean."""
    monkeypatch.setenv("DRRN_CACHE_DIR", str(tmp_path / "cache"))
    first_loss = {}
    for weight in (0.0, 1.0, 0.5):
        recipe = _recipe(tmp_path / f"r{weight}.toml", weight)
        recipe.write_text(recipe.read_text().replace("TEACHER", str(tiny_onnx)))
        out = tmp_path / f"run{weight}"
        args = ["train", "--recipe", str(recipe), "--out", str(out), "--data", str(images)]
        assert main([*args, "--init", str(tiny_weights), "--max-steps", "1"]) == 0
        log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
        first_loss[weight] = next(x["loss"] for x in log if x["event"] == "train")
        meta = load_weights(out / "last.safetensors")[1]
        assert meta.provenance["teacher"]["sha256"] == sha256_file(tiny_onnx)
        assert meta.training["recipe"]["distill"]["weight"] == weight
    assert first_loss[1.0] < first_loss[0.0] / 20, first_loss
    assert first_loss[0.5] == pytest.approx((first_loss[0.0] + first_loss[1.0]) / 2, rel=1e-5)


def test_a_distillation_run_resumes_bit_exactly(
    images: Path,  # noqa: F811
    tiny_onnx: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from safetensors.torch import load_file

    monkeypatch.setenv("DRRN_CACHE_DIR", str(tmp_path / "cache"))
    recipe = _recipe(tmp_path / "r.toml", 0.5)
    text = recipe.read_text().replace("TEACHER", str(tiny_onnx))
    recipe.write_text(text.replace("lr = 1e-09", "lr = 0.001").replace("total_steps = 2", "total_steps = 6"))
    for run, stops in (("straight", [6]), ("split", [3, 6])):
        for i, steps in enumerate(stops):
            args = ["train", "--recipe", str(recipe), "--out", str(tmp_path / run), "--data", str(images)]
            assert main([*args, "--max-steps", str(steps), *(["--resume"] if i else [])]) == 0
    a = load_file(str(tmp_path / "straight" / "last.safetensors"))
    b = load_file(str(tmp_path / "split" / "last.safetensors"))
    assert all(a[k].equal(b[k]) for k in a) and a.keys() == b.keys()
