"""Training smoke test: a tiny model learns on a few images, and resuming is bit-exact on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file

from drrn.cli import main
from model_export.weights import load_weights
from training.recipe import RECIPE_DIR, learning_rate, load_recipe


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four textured RGB images (96x80): enough patches at x2/x3/x4 for a few dozen steps."""
    folder = tmp_path_factory.mktemp("train_images")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:80, 0:96]
    for i in range(4):
        base = 128 + 80 * np.sin(xx / (3 + i)) * np.cos(yy / (4 + i)) + rng.normal(0, 8, (80, 96))
        rgb = np.stack([base, np.roll(base, 7, 1), 255 - base], -1)
        Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(folder / f"t{i}.png")
    return folder


def _train(out: Path, images: Path, steps: int, resume: bool = False) -> int:
    args = ["train", "--recipe", "smoke", "--out", str(out), "--data", str(images), "--max-steps", str(steps)]
    return main([*args, "--resume"] if resume else args)


def _losses(run: Path) -> list[float]:
    lines = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    return [x["loss"] for x in lines if x["event"] == "train"]


def test_loss_goes_down_and_resume_is_bit_exact(
    images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DRRN_CACHE_DIR", str(tmp_path / "cache"))
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert _train(straight, images, 40) == 0
    losses = _losses(straight)
    assert len(losses) == 4 and losses[-1] < 0.5 * losses[0], losses

    assert _train(split, images, 20) == 0
    assert load_weights(split / "last.safetensors")[1].training["steps"] == 20
    assert _train(split, images, 40, resume=True) == 0
    a = load_file(str(straight / "last.safetensors"))
    b = load_file(str(split / "last.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].equal(b[k]), f"{k} differs after resume"

    _, meta = load_weights(straight / "last.safetensors")
    assert meta.training["steps"] == 40 and meta.training["recipe"]["name"] == "smoke"
    assert meta.provenance["trained_by"] == "drrn train" and meta.scales == [2, 3, 4]


def test_existing_run_needs_resume(images: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("DRRN_CACHE_DIR", str(tmp_path / "cache"))
    assert _train(tmp_path / "r", images, 2) == 0
    assert _train(tmp_path / "r", images, 4) == 2
    assert "--resume" in capsys.readouterr().err


def test_shipped_recipes_parse_and_schedules_behave() -> None:
    paper = load_recipe("paper")
    assert (paper.optim.name, paper.optim.lr, paper.optim.batch) == ("sgd", 0.1, 128)
    assert paper.clip.mode == "adjustable" and paper.clip.theta == 0.01
    assert learning_rate(paper.schedule, 0.1, 65359) == 0.1
    assert learning_rate(paper.schedule, 0.1, 65360) == 0.05
    cpu = load_recipe("cpu")
    s = cpu.schedule
    assert learning_rate(s, 1.0, s.warmup_steps) == pytest.approx(1.0)
    assert learning_rate(s, 1.0, s.total_steps) == pytest.approx(s.final_lr_ratio)
    for name in ("gpu", "smoke", "cpu-stage4"):
        assert not load_recipe(name).distill.teacher
    distill = load_recipe("cpu-distill")
    assert distill.distill.teacher.endswith(".onnx") and distill.distill.weight == 0.5
    # its control differs in the teacher alone
    control = load_recipe("cpu-distill-control").to_dict()
    assert {k: v for k, v in control.items() if control[k] != distill.to_dict()[k]}.keys() == {
        "name",
        "description",
        "distill",
    } and not control["distill"]["teacher"]
    assert distill.model == load_recipe("cpu-stage4").model  # it warm-starts from the shipped fast model
    cpu_ft, gpu_ft = load_recipe("quality-finetune"), load_recipe("quality-finetune-gpu")
    assert gpu_ft.model == cpu_ft.model and gpu_ft.data == cpu_ft.data  # the same stage, sized for a GPU
    assert gpu_ft.model.rectified_skips and gpu_ft.optim.lr < cpu_ft.optim.lr


def test_recipe_typos_are_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[optim]\nname = "adam"\nlearning_rate = 0.1\n')
    with pytest.raises(ValueError, match="unknown keys"):
        load_recipe(str(bad))


def _parent_run(images: Path, tmp_path: Path, monkeypatch) -> tuple[Path, list[str]]:
    """A 6-step run ``a`` to warm-start from, and the arguments of a run ``b`` on the same images."""
    monkeypatch.setenv("DRRN_CACHE_DIR", str(tmp_path / "cache"))
    assert _train(tmp_path / "a", images, 6) == 0
    args = ["train", "--recipe", "smoke", "--out", str(tmp_path / "b"), "--data", str(images)]
    return tmp_path / "a" / "last.safetensors", args


def test_init_records_the_parents_stages(images: Path, tmp_path: Path, monkeypatch) -> None:
    """A warm-started run's weights list every stage behind them, oldest first (the card reads this)."""
    from drrn.paths import sha256_file
    from model_export.lineage import stages_of, totals

    parent, args = _parent_run(images, tmp_path, monkeypatch)
    assert main([*args, "--max-steps", "4", "--init", str(parent)]) == 0

    stages = stages_of(load_weights(tmp_path / "b" / "last.safetensors")[1])
    assert [(s["recipe"], s["steps"], s["run"]) for s in stages] == [("smoke", 6, "a"), ("smoke", 4, "b")]
    assert stages[0]["init_sha256"] is None and stages[1]["init_sha256"] == sha256_file(parent)
    assert stages[1]["patch"] == load_recipe("smoke").data.patch
    assert totals(stages)["steps"] == 10


def test_a_warm_start_validates_its_starting_point_first(
    shared: Path, images: Path, tmp_path: Path, monkeypatch
) -> None:
    """The PSNR-against-time curve of a warm-started stage begins at its --init weights (step 0, minute 0)."""
    from training.curve import plot, read_curve

    monkeypatch.setenv("DRRN_CACHE_DIR", str(tmp_path / "cache"))
    assert _train(tmp_path / "a", images, 3) == 0
    args = ["train", "--recipe", "smoke", "--out", str(tmp_path / "b"), "--data", str(images)]
    assert main([*args, "--max-steps", "3", "--init", str(tmp_path / "a" / "last.safetensors")]) == 0
    log = [json.loads(x) for x in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    evals = [x for x in log if x["event"] == "eval"]
    assert [e["step"] for e in evals] == [0, 3]
    parent = load_weights(tmp_path / "a" / "last.safetensors")[1].evaluation["set5_validation"]
    assert evals[0]["set5"] == parent["set5"]  # the same weights, the same validation
    curve = read_curve(tmp_path / "b" / "log.jsonl", tmp_path / "a" / "last.safetensors")
    assert [round(m, 6) for m, _ in curve][:1] == [0.0] and len(curve) == 2  # no duplicate start point
    plot({"a run": curve, "the same again": curve}, tmp_path / "curve.png", "title", "minutes")
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_best_never_holds_the_init_weights_and_resume_refuses_changed_data(
    shared: Path, images: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    """With lr 0 no step can beat the starting point, so there is no best.safetensors (it would be the
    parent's weights under this run's name); a checkpoint resumed on other data is refused."""
    monkeypatch.setenv("DRRN_CACHE_DIR", str(tmp_path / "cache"))
    assert _train(tmp_path / "a", images, 2) == 0
    frozen = tmp_path / "frozen.toml"
    frozen.write_text((RECIPE_DIR / "smoke.toml").read_text().replace("lr = 1e-3", "lr = 0.0"))
    args = ["train", "--recipe", str(frozen), "--out", str(tmp_path / "b"), "--data", str(images)]
    assert main([*args, "--max-steps", "2", "--init", str(tmp_path / "a" / "last.safetensors")]) == 0
    assert "no step beat the --init weights" in capsys.readouterr().out
    assert not (tmp_path / "b" / "best.safetensors").exists()

    other = tmp_path / "other"
    other.mkdir()
    for f in sorted(images.iterdir())[:2]:
        (other / f.name).write_bytes(f.read_bytes())
    resumed = ["train", "--recipe", "smoke", "--out", str(tmp_path / "a"), "--data", str(other)]
    assert main([*resumed, "--resume", "--max-steps", "4"]) == 2
    assert "patch cache" in capsys.readouterr().err


def test_resume_without_init_keeps_the_lineage(images: Path, tmp_path: Path, monkeypatch) -> None:
    """A warm-started run resumed as the README says (no --init) still lists its parent's stages."""
    from drrn.paths import sha256_file
    from model_export.lineage import stages_of

    parent, args = _parent_run(images, tmp_path, monkeypatch)
    assert main([*args, "--max-steps", "2", "--init", str(parent)]) == 0
    assert main([*args, "--max-steps", "4", "--resume"]) == 0

    _, meta = load_weights(tmp_path / "b" / "last.safetensors")
    stages = stages_of(meta)
    assert [(s["recipe"], s["steps"], s["run"]) for s in stages] == [("smoke", 6, "a"), ("smoke", 4, "b")]
    assert stages[1]["init_sha256"] == sha256_file(parent)


def test_resume_refuses_a_changed_recipe_and_keeps_its_record(
    images: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("DRRN_CACHE_DIR", str(tmp_path / "cache"))
    assert _train(tmp_path / "a", images, 2) == 0
    recorded = (tmp_path / "a" / "recipe.json").read_text()
    faster = tmp_path / "faster.toml"
    faster.write_text((RECIPE_DIR / "smoke.toml").read_text().replace("lr = 1e-3", "lr = 2e-3"))
    args = ["train", "--recipe", str(faster), "--out", str(tmp_path / "a"), "--data", str(images)]
    assert main([*args, "--resume", "--max-steps", "4"]) == 2
    assert "(optim.lr differ)" in capsys.readouterr().err
    assert (tmp_path / "a" / "recipe.json").read_text() == recorded


def test_resume_drops_log_rows_past_the_checkpoint(images: Path, tmp_path: Path, monkeypatch) -> None:
    """After a hard kill the log can run ahead of the checkpoint; those steps are trained again."""
    monkeypatch.setenv("DRRN_CACHE_DIR", str(tmp_path / "cache"))
    assert _train(tmp_path / "a", images, 10) == 0
    log = tmp_path / "a" / "log.jsonl"
    with log.open("a") as f:
        f.write(json.dumps({"event": "train", "step": 500, "loss": 9.0}) + "\n")
        f.write('{"event": "train", "st')  # and a line the kill cut off mid-write
    assert _train(tmp_path / "a", images, 20, resume=True) == 0
    steps = [json.loads(x)["step"] for x in log.read_text().splitlines()]
    assert 500 not in steps and steps == sorted(steps) and steps[-1] == 20


def test_a_stop_request_checkpoints_before_the_final_validation(
    images: Path, tmp_path: Path, monkeypatch
) -> None:
    """SIGTERM's grace period may end during that validation: the steps trained must already be saved."""
    import torch

    import training.loop as loop

    monkeypatch.setenv("DRRN_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "run"
    out.mkdir()
    recipe = load_recipe("smoke")
    recipe.data.folders = [str(images)]
    trainer = loop.Trainer(recipe, out, "cpu")
    step = trainer.train_step

    def stop_at_3() -> tuple[float, float]:
        result = step()
        trainer.stop_requested = trainer.step >= 3
        return result

    seen = []
    monkeypatch.setattr(trainer, "train_step", stop_at_3)
    monkeypatch.setattr(
        loop, "validate", lambda *a: seen.append(torch.load(out / "checkpoint.pt")["step"]) or {}
    )
    trainer.run(max_minutes=None, max_steps=40, progress=False)
    assert trainer.step == 3 and seen == [3]


def test_images_smaller_than_the_patch_are_a_clear_error(tmp_path: Path, monkeypatch, capsys) -> None:
    """And no empty patch cache is left behind for the next run to trip on."""
    monkeypatch.setenv("DRRN_CACHE_DIR", str(tmp_path / "cache"))
    small = tmp_path / "small"
    small.mkdir()
    Image.fromarray(np.full((20, 24, 3), 90, np.uint8)).save(small / "s.png")
    assert _train(tmp_path / "r", small, 2) == 2
    assert "no training image is at least" in capsys.readouterr().err
    assert not list((tmp_path / "cache").glob("patches-*/meta.json"))
