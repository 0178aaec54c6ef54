"""int8 DRRN exports for the CPU: static QDQ quantisation with ONNX Runtime's own tools.

- Activations uint8 and weights int8 per output channel (U8S8), the layout ORT's x86 kernels run with
  AVX-512 VNNI; QDQ format, so the graph keeps its float interface (``lr_bicubic`` -> ``sr`` float32).
- What stays float32 (measured on the fast model, Set5 bird x2 / butterfly x3, see BENCHMARKS.md):
  the first conv (an 8-bit *input* throws away the sub-grey-level detail the network sharpens), every
  ``Add`` (the skip sums carry the image content through all recursions) and the output conv plus the
  global residual (an 8-bit ``sr`` alone costs up to half a grey level per pixel). All-int8 ran 3.6x faster
  than fp32 but lost 0.14 dB on bird x2; this split runs ~2.3x faster and loses 0.04 dB there.
- Calibration: bicubic-upscaled Y crops of the *training* images (T91 + BSD200 by default, degraded with
  the evaluation protocol at x2/x3/x4), never the benchmark sets.

The result carries the fp32 export's metadata with ``drrn.precision = int8``. Whether int8 is worth
serving is measured, not assumed: ``drrn bench engine --backends ort-fp32,ort-int8`` for speed in one run
and ``drrn eval --model FILE.int8.onnx`` for quality.

**Recipes.** Calibration needs the training images, which a Docker build or a fresh clone may not have.
``drrn quantize --recipe weights/<name>.int8.json`` therefore stores what calibration produced (ONNX
Runtime's calibration cache: one range per activation tensor, a few kB) with the weights' sha256 and the
ship decision (``cpu_default``, set from the measurements in BENCHMARKS.md). ``drrn models build`` then
rebuilds the same int8 file from the recipe alone (:func:`quantize_from_recipe`), with no dataset.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from drrn import contract as c
from drrn.errors import UserError


def calibration_crops(
    folders: list[Path], count: int = 64, size: int = 96, scales: tuple[int, ...] = (2, 3, 4), seed: int = 0
) -> list[np.ndarray]:
    """``count`` random ``float32[1, 1, size, size]`` crops of bicubic-upscaled training Y, mixed scales."""
    from imaging.protocol import image_files, prepare

    paths = [p for f in folders for p in image_files(f)]
    if not paths:
        raise UserError(f"no calibration images in {[str(f) for f in folders]}")
    rng = np.random.default_rng(seed)
    crops: list[np.ndarray] = []
    tries = 0
    while len(crops) < count:
        tries += 1
        if tries > 20 * count and not crops:  # no image is large enough: it would never end
            raise UserError(f"no calibration image yields a {size}x{size} crop at scales {scales}")
        path, s = paths[rng.integers(len(paths))], int(rng.choice(scales))
        _, bic = prepare(path, s)
        if min(bic.shape) < size:
            continue
        y, x = rng.integers(0, bic.shape[0] - size + 1), rng.integers(0, bic.shape[1] - size + 1)
        crops.append(bic[y : y + size, x : x + size].astype(np.float32)[None, None])
    return crops


def float_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes kept in float: the first conv, every Add, and the output conv."""
    nodes = model.graph.node
    producers = {out: n for n in nodes for out in n.output}
    final = producers[c.OUTPUT_NAME]
    keep = [n.name for n in nodes if n.op_type == "Add"]
    keep += [producers[i].name for i in final.input if i in producers and producers[i].op_type == "Conv"]
    first = next(n for n in nodes if n.op_type == "Conv")  # nodes are in topological order
    return [first.name, *keep]


def quantize_int8(
    fp32: Path | str, out: Path | str, crops: list[np.ndarray] | None, cache: Path | str | None = None
) -> Path:
    """Write the int8 QDQ model of the fp32 export ``fp32`` to ``out``, calibrated on ``crops``; with
    ``cache`` (ONNX Runtime's calibration cache JSON) the ranges are read from it when it exists (``crops``
    may then be None) and written to it after calibrating when it does not."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(crops or [])

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self._it, None)
            return None if x is None else {c.INPUT_NAME: x}

    fp32, out = Path(fp32), Path(out)
    model = onnx.load(str(fp32))
    out.parent.mkdir(parents=True, exist_ok=True)
    quantize_static(
        str(fp32),
        str(out),
        Reader() if crops is not None else None,
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        calibrate_method=CalibrationMethod.MinMax,
        nodes_to_exclude=float_nodes(model),
        calibration_cache_path=None if cache is None else str(cache),
    )
    q = onnx.load(str(out))
    meta = {p.key: p.value for p in model.metadata_props} | {c.META_PRECISION: "int8"}
    onnx.helper.set_model_props(q, meta)
    onnx.save(q, str(out))
    return out


def write_recipe(
    fp32: Path | str,
    out: Path | str,
    recipe: Path | str,
    crops: list[np.ndarray],
    about: str,
    cpu_default: bool,
) -> Path:
    """Calibrate ``fp32`` on ``crops``, write its int8 model to ``out`` and the recipe to ``recipe``."""
    meta = {p.key: p.value for p in onnx.load(str(fp32), load_external_data=False).metadata_props}
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "calibration.json"
        quantize_int8(fp32, out, crops, cache)
        calibration = json.loads(cache.read_text())
    doc = {
        "format": c.INT8_RECIPE_FORMAT,
        "weights_sha256": meta.get(c.META_WEIGHTS_SHA256),
        "calibrated_on": about,
        "cpu_default": cpu_default,
        "calibration": calibration,
    }
    Path(recipe).write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    return Path(recipe)


def read_recipe(recipe: Path | str, weights_sha256: str) -> dict[str, Any]:
    """The recipe document; :class:`UserError` when it is malformed or made for other weights."""
    try:
        doc = json.loads(Path(recipe).read_text())
        ok = doc["format"] == c.INT8_RECIPE_FORMAT and isinstance(doc["calibration"], dict)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"int8 recipe {recipe} is unreadable: {exc}") from exc
    if not ok:
        raise UserError(f"int8 recipe {recipe} is not a {c.INT8_RECIPE_FORMAT} document")
    if doc.get("weights_sha256") != weights_sha256:
        raise UserError(
            f"int8 recipe {recipe} was calibrated for other weights; recalibrate with "
            "`drrn quantize --recipe` (needs the training images)"
        )
    return doc


def quantize_from_recipe(fp32: Path | str, out: Path | str, doc: dict[str, Any]) -> Path:
    """The int8 model of ``fp32`` from a recipe's stored calibration (no calibration data needed).

    Raises :class:`UserError` when the recipe names tensors the graph lacks (an exporter change renamed
    them: recalibrate)."""
    graph = onnx.load(str(fp32)).graph
    names = {t for n in graph.node for t in (*n.input, *n.output)}
    unknown = sorted(set(doc["calibration"].get("data", {})) - names)
    if unknown:
        raise UserError(f"int8 recipe names tensors {unknown[:3]} not in {fp32}; recalibrate it")
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "calibration.json"
        cache.write_text(json.dumps(doc["calibration"]))
        return quantize_int8(fp32, out, None, cache)
