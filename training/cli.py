"""``drrn train`` from the command line: parse the recipe, start or resume a run, stop cleanly on a signal."""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import sys
from pathlib import Path

import torch

from drrn.errors import UserError
from model_export.model import count_params
from training.loop import Trainer
from training.recipe import load_recipe
from training.run_dir import check_resumable


def _command_line() -> str:
    """How this run was started, as a user would retype it (``drrn train ...``)."""
    # argv is the CLI's own only when started as `drrn train ...` (not when main() is called in-process)
    return shlex.join(["drrn", *sys.argv[1:]]) if sys.argv[1:2] == ["train"] else "drrn train"


def run_training_cli(args: argparse.Namespace) -> int:
    try:
        recipe = load_recipe(args.recipe)
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(str(exc)) from exc
    if args.data:
        recipe.data.folders = list(args.data)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda requested but CUDA is not available")
    out = Path(args.out)
    ckpt = out / "checkpoint.pt"
    if ckpt.exists() and not args.resume:
        raise UserError(f"{out} already has a checkpoint; pass --resume to continue it or pick a new --out")
    out.mkdir(parents=True, exist_ok=True)
    state = None
    if args.resume and ckpt.exists():
        # On the CPU whatever --device is: the RNG states must be CPU tensors, and load_state_dict moves
        # the model's and optimiser's tensors to their parameters' device itself.
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        check_resumable(state.get("recipe", {}), recipe.to_dict())  # before the patch cache is built
    try:
        trainer = Trainer(recipe, out, args.device, init=args.init, command=_command_line())
    except FileNotFoundError as exc:
        raise UserError(str(exc)) from exc
    if state is not None:
        trainer.load_state_dict(state)
        print(f"resumed {out} at step {trainer.step}")
    (out / "recipe.json").write_text(json.dumps(recipe.to_dict(), indent=1))

    def _request_stop(signum: int, _frame: object) -> None:
        trainer.stop_requested = True

    old = {s: signal.signal(s, _request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        trainer.run(args.max_minutes, args.max_steps)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    best, stopped = trainer.best, f"stopped at step {trainer.step}"
    if trainer.init and best["step"] == 0:
        print(f"{stopped}; no step beat the --init weights' Set5 mean PSNR {best['mean_psnr']:.3f}")
    else:
        print(f"{stopped}; best Set5 mean PSNR {best['mean_psnr']:.3f} at step {best['step']}")
    print(f"weights in {out}")
    print(f"model: {recipe.model.name}, {count_params(trainer.model):,} params")
    return 0
