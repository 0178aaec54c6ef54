"""``drrn upscale IN OUT --scale S [--model M]``: one file through the service's own pipeline, no HTTP.

Same decode/limits/tiling/encode code as the service (:mod:`inference.pipeline`), with the engine chosen by
``--model`` through :mod:`engines.resolver`. A repository model runs at its card's tile and margin, like the
service; the caller (``drrn upscale``, which reads the service's ``DRRN_*`` settings) may override them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from inference.pipeline import ImageLimits

__all__ = ["upscale_file"]


def upscale_file(
    input: str,
    output: str,
    scale: float,
    model: str = "default",
    *,
    limits: ImageLimits | None = None,
    tile: int | None = None,
    margin: int | None = None,
    max_batch: int = 8,
    intra_op_threads: int = 0,
    inter_op_threads: int = 0,
    graph_optimization: str = "all",
    root: Path | None = None,
) -> None:
    """Upscale the image at ``input`` by ``scale`` and write a PNG to ``output``.

    Args:
        input: path of a JPEG, PNG, WebP, BMP or TIFF file.
        output: path of the PNG to write (parent directories must exist).
        scale: factor in ``(1, limits.max_scale]``.
        model: a repository model name (``default`` = ``fast``), a ``.onnx`` export or a ``.safetensors``
            weight file.
        limits: upload/pixel/scale limits (default: :class:`~inference.pipeline.ImageLimits` defaults).
        tile, margin: tile side and context margin; None = the card's (else the serving default tile and
            the model depth).
        max_batch, intra_op_threads, inter_op_threads, graph_optimization: engine options (ONNX on CPU).
        root: the model repository (default ``artifacts/models``).

    Raises:
        drrn.errors.UserError: (one-line message) for a missing/unreadable input, an image the pipeline
            refuses (bad scale, unsupported, corrupt, too large), a bad model or an unwritable output.
    """
    # Lazy imports: the CLI imports this module for every `drrn upscale`, and the engine may pull in torch.
    from drrn.errors import UserError
    from engines.resolver import resolve_tiled
    from inference.pipeline import ImageError, ImageLimits, upscale_bytes
    from inference.request_params import parse_scale

    limits = limits or ImageLimits()
    try:
        value = parse_scale(str(scale), limits)
        data = Path(input).read_bytes()
    except ImageError as exc:
        raise UserError(f"--scale {scale}: {exc.detail}") from exc
    except OSError as exc:  # missing file, a directory, no permission
        raise UserError(f"cannot read {input}: {exc.strerror or exc}") from exc

    # Fail on the cheap checks before loading a model.
    options = {
        "tile": tile,
        "max_batch": max_batch,
        "providers": "cpu",
        "intra_op_threads": intra_op_threads,
        "inter_op_threads": inter_op_threads,
        "graph_optimization": graph_optimization,
    }
    engine, margin = resolve_tiled(model, root=root, margin=margin, **options)
    try:
        png = upscale_bytes(data, value, engine.run, limits, engine.tile, margin, engine.max_batch)
    except ImageError as exc:
        raise UserError(f"{input}: {exc.detail}") from exc
    try:
        Path(output).write_bytes(png)
    except OSError as exc:
        raise UserError(f"cannot write {output}: {exc.strerror or exc}") from exc
