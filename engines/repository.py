"""The model repository, read side: ``ROOT/<name>/{model.onnx, model.fp16.onnx, card.json}``.

:mod:`model_export.repository_build` writes it (``make models``, ``drrn models build``); this module only
reads cards (json + pathlib: no torch, no onnx), so the service can list and open models in a serving-only
install. A folder is a model once it has a ``card.json`` (the build writes it last).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drrn import contract as c
from drrn.errors import UserError

BUILD_COMMAND = "make models"


class RepositoryError(UserError):
    """The repository is missing or empty, or a model folder's card is malformed."""


class UnknownModelError(UserError):
    """No model of that name; ``.valid`` lists the names there are."""

    def __init__(self, name: str, valid: list[str]) -> None:
        self.name = name
        self.valid = list(valid)
        super().__init__(f"unknown model {name!r}; valid names: {', '.join(self.valid) or '(none)'}")


# Card field -> accepted JSON types (bool is excluded from int separately).
_FIELDS: dict[str, type | tuple[type, ...]] = {
    "format": str,
    "name": str,
    "architecture": str,
    "config": dict,
    "depth": int,
    "receptive_field": int,
    "params": int,
    "flops_per_pixel": int,
    "mflop_per_pixel": (int, float),
    "scales": list,
    "quality": dict,
    "provenance": dict,
    "training": dict,
    "weights_sha256": str,
    "serving": dict,
    "files": dict,
}


@dataclass(frozen=True)
class ModelCard:
    """One model of the repository: its ``card.json`` fields plus the folder holding its files.

    ``serving`` is ``{"tile": T, "margin": M}``: the engine sees ``float32[N, 1, th, tw]`` tiles
    (``th * tw <= T**2``) with M context pixels around each core. ``files`` maps ``"fp32"`` (and ``"fp16"``
    when built) to file names inside ``folder``.
    """

    format: str
    name: str
    architecture: str
    config: dict[str, Any]
    depth: int
    receptive_field: int
    params: int
    flops_per_pixel: int
    mflop_per_pixel: float
    scales: list[float]
    quality: dict[str, Any]
    provenance: dict[str, Any]
    training: dict[str, Any]
    weights_sha256: str
    serving: dict[str, int]
    files: dict[str, str]
    folder: Path

    @property
    def tile(self) -> int:
        return self.serving["tile"]

    @property
    def margin(self) -> int:
        return self.serving["margin"]

    def onnx_path(self, fp16: bool) -> Path:
        """The fp16 file (which may be absent: not built) or the fp32 one."""
        key, default = ("fp16", c.REPO_ONNX_FP16) if fp16 else ("fp32", c.REPO_ONNX)
        return self.folder / self.files.get(key, default)

    def precision_for(self, requested: str, on_cuda: bool) -> str:
        """The precision to serve: ``requested`` (fp32, fp16 or int8) when its file is built, else fp32;
        ``auto``: fp16 on CUDA when built, and on the CPU the card's ``serving.cpu_precision`` (int8 only
        for a model whose int8 met the ship rule, see :mod:`model_export.quantize`)."""
        if requested == "auto":
            requested = "fp16" if on_cuda else self.serving.get("cpu_precision", "fp32")
        if requested != "fp32" and (self.folder / self.files.get(requested, "")).is_file():
            return requested
        return "fp32"

    def precision_path(self, precision: str) -> Path:
        """The ONNX file of ``precision`` (fp32, fp16 or int8) as the card names it."""
        return self.folder / self.files.get(precision, c.REPO_ONNX)

    def to_dict(self) -> dict[str, Any]:
        """The card as JSON-ready data for the API (no local paths)."""
        data = dataclasses.asdict(self)
        del data["folder"]
        return data

    @classmethod
    def from_folder(cls, folder: Path) -> ModelCard:
        """Read and validate ``folder/card.json``; :class:`RepositoryError` names the folder and problem."""
        folder = Path(folder)
        try:
            data = json.loads((folder / c.REPO_CARD).read_text())
        except OSError as exc:
            problem = f"cannot read {c.REPO_CARD}: {exc.strerror or exc}"
            raise RepositoryError(f"model folder {folder}: {problem}") from exc
        except ValueError as exc:
            raise RepositoryError(f"model folder {folder}: {c.REPO_CARD} is not JSON: {exc}") from exc
        problem = _problem(data, folder.name)
        if problem:
            raise RepositoryError(f"model folder {folder}: malformed {c.REPO_CARD}: {problem}")
        fields = {k: data[k] for k in _FIELDS} | {"mflop_per_pixel": float(data["mflop_per_pixel"])}
        return cls(folder=folder, **fields)


def _problem(data: Any, folder_name: str) -> str | None:
    """What is wrong with a parsed card, or None."""
    if not isinstance(data, dict):
        return "not a JSON object"
    if data.get("format") != c.CARD_FORMAT:
        return f"format {data.get('format')!r} is not {c.CARD_FORMAT!r}"
    missing = [k for k in _FIELDS if k not in data]
    if missing:
        return f"missing fields {missing}"
    for key, kind in _FIELDS.items():
        if not isinstance(data[key], kind) or isinstance(data[key], bool):
            return f"{key} is {type(data[key]).__name__}, expected {getattr(kind, '__name__', 'number')}"
    if data["name"] != folder_name:
        return f"name {data['name']!r} differs from the folder name"
    tile, margin = data["serving"].get("tile"), data["serving"].get("margin")
    if not (type(tile) is int and type(margin) is int and 0 <= 2 * margin < tile):
        return f"serving {data['serving']} needs integers with 0 <= 2*margin < tile"
    if not isinstance(data["files"].get("fp32"), str):
        return "files has no fp32 entry"
    return None


class ModelRepository:
    """The models under ``root`` (see the module docstring), read on every call: no caching."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def names(self) -> list[str]:
        """Sorted names of the folders holding a card; ``[]`` when the root is missing or empty."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / c.REPO_CARD).is_file())

    def _require_models(self) -> list[str]:
        names = self.names()
        if not names:
            state = "does not exist" if not self.root.is_dir() else "has no models"
            raise RepositoryError(
                f"model repository {self.root} {state}; build it with `{BUILD_COMMAND}` "
                "(or `drrn models build`)"
            )
        return names

    def card(self, name: str) -> ModelCard:
        """The card of ``name``: :class:`UnknownModelError` listing the valid names if there is none,
        :class:`RepositoryError` (with the build command) if the repository is empty."""
        names = self._require_models()
        if name not in names:
            raise UnknownModelError(name, names)
        return ModelCard.from_folder(self.root / name)

    def cards(self) -> list[ModelCard]:
        """Every model's card, sorted by name; raises like :meth:`card`."""
        return [ModelCard.from_folder(self.root / n) for n in self._require_models()]
