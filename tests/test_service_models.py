"""Serving v2: the model repository behind the HTTP API. Two real tiny models ("fast", "quality") built by
``model_export.repository_build`` into a repository, served by the real app over httpx's ASGI transport."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import threading
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from engines.ort_engine import OrtEngine
from service.app import create_app
from service.lifecycle import ModelLoadError
from service.settings import Settings
from tests.service_harness import png, serving


def _settings(repo: Path, **kw: Any) -> Settings:
    base = dict(model_dir=repo, providers="cpu", intra_op_threads=1, max_batch=2, cpu_workers=1)
    return Settings(**{**base, **kw})


def _samples(text: str) -> dict[str, list]:
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


async def _post(client: httpx.AsyncClient, query: str, body: bytes) -> httpx.Response:
    return await client.post(f"/upscale?{query}", content=body, headers={"content-type": "image/png"})


def test_models_are_listed_with_cost_quality_and_serving(tiny_repo: Path) -> None:
    async def main() -> None:
        app = create_app(_settings(tiny_repo))
        async with serving(app) as client:
            listing = (await client.get("/v1/models")).json()
            assert listing["default"] == "fast"
            by_name = {m["name"]: m for m in listing["models"]}
            assert sorted(by_name) == ["fast", "quality"]
            fast, quality = by_name["fast"], by_name["quality"]
            assert fast["default"] is True and quality["default"] is False
            for m in (fast, quality):
                card = json.loads((tiny_repo / m["name"] / "card.json").read_text())
                assert m["serving"]["tile"] == card["serving"]["tile"]
                assert m["serving"]["margin"] == card["serving"]["margin"] == card["depth"]
                assert m["mflop_per_pixel"] == card["mflop_per_pixel"] and m["flops_per_pixel"] > 0
                assert "quality" in m and "provenance" in m and m["limits"]["max_scale"] == 4.0
            assert quality["depth"] > fast["depth"]
            assert (await client.get("/v1/models/quality")).json() == quality
            assert (await client.get("/v1/model")).json() == fast  # the alias older clients use

    asyncio.run(main())


def test_upscale_with_each_model_and_an_unknown_one(tiny_repo: Path) -> None:
    async def main() -> None:
        app = create_app(_settings(tiny_repo))
        body = png(24, 20, seed=3)
        async with serving(app) as client:
            outs = {}
            for name in ("fast", "quality"):
                r = await _post(client, f"scale=2&model={name}", body)
                assert r.status_code == 200 and r.headers["content-type"] == "image/png"
                assert Image.open(io.BytesIO(r.content)).size == (48, 40)
                outs[name] = np.asarray(Image.open(io.BytesIO(r.content)))
            default = await _post(client, "scale=2", body)
            assert np.array_equal(np.asarray(Image.open(io.BytesIO(default.content))), outs["fast"])
            assert not np.array_equal(outs["fast"], outs["quality"])  # two different networks ran

            bad = await _post(client, "scale=2&model=nope", body)
            assert bad.status_code == 422
            err = bad.json()
            assert err["error"] == "unknown_model" and err["limit"] == {
                "name": "model",
                "value": ["fast", "quality"],
            }
            assert "fast, quality" in err["detail"]
            missing = await client.get("/v1/models/nope")
            assert missing.status_code == 422 and missing.json()["error"] == "unknown_model"
            assert "model_path" not in (await client.get("/v1/models/fast")).json()  # no server paths

            samples = _samples((await client.get("/metrics")).text)
            runs = {
                s.labels["model"]: s.value
                for s in samples["drrn_batch_size_tiles"]
                if s.name.endswith("_count")
            }
            assert runs["fast"] >= 2 and runs["quality"] >= 1
            rejected = [s for s in samples["drrn_rejections"] if s.name.endswith("_total") and s.value]
            assert [(s.labels["reason"], s.labels["model"], s.value) for s in rejected] == [
                ("bad_input", "", 1)
            ]
            info = {s.labels["model"]: s.labels for s in samples["drrn_model_info"]}
            assert sorted(info) == ["fast", "quality"] and info["fast"]["default"] == "True"
            durations = {
                s.labels["model"]
                for s in samples["drrn_request_duration_seconds"]
                if s.labels["route"] == "/upscale"
            }
            assert durations == {"fast", "quality", ""}

    asyncio.run(main())


def test_every_model_is_warm_before_ready(tiny_repo: Path) -> None:
    async def main() -> None:
        gate = threading.Event()

        class HeldWarmup(OrtEngine):
            def warmup(self) -> None:
                assert gate.wait(30)
                super().warmup()

        fast = OrtEngine(tiny_repo / "fast" / "model.onnx", 32, 2, intra_op_threads=1)
        quality = HeldWarmup(tiny_repo / "quality" / "model.onnx", 32, 2, intra_op_threads=1)
        app = create_app(_settings(tiny_repo), engines={"fast": fast, "quality": quality})
        async with serving(app, wait_ready=False) as client:
            from tests.conftest import until

            await until(lambda: app.state.upscaler.models and "fast" in app.state.upscaler.models)
            assert (await client.get("/readyz")).status_code == 503
            r = await _post(client, "scale=2&model=fast", png(8, 8))
            assert r.status_code == 503 and r.json()["error"] == "not_ready" and "Retry-After" in r.headers
            gate.set()
            await until(lambda: app.state.upscaler.ready)
            assert (await client.get("/readyz")).status_code == 200

    asyncio.run(main())


def test_a_model_that_fails_to_load_fails_startup_naming_it(tiny_repo: Path, tmp_path: Path) -> None:
    async def main() -> None:
        repo = tmp_path / "repo"
        shutil.copytree(tiny_repo, repo)
        (repo / "quality" / "model.onnx").write_bytes(b"not an onnx file")
        app = create_app(_settings(repo))
        with pytest.raises(ModelLoadError, match="model 'quality'") as info:
            async with app.router.lifespan_context(app):
                pass
        assert "\n" not in str(info.value)

    asyncio.run(main())


def test_unknown_default_model_fails_startup(tiny_repo: Path) -> None:
    app = create_app(_settings(tiny_repo, default_model="huge"))

    async def main() -> None:
        async with app.router.lifespan_context(app):
            pass

    with pytest.raises(Exception, match="huge"):
        asyncio.run(main())


def test_ensemble_is_a_request_option_with_its_own_limit(tiny_repo: Path) -> None:
    async def main() -> None:
        app = create_app(_settings(tiny_repo, max_ensemble_output_pixels=48 * 40))
        body = png(24, 20, seed=5)
        async with serving(app) as client:
            one = await _post(client, "scale=2&model=quality", body)
            eight = await _post(client, "scale=2&model=quality&ensemble=8", body)
            assert one.status_code == eight.status_code == 200
            assert Image.open(io.BytesIO(eight.content)).size == (48, 40)
            assert one.content != eight.content
            samples = _samples((await client.get("/metrics")).text)
            tiles = {
                s.labels["model"]: s.value for s in samples["drrn_request_tiles"] if s.name.endswith("_sum")
            }
            assert tiles == {"quality": 9.0}  # 1 tile plain + 8 ensembled (one per transform)
            bad = await _post(client, "scale=2&ensemble=3", body)
            assert bad.status_code == 422 and bad.json()["error"] == "bad_ensemble"
            big = await _post(client, "scale=2.5&ensemble=8", body)
            assert big.status_code == 422 and big.json()["limit"]["name"] == "max_ensemble_output_pixels"
            limits = (await client.get("/v1/model")).json()["limits"]
            assert limits["max_ensemble_output_pixels"] == 48 * 40

    asyncio.run(main())


@pytest.mark.parametrize(
    "command", [["serve", "--port", "1"], ["upscale", "in.png", "out.png", "--scale", "2"]]
)
def test_a_bad_setting_is_one_line_naming_it(
    command: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before any port is bound or file read: exit 2 and the variable's name, not a pydantic traceback."""
    from drrn.cli import main

    monkeypatch.setenv("DRRN_TILE", "abc")
    assert main(command) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"drrn {command[0]}: error: invalid DRRN_* setting:") and "tile" in err
    assert err.count("\n") == 1
