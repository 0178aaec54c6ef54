"""The try-it page over httpx's ASGI transport: served from the package with strict security headers, no
inline script or style (the CSP would block them), every asset it references present, and not counted as
an upscale request. The page's behaviour in a real browser is tests/test_web_browser.py."""

from __future__ import annotations

import asyncio
import fnmatch
import re
import tomllib
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from service.app import create_app
from service.settings import Settings
from service.web import ASSETS

ROOT = Path(__file__).resolve().parents[1]


class _Page(HTMLParser):
    """Collects what the CSP cares about: scripts, stylesheets, inline handlers and styles, ids."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[dict[str, str | None]] = []
        self.inline_script_text = ""
        self.stylesheets: list[str | None] = []
        self.inline: list[str] = []  # on*= handlers, style= attributes, <style> elements
        self.ids: set[str] = set()
        self.labels_for: set[str] = set()
        self.imgs: list[dict[str, str | None]] = []
        self.controls: list[dict[str, str | None]] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.inline += [f"{tag}[{k}]" for k in a if k.startswith("on") or k == "style"]
        if "id" in a:
            self.ids.add(a["id"] or "")
        if tag == "script":
            self.scripts.append(a)
            self._in_script = True
        elif tag == "style":
            self.inline.append("<style>")
        elif tag == "link" and a.get("rel") == "stylesheet":
            self.stylesheets.append(a.get("href"))
        elif tag == "label" and a.get("for"):
            self.labels_for.add(a["for"] or "")
        elif tag == "img":
            self.imgs.append(a)
        elif tag in ("input", "select", "textarea"):
            self.controls.append(a)

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.inline_script_text += data.strip()


async def _get(*paths: str) -> list[httpx.Response]:
    app = create_app(Settings())  # no lifespan: the page needs no model
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return [await client.get(p) for p in paths]


def test_page_is_served_with_a_strict_csp_and_nosniff() -> None:
    (page,) = asyncio.run(_get("/"))
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    directives = {d.split()[0]: d.split()[1:] for d in csp.split("; ")}
    assert directives["default-src"] == ["'none'"]
    assert directives["script-src"] == ["'self'"] and directives["style-src"] == ["'self'"]
    assert directives["connect-src"] == ["'self'"] and directives["frame-ancestors"] == ["'none'"]
    assert "unsafe" not in csp  # neither 'unsafe-inline' nor 'unsafe-eval' anywhere
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["x-request-id"]  # the access-log middleware covers the page like any route


def test_page_has_no_inline_code_and_every_asset_it_names_is_served() -> None:
    (page,) = asyncio.run(_get("/"))
    doc = _Page()
    doc.feed(page.text)
    assert doc.inline == [] and doc.inline_script_text == ""
    srcs = [s.get("src") for s in doc.scripts]
    # Relative URLs, so the page also works behind a proxy that serves it under a path prefix.
    assert srcs == ["static/app.js"] and doc.stylesheets == ["static/style.css"]
    assets = asyncio.run(_get(*srcs, *doc.stylesheets))  # type: ignore[arg-type]
    for r, kind in zip(assets, ("text/javascript", "text/css"), strict=True):
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind)
        assert r.headers["x-content-type-options"] == "nosniff" and "content-security-policy" in r.headers
    # Nothing from another origin: every URL in the page and its assets is relative to this server.
    for text in [page.text, *(r.text for r in assets)]:
        assert not re.search(r"""(src|href|url)\s*[=(]\s*["']?(https?:)?//""", text)
    # The script finds elements by id: every id it asks for exists in the page.
    wanted = set(re.findall(r'\$\("([\w-]+)"\)', assets[0].text))
    assert wanted and wanted <= doc.ids, wanted - doc.ids


def test_page_controls_are_labelled_and_images_have_alt_text() -> None:
    (page,) = asyncio.run(_get("/"))
    doc = _Page()
    doc.feed(page.text)
    visible = [c for c in doc.controls if c.get("type") not in ("radio",)]  # radios sit inside their label
    assert visible and all(c.get("id") in doc.labels_for for c in visible), visible
    assert doc.imgs and all(img.get("alt") for img in doc.imgs)


def test_unknown_static_names_are_404_json() -> None:
    for path in ("/static/../settings.py", "/static/index.html", "/static/nope.js"):
        (r,) = asyncio.run(_get(path))
        assert r.status_code == 404 and r.json()["error"] == "not_found", path


def test_page_requests_are_not_counted_as_upscale_requests() -> None:
    *_, metrics = asyncio.run(_get("/", "/static/app.js", "/static/style.css", "/metrics"))
    routes = {
        s.labels["route"]
        for f in text_string_to_metric_families(metrics.text)
        if f.name == "drrn_request_duration_seconds"
        for s in f.samples
        if s.name.endswith("_count")
    }
    assert {"/", "/static/{name}"} <= routes and "/upscale" not in routes


def test_static_files_are_package_data() -> None:
    """An installed wheel carries the page: each served file matches the package-data globs."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = config["tool"]["setuptools"]["package-data"]["service"]
    for name in ASSETS:
        assert any(fnmatch.fnmatch(f"static/{name}", g) for g in globs), name
        assert resources.files("service").joinpath("static", name).is_file()
