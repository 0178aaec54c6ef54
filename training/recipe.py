"""Training recipes: small TOML files in ``training/recipes/``, parsed into typed dataclasses.

Unknown keys are errors, so a typo in a recipe never silently falls back to a default. Every field is
documented on its dataclass; the shipped recipes repeat the documentation as comments.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from model_export.model import DRRNConfig

RECIPE_DIR = Path(__file__).resolve().parent / "recipes"


@dataclass
class DataRecipe:
    #: training image folders; relative paths are relative to the project root
    folders: list[str] = field(
        default_factory=lambda: ["../shared/datasets/T91", "../shared/datasets/BSD200"]
    )
    #: degradation scales mixed into one training set (one model serves all of them)
    scales: list[int] = field(default_factory=lambda: [2, 3, 4])
    #: HR patch side and stride, in pixels (paper: 31 and 21)
    patch: int = 31
    stride: int = 21
    #: Set5 folder used for the periodic validation
    val_folder: str = "../shared/datasets/Set5"
    #: 0 = every image of ``folders``; N > 0 = the first N in sorted folder order (bounds the teacher's cost)
    max_images: int = 0


@dataclass
class DistillRecipe:
    #: the teacher: any ``drrn eval --model`` spec (a repository name, ``*.onnx``, ``*.safetensors``);
    #: empty = no distillation. It runs once per training image and scale when the patch cache is built,
    #: tiled as the service runs it, so its targets are what users would get from it.
    teacher: str = ""
    #: which file of a repository teacher (``auto``, ``fp32``, ``fp16``, ``int8``)
    precision: str = "auto"
    #: loss = (1 - weight) * loss(student, ground truth) + weight * loss(student, teacher)
    weight: float = 0.5


@dataclass
class OptimRecipe:
    #: "sgd" (paper: momentum SGD) or "adam" (AdamW-style decoupled decay when weight_decay > 0)
    name: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 1e-4
    #: patches per step
    batch: int = 128
    #: "mse" (paper) or "l1"
    loss: str = "mse"
    #: multiplies the MSRA init of the output conv. 1.0 is the paper. An untrained 20-layer net outputs a
    #: residual of std ~1 (100x a real one); under Adam the first steps then silence the residual branch by
    #: killing ReLUs, and the net sits at the bicubic loss for thousands of steps. 0.0 starts the net as
    #: exactly the bicubic identity with every ReLU alive.
    output_init_scale: float = 1.0


@dataclass
class ScheduleRecipe:
    #: "step": lr·gamma^(step // step_every) (paper: halve every 10 epochs of 6,536 iterations);
    #: "cosine": linear warmup then cosine decay to final_lr_ratio·lr at total_steps
    kind: str = "step"
    total_steps: int = 6536 * 80
    step_every: int = 65360
    gamma: float = 0.5
    warmup_steps: int = 0
    final_lr_ratio: float = 0.01


@dataclass
class ClipRecipe:
    #: "adjustable": clip every gradient element to [-theta/lr, theta/lr] (paper); "norm": global L2 norm
    #: clip at max_norm; "none"
    mode: str = "adjustable"
    theta: float = 0.01
    max_norm: float = 1.0


@dataclass
class RuntimeRecipe:
    #: autocast dtype for forward/backward: "none" or "bf16" (the loss and optimiser stay float32)
    autocast: str = "none"
    channels_last: bool = False
    #: torch intra-op threads; 0 keeps torch's default (one per core)
    threads: int = 0
    seed: int = 0
    #: minutes between Set5 validations and between periodic checkpoints
    eval_every_minutes: float = 10.0
    checkpoint_every_minutes: float = 5.0
    #: steps between JSONL log lines
    log_every: int = 50


@dataclass
class Recipe:
    name: str
    description: str = ""
    model: DRRNConfig = field(default_factory=DRRNConfig)
    data: DataRecipe = field(default_factory=DataRecipe)
    optim: OptimRecipe = field(default_factory=OptimRecipe)
    schedule: ScheduleRecipe = field(default_factory=ScheduleRecipe)
    clip: ClipRecipe = field(default_factory=ClipRecipe)
    runtime: RuntimeRecipe = field(default_factory=RuntimeRecipe)
    distill: DistillRecipe = field(default_factory=DistillRecipe)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_SECTIONS = {
    "model": DRRNConfig,
    "data": DataRecipe,
    "optim": OptimRecipe,
    "schedule": ScheduleRecipe,
    "clip": ClipRecipe,
    "runtime": RuntimeRecipe,
    "distill": DistillRecipe,
}


def _build(cls: type, values: dict, where: str) -> object:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"recipe {where}: unknown keys {sorted(unknown)} (known: {sorted(known)})")
    return cls(**values)


def recipe_from_dict(raw: dict, name: str) -> Recipe:
    raw = dict(raw)
    top = {"name": raw.pop("name", name), "description": raw.pop("description", "")}
    unknown = set(raw) - set(_SECTIONS)
    if unknown:
        raise ValueError(f"recipe {name}: unknown sections {sorted(unknown)}")
    sections = {k: _build(cls, raw.get(k, {}), f"{name}[{k}]") for k, cls in _SECTIONS.items()}
    recipe = Recipe(**top, **sections)
    if recipe.optim.name not in {"sgd", "adam"}:
        raise ValueError(f"recipe {name}: optim.name must be sgd or adam")
    if recipe.schedule.kind not in {"step", "cosine"}:
        raise ValueError(f"recipe {name}: schedule.kind must be step or cosine")
    if recipe.clip.mode not in {"adjustable", "norm", "none"}:
        raise ValueError(f"recipe {name}: clip.mode must be adjustable, norm or none")
    if recipe.runtime.autocast not in {"none", "bf16"}:
        raise ValueError(f"recipe {name}: runtime.autocast must be none or bf16")
    if not 0.0 <= recipe.distill.weight <= 1.0:
        raise ValueError(f"recipe {name}: distill.weight must be in [0, 1]")
    return recipe


def load_recipe(name_or_path: str) -> Recipe:
    """A shipped recipe by name (``paper``, ``cpu``, ``gpu``, ``smoke``) or a path to a TOML file."""
    path = Path(name_or_path)
    if not path.suffix:
        path = RECIPE_DIR / f"{name_or_path}.toml"
    if not path.is_file():
        shipped = sorted(p.stem for p in RECIPE_DIR.glob("*.toml"))
        raise FileNotFoundError(f"recipe not found: {name_or_path} (shipped: {shipped})")
    with open(path, "rb") as fh:
        return recipe_from_dict(tomllib.load(fh), path.stem)


def learning_rate(s: ScheduleRecipe, base_lr: float, step: int) -> float:
    """Learning rate for optimiser step ``step`` (0-based)."""
    import math

    if s.kind == "step":
        return base_lr * s.gamma ** (step // s.step_every)
    if step < s.warmup_steps:
        return base_lr * (step + 1) / s.warmup_steps
    t = min(1.0, (step - s.warmup_steps) / max(1, s.total_steps - s.warmup_steps))
    lo = base_lr * s.final_lr_ratio
    return lo + 0.5 * (base_lr - lo) * (1 + math.cos(math.pi * t))
