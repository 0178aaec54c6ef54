"""The try-it page: ``GET /`` and its three static assets, shipped in the package (``service/static``).

Plain HTML, CSS and JavaScript with no build step and nothing fetched from elsewhere, so it works offline.
The page talks to the same origin only (``/v1/models``, ``/upscale``). Every response here carries a strict
Content-Security-Policy (no inline script or style, no ``eval``; images may be ``blob:`` URLs made by the
page) and ``X-Content-Type-Options: nosniff``. Files are read when asked for, never at import.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from fastapi import APIRouter
from fastapi.responses import Response

from service.errors import ServiceError

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' blob: data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidate: a redeployed server must not run an old app.js
}
# The only files served; anything else under /static is a 404 (no directory walking).
ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}

router = APIRouter(include_in_schema=False)


@cache
def asset(name: str) -> bytes:
    """The bytes of ``service/static/<name>`` (read once, on first request)."""
    return resources.files("service").joinpath("static", name).read_bytes()


def _serve(name: str) -> Response:
    return Response(asset(name), media_type=ASSETS[name], headers=SECURITY_HEADERS)


@router.get("/")
async def page() -> Response:
    return _serve("index.html")


@router.get("/static/{name}")
async def static(name: str) -> Response:
    if name not in ASSETS or name == "index.html":
        raise ServiceError(404, "not_found", f"no static file {name[:64]!r}")
    return _serve(name)
