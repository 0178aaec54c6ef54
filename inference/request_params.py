"""Request parameters of an upscale: parsing ``scale`` and ``ensemble``, and the limits each one implies.

Every failure is an :class:`inference.image_limits.ImageError` (422) naming the limit that was hit, so the
HTTP layer, ``drrn upscale`` and the folder upscaler report bad parameters the same way.
"""

from __future__ import annotations

import math
import re

from inference.image_limits import ImageError, ImageLimits

__all__ = ["check_ensemble", "check_scale", "parse_ensemble", "parse_scale"]

# A plain decimal or scientific number; float() alone would also accept "1_5", "nan", "infinity".
_NUMBER = re.compile(r"[+]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def _bad_scale(detail: str, limits: ImageLimits | None = None) -> ImageError:
    limit = {"name": "max_scale", "value": limits.max_scale} if limits is not None else None
    return ImageError(422, "bad_scale", detail, limit)


def check_scale(value: float, limits: ImageLimits) -> float:
    """``value`` itself when it is a usable scale in ``(1, limits.max_scale]``; else 422 ``bad_scale``."""
    if math.isnan(value):
        raise _bad_scale("scale must be a number, got nan")
    if value > limits.max_scale:  # +inf (e.g. "1e400") included
        raise _bad_scale(f"scale {value:g} exceeds the limit of {limits.max_scale:g}", limits)
    if value <= 1:
        raise _bad_scale(f"scale must be greater than 1 (up to {limits.max_scale:g}), got {value:g}")
    return value


def parse_scale(raw: str | None, limits: ImageLimits) -> float:
    """Parse a scale parameter: any real number in ``(1, max_scale]`` (typically 2, 3 or 4).

    Raises:
        ImageError: 422 ``bad_scale`` when missing, not a number, NaN/inf, <= 1, or over ``max_scale``
            (then with ``limit = {"name": "max_scale", "value": ...}``).
    """
    if raw is None or not raw.strip():
        raise _bad_scale(f"the scale parameter is required (a number in (1, {limits.max_scale:g}])")
    text = raw.strip()
    if len(text) > 32 or not _NUMBER.fullmatch(text):
        raise _bad_scale(f"scale must be a number, got {text[:32]!r}")
    return check_scale(float(text), limits)


def parse_ensemble(raw: str | None, limits: ImageLimits) -> int:
    """The ``ensemble`` parameter: absent or ``1`` (one pass) or ``8`` (the dihedral self-ensemble).

    Raises:
        ImageError: 422 ``bad_ensemble`` for anything else.
    """
    if raw is None or raw.strip() == "":
        return 1
    if raw.strip() not in ("1", "8"):
        raise ImageError(422, "bad_ensemble", f"ensemble must be 1 or 8, got {raw.strip()[:16]!r}")
    return int(raw)


def check_ensemble(ensemble: int, output_size: tuple[int, int], limits: ImageLimits) -> None:
    """Refuse (422 ``output_too_large_for_ensemble``) an ensemble whose ``(width, height)`` output is over
    ``limits.max_ensemble_output_pixels``: it costs ``ensemble`` times a single pass."""
    width, height = output_size
    if ensemble > 1 and width * height > limits.max_ensemble_output_pixels:
        limit = {"name": "max_ensemble_output_pixels", "value": limits.max_ensemble_output_pixels}
        raise ImageError(
            422,
            "output_too_large_for_ensemble",
            f"an {width}x{height} output is {width * height} pixels; with ensemble={ensemble} this server "
            f"accepts at most {limits.max_ensemble_output_pixels} (it costs {ensemble}x the work)",
            limit,
        )
