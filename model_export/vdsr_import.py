"""Import the public pytorch-vdsr checkpoint without executing its pickle.

``model_epoch_50.pth`` is a legacy (non-zip) ``torch.save`` of ``{"epoch": 50, "model": <vdsr.Net>}``.
Unpickling it normally would import and run the third-party ``vdsr`` module. Instead a restricted
unpickler allows only an explicit list of globals: the tensor rebuild helpers, ``OrderedDict``, and the
module classes, which are mapped to an inert stub that only records its ``__dict__``. Anything else is
refused with :class:`ForeignPickleError`.

VDSR (20 conv layers, 64 filters, conv-ReLU, no bias, no BN, global residual) is exactly DRRN with
B=19, U=0, C=64 (see ``../shared/DRRN.md``).
"""

from __future__ import annotations

import pickle
import types
import warnings
from pathlib import Path

import torch
from torch.serialization import SourceChangeWarning

from drrn.paths import sha256_file
from model_export.model import DRRN, DRRNConfig
from model_export.weights import WeightsMeta, save_weights

VDSR_CONFIG = DRRNConfig(blocks=19, units=0, channels=64, batch_norm=False, bias=False)


class ForeignPickleError(pickle.UnpicklingError):
    """The checkpoint references a global outside the allow-list."""


class _InertModule:
    """Stands in for any pickled ``nn.Module``: keeps the state dict it is given, runs nothing."""

    # torch's legacy loader compares pickled module source code only when this flag is set.
    dump_patches = False

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)


_ALLOWED_FUNCTIONS = {
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch.nn.parameter", "Parameter"),
    ("builtins", "set"),
    ("__builtin__", "set"),
}
_STUBBED_MODULES = {
    ("vdsr", "Net"),
    ("vdsr", "Conv_ReLU_Block"),
    ("torch.nn.modules.conv", "Conv2d"),
    ("torch.nn.modules.activation", "ReLU"),
    ("torch.nn.modules.container", "Sequential"),
}


# Old torch pickled a reference to the THNN backend getter in every module's __dict__; it is inert here.
_STUBBED_FUNCTIONS = {("torch.nn.backends.thnn", "_get_thnn_function_backend")}


def _inert_function(*_args: object, **_kwargs: object) -> None:
    return None


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _STUBBED_MODULES:
            return _InertModule
        if (module, name) in _STUBBED_FUNCTIONS:
            return _inert_function
        if (module, name) in _ALLOWED_FUNCTIONS:
            return super().find_class(module, name)
        raise ForeignPickleError(
            f"refusing to load global {module}.{name}: not on the VDSR checkpoint allow-list"
        )


# torch.load wants a module-like object with ``Unpickler`` and ``load``; torch subclasses our Unpickler
# only to resolve storage types, then defers to our find_class for everything else.
restricted_pickle = types.SimpleNamespace(
    Unpickler=_RestrictedUnpickler,
    load=lambda fh, **kw: _RestrictedUnpickler(fh, **kw).load(),
    __name__="restricted_pickle",
)


def _collect_params(node: object, prefix: str = "") -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for name, tensor in getattr(node, "_parameters", {}).items():
        if tensor is not None:
            out[prefix + name] = tensor.detach().clone()
    for name, child in getattr(node, "_modules", {}).items():
        out.update(_collect_params(child, f"{prefix}{name}."))
    return out


def read_vdsr_state(path: Path | str) -> dict[str, torch.Tensor]:
    """VDSR state dict: ``input.weight``, ``residual_layer.{i}.conv.weight``, ``output.weight``."""
    with warnings.catch_warnings():
        # torch compares the pickled class source with our stub's and warns that they differ: expected.
        warnings.simplefilter("ignore", SourceChangeWarning)
        obj = torch.load(str(path), map_location="cpu", pickle_module=restricted_pickle, weights_only=False)
    if not isinstance(obj, dict) or "model" not in obj:
        raise ValueError(f"{path}: expected a dict with a 'model' entry, got {type(obj).__name__}")
    state = _collect_params(obj["model"])
    if not state:
        raise ValueError(f"{path}: no parameters found in the checkpoint")
    return state


def vdsr_to_drrn(state: dict[str, torch.Tensor]) -> DRRN:
    """Map VDSR's layers onto DRRN B19U0: input conv -> block 0 entry, layer i -> block i+1 entry."""
    n_mid = sum(1 for k in state if k.startswith("residual_layer."))
    cfg = DRRNConfig(blocks=n_mid + 1, units=0, channels=state["input.weight"].shape[0])
    mapped = {"blocks.0.entry.weight": state["input.weight"], "output.weight": state["output.weight"]}
    for i in range(n_mid):
        mapped[f"blocks.{i + 1}.entry.weight"] = state[f"residual_layer.{i}.conv.weight"]
    model = DRRN(cfg)
    model.load_state_dict(mapped, strict=True)
    return model.eval()


def convert_vdsr(src: Path | str, dst: Path | str) -> WeightsMeta:
    """``drrn convert --from pytorch-vdsr SRC -o DST``: write a DRRN weight file."""
    model = vdsr_to_drrn(read_vdsr_state(src))
    meta = WeightsMeta(
        config=model.cfg,
        scales=[2, 3, 4],
        provenance={
            "source": "pytorch-vdsr model_epoch_50.pth (twtygqyy/pytorch-vdsr @ 514b0210)",
            "source_sha256": sha256_file(src),
            "converted_by": "drrn convert --from pytorch-vdsr",
        },
        training={"note": "trained by the pytorch-vdsr authors on 291 images, x2/x3/x4 mixed"},
    )
    save_weights(model, meta, dst)
    return meta
