"""Import the public DRRN B1U25 weights (MXNet ``.params`` + symbol JSON) into the project's format.

The MXNet symbol JSON is the ground truth of what the weights compute. :func:`symbol_forward` interprets
it with plain ``torch.nn.functional`` ops (Pad, Convolution, relu, broadcast_add: the only ops the graph
uses), independently of :class:`model_export.model.DRRN`. The converter

1. reads the arrays (:mod:`model_export.mxnet_params`) and the graph;
2. checks the names and shapes against the shapes the graph declares, and reads the architecture off the
   graph: C from ``learned_0``, U from how often the shared convs recur, and whether the skips are
   rectified (the source applied ReLU in place, so every skip is taken after a ReLU);
3. maps the arrays onto a DRRN B1U{U} C{C} and refuses the result unless the module reproduces the graph
   within 1e-5 on an input with negative values (where the two variants differ).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from drrn.paths import sha256_file
from model_export.model import DRRN, DRRNConfig
from model_export.mxnet_params import MxnetFormatError, read_ndarray_list
from model_export.weights import WeightsMeta, save_weights

SOURCE = {
    "repository": "WolframRhodium/Super-Resolution-Zoo @ 041842f1, DRRN/DRRN-pytorch@jt827859032/",
    "original": "jt827859032/DRRN-pytorch @ 2cb8bc0a (PyTorch, converted to MXNet by Super-Resolution-Zoo)",
    "license": "MIT",
    "copyright": "Copyright (c) 2018 Yun_Yang",
}
PARITY_TOLERANCE = 1e-5
_WEIGHT_NAMES = ("learned_0", "learned_1", "learned_2", "learned_3")


def default_symbol_path(params: Path) -> Path:
    """``NAME-0000.params`` -> ``NAME-symbol.json`` (MXNet's checkpoint naming)."""
    return params.with_name(re.sub(r"-\d{4}\.params$", "", params.name) + "-symbol.json")


def read_symbol(path: Path | str) -> dict:
    """The graph JSON, checked to hold only ops :func:`symbol_forward` implements."""
    path = Path(path)
    try:
        graph = json.loads(path.read_text())
        nodes, heads = graph["nodes"], graph["heads"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise MxnetFormatError(f"{path}: not an MXNet symbol JSON: {exc}") from exc
    ops = {n.get("op") for n in nodes}
    unknown = ops - {"null", "relu", "Pad", "Convolution", "broadcast_add"}
    if unknown or len(heads) != 1:
        raise MxnetFormatError(f"{path}: unsupported graph (ops {sorted(unknown)}, {len(heads)} outputs)")
    return graph


def declared_shapes(graph: dict) -> dict[str, tuple[int, ...]]:
    """``{name: shape}`` of the graph's weight inputs (``null`` nodes with a ``__shape__``)."""
    out = {}
    for n in graph["nodes"]:
        shape = (n.get("attrs") or {}).get("__shape__")
        if n["op"] == "null" and shape:
            out[n["name"]] = tuple(int(v) for v in re.findall(r"\d+", shape))
    return out


def symbol_forward(graph: dict, weights: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Run the MXNet graph on ``x`` (``float32[N, 1, H, W]``) with plain functional ops."""
    values: list[torch.Tensor | None] = []
    for node in graph["nodes"]:
        op, attrs = node["op"], node.get("attrs") or {}
        args = [values[i] for i, _, _ in node["inputs"]]
        if op == "null":
            values.append(x if node["name"] == "data" else weights[node["name"]])
        elif op == "relu":
            values.append(F.relu(args[0]))
        elif op == "broadcast_add":
            values.append(args[0] + args[1])
        elif op == "Pad":
            widths = [int(v) for v in re.findall(r"\d+", attrs["pad_width"])]
            # pad_width lists (before, after) per axis from N; F.pad wants the last axis first.
            pads = [p for axis in reversed(range(len(widths) // 2)) for p in widths[2 * axis : 2 * axis + 2]]
            values.append(F.pad(args[0], pads, mode=attrs.get("mode", "constant")))
        elif op == "Convolution":
            if attrs.get("no_bias") != "True" or attrs.get("stride", "(1, 1)") != "(1, 1)":
                raise MxnetFormatError(f"convolution {node['name']}: only stride 1 without bias is supported")
            values.append(F.conv2d(args[0], args[1]))
    return values[graph["heads"][0][0]]


def _architecture(graph: dict, shapes: dict[str, tuple[int, ...]], source: str) -> DRRNConfig:
    nodes = graph["nodes"]
    if set(shapes) != set(_WEIGHT_NAMES):
        raise MxnetFormatError(
            f"{source}: graph weights {sorted(shapes)} are not DRRN's {list(_WEIGHT_NAMES)}"
        )
    c = shapes["learned_0"][0]
    expected = {"learned_0": (c, 1, 3, 3), "learned_1": (c, c, 3, 3), "learned_2": (c, c, 3, 3)}
    expected["learned_3"] = (1, c, 3, 3)
    if shapes != expected:
        raise MxnetFormatError(f"{source}: graph shapes {shapes} are not a B=1 DRRN's {expected}")
    by_name = {n["name"]: i for i, n in enumerate(nodes)}
    uses = [n for n in nodes if n["op"] == "Convolution" and n["inputs"][1][0] == by_name["learned_1"]]
    adds = [n for n in nodes if n["op"] == "broadcast_add"]
    # The skip of each unit (and the global residual) is rectified when the add reads a relu node.
    rectified = all(nodes[a["inputs"][1][0]]["op"] == "relu" for a in adds)
    return DRRNConfig(blocks=1, units=len(uses), channels=c, rectified_skips=rectified)


def _check_arrays(arrays: dict[str, np.ndarray], shapes: dict, source: str) -> dict[str, torch.Tensor]:
    names = {k.removeprefix("arg:"): v for k, v in arrays.items()}
    if set(names) != set(shapes) or len(names) != len(arrays):
        raise MxnetFormatError(
            f"{source}: arrays {sorted(arrays)} do not match graph weights {sorted(shapes)}"
        )
    for name, arr in names.items():
        if arr.shape != shapes[name] or arr.dtype != np.float32:
            raise MxnetFormatError(
                f"{source}: {name} is {arr.dtype}{arr.shape}, the graph declares float32{shapes[name]}"
            )
        if not np.isfinite(arr).all():
            raise MxnetFormatError(f"{source}: {name} holds non-finite values")
    return {k: torch.from_numpy(v.copy()) for k, v in names.items()}


def to_drrn(cfg: DRRNConfig, w: dict[str, torch.Tensor]) -> DRRN:
    model = DRRN(cfg)
    state = {"blocks.0.entry.weight": w["learned_0"], "output.weight": w["learned_3"]}
    if cfg.units:
        state |= {"blocks.0.conv_a.0.weight": w["learned_1"], "blocks.0.conv_b.0.weight": w["learned_2"]}
    model.load_state_dict(state, strict=True)
    return model.eval()


def parity(graph: dict, weights: dict[str, torch.Tensor], model: DRRN, x: torch.Tensor) -> float:
    """Max abs difference between the module and the graph on ``x``."""
    with torch.no_grad():
        return float((model(x) - symbol_forward(graph, weights, x)).abs().max())


def convert_mxnet(src: Path | str, dst: Path | str, symbol: Path | str | None = None) -> WeightsMeta:
    """``drrn convert --from mxnet SRC -o DST [--symbol JSON]``: write a DRRN weight file."""
    src = Path(src)
    symbol = Path(symbol) if symbol else default_symbol_path(src)
    graph = read_symbol(symbol)
    shapes = declared_shapes(graph)
    cfg = _architecture(graph, shapes, str(symbol))
    weights = _check_arrays(read_ndarray_list(src), shapes, str(src))
    model = to_drrn(cfg, weights)
    # Bicubic inputs overshoot below 0 near edges: include that, since it is where the variants differ.
    x = torch.rand(1, 1, 40, 40, generator=torch.Generator().manual_seed(0)) * 1.1 - 0.05
    diff = parity(graph, weights, model, x)
    if diff > PARITY_TOLERANCE:
        raise MxnetFormatError(f"{src}: converted model differs from the graph by {diff:.3g} > 1e-5")
    meta = WeightsMeta(
        config=cfg,
        scales=[2, 3, 4],
        provenance={
            **SOURCE,
            "source_file": src.name,
            "source_sha256": sha256_file(src),
            "symbol_sha256": sha256_file(symbol),
            "converted_by": "drrn convert --from mxnet",
            "conversion_parity_max_abs": diff,
        },
        training={"note": "trained by the source authors on the 291 images, x2/x3/x4 mixed; U=25"},
    )
    save_weights(model, meta, dst)
    return meta
