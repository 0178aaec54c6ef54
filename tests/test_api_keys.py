"""API keys (``DRRN_API_KEYS_FILE``): ``drrn keys`` writes a usable 0600 file; the real app answers a missing
or wrong key with 401 + ``WWW-Authenticate`` and the right one with 200; probes (and ``/metrics`` unless
``DRRN_METRICS_REQUIRE_KEY``) stay open; a key over its quota of requests in flight gets 429 + Retry-After
(made deterministic by holding one engine run); rejections are counted by reason only; no key ever reaches
a log line; and the client and ``drrn upscale --url`` send their key to a real spawned ``drrn serve``.

The in-process tests run the real middleware, batcher and pipeline around :class:`ToneEngine` (no model
needed); the client tests use the tiny exported models of ``tests/conftest.py``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from drrn.cli import main as drrn_main
from service.api_keys import KeyFileError, KeyStore, add_key, match, read_keys, revoke_key
from service.app import create_app
from service.main import JsonFormatter
from service.settings import Settings
from tests import test_web_browser as web
from tests.fake_engines import ToneEngine
from tests.service_harness import MAX_BATCH, TILE, png, rejections, serving, settings


def new_key(capsys: pytest.CaptureFixture[str], path: Path, name: str) -> str:
    """``drrn keys add NAME --file PATH``; the key it printed (alone on stdout)."""
    capsys.readouterr()
    assert drrn_main(["keys", "add", name, "--file", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    return out.strip()


@pytest.fixture
def keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, dict[str, str]]:
    """A key file with two keys, ``ci`` and ``ops``: (path, {name: key})."""
    path = tmp_path / "secrets" / "api_keys"
    return path, {name: new_key(capsys, path, name) for name in ("ci", "ops")}


def keyed_app(path: Path, tmp_path: Path, **kw: Any) -> tuple[Any, ToneEngine]:
    engine = ToneEngine(TILE, MAX_BATCH)
    app = create_app(settings(tmp_path, api_keys_file=path, **kw), {"fast": engine})
    return app, engine


browser = web.browser  # the module-scoped headless chromium fixture (skips without chromium)


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


async def post(client: httpx.AsyncClient, headers: dict[str, str], seed: int = 0) -> httpx.Response:
    body, headers = png(12, 10, seed), {"content-type": "image/png", **headers}
    return await client.post("/upscale?scale=2", content=body, headers=headers)


def assert_error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    body = r.json()
    assert r.status_code == status and body["error"] == code, (r.status_code, r.text)
    assert set(body) == {"error", "detail", "limit", "request_id"}
    assert body["request_id"] == r.headers["x-request-id"]
    return body


# --- the key file -------------------------------------------------------------------------------------------
def test_keys_add_writes_a_0600_file_of_hashes_that_verify_only_their_key(
    keys: tuple[Path, dict[str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    path, by_name = keys
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    for key in by_name.values():
        assert len(key) >= 43 and key not in text  # 256 random bits, stored only as a hash
    assert [ln.split(":")[0] for ln in text.splitlines()] == ["ci", "ops"]
    records = read_keys(path)
    assert {name: match(records, key) for name, key in by_name.items()} == {"ci": "ci", "ops": "ops"}
    assert match(records, by_name["ci"][:-1] + ("A" if by_name["ci"][-1] != "A" else "B")) is None
    assert match(records, "") is None and match(records, "x" * 10_000) is None

    assert drrn_main(["keys", "list", "--file", str(path)]) == 0
    assert capsys.readouterr().out.split() == ["ci", "ops"]
    assert drrn_main(["keys", "add", "ci", "--file", str(path)]) == 2  # names are unique
    assert "already" in capsys.readouterr().err
    assert drrn_main(["keys", "revoke", "ci", "--file", str(path)]) == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert match(read_keys(path), by_name["ci"]) is None and match(read_keys(path), by_name["ops"]) == "ops"
    assert drrn_main(["keys", "add", "bad name", "--file", str(path)]) == 2


def test_a_running_store_notices_a_revoked_key_and_keeps_its_keys_when_the_file_breaks(
    keys: tuple[Path, dict[str, str]],
) -> None:
    path, by_name = keys
    store = KeyStore(path, recheck_s=0)
    assert store.verify(by_name["ci"]) == "ci"
    revoke_key(path, "ci")
    assert store.verify(by_name["ci"]) is None and store.verify(by_name["ops"]) == "ops"
    path.write_text("ops:not a hash\n")  # a bad edit: refuse it, keep serving the keys already loaded
    assert store.verify(by_name["ops"]) == "ops"
    path.write_text("ops:pbkdf2_sha256$1$a$b\n")  # well-formed, but no base64: the same
    assert store.verify(by_name["ops"]) == "ops"


def test_a_malformed_or_missing_key_file_stops_the_service_at_startup(tmp_path: Path) -> None:
    bad = tmp_path / "keys"
    bad.write_text("# comment\nci:md5$1$abc$def\n")
    with pytest.raises(KeyFileError, match=r"keys:2: not a NAME:pbkdf2_sha256"):
        create_app(settings(tmp_path, api_keys_file=bad), {"fast": ToneEngine(TILE, MAX_BATCH)})
    for salt, digest, why in [("a", "b" * 43, "not base64"), ("éééé", "b" * 43, "not a NAME"),
                              ("c2FsdA", "aGFzaA", "is 4 bytes, not 32")]:  # fmt: skip
        bad.write_text(f"ci:pbkdf2_sha256$1${salt}${digest}\n")
        with pytest.raises(KeyFileError, match=f"keys:1: .*{why}"):
            create_app(settings(tmp_path, api_keys_file=bad), {"fast": ToneEngine(TILE, MAX_BATCH)})
    with pytest.raises(KeyFileError, match="cannot read"):
        create_app(settings(tmp_path, api_keys_file=tmp_path / "nope"), {"fast": ToneEngine(TILE, MAX_BATCH)})
    assert Settings(api_keys_file="").api_keys_file is None  # DRRN_API_KEYS_FILE= : auth off


# --- the service --------------------------------------------------------------------------------------------
def test_missing_or_wrong_key_is_401_the_right_key_is_served_and_probes_stay_open(
    keys: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    path, by_name = keys
    app, _ = keyed_app(path, tmp_path)

    async def main() -> None:
        async with serving(app) as client:
            r = await post(client, {})
            body = assert_error(r, 401, "unauthorized")
            assert (
                r.headers["www-authenticate"].startswith("Bearer")
                and "Authorization: Bearer" in body["detail"]
            )
            assert r.headers["connection"] == "close"  # the unread upload is not left on the connection
            r = await post(client, bearer(by_name["ci"] + "x"))
            assert_error(r, 401, "unauthorized")
            assert r.headers["www-authenticate"] == 'Bearer realm="drrn", error="invalid_token"'
            assert_error(await post(client, {"authorization": f"Basic {by_name['ci']}"}), 401, "unauthorized")
            for p in ("/v1/models", "/v1/model", "/nope"):  # unknown paths too: nothing to learn by probing
                assert_error(await client.get(p), 401, "unauthorized")

            for name, key in by_name.items():
                r = await post(client, bearer(key))
                assert r.status_code == 200 and r.headers["content-type"] == "image/png", name
            r = await client.get("/v1/models", headers={"authorization": f"bearer {by_name['ops']}"})
            assert r.status_code == 200 and r.json()["default"] == "fast"
            assert_error(await client.get("/nope", headers=bearer(by_name["ci"])), 404, "not_found")

            for p in ("/healthz", "/readyz", "/metrics", "/", "/static/app.js", "/static/style.css"):
                assert (await client.get(p)).status_code == 200, p
            assert (await client.get("/openapi.json")).status_code == 200
            counts = rejections(await client.get("/metrics"))
            assert counts["unauthorized"] == 6 and counts["quota"] == 0

    asyncio.run(main())


def test_metrics_require_the_key_when_configured_and_probes_stay_open(
    keys: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    path, by_name = keys
    app, _ = keyed_app(path, tmp_path, metrics_require_key=True)

    async def main() -> None:
        async with serving(app) as client:
            r = await client.get("/metrics")
            assert_error(r, 401, "unauthorized")
            assert r.headers["www-authenticate"].startswith("Bearer")
            assert (await client.get("/healthz")).status_code == 200
            assert (await client.get("/readyz")).status_code == 200
            r = await client.get("/metrics", headers=bearer(by_name["ops"]))
            assert r.status_code == 200 and rejections(r)["unauthorized"] == 1

    asyncio.run(main())


def test_the_openapi_document_declares_the_key_where_it_is_required(
    keys: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    path, _ = keys

    def security(app: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        doc = app.openapi()
        required = {
            f"{method.upper()} {route}": op.get("security")
            for route, ops in doc["paths"].items()
            for method, op in ops.items()
        }
        return doc.get("components", {}).get("securitySchemes", {}), required

    schemes, required = security(keyed_app(path, tmp_path, metrics_require_key=True)[0])
    assert schemes["apiKey"]["type"] == "http" and schemes["apiKey"]["scheme"] == "bearer"
    assert required["POST /upscale"] == required["GET /v1/models"] == [{"apiKey": []}]
    assert required["GET /metrics"] == [{"apiKey": []}]
    assert required["GET /healthz"] is None and required["GET /readyz"] is None
    _, required = security(keyed_app(path, tmp_path)[0])
    assert required["GET /metrics"] is None  # open unless DRRN_METRICS_REQUIRE_KEY
    schemes, required = security(create_app(settings(tmp_path), {"fast": ToneEngine(TILE, MAX_BATCH)}))
    assert schemes == {} and required["POST /upscale"] is None  # no keys: nothing asks for one


def test_a_key_over_its_inflight_quota_gets_429_with_retry_after_and_other_keys_do_not(
    keys: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    path, by_name = keys
    app, engine = keyed_app(path, tmp_path, api_key_max_inflight=1, retry_after_s=3)

    async def main() -> None:
        try:
            async with serving(app) as client:
                engine.hang = True
                held = asyncio.create_task(post(client, bearer(by_name["ci"])))
                await asyncio.to_thread(engine.hanging.wait, 30)  # ci's one slot is now taken
                r = await post(client, bearer(by_name["ci"]), seed=1)
                body = assert_error(r, 429, "quota_exceeded")
                assert r.headers["retry-after"] == "3"
                assert body["limit"] == {"name": "api_key_max_inflight", "value": 1}
                assert_error(
                    await client.get("/v1/models", headers=bearer(by_name["ci"])), 429, "quota_exceeded"
                )
                assert (await client.get("/v1/models", headers=bearer(by_name["ops"]))).status_code == 200
                engine.release.set()
                assert (await held).status_code == 200
                assert (await post(client, bearer(by_name["ci"]), seed=2)).status_code == 200  # slot freed
                metrics = (await client.get("/metrics")).text
                assert rejections_by_reason(metrics) == {"quota": 2.0}
                for key in by_name.values():  # counted by reason only: no key, no key name, in any label
                    assert key not in metrics
                assert '"ci"' not in metrics and '"ops"' not in metrics
        finally:
            engine.release.set()

    asyncio.run(main())


def rejections_by_reason(metrics: str) -> dict[str, float]:
    """The non-zero rejection counts, checking that ``reason`` and ``model`` are the only labels."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics):
        for s in family.samples:
            if family.name == "drrn_rejections" and s.name.endswith("_total"):
                assert set(s.labels) == {"reason", "model"}
                if s.value:
                    assert s.labels["model"] == ""  # refused before any model was chosen
                    out[s.labels["reason"]] = out.get(s.labels["reason"], 0) + s.value
    return out


def test_keys_never_appear_in_the_logs(
    keys: tuple[Path, dict[str, str]], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path, by_name = keys
    app, _ = keyed_app(path, tmp_path)
    right, wrong = by_name["ci"], by_name["ci"][:-3] + "zzz"

    async def main() -> None:
        async with serving(app) as client:
            assert (await post(client, bearer(right))).status_code == 200
            assert (await post(client, bearer(wrong))).status_code == 401
            assert (await client.get("/v1/models", headers=bearer(right))).status_code == 200
            assert (await client.get("/v1/models", headers=bearer(wrong))).status_code == 401

    with caplog.at_level(logging.DEBUG):
        asyncio.run(main())
    formatter = JsonFormatter()
    lines = [formatter.format(record) for record in caplog.records]  # what `drrn serve` writes to stderr
    access = [json.loads(ln) for ln in lines if '"drrn.access"' in ln]
    assert [(a["path"], a["status"], a.get("key")) for a in access] == [
        ("/upscale", 200, "ci"),
        ("/upscale", 401, None),
        ("/v1/models", 200, "ci"),
        ("/v1/models", 401, None),
    ]
    for text in (*lines, caplog.text):
        assert right not in text and wrong not in text and right[:12] not in text


# --- the client and the CLI, against a spawned `drrn serve` ---------------------------------------------
@pytest.fixture(scope="module")
def keyed_server(tiny_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, str]]:
    """A real ``drrn serve`` requiring keys (DEBUG logs); (the service, its one key ``client``)."""
    from bench.spawn import SpawnedService
    from tests.test_client import server_env

    path = tmp_path_factory.mktemp("keys") / "api_keys"
    key = add_key(path, "client")
    env = server_env(tiny_repo, DRRN_API_KEYS_FILE=str(path), DRRN_LOG_LEVEL="DEBUG")
    with SpawnedService(env) as svc:
        yield svc, key


@pytest.mark.slow
@pytest.mark.skipif(not (web.CHROMIUM.is_file() and web.CHROMEDRIVER.is_file()), reason="no chromium")
def test_the_page_asks_for_a_key_on_401_and_sends_it(browser: Any, keyed_server: Any, tmp_path: Path) -> None:
    svc, key = keyed_server
    browser.get(svc.url + "/")
    assert web.wait_state(browser, "key", "ready") == "key"  # /v1/models answered 401
    form, field = browser.find_element("id", "key-form"), browser.find_element("id", "api-key")
    assert form.is_displayed() and field.get_attribute("type") == "password"
    field.send_keys(key[:-2] + "zz")
    browser.find_element("id", "key-go").click()
    web.wait_until(lambda: "did not accept" in web.text_of(browser, "key-info"), "the wrong key is refused")
    assert browser.execute_script("return document.body.dataset.state") == "key"
    field.send_keys(key)
    browser.find_element("id", "key-go").click()
    web.wait_state(browser, "ready")
    assert not form.is_displayed() and field.get_attribute("value") == ""  # not left in the page
    assert browser.execute_script("return sessionStorage.getItem('drrn-api-key')") == key
    assert browser.execute_script("return localStorage.length") == 0
    src = web.png_file(tmp_path / "a.png", (24, 16))
    assert web.upload(browser, src) == "done"
    browser.get(svc.url + "/")  # the same tab: the key is still there, nothing asked
    assert web.wait_state(browser, "key", "ready") == "ready"
    browser.execute_script("sessionStorage.clear()")


@pytest.mark.slow
def test_the_client_and_the_cli_send_their_key_and_a_refused_key_is_final(
    keyed_server: tuple[Any, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from drrn.client import AsyncClient, Client, Unauthorized

    svc, key = keyed_server
    with Client(svc.url, api_key=key) as client:
        assert client.models()["default"] == "fast"
        assert client.upscale(png(20, 16), 2)[:8] == b"\x89PNG\r\n\x1a\n"
    for bad in (None, key[:-2] + "zz"):
        events: list = []
        with (
            Client(svc.url, api_key=bad, on_retry=events.append) as client,
            pytest.raises(Unauthorized) as err,
        ):
            client.upscale(png(20, 16), 2)
        assert err.value.status == 401 and err.value.attempts == 1 and events == []  # never retried

    async def async_calls() -> None:
        async with AsyncClient(svc.url, api_key=key) as client:
            assert (await client.upscale(png(20, 16), 2))[:4] == b"\x89PNG"
        async with AsyncClient(svc.url) as client:
            with pytest.raises(Unauthorized):
                await client.models()

    asyncio.run(async_calls())

    src = tmp_path / "in"
    src.mkdir()
    (src / "a.png").write_bytes(png(20, 16))
    base = ["upscale", str(src), "-o", str(tmp_path / "out"), "--url", svc.url, "--scale", "2"]
    monkeypatch.delenv("DRRN_API_KEY", raising=False)
    assert drrn_main(base) == 2  # refused once, up front, not once per file
    assert drrn_main([*base, "--api-key", key]) == 0 and (tmp_path / "out" / "a.png").is_file()
    monkeypatch.setenv("DRRN_API_KEY", key)
    assert drrn_main([*base[:3], str(tmp_path / "out2"), *base[4:]]) == 0
    assert (tmp_path / "out2" / "a.png").is_file()

    log = svc.log_path.read_text()  # the real server's log at DEBUG (uvicorn's lines too; flushed per line)
    assert '"status": 401' in log and '"key": "client"' in log
    assert key not in log and key[:-2] + "zz" not in log and key[:12] not in log
