"""Reading an upload off the request stream without ever holding more than the byte limit in memory."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from inference import pipeline
from inference.pipeline import ImageLimits
from service.errors import ServiceError

MULTIPART_OVERHEAD = 64 * 1024  # boundaries and part headers allowed on top of max_upload_bytes


async def _limited(request: Request, cap: int, envelope: int, limits: ImageLimits) -> AsyncIterator[bytes]:
    """The request body, failing with 413 as soon as more than ``cap`` bytes have arrived."""
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > cap:
            pipeline.check_upload_size(total - envelope, limits)
        yield chunk


async def read_image(request: Request, limits: ImageLimits) -> bytes:
    """The uploaded image: multipart field ``image``, or the raw body (``image/*``, octet-stream or no type).

    Never holds more than ``max_upload_bytes`` (+ a multipart envelope) of body in memory.
    """
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    multipart = media == "multipart/form-data"
    if media and not (multipart or media.startswith("image/") or media == "application/octet-stream"):
        raise ServiceError(
            415,
            "unsupported_media_type",
            f"content type {media!r}: send the image as multipart field 'image' or as a raw body with "
            "an image/* or application/octet-stream content type",
            reason="bad_input",
        )
    envelope = MULTIPART_OVERHEAD if multipart else 0
    cap = limits.max_upload_bytes + envelope
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > cap:  # refuse before reading anything
        pipeline.check_upload_size(int(length) - envelope, limits)
    stream = _limited(request, cap, envelope, limits)
    if not multipart:
        body = bytearray()
        async for chunk in stream:
            body += chunk
        return bytes(body)
    try:
        form = await MultiPartParser(request.headers, stream, max_files=1, max_fields=8).parse()
    except MultiPartException as exc:
        raise ServiceError(
            400, "bad_multipart", f"malformed multipart body: {exc}", reason="bad_input"
        ) from exc
    try:
        upload = form.get("image")
        if not isinstance(upload, UploadFile):
            raise ServiceError(
                422, "missing_image", "multipart body has no file field named 'image'", reason="bad_input"
            )
        data = await upload.read()
        pipeline.check_upload_size(len(data), limits)
        return data
    finally:
        await form.close()
