"""``drrn train``: the training loop, with periodic Set5 validation, atomic checkpoints and exact resume.

Run directory layout (``runs/NAME/``):

- ``checkpoint.pt``: model, optimiser, step, sampler, RNG state and lineage (atomic; written periodically,
  at each new best, and on SIGINT/SIGTERM before the final validation)
- ``best.safetensors``: weights with the best mean Set5 PSNR so far, in the project's weight format
- ``last.safetensors``: the weights when the run stopped
- ``log.jsonl``: one JSON object per log interval (``"event": "train"``) and per validation (``"eval"``)
- ``recipe.json``: the resolved recipe
"""

from __future__ import annotations

import json
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from drrn.errors import UserError
from drrn.paths import sha256_file
from model_export.lineage import stage_summary, stages_of
from model_export.model import DRRN
from model_export.weights import WeightsMeta, load_weights, save_weights
from training.data import PatchSampler, build_patch_cache
from training.distill import load_teacher, student_loss
from training.paths import cache_root, resolve
from training.recipe import Recipe, learning_rate
from training.run_dir import atomic_torch_save, check_resumable, hardware_summary, trim_log
from training.validation import validate


class Trainer:
    """Owns the model, optimiser and sampler of one run; ``run()`` trains until done, stopped or timed out."""

    def __init__(
        self, recipe: Recipe, out: Path, device: str, init: str | None = None, command: str | None = None
    ) -> None:
        self.recipe, self.out, self.device, self.command = recipe, out, device, command
        rt = recipe.runtime
        if rt.threads:
            torch.set_num_threads(rt.threads)
        torch.manual_seed(rt.seed)
        self.model = DRRN(recipe.model)
        with torch.no_grad():
            self.model.output.weight.mul_(recipe.optim.output_init_scale)
        self.parent_stages: list[dict] = []
        self.init_sha256: str | None = None
        if init:
            src, parent = load_weights(init)
            if src.cfg != recipe.model:
                raise UserError(f"--init weights are {src.cfg.name}, recipe wants {recipe.model.name}")
            self.model.load_state_dict(src.state_dict())
            self.parent_stages, self.init_sha256 = stages_of(parent), sha256_file(init)
        self.model.to(device)
        if rt.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.model.train()
        o = recipe.optim
        if o.name == "sgd":
            self.opt = torch.optim.SGD(
                self.model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay
            )
        else:
            self.opt = torch.optim.AdamW(
                self.model.parameters(), lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay
            )
        d = recipe.data
        teacher = load_teacher(recipe.distill) if recipe.distill.teacher else None
        self.teacher = teacher.identity if teacher else None
        patches = build_patch_cache(
            [resolve(f) for f in d.folders],
            d.scales,
            d.patch,
            d.stride,
            cache_root(),
            max_images=d.max_images,
            teacher=teacher,
        )
        self.patch_key = patches.key
        self.n_patches = len(patches)
        self.sampler = PatchSampler(patches, o.batch, seed=rt.seed)
        self.step = 0
        self.elapsed = 0.0
        self.eval_s = 0.0  # of elapsed, the seconds spent validating
        self.best = {"mean_psnr": -1.0, "step": -1, "set5": {}}
        self.last_eval: dict = {}
        self.stop_requested = False
        self.init = init

    # -- state ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optim": self.opt.state_dict(),
            "step": self.step,
            "elapsed": self.elapsed,
            "eval_s": self.eval_s,
            "patch_key": self.patch_key,
            "sampler": self.sampler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "best": self.best,
            "last_eval": self.last_eval,
            "recipe": self.recipe.to_dict(),
            # what a resume without --init must still know to write the weights' lineage
            "lineage": {
                "init": self.init,
                "init_sha256": self.init_sha256,
                "parent_stages": self.parent_stages,
                "command": self.command,
            },
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue a checkpoint (CPU tensors: ``torch.load(..., map_location="cpu")``). Refused when the
        recipe's maths or the --init weights differ from the checkpoint's; the lineage comes from it, and
        ``log.jsonl`` loses any rows past its step."""
        check_resumable(state.get("recipe", {}), self.recipe.to_dict())
        lineage = state.get("lineage")
        if not lineage and not self.init:
            tqdm.write(
                "warning: this checkpoint predates recorded lineage; if the run was warm-started, pass its "
                "--init again, or the weights will not list the parent's stages"
            )
        if lineage:
            if self.init_sha256 and lineage["init_sha256"] != self.init_sha256:
                began = f"from {lineage['init']}" if lineage["init"] else "without --init"
                raise UserError(f"the checkpoint's run started {began}, not from this --init {self.init}")
            self.init, self.init_sha256 = lineage["init"], lineage["init_sha256"]
            self.parent_stages, self.command = lineage["parent_stages"], lineage["command"]
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optim"])
        if state.get("patch_key", self.patch_key) != self.patch_key:
            raise UserError(
                f"the checkpoint was trained on patch cache {state['patch_key']}, this run built "
                f"{self.patch_key}: the data, its parameters or the teacher changed; start a new --out"
            )
        self.step, self.elapsed = state["step"], state["elapsed"]
        self.eval_s = state.get("eval_s", 0.0)
        self.sampler.load_state_dict(state["sampler"])
        torch.set_rng_state(state["torch_rng"])
        self.best, self.last_eval = state["best"], state["last_eval"]
        trim_log(self.out / "log.jsonl", self.step)

    def checkpoint(self) -> None:
        atomic_torch_save(self.state_dict(), self.out / "checkpoint.pt")

    def meta(self, evaluation: dict) -> WeightsMeta:
        r = self.recipe
        meta = WeightsMeta(
            config=r.model,
            scales=r.data.scales,
            provenance={
                "trained_by": "drrn train",
                "recipe": r.name,
                "run": self.out.name,
                "patch_cache": self.patch_key,
                "init": self.init,
                "teacher": self.teacher,
                "command": self.command,
            },
            training={
                "recipe": r.to_dict(),
                "steps": self.step,
                "patches_seen": self.step * r.optim.batch,
                "wall_clock_s": round(self.elapsed, 1),
                "hardware": hardware_summary(self.device),
                "train_patches": self.n_patches,
            },
            evaluation={"set5_validation": evaluation},
        )
        this_stage = stage_summary(meta, self.command, self.init_sha256)
        meta.training["stages"] = [*self.parent_stages, this_stage]
        return meta

    # -- one step ------------------------------------------------------------------------------------
    def train_step(self) -> tuple[float, float]:
        r = self.recipe
        lr = learning_rate(r.schedule, r.optim.lr, self.step)
        for g in self.opt.param_groups:
            g["lr"] = lr
        x, y, t = self.sampler.next()
        x, y = x.to(self.device), y.to(self.device)
        if r.runtime.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        amp = (
            torch.autocast(self.device, dtype=torch.bfloat16)
            if r.runtime.autocast == "bf16"
            else nullcontext()
        )
        with amp:
            pred = self.model(x)
        teacher = None if t is None else t.to(self.device)
        loss = student_loss(pred.float(), y, teacher, r.optim.loss, r.distill.weight)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if r.clip.mode == "adjustable":
            torch.nn.utils.clip_grad_value_(self.model.parameters(), r.clip.theta / lr)
        elif r.clip.mode == "norm":
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), r.clip.max_norm)
        self.opt.step()
        self.step += 1
        return float(loss.detach()), lr

    # -- the loop ------------------------------------------------------------------------------------
    def run(self, max_minutes: float | None, max_steps: int | None, progress: bool = True) -> None:
        r = self.recipe
        total = min(r.schedule.total_steps, max_steps or r.schedule.total_steps)
        log = open(self.out / "log.jsonl", "a")  # noqa: SIM115 (closed in finally)
        start = time.monotonic()
        base_elapsed = self.elapsed
        last_ckpt = last_eval = start
        window_t, window_steps, window_loss = start, 0, 0.0
        bar = tqdm(
            total=total, initial=self.step, desc=r.name, unit="step", disable=not progress, dynamic_ncols=True
        )
        try:
            if self.step == 0 and self.init:
                # The curve of a warm start begins at its starting point, and that is the bar to beat:
                # best.safetensors only ever holds weights this run trained.
                self.evaluate_and_keep_best(log, save=False)
                last_eval = time.monotonic()
            while self.step < total and not self.stop_requested:
                loss, lr = self.train_step()
                bar.update(1)
                window_steps += 1
                window_loss += loss
                now = time.monotonic()
                self.elapsed = base_elapsed + (now - start)
                if window_steps >= r.runtime.log_every:
                    pps = window_steps * r.optim.batch / (now - window_t)
                    rec = {
                        "event": "train",
                        "step": self.step,
                        "loss": window_loss / window_steps,
                        "lr": lr,
                        "patches_per_s": round(pps, 1),
                        "elapsed_s": round(self.elapsed, 1),
                    }
                    log.write(json.dumps(rec) + "\n")
                    log.flush()
                    bar.set_postfix(loss=f"{rec['loss']:.2e}", lr=f"{lr:.1e}", pps=f"{pps:.0f}")
                    window_t, window_steps, window_loss = now, 0, 0.0
                if now - last_eval >= r.runtime.eval_every_minutes * 60:
                    self.evaluate_and_keep_best(log)
                    last_eval = time.monotonic()
                if now - last_ckpt >= r.runtime.checkpoint_every_minutes * 60:
                    self.checkpoint()
                    last_ckpt = time.monotonic()
                if max_minutes is not None and now - start >= max_minutes * 60:
                    break
            if self.stop_requested:
                self.checkpoint()  # before the final validation, which can outlast a container's grace period
            if (
                self.step >= r.schedule.total_steps
                or not self.last_eval
                or self.last_eval.get("step") != self.step
            ):
                self.evaluate_and_keep_best(log)
        finally:
            bar.close()
            self.checkpoint()
            save_weights(
                self.model.cpu() if self.device == "cpu" else self._cpu_copy(),
                self.meta(self.last_eval),
                self.out / "last.safetensors",
            )
            log.close()

    def _cpu_copy(self) -> DRRN:
        m = DRRN(self.recipe.model)
        m.load_state_dict({k: v.cpu() for k, v in self.model.state_dict().items()})
        return m

    def evaluate_and_keep_best(self, log, save: bool = True) -> None:
        """Validate on Set5 and log it; better than the best so far: remember it (and with ``save``, write
        ``best.safetensors``). ``train_s`` in the log is the elapsed time less all validations."""
        t0 = time.monotonic()
        set5 = validate(self.model, self.recipe, self.device)
        if not set5:
            return
        mean = float(np.mean([v["psnr"] for v in set5.values()]))
        self.last_eval = {"step": self.step, "set5": set5, "mean_psnr": round(mean, 4)}
        times = {"elapsed_s": round(self.elapsed, 1), "train_s": round(self.elapsed - self.eval_s, 1)}
        log.write(json.dumps({"event": "eval", **times, **self.last_eval}) + "\n")
        log.flush()
        self.eval_s += time.monotonic() - t0
        tqdm.write(f"step {self.step}: Set5 " + " ".join(f"x{s} {v['psnr']:.2f}" for s, v in set5.items()))
        if mean > self.best["mean_psnr"]:
            self.best = {"mean_psnr": round(mean, 4), "step": self.step, "set5": set5}
            if save:
                model = self.model if self.device == "cpu" else self._cpu_copy()
                save_weights(model, self.meta(self.last_eval), self.out / "best.safetensors")
                # so that a resume after a hard kill knows this best and cannot overwrite it with a worse one
                self.checkpoint()
