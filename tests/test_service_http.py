"""The real app (lifespan, batcher, ONNX Runtime on the tiny exported model) over httpx's ASGI transport:
readiness, the upscale contract, bad requests, batching across requests, metrics and model endpoints.
Overload, deadlines, shutdown and failures are in ``test_service_lifecycle.py``; the shared harness is
``tests/service_harness.py``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.app import create_app
from service.metrics import METRIC_NAMES, series_names
from service.settings import Settings
from tests.conftest import until
from tests.service_harness import (
    MAX_BATCH,
    TILE,
    decode,
    decode_count,
    gated,
    lying_png,
    metric_samples,
    png,
    serving,
    settings,
    up,
)


def test_readyz_is_503_until_warmup_finishes(tiny_onnx: Path) -> None:
    app, engine = gated(tiny_onnx)
    engine.warmup_gate.clear()

    async def main() -> None:
        async with serving(app, wait_ready=False) as client:
            assert (await client.get("/healthz")).json() == {"status": "ok"}
            r = await client.get("/readyz")
            assert r.status_code == 503 and r.json()["error"] == "not_ready"
            r = await up(client, png(10, 10))
            assert r.status_code == 503 and r.headers["retry-after"] == "1"
            engine.warmup_gate.set()
            await until(lambda: app.state.upscaler.ready)
            assert (await client.get("/readyz")).status_code == 200
            assert (await up(client, png(10, 10))).status_code == 200
        assert not app.state.upscaler.ready  # lifespan shutdown flips readiness

    asyncio.run(main())


def test_upscale_returns_png_with_headers(tiny_repo: Path, caplog: pytest.LogCaptureFixture) -> None:
    app = create_app(settings(tiny_repo))

    async def main() -> None:
        async with serving(app) as client:
            r = await up(client, png(23, 17), headers={"x-request-id": "client-id-1"})
            assert r.status_code == 200 and r.headers["content-type"] == "image/png"
            assert decode(r.content).shape == (34, 46, 3)
            assert r.headers["x-request-id"] == "client-id-1"
            timing = r.headers["server-timing"]
            stages = [p.split(";")[0] for p in timing.split(", ")]
            assert stages == ["read", "decode", "queue", "infer", "encode", "total"]
            # Non-integer scale, multipart upload and grey input; an unsafe request id is replaced.
            files = {"image": ("x.png", png(23, 17, mode="L"), "image/png")}
            r = await client.post("/upscale?scale=2.5", files=files, headers={"x-request-id": "bad id\x7f"})
            assert r.status_code == 200 and decode(r.content).shape == (43, 58)
            assert len(r.headers["x-request-id"]) == 32 and r.headers["x-request-id"] != "bad id"
            r = await client.post(
                "/upscale?scale=3", content=png(12, 9), headers={"content-type": "application/octet-stream"}
            )
            assert r.status_code == 200 and decode(r.content).shape == (27, 36, 3)

    with caplog.at_level(logging.INFO, logger="drrn.access"):
        asyncio.run(main())
    lines = [rec.fields for rec in caplog.records if rec.name == "drrn.access"]
    first = next(f for f in lines if f["id"] == "client-id-1")
    assert first["status"] == 200 and first["input"] == "23x17" and first["output"] == "46x34"
    assert first["scale"] == "2" and first["bytes_in"] > 0 and first["bytes_out"] > 0
    stages = {"read_ms", "decode_ms", "queue_ms", "infer_ms", "encode_ms", "cpu_wait_ms", "total_ms"}
    assert stages <= first.keys() and first["tiles"] == 3  # 46x34 as 3 tiles of 24x34 (<= 32**2 px)


BAD_REQUESTS: list[tuple[str, dict[str, Any], int, str, str | None]] = [
    ("empty body", {"content": b""}, 400, "empty_body", None),
    ("truncated png", {"content": png(40, 40)[:60]}, 400, "corrupt_image", None),
    ("text file", {"content": b"hello, this is not an image\n" * 4}, 415, "unsupported_format", None),
    ("lying header", {"content": lying_png(50_000, 50_000)}, 413, "input_too_large", "max_input_pixels"),
    ("scale=0", {"scale": "0"}, 422, "bad_scale", None),
    ("scale=9", {"scale": "9"}, 422, "bad_scale", "max_scale"),
    ("scale=abc", {"scale": "abc"}, 422, "bad_scale", None),
    ("missing scale", {"scale": None}, 422, "bad_scale", None),
    (
        "over byte limit",
        {"content": b"\x89PNG" + bytes(100_001)},
        413,
        "upload_too_large",
        "max_upload_bytes",
    ),
    ("over limit, chunked", {"chunked": 150_000}, 413, "upload_too_large", "max_upload_bytes"),
    ("wrong content type", {"headers": {"content-type": "text/plain"}}, 415, "unsupported_media_type", None),
]


def test_bad_requests_get_json_errors_and_the_service_keeps_serving(tiny_repo: Path) -> None:
    app = create_app(settings(tiny_repo))
    good = png(16, 12)

    async def chunks(n: int) -> AsyncIterator[bytes]:  # no Content-Length: the limit bites while reading
        for _ in range(n // 10_000):
            yield bytes(10_000)

    async def main() -> None:
        async with serving(app) as client:
            for name, case, status, code, limit in BAD_REQUESTS:
                content = chunks(case["chunked"]) if "chunked" in case else case.get("content", good)
                r = await up(client, content, case.get("scale", "2"), headers=case.get("headers", {}))
                body = r.json()
                assert (r.status_code, body["error"]) == (status, code), (name, body)
                assert body["detail"] and body["request_id"] == r.headers["x-request-id"], name
                if limit:
                    assert body["limit"]["name"] == limit and body["limit"]["value"] > 0, name
                assert (await up(client, good)).status_code == 200, f"not serving after {name}"
            files = {"picture": ("x.png", good, "image/png")}
            r = await client.post("/upscale?scale=2", files=files)
            assert r.status_code == 422 and r.json()["error"] == "missing_image"
            r = await client.get("/nope")
            assert r.status_code == 404 and r.json()["error"] == "not_found"
            text = (await client.get("/metrics")).text
            rejected = {s.labels["reason"]: s.value for s in metric_samples(text)["drrn_rejections"]}
            assert rejected["bad_input"] == 9 and rejected["too_large"] == 3

    asyncio.run(main())


def test_concurrent_requests_share_engine_runs(tiny_onnx: Path) -> None:
    app, engine = gated(tiny_onnx, max_delay_ms=0.0)
    # Each output is one 24x20 tile: one shape, so tiles of different requests stack into one run.
    images = [png(12, 10, seed=i) for i in range(16)]

    async def main() -> None:
        async with serving(app) as client:
            batcher = app.state.upscaler.batcher
            engine.hold_next = True  # the first run holds until every other request has queued its tile
            tasks = [asyncio.create_task(up(client, img)) for img in images]
            await asyncio.to_thread(engine.run_entered.wait, 30)
            await until(lambda: batcher.queue_depth == 16 - engine.runs[0])
            engine.run_gate.set()
            concurrent = await asyncio.gather(*tasks)
            queued = 16 - engine.runs[0]  # at least 12: they leave the queue in full runs of 4
            assert engine.runs[1:] == [MAX_BATCH] * (queued // MAX_BATCH) + (
                [queued % 4] if queued % 4 else []
            )
            for img, r in zip(images, concurrent, strict=True):  # each response is its own image's
                alone = await up(client, img)
                diff = np.abs(decode(r.content).astype(int) - decode(alone.content).astype(int))
                assert diff.max() <= 1
            samples = metric_samples((await client.get("/metrics")).text)

        def count(name: str, le: str) -> float:
            return next(s.value for s in samples[name] if s.name.endswith("_bucket") and s.labels["le"] == le)

        # One tile per request, so every run of several tiles mixed several requests, as the metrics show.
        multi_tile = count("drrn_batch_size_tiles", "+Inf") - count("drrn_batch_size_tiles", "1.0")
        multi_request = count("drrn_batch_requests", "+Inf") - count("drrn_batch_requests", "1.0")
        assert multi_tile == multi_request >= 3

    asyncio.run(main())


def test_metrics_and_model_endpoints(tiny_repo: Path) -> None:
    app = create_app(settings(tiny_repo))

    async def main() -> None:
        async with serving(app) as client:
            assert (await up(client, png(30, 20))).status_code == 200
            r = await client.get("/metrics")
            model = (await client.get("/v1/model")).json()
            docs = await client.get("/docs")
            spec = (await client.get("/openapi.json")).json()
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        samples = metric_samples(r.text)
        exposed = {s.name for fam in samples.values() for s in fam if s.name.startswith("drrn_")}
        assert exposed == series_names()  # every listed metric is exported, and nothing unlisted
        assert {fam.name for fam in text_string_to_metric_families(r.text)} >= {
            n.removesuffix("_total") for n in METRIC_NAMES
        }
        assert any(s.labels.get("route") == "/upscale" for s in samples["drrn_request_duration_seconds"])
        (info,) = [s.labels for s in samples["drrn_model_info"]]
        assert info["model"] == "fast" and info["default"] == "True" and info["margin"] == "6"
        assert (
            info["provider"] == "CPUExecutionProvider" and info["tile"] == "32" and info["max_batch"] == "4"
        )

        assert model["name"] == "fast" and model["default"] is True
        assert model["depth"] == 6 and model["receptive_field"] == 13 and model["params"] > 0
        assert model["precision"] == "fp32" and model["provider"] == "CPUExecutionProvider"
        assert (
            model["serving"]["tile"] == TILE
            and model["max_batch"] == MAX_BATCH
            and isinstance(model["model_card"], dict)
        )
        assert (
            model["serving"]["margin"] == 6
            and model["serving"]["max_queue_tiles"] == Settings().max_queue_tiles
        )
        assert model["limits"]["max_upload_bytes"] == 100_000 and model["ready"] is True
        assert docs.status_code == 200 and "/upscale" in spec["paths"]

    asyncio.run(main())


def test_engine_failure_is_a_500_for_that_request_only(tiny_onnx: Path) -> None:
    app, engine = gated(tiny_onnx)

    async def main() -> None:
        async with serving(app) as client:
            engine.fail_next = True
            r = await up(client, png(16, 16))
            body = r.json()
            assert r.status_code == 500 and body["error"] == "engine_error"
            assert body["request_id"] == r.headers["x-request-id"]
            assert (await up(client, png(16, 16))).status_code == 200
            assert (await client.get("/readyz")).status_code == 200
            errors = metric_samples((await client.get("/metrics")).text)["drrn_errors"]
            assert {s.labels["kind"]: s.value for s in errors}["engine"] == 1

    asyncio.run(main())


def test_overload_deadline_and_oversized_requests(tiny_onnx: Path) -> None:
    # The queued request must outlive the refusals below, even on a loaded machine.
    app, engine = gated(tiny_onnx, max_queue_tiles=3, request_timeout_s=5.0, retry_after_s=2)

    async def main() -> None:
        async with serving(app) as client:
            batcher = app.state.upscaler.batcher
            engine.hold_next = True
            running = asyncio.create_task(up(client, png(10, 10)))  # 1 tile, holds the engine
            await asyncio.to_thread(engine.run_entered.wait, 30)
            queued = asyncio.create_task(up(client, png(40, 10)))  # 80x20 output: 2 tiles of 48x20
            await until(lambda: batcher.queue_depth == 2)
            decoded_before = decode_count(await client.get("/metrics"))
            full = await up(client, png(40, 10))
            assert full.status_code == 503 and full.headers["retry-after"] == "2"
            assert full.json()["error"] == "queue_full" and full.json()["limit"]["name"] == "max_queue_tiles"
            huge = await up(client, png(30, 20))  # 4 tiles can never fit a queue of 3
            assert huge.status_code == 413 and huge.json()["limit"] == {"name": "max_queue_tiles", "value": 3}
            # Both were refused from the image header, before any decode/bicubic/tiling work.
            assert decode_count(await client.get("/metrics")) == decoded_before
            late = await queued  # its deadline passes while the engine is held
            assert late.status_code == 504 and late.json()["limit"]["name"] == "request_timeout_s"
            engine.run_gate.set()
            assert (await running).status_code == 504
        assert engine.runs == [1]  # the expired request's tiles never ran

    asyncio.run(main())
