"""The try-it page in a real browser: Debian's headless chromium, driven by Selenium through Debian's
chromedriver, against a real spawned ``drrn serve``, at a desktop size and at a 390-px phone width.

Nothing downloads a browser: both binaries are given by path (Selenium Manager is never asked); without
them (``make deploy-tools`` installs them as root) the tests skip and say so. The server serves the two
tiny real models of ``tests/conftest.py`` ("fast", "quality"), so every request is quick on 2 cores.

``DRRN_WEB_SCREENSHOT=docs/img/web.png`` makes the Set5 test serve the real repository models instead
(``artifacts/models``, built when missing) and save a screenshot of the result there (the README's).
"""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from bench.spawn import SpawnedService

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
SCREENSHOT = os.environ.get("DRRN_WEB_SCREENSHOT")
VIEWPORTS = {"desktop": None, "phone": {"width": 390, "height": 844, "deviceScaleFactor": 3, "mobile": True}}
# Headless, as root in CI (no sandbox), and nothing that phones home (updates, sync, component downloads).
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-dev-shm-usage",
    "--disable-gpu",
    "--no-first-run",
    "--disable-extensions",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1000",
)
WAIT_S = 60.0  # only a cap that turns a hang into a failure; nothing asserts on elapsed time

pytestmark = pytest.mark.skipif(
    not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()),
    reason=f"{CHROMIUM} or {CHROMEDRIVER} missing (Debian chromium, chromium-driver: make deploy-tools)",
)


@pytest.fixture(scope="module")
def server(tiny_repo: Path) -> Iterator[SpawnedService]:
    if SCREENSHOT:  # the picture in the README shows the real models' cost and quality
        from bench.spawn import serve_model_path

        model_dir = serve_model_path("fast").parent.parent
        serve_model_path("quality")
    else:
        model_dir = tiny_repo
    env = {"DRRN_MODEL_DIR": str(model_dir), "DRRN_DEFAULT_MODEL": "fast", "DRRN_LOG_LEVEL": "INFO"}
    env |= {"DRRN_MODELS": "fast,quality", "DRRN_PROVIDERS": "cpu", "DRRN_INTRA_OP_THREADS": "1"}
    with SpawnedService(env) as svc:
        yield svc


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(params=list(VIEWPORTS))
def page(request: pytest.FixtureRequest, browser, server: SpawnedService, tmp_path: Path):
    """The page loaded at one viewport, models listed (``data-state=ready``), downloads going to
    ``tmp_path/downloads``; fails the test if the browser logged an error it was not told to expect."""
    metrics = VIEWPORTS[request.param]
    if metrics:
        browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    else:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    browser.execute_cdp_cmd(
        "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
    )
    browser.get(server.url + "/")
    wait_state(browser, "ready")
    if metrics:
        assert browser.execute_script("return window.innerWidth") == metrics["width"]
    browser.downloads, browser.viewport, browser.expected_errors = downloads, request.param, []
    yield browser
    errors = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    unexpected = [m for m in errors if not any(x in m for x in browser.expected_errors)]
    assert unexpected == [], unexpected


def wait_until(cond, what: str):
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


def wait_state(driver, *states: str) -> str:
    read = "return document.body.dataset.state"
    return wait_until(lambda: (s := driver.execute_script(read)) in states and s, f"page state in {states}")


def text_of(driver, element_id: str) -> str:
    return driver.find_element("id", element_id).text


def png_file(path: Path, size: tuple[int, int], seed: int = 0) -> Path:
    """A real RGB photo-like PNG (smooth gradient plus noise), width != height to catch swapped axes."""
    w, h = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (w + h)], axis=-1)
    pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def upload(driver, path: Path, model: str | None = None) -> str:
    """Choose ``path`` in the file input (and ``model``), press Upscale; the final page state."""
    from selenium.webdriver.support.select import Select

    driver.find_element("id", "file").send_keys(str(path))
    wait_until(lambda: path.name in text_of(driver, "file-info"), "the chosen file is shown")
    if model:
        Select(driver.find_element("id", "model")).select_by_value(model)
    if driver.find_element("id", "go").is_enabled():
        driver.find_element("id", "go").click()
    return wait_state(driver, "done", "error")


def api_png(server: SpawnedService, path: Path, query: str) -> bytes:
    r = httpx.post(f"{server.url}/upscale?{query}", content=path.read_bytes(), timeout=60)
    assert r.status_code == 200, r.text
    return r.content


def downloaded(driver, name: str) -> bytes:
    """Click the download link; the bytes of the file the browser saved as ``name``."""
    driver.find_element("id", "download").click()
    target = driver.downloads / name
    wait_until(lambda: target.is_file() and not list(driver.downloads.glob("*.crdownload")), f"{name} saved")
    return target.read_bytes()


def upscale_requests(driver) -> list[str]:
    script = (
        "return performance.getEntriesByType('resource').map(e => e.name).filter(n => n.includes('/upscale'))"
    )
    return driver.execute_script(script)


def assert_labelled(driver) -> None:
    """Every control on show has an accessible name (the browser's own computation) and every image on
    show has alt text."""
    controls = [e for e in driver.find_elements("css selector", "input, select, button") if e.is_displayed()]
    assert len(controls) >= 5
    for el in [*controls, *driver.find_elements("id", "file")]:  # the file input is visually hidden
        assert el.accessible_name.strip(), el.get_attribute("outerHTML")
    for img in driver.find_elements("tag name", "img"):
        assert not img.is_displayed() or img.accessible_name.strip(), img.get_attribute("outerHTML")


def check_result(
    driver, server: SpawnedService, src: Path, scale: int, model: str, name: str | None = None
) -> bytes:
    """The shown result is exactly ``scale``× the input, and its download is the API's PNG for the same
    request, saved as ``name`` (default ``<stem>_x<scale>_<model>.png``)."""
    w, h = Image.open(src).size
    natural = driver.execute_script("const i = arguments[0]; return [i.naturalWidth, i.naturalHeight]",
                                    driver.find_element("id", "after"))  # fmt: skip
    assert natural == [scale * w, scale * h]
    expected = api_png(server, src, f"scale={scale}&model={model}")
    assert downloaded(driver, name or f"{src.stem}_x{scale}_{model}.png") == expected
    timings = [th.text for th in driver.find_elements("css selector", "#timings thead th[scope=col]")]
    assert {"decode", "infer", "encode", "total"} <= set(timings), timings
    ms = [float(td.text) for td in driver.find_elements("css selector", "#timings tbody td")]
    assert len(ms) == len(timings) and all(v >= 0 for v in ms)
    return expected


def test_page_loads_without_console_errors_and_is_accessible(page) -> None:
    from selenium.webdriver.support.select import Select

    options = [o.get_attribute("value") for o in Select(page.find_element("id", "model")).options]
    assert options == ["fast", "quality"] and "MFLOP/px" in text_of(page, "model")
    assert "megapixels" in text_of(page, "limits")
    assert page.find_element("id", "ensemble-row").is_displayed()  # the server offers ensemble=8
    assert_labelled(page)
    # Keyboard: Tab from the top reaches the file chooser first, and it shows a focus ring on its zone.
    page.find_element("tag name", "body").send_keys("\ue004")  # Tab
    assert page.switch_to.active_element.get_attribute("id") == "file"
    ring = page.execute_script("return getComputedStyle(document.getElementById('drop')).outlineStyle")
    assert ring == "solid"
    # Usable at phone width: nothing wider than the viewport.
    assert page.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")


def test_upscale_x2_shows_the_result_and_downloads_the_api_bytes(page, server, tmp_path: Path) -> None:
    src = png_file(tmp_path / "gradient photo.png", (96, 64))
    assert upload(page, src) == "done"
    png = check_result(page, server, src, 2, "fast", name="gradient_photo_x2_fast.png")
    assert Image.open(io.BytesIO(png)).size == (192, 128)
    assert upscale_requests(page)[-1].endswith("/upscale?scale=2&model=fast")
    assert page.find_element("id", "go").is_enabled()  # the busy state ended
    assert_labelled(page)  # the result's controls and images too
    assert page.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")


def test_upscale_a_set5_image_at_x2(page, server, shared: Path, tmp_path: Path) -> None:
    from selenium.webdriver.support.select import Select

    src = shared / "datasets" / "Set5" / "butterfly.png"
    assert upload(page, src) == "done"
    check_result(page, server, src, 2, "fast")
    if SCREENSHOT and page.viewport == "desktop":  # the whole page at 1:1, comparison at actual pixels
        size = {"width": 1280, "height": 1080, "deviceScaleFactor": 1, "mobile": False}
        page.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", size)
        Select(page.find_element("id", "zoom")).select_by_value("1")
        page.execute_script("document.activeElement.blur(); window.scrollTo(0, 0)")
        Path(SCREENSHOT).parent.mkdir(parents=True, exist_ok=True)
        page.save_screenshot(SCREENSHOT)


def test_switching_model_sends_it(page, server, tmp_path: Path) -> None:
    src = png_file(tmp_path / "pic.png", (40, 56), seed=1)
    assert upload(page, src, model="quality") == "done"
    assert upscale_requests(page)[-1].endswith("model=quality")
    png = check_result(page, server, src, 2, "quality")
    assert png != api_png(server, src, "scale=2&model=fast")  # a different model ran
    access = [
        json.loads(line) for line in server.log_path.read_text().splitlines() if '"drrn.access"' in line
    ]
    assert any(a["path"] == "/upscale" and a.get("model") == "quality" and a["status"] == 200 for a in access)

    # The x8 self-ensemble option is sent too, and its result is the API's for ensemble=8.
    sent = len(upscale_requests(page))
    page.find_element("id", "ensemble").click()
    page.find_element("id", "go").click()
    wait_until(lambda: len(upscale_requests(page)) > sent, "a second request")
    assert wait_state(page, "done", "error") == "done"
    assert upscale_requests(page)[-1].endswith("model=quality&ensemble=8")
    expected = api_png(server, src, "scale=2&model=quality&ensemble=8")
    assert downloaded(page, "pic_x2_quality_ensemble8.png") == expected != png


def test_errors_are_shown_in_plain_words(page, tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not an image\n")
    page.expected_errors.append("status of 415")  # chromium logs the failed fetch itself
    assert upload(page, text) == "error"
    message = text_of(page, "error")
    assert "The server cannot read this file: not a recognised image; send" in message
    assert "Request id: " in message and "Traceback" not in message
    assert not page.find_element("id", "result").is_displayed()

    # Over the 16-megapixel input limit: refused in the browser, before any upload.
    big = tmp_path / "big.png"
    Image.new("L", (4100, 4000), 128).save(big)
    sent = len(upscale_requests(page))
    assert upload(page, big) == "error"
    assert text_of(page, "error") == "The image is 4100×4000; this server accepts at most 16 megapixels."
    assert len(upscale_requests(page)) == sent

    # The browser cannot decode TIFF, so the server decides: its 413 body becomes the same plain words.
    tiff = tmp_path / "big.tif"
    Image.new("L", (4100, 4000), 128).save(tiff, compression="tiff_adobe_deflate")
    page.expected_errors.append("status of 413")
    assert upload(page, tiff) == "error"
    assert text_of(page, "error").startswith(
        "The image is too large; this server accepts at most 16 megapixels."
    )
