"""``drrn models build``: the model repository, built from weight files.

Layout (file names in :mod:`drrn.contract`; read back by :mod:`engines.repository`)::

    ROOT/<name>/model.onnx        fp32 export, float32[N, 1, H, W] -> same
    ROOT/<name>/model.fp16.onnx   fp16 weights and math, float32 I/O (used on CUDA)
    ROOT/<name>/model.int8.onnx   int8 QDQ (the CPU default when its recipe says so; built only from a
                                  recipe, weights/<name>.int8.json, see model_export.quantize)
    ROOT/<name>/card.json         CARD_FORMAT: config, cost, quality, provenance, serving defaults

Both exports go through :func:`model_export.onnx_export.export_onnx`, which refuses a file that ONNX Runtime
does not reproduce to its parity tolerance. ``card.json`` is written last and atomically, and removed first
when a folder is rebuilt, so a folder with a card is always complete. A folder whose card records the
weights' sha256 and whose ONNX files exist is up to date and left alone.

Importing this module is cheap (no torch): the up-to-date check and :func:`serving_defaults` are plain
Python; building imports the exporter (torch, onnx) lazily. :func:`import_onnx` turns a lone fp32 export
into a repository model from its metadata alone (onnxruntime, no torch).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from drrn import contract as c
from drrn.errors import UserError
from drrn.paths import sha256_file

log = logging.getLogger(__name__)


def serving_defaults(depth: int) -> dict[str, int]:
    """Tile size T (tiles hold at most T*T pixels) and margin M the service uses for a model of ``depth``
    conv layers.

    M = depth makes tiled output equal whole-image output (the margin study in BENCHMARKS.md found no
    smaller margin within 1 grey level everywhere). T comes from ``drrn bench tiles``: for shallow models
    the smallest size within 3% of the least CPU time per output pixel (384 at M = 20, level with 512: at
    most 1.23x the output computed on any image shape; 256 would be 1.42x and 24% more CPU time), for deep
    ones the smallest size whose overhead stays <= 1.5x on every shape (640 at M = 52: 1.38x).
    """
    return {"tile": 384 if depth <= 24 else 640, "margin": depth}


def int8_recipe_path(weights: Path | str) -> Path:
    """``weights/<name>.int8.json`` for ``weights/<name>.safetensors`` (it may not exist)."""
    weights = Path(weights)
    return weights.with_name(weights.stem + c.INT8_RECIPE_SUFFIX)


def _build_int8(weights: Path, folder: Path, name: str) -> dict[str, Any]:
    """Build ``model.int8.onnx`` from the weights' recipe, if there is one; the card fields it adds."""
    recipe = int8_recipe_path(weights)
    (folder / c.REPO_ONNX_INT8).unlink(missing_ok=True)
    if not recipe.is_file():
        return {}
    from model_export.quantize import quantize_from_recipe, read_recipe

    doc = read_recipe(recipe, sha256_file(weights))
    quantize_from_recipe(folder / c.REPO_ONNX, folder / c.REPO_ONNX_INT8, doc)
    log.info("model %r: int8 file built from %s (CPU default: %s)", name, recipe, doc["cpu_default"])
    return {
        "int8_recipe_sha256": sha256_file(recipe),
        "cpu_precision": "int8" if doc["cpu_default"] else "fp32",
    }


def is_up_to_date(weights: Path | str, folder: Path | str, fp16: bool = True) -> bool:
    """True when ``folder/card.json`` was written by this exporter (:data:`drrn.contract.EXPORT_VERSION`)
    from ``weights`` (same sha256), and every ONNX file the card lists exists. An fp32-only card (``fp16``
    False, or an fp16 export that failed its parity check) is up to date without an fp16 file."""
    folder = Path(folder)
    try:
        card = json.loads((folder / c.REPO_CARD).read_text())
        recorded, version, files = card["weights_sha256"], card.get("export_version"), card["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if fp16 is False and c.REPO_ONNX_FP16 in files.values():
        return False  # asked for fp32 only: rebuild so no stale fp16 file is served
    if fp16 and c.REPO_ONNX_FP16 not in files.values() and card.get("fp16_export") != "parity_miss":
        return False  # built fp32-only on purpose, now asked for fp16 (a parity miss is not retried)
    recipe = int8_recipe_path(weights)
    if card.get("int8_recipe_sha256") != (sha256_file(recipe) if recipe.is_file() else None):
        return False  # a recipe was added, changed or removed
    serving = card.get("serving", {})
    if {k: serving.get(k) for k in ("tile", "margin")} != serving_defaults(card.get("depth", 0)):
        return False  # the serving defaults changed (they live in the card)
    return (
        version == c.EXPORT_VERSION
        and recorded == sha256_file(weights)
        and all((folder / f).is_file() for f in files.values())
    )


def _card(name: str, cfg: dict[str, Any], facts: dict[str, Any], fp16: bool) -> dict[str, Any]:
    """A card document from the config dict and the model's facts (see :func:`card_document`)."""
    depth = facts["depth"]
    files = {"fp32": c.REPO_ONNX} | ({"fp16": c.REPO_ONNX_FP16} if fp16 else {})
    return {
        "format": c.CARD_FORMAT,
        "export_version": c.EXPORT_VERSION,
        "name": name,
        "architecture": facts["architecture"],
        "config": cfg,
        "depth": depth,
        "receptive_field": facts["receptive_field"],
        "params": facts["params"],
        "flops_per_pixel": facts["flops_per_pixel"],
        "mflop_per_pixel": round(facts["flops_per_pixel"] / 1e6, 2),
        "scales": facts["scales"],
        "quality": facts["quality"],
        "provenance": facts["provenance"],
        "training": facts["training"],
        "weights_sha256": facts["weights_sha256"],
        "serving": serving_defaults(depth),
        "files": files,
    }


def card_document(weights: Path | str, name: str, fp16: bool) -> dict[str, Any]:
    """The ``card.json`` document for ``weights`` served as ``name`` (loads the weights: needs torch)."""
    from model_export.model import count_params
    from model_export.weights import load_weights

    model, meta = load_weights(weights)
    cfg = meta.config
    facts = {
        "architecture": cfg.name,
        "depth": cfg.depth,
        "receptive_field": cfg.receptive_field,
        "params": count_params(model),
        "flops_per_pixel": cfg.flops_per_pixel(),
        "scales": meta.scales,
        "quality": meta.evaluation,
        "provenance": meta.provenance,
        "training": meta.training,
        "weights_sha256": sha256_file(weights),
    }
    return _card(name, json.loads(cfg.to_json()), facts, fp16)


def onnx_card_document(onnx: Path | str, name: str) -> dict[str, Any]:
    """The card of an fp32 DRRN export served alone as ``name``, from its metadata (onnxruntime only)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    meta = dict(session.get_modelmeta().custom_metadata_map)
    if meta.get(c.META_PRECISION, "fp32") != "fp32":
        raise UserError(f"{onnx} is a {meta[c.META_PRECISION]} export; a repository model needs the fp32 one")
    try:
        summary = json.loads(meta.get(c.META_MODEL_CARD, "{}"))
        facts = {
            "architecture": meta[c.META_NAME],
            "depth": int(meta[c.META_DEPTH]),
            "receptive_field": int(meta[c.META_RECEPTIVE_FIELD]),
            "params": int(meta[c.META_PARAMS]),
            "flops_per_pixel": int(meta[c.META_FLOPS_PER_PIXEL]),
            "scales": json.loads(meta[c.META_SCALES]),
            "quality": summary.get("evaluation", {}),
            "provenance": summary.get("provenance", {}),
            "training": summary.get("training", {}),
            "weights_sha256": meta[c.META_WEIGHTS_SHA256],
        }
        return _card(name, json.loads(meta[c.META_CONFIG]), facts, fp16=False)
    except (KeyError, ValueError) as exc:
        raise UserError(f"{onnx} lacks DRRN metadata ({exc}); re-export it with `drrn export`") from exc


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(text)
    tmp.replace(path)


def build_model(weights: Path, root: Path, name: str | None = None, fp16: bool = True) -> Path:
    """Export ``weights`` into ``root/<name>/`` (``name`` defaults to the file stem); returns the folder.

    Skips the work when the folder is up to date. Raises :class:`drrn.errors.UserError` for a missing or
    unreadable weight file and for an export that fails its parity check.
    """
    weights, root = Path(weights), Path(root)
    name = name or weights.stem
    folder = root / name
    if not weights.is_file():
        raise UserError(f"weights file not found: {weights}")
    if is_up_to_date(weights, folder, fp16):
        log.info("%s is up to date with %s", folder, weights)
        return folder
    from model_export.cli_support import parity_images
    from model_export.onnx_export import ExportParityError, export_onnx
    from model_export.weights import WeightsError

    folder.mkdir(parents=True, exist_ok=True)
    (folder / c.REPO_CARD).unlink(missing_ok=True)  # the folder is not a model until the card is back
    try:
        images = parity_images()
        export_onnx(weights, folder / c.REPO_ONNX, fp16=False, real_images=images)
        (folder / c.REPO_ONNX_FP16).unlink(missing_ok=True)
        fp16_export = "ok" if fp16 else "not_requested"
        if fp16:
            try:
                export_onnx(weights, folder / c.REPO_ONNX_FP16, fp16=True, real_images=images)
            except ExportParityError as exc:  # CUDA then runs the fp32 file; the card says which exist
                log.warning("model %r: no fp16 file (%s); the card lists fp32 only", name, exc)
                fp16, fp16_export = False, "parity_miss"
        int8 = _build_int8(weights, folder, name)
        card = card_document(weights, name, fp16) | {"fp16_export": fp16_export}
        if int8:
            card["files"]["int8"] = c.REPO_ONNX_INT8
            card["serving"]["cpu_precision"] = int8.pop("cpu_precision")
            card |= int8
    except (WeightsError, ExportParityError) as exc:
        raise UserError(f"cannot build model {name!r} from {weights}: {exc}") from exc
    _write_atomically(folder / c.REPO_CARD, json.dumps(card, indent=2, sort_keys=True) + "\n")
    log.info("built %s from %s", folder, weights)
    return folder


def import_onnx(onnx: Path, root: Path, name: str | None = None) -> Path:
    """Serve a lone fp32 export as the repository model ``root/<name>`` (default: the file stem): the file
    is copied beside a card made from its metadata (no torch; no fp16 file). Returns the folder; an
    existing folder holding the same file is left alone."""
    onnx, root = Path(onnx), Path(root)
    folder = root / (name or onnx.stem)
    target = folder / c.REPO_ONNX
    if (folder / c.REPO_CARD).is_file() and target.is_file() and sha256_file(target) == sha256_file(onnx):
        return folder
    card = onnx_card_document(onnx, folder.name)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / c.REPO_CARD).unlink(missing_ok=True)
    partial = folder / (c.REPO_ONNX + ".partial")
    partial.write_bytes(onnx.read_bytes())
    partial.replace(target)
    _write_atomically(folder / c.REPO_CARD, json.dumps(card, indent=2, sort_keys=True) + "\n")
    return folder


def build_repository(
    weights_dir: Path, root: Path, progress: Callable[[str], None] | None = None
) -> list[str]:
    """:func:`build_model` for every ``weights_dir/*.safetensors`` (name = file stem); returns the names.

    ``progress`` gets one line per model (``"fast: up to date"`` / ``"fast: built"``).
    """
    weights_dir, root = Path(weights_dir), Path(root)
    files = sorted(weights_dir.glob("*.safetensors"))
    if not files:
        raise UserError(f"no *.safetensors weight files in {weights_dir}")
    names = []
    for weights in files:
        fresh = is_up_to_date(weights, root / weights.stem)
        build_model(weights, root)
        names.append(weights.stem)
        if progress:
            progress(f"{weights.stem}: {'up to date' if fresh else 'built'} ({root / weights.stem})")
    return names
