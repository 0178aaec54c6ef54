"""``drrn upscale IN OUT --scale S [--model M]``: one file through the service's own pipeline, no HTTP.

Same decode/limits/tiling/encode code as the service (:mod:`inference.pipeline`) and the same defaults
(:class:`service.settings.Settings`, so ``DRRN_*`` variables apply), with the engine chosen by ``--model``.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["upscale_file"]


def upscale_file(input: str, output: str, scale: float, model: str = "default") -> None:
    """Upscale the image at ``input`` by ``scale`` and write a PNG to ``output``.

    Args:
        input: path of a JPEG, PNG, WebP, BMP or TIFF file.
        output: path of the PNG to write (parent directories must exist).
        scale: factor in ``(1, max_scale]``.
        model: ``default``, a ``.onnx`` export or a ``.safetensors`` weight file.

    Raises:
        drrn.errors.UserError: (one-line message) for a missing/unreadable input, an image the pipeline
            refuses (bad scale, unsupported, corrupt, too large), a bad model or an unwritable output.
    """
    # Lazy imports: the CLI imports this module for every `drrn upscale`, and the engine may pull in torch.
    from drrn.errors import UserError
    from engines.resolver import resolve_engine
    from inference.pipeline import ImageError, parse_scale, upscale_bytes
    from service.settings import Settings

    settings = Settings()
    limits = settings.image_limits()
    try:
        value = parse_scale(str(scale), limits)
        data = Path(input).read_bytes()
    except ImageError as exc:
        raise UserError(f"--scale {scale}: {exc.detail}") from exc
    except OSError as exc:  # missing file, a directory, no permission
        raise UserError(f"cannot read {input}: {exc.strerror or exc}") from exc

    # Fail on the cheap checks before loading a model.
    engine = resolve_engine(model, tile=settings.tile, max_batch=settings.max_batch)
    try:
        margin = settings.resolve_margin(engine.depth)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    try:
        png = upscale_bytes(data, value, engine.run, limits, engine.tile, margin, engine.max_batch)
    except ImageError as exc:
        raise UserError(f"{input}: {exc.detail}") from exc
    try:
        Path(output).write_bytes(png)
    except OSError as exc:
        raise UserError(f"cannot write {output}: {exc.strerror or exc}") from exc
