"""The request limits an upload is checked against, and the one error type every client-caused problem
becomes (numpy- and Pillow-free: the settings and the HTTP error mapping import it without the decoders).

:class:`ImageError` carries an HTTP status, a stable code, one sentence and the limit that was hit, so the
service turns it into a JSON 4xx without knowing which check raised it.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ImageError", "ImageLimits", "check_upload_size", "limit_body"]


@dataclass(frozen=True)
class ImageLimits:
    """Request limits. Pixels are ``width * height``; ``max_scale`` bounds the scale factor."""

    max_upload_bytes: int = 20 * 2**20
    max_input_pixels: int = 16_000_000
    max_output_pixels: int = 16_000_000
    max_ensemble_output_pixels: int = 4_000_000  # ?ensemble=8 costs 8x the engine work and ~8x the tiles
    max_scale: float = 4.0


class ImageError(Exception):
    """A client-caused image problem.

    Attributes:
        status: HTTP status, 400 (malformed), 413 (too large), 415 (unsupported) or 422 (bad parameter).
        code: stable machine-readable code, e.g. ``corrupt_image``, ``input_too_large``, ``bad_scale``.
        detail: one human-readable sentence.
        limit: ``{"name": ..., "value": ...}`` of the limit that was hit, else None.
    """

    def __init__(self, status: int, code: str, detail: str, limit: dict | None = None) -> None:
        super().__init__(f"{code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.limit = limit

    def to_dict(self) -> dict:
        """``{"error": code, "detail": ..., "limit": {...}}``; ``limit`` only when a limit was hit."""
        body: dict = {"error": self.code, "detail": self.detail}
        if self.limit is not None:
            body["limit"] = dict(self.limit)
        return body


def limit_body(name: str, limits: ImageLimits) -> dict:
    """``{"name": name, "value": ...}``: the ``limit`` of an error body, with the limit's configured value."""
    return {"name": name, "value": getattr(limits, name)}


def check_upload_size(n_bytes: int, limits: ImageLimits) -> None:
    """Raise ``ImageError(413, "upload_too_large")`` if ``n_bytes`` exceeds ``max_upload_bytes``."""
    if n_bytes > limits.max_upload_bytes:
        raise ImageError(
            413,
            "upload_too_large",
            f"upload of {n_bytes} bytes exceeds the limit of {limits.max_upload_bytes} bytes",
            limit_body("max_upload_bytes", limits),
        )
