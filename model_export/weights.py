"""The project's weight format: safetensors tensors plus JSON metadata.

Metadata keys (all values are strings, as safetensors requires):

- ``format``: ``drrn-weights/1``
- ``config``: :class:`DRRNConfig` as JSON
- ``scales``: JSON list of the upscaling factors the model was trained for, e.g. ``[2, 3, 4]``
- ``provenance``: JSON object (where the weights came from: training run, converted file, ...)
- ``training``: JSON object (recipe, steps, wall-clock, hardware), ``{}`` when not applicable
- ``evaluation``: JSON object (``drrn eval`` summary), ``{}`` when not yet evaluated

Loading rebuilds the model from ``config`` and refuses tensors that do not match it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file

from model_export.model import DRRN, DRRNConfig

FORMAT = "drrn-weights/1"


class WeightsError(ValueError):
    """A weight file is unreadable, or its metadata and tensors disagree."""


@dataclass
class WeightsMeta:
    """Everything in a weight file besides the tensors."""

    config: DRRNConfig
    scales: list[float] = field(default_factory=lambda: [2, 3, 4])
    provenance: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    evaluation: dict = field(default_factory=dict)

    def to_strings(self) -> dict[str, str]:
        return {
            "format": FORMAT,
            "config": self.config.to_json(),
            "scales": json.dumps(self.scales),
            "provenance": json.dumps(self.provenance, sort_keys=True),
            "training": json.dumps(self.training, sort_keys=True),
            "evaluation": json.dumps(self.evaluation, sort_keys=True),
        }

    @classmethod
    def from_strings(cls, raw: dict[str, str] | None, path: Path | str) -> WeightsMeta:
        raw = raw or {}
        if raw.get("format") != FORMAT:
            raise WeightsError(f"{path}: not a DRRN weight file (metadata format={raw.get('format')!r})")
        try:
            return cls(
                config=DRRNConfig.from_dict(json.loads(raw["config"])),
                scales=json.loads(raw.get("scales", "[2, 3, 4]")),
                provenance=json.loads(raw.get("provenance", "{}")),
                training=json.loads(raw.get("training", "{}")),
                evaluation=json.loads(raw.get("evaluation", "{}")),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise WeightsError(f"{path}: invalid metadata: {exc}") from exc


def save_weights(model: DRRN, meta: WeightsMeta, path: Path | str) -> None:
    """Write ``model``'s state (params and BN buffers) atomically to ``path``."""
    if model.cfg != meta.config:
        raise WeightsError(f"model config {model.cfg} differs from metadata config {meta.config}")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    # num_batches_tracked is training bookkeeping, not part of the function.
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(state, str(tmp), metadata=meta.to_strings())
    tmp.replace(path)


def read_meta(path: Path | str) -> WeightsMeta:
    """Read only the metadata (cheap: safetensors headers are JSON)."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            return WeightsMeta.from_strings(fh.metadata(), path)
    except (OSError, RuntimeError, Exception) as exc:
        if isinstance(exc, WeightsError):
            raise
        raise WeightsError(f"{path}: cannot read weight file: {exc}") from exc


def load_weights(path: Path | str) -> tuple[DRRN, WeightsMeta]:
    """Load a weight file into a fresh :class:`DRRN` in eval mode.

    Raises :class:`WeightsError` naming every missing, unexpected or mis-shaped tensor when the file's
    config and tensors disagree.
    """
    meta = read_meta(path)
    with safe_open(str(path), framework="pt") as fh:
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    model = DRRN(meta.config)
    expected = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    problems = []
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing:
        problems.append(f"missing tensors {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if unexpected:
        problems.append(f"unexpected tensors {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
    for k in sorted(set(expected) & set(tensors)):
        if tuple(expected[k].shape) != tuple(tensors[k].shape):
            problems.append(f"{k}: shape {tuple(tensors[k].shape)} != {tuple(expected[k].shape)} for config")
    if problems:
        raise WeightsError(f"{path}: tensors do not match config {meta.config.name}: " + "; ".join(problems))
    model.load_state_dict(tensors, strict=False)
    model.eval()
    return model, meta
