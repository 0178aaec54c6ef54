"""The one resolver: a ``--model`` spec to model files, a model card and an inference engine.

Every command that takes a model (``drrn eval``, ``drrn upscale``, ``drrn bench``) resolves it here, and the
service opens its repository models with :func:`open_card`. A spec is one of:

- a model name in the repository (:mod:`engines.repository`, default root ``artifacts/models``): ``fast``,
  ``quality``, and ``default`` (= ``fast``). Served from its ONNX files (fp16 on CUDA when built) with the
  card's tile and margin. For the default root, a name that is missing or older than its weight file
  ``weights/<name>.safetensors`` is (re)built on first use, which needs torch (the ``train`` extra);
  without torch that is a :class:`~drrn.errors.UserError` naming ``make models``.
- ``*.onnx``: that export on ONNX Runtime.
- ``*.safetensors``: that weight file on PyTorch (:class:`engines.torch_engine.TorchEngine`, imported
  lazily: the service never imports torch).

Engines map ``float32[N, 1, th, tw]`` tiles to the same shape (:class:`engines.base.Engine`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from drrn.errors import UserError
from drrn.paths import DEFAULT_MODEL, EXPORTS_DIR, MODELS_DIR, WEIGHTS_DIR
from engines.base import Engine
from engines.ort_engine import CPU, OrtEngine, choose_model_path, select_providers
from engines.repository import BUILD_COMMAND, ModelCard, ModelRepository, UnknownModelError

ALIASES = {"default": DEFAULT_MODEL}
SUFFIXES = (".onnx", ".safetensors")


def model_name(spec: str) -> str | None:
    """The repository name ``spec`` asks for (aliases applied), or None when it is a file path.

    Raises :class:`UserError` for a path that is neither ``*.onnx`` nor ``*.safetensors``.
    """
    if spec.endswith(SUFFIXES):
        return None
    if not spec or "/" in spec or "\\" in spec or spec.startswith("."):
        raise UserError(f"unsupported model {spec!r}: expected a model name, *.onnx or *.safetensors")
    return ALIASES.get(spec, spec)


def weights_for(spec: str, weights_dir: Path | None = None) -> Path | None:
    """The weight file behind ``spec``, when there is one (no build, no torch): ``weights/<name>.safetensors``
    for a name, the file itself for ``*.safetensors``, None for ``*.onnx``."""
    name = model_name(spec)
    if name is None:
        return Path(spec) if spec.endswith(".safetensors") else None
    path = Path(weights_dir or WEIGHTS_DIR) / f"{name}.safetensors"
    return path if path.is_file() else None


def _build(weights: Path, root: Path, name: str, fp16: bool = True) -> None:
    """Export ``weights`` into ``root/name`` (prints one line: it takes seconds to minutes)."""
    try:
        import torch  # noqa: F401  (building needs it; say so before starting)

        from model_export.repository_build import build_model
    except ImportError as exc:
        raise UserError(
            f"model {name!r} is not built (or is older than {weights}) in {root}, and building it needs "
            f"torch; run `{BUILD_COMMAND}` where the train extra is installed"
        ) from exc
    print(f"building model {name!r} from {weights} into {root / name}", file=sys.stderr)
    build_model(weights, root, name=name, fp16=fp16)


def resolve_card(spec: str, root: Path | None = None, *, weights_dir: Path | None = None) -> ModelCard | None:
    """The repository card ``spec`` names, or None when ``spec`` is a file path.

    ``root`` defaults to ``artifacts/models``. Weight files (``weights_dir``, default ``weights/`` for the
    default root, none for an explicit root) make missing or stale models build on the fly. Raises
    :class:`engines.repository.UnknownModelError` (listing the valid names),
    :class:`engines.repository.RepositoryError` (empty repository, malformed card) or :class:`UserError`.
    """
    name = model_name(spec)
    if name is None:
        return None
    if weights_dir is None and root is None:
        weights_dir = WEIGHTS_DIR
    root = Path(root or MODELS_DIR)
    repo = ModelRepository(root)
    weights = Path(weights_dir) / f"{name}.safetensors" if weights_dir is not None else None
    if weights is not None and weights.is_file():
        from model_export.repository_build import is_up_to_date  # plain Python, no torch

        if not is_up_to_date(weights, root / name):
            _build(weights, root, name)
    elif name not in repo.names():
        buildable = {p.stem for p in Path(weights_dir).glob("*.safetensors")} if weights_dir else set()
        valid = sorted(set(repo.names()) | buildable)
        if valid:  # else repo.card says the repository is empty and how to build it
            raise UnknownModelError(spec, valid)
    return repo.card(name)


def export_weights(weights: Path, root: Path | None = None, fp16: bool = True) -> ModelCard:
    """``weights`` exported into the repository ``root`` (default ``artifacts/exports``) as
    ``<stem>-<sha8>`` (a content-addressed cache); needs torch. When the fp16 export fails its parity
    check, the card lists the fp32 file only (the build logs a warning)."""
    from drrn.paths import sha256_file

    weights = Path(weights)
    if not weights.is_file():
        raise UserError(f"model file not found: {weights}")
    root = Path(root or EXPORTS_DIR)
    name = f"{weights.stem}-{sha256_file(weights)[:8]}"
    _build(weights, root, name, fp16=fp16)  # an fp16 parity miss leaves an fp32-only card
    return ModelRepository(root).card(name)


@dataclass(frozen=True)
class ModelFiles:
    """The files behind a spec, whichever exist: its card (repository models and exports), weight file
    (PyTorch backends) and fp32/fp16 ONNX exports."""

    card: ModelCard | None
    weights: Path | None
    onnx: Path | None
    onnx_fp16: Path | None


def _card_of_file(path: Path) -> ModelCard | None:
    """The card of the repository folder holding ``path`` as one of its files, if it is in one."""
    from drrn.contract import REPO_CARD

    if not (path.parent / REPO_CARD).is_file():
        return None
    card = ModelCard.from_folder(path.parent)
    return card if path.name in card.files.values() else None


def resolve_files(
    spec: str, *, root: Path | None = None, export: bool = False, exports_root: Path | None = None
) -> ModelFiles:
    """:class:`ModelFiles` for ``spec``.

    ``export=True`` makes the answer a repository model (with a card), written under ``exports_root``
    (default ``artifacts/exports``) as ``<stem>-<sha8>``: a ``*.safetensors`` is exported (torch), a lone
    fp32 ``*.onnx`` is imported from its metadata; an ONNX file already inside a model folder is that model.
    Without it a path spec has only the file itself.
    """
    card = resolve_card(spec, root)
    weights: Path | None = None
    if card is None:
        path = Path(spec)
        if not path.is_file():
            raise UserError(f"model file not found: {spec}")
        weights = path if path.suffix == ".safetensors" else None
        if not export:
            return ModelFiles(None, weights, None if weights else path, None)
        if weights is not None:
            card = export_weights(path, exports_root)
        else:
            card = _card_of_file(path)
            if card is None:
                from drrn.paths import sha256_file
                from model_export.repository_build import import_onnx

                name = f"{path.stem}-{sha256_file(path)[:8]}"
                card = ModelCard.from_folder(import_onnx(path, Path(exports_root or EXPORTS_DIR), name))
    elif root is None:
        weights = weights_for(spec)
    fp16 = card.onnx_path(True)
    return ModelFiles(card, weights, card.onnx_path(False), fp16 if fp16.is_file() else None)


# Tiles per engine run when not set: batching pays on a GPU; on a CPU a run costs its pixels whatever the
# batch, and a full batch is how long a small request can wait behind a large one (BENCHMARKS.md).
DEFAULT_MAX_BATCH = {"cuda": 8, "cpu": 1}


def open_card(
    card: ModelCard,
    *,
    tile: int | None = None,
    max_batch: int | None = None,
    providers: str = "auto",
    intra_op_threads: int = 0,
    inter_op_threads: int = 0,
    graph_optimization: str = "all",
    cuda_device_id: int = 0,
    cudnn_conv_algo_search: str = "HEURISTIC",
    precision: str = "auto",
) -> OrtEngine:
    """An ONNX Runtime engine over a repository model, in ``precision``: ``auto`` = the fp16 file on CUDA
    and the card's CPU precision (int8 where it was measured worth it) on the CPU, when built; else fp32
    (:meth:`engines.repository.ModelCard.precision_for`).

    ``providers``: ``auto`` (CUDA when onnxruntime offers it), ``cpu`` or ``cuda``; ``tile`` defaults to
    the card's; ``max_batch`` None = :data:`DEFAULT_MAX_BATCH` for the provider. Raises
    :class:`engines.base.ModelNotFoundError` when the ONNX file is missing.
    """
    chosen = select_providers(providers, cuda_device_id, cudnn_conv_algo_search)
    on_cuda = chosen[0] != CPU
    path = choose_model_path(card.precision_path(card.precision_for(precision, on_cuda)))
    return OrtEngine(
        path,
        tile=tile or card.tile,
        max_batch=max_batch or DEFAULT_MAX_BATCH["cuda" if on_cuda else "cpu"],
        providers=chosen,
        intra_op_threads=intra_op_threads,
        inter_op_threads=inter_op_threads,
        graph_optimization=graph_optimization,
    )


def resolve_engine(
    spec: str,
    *,
    root: Path | None = None,
    tile: int | None = None,
    max_batch: int | None = None,
    providers: str = "cpu",
    intra_op_threads: int = 0,
    inter_op_threads: int = 0,
    graph_optimization: str = "all",
    cuda_device_id: int = 0,
    cudnn_conv_algo_search: str = "HEURISTIC",
    precision: str = "auto",
) -> Engine:
    """An :class:`engines.base.Engine` for ``spec`` (see the module docstring).

    ``tile`` defaults to the card's for a name, else to the serving default for the model's depth
    (:func:`model_export.repository_build.serving_defaults`). ``providers``, ``precision`` (a repository
    model's file: :func:`open_card`) and the ORT options apply to ONNX models; a ``*.safetensors`` runs on
    PyTorch on the CPU.
    """
    card = resolve_card(spec, root)
    if card is not None:
        return open_card(
            card,
            tile=tile,
            max_batch=max_batch,
            providers=providers,
            intra_op_threads=intra_op_threads,
            inter_op_threads=inter_op_threads,
            graph_optimization=graph_optimization,
            cuda_device_id=cuda_device_id,
            cudnn_conv_algo_search=cudnn_conv_algo_search,
            precision=precision,
        )
    path = Path(spec)
    if not path.is_file():
        raise UserError(f"model file not found: {spec}")
    if path.suffix == ".onnx":
        engine: Engine = OrtEngine(
            path,
            tile=tile or 1,  # placeholder until the depth (ONNX metadata) is known
            max_batch=max_batch or DEFAULT_MAX_BATCH["cpu"],
            providers=select_providers(providers, cuda_device_id, cudnn_conv_algo_search),
            intra_op_threads=intra_op_threads,
            inter_op_threads=inter_op_threads,
            graph_optimization=graph_optimization,
        )
    else:
        try:
            from engines.torch_engine import TorchEngine
            from model_export.weights import WeightsError
        except ImportError as exc:
            raise UserError(f"{spec}: running a weight file needs torch (the train extra)") from exc
        try:
            engine = TorchEngine(path, tile=tile or 1, max_batch=max_batch or DEFAULT_MAX_BATCH["cpu"])
        except WeightsError as exc:
            raise UserError(str(exc)) from exc
    if tile is None:
        from model_export.repository_build import serving_defaults  # plain Python, no torch

        engine.tile = serving_defaults(engine.depth)["tile"]
    return engine


def resolve_tiled(
    spec: str, *, root: Path | None = None, margin: int | None = None, **options: object
) -> tuple[Engine, int]:
    """``(engine, margin)`` for running ``spec`` tiled as the service would: a repository model at its
    card's tile and margin (overridable), a file at the serving default tile and its depth. ``options``
    are :func:`resolve_engine`'s (tile, max_batch, providers, ORT threads). Raises :class:`UserError` when
    the margin leaves no core in the tile."""
    card = resolve_card(spec, root)
    engine = open_card(card, **options) if card else resolve_engine(spec, root=root, **options)  # type: ignore[arg-type]
    if margin is None:
        margin = card.margin if card else engine.depth
    if not 0 <= 2 * margin < engine.tile:
        raise UserError(f"margin {margin} leaves no core in tile {engine.tile}: need 0 <= 2*margin < tile")
    return engine, margin
