"""The published API: its OpenAPI document is complete, and a live ``drrn serve`` conforms to it.

The live part runs Schemathesis the way a new user would, its CLI against ``/openapi.json`` of a spawned
service on the shipped ``fast`` model: per operation, the document's examples, the coverage phase
(boundary values, missing required parameters and bodies) and the fuzzing phase (random positive and
negative data, bounded by ``--max-examples``). For ``/upscale`` it sends tiny real PNG/JPEG/WebP/GIF files
as ``image/*`` bodies as well as random bytes and multipart forms, so the 200 path runs too. Each
response must be no 5xx, a documented status, a documented content type, with the documented headers
and a body valid against the schema. Fixed seed: the same cases on every run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.spawn import SpawnedService
from drrn.paths import ARTIFACTS, DEFAULT_WEIGHTS
from inference.batch_types import (
    BacklogError,
    DeadlineExceededError,
    DeadlineUnreachableError,
    EngineError,
    QueueFullError,
    RequestTooLargeError,
    ShuttingDownError,
)
from inference.pipeline import ImageError
from inference.upscaler_types import NotReadyError, OverloadedError, StageDeadlineError, UploadTimeoutError
from service.app import create_app
from service.errors import ServiceError, to_service_error
from service.openapi import ErrorBody
from service.settings import Settings

pytest.importorskip("schemathesis")

CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
)
MAX_EXAMPLES = 60  # the fuzzing phase's budget per operation; about 40 s in all on 2 CPU cores
ERROR_REF = "#/components/schemas/ErrorBody"


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    return create_app(Settings()).openapi()


def _responses(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            for status, response in op["responses"].items():
                yield f"{method.upper()} {path}", status, response


def test_every_error_response_is_documented_with_the_error_body(spec: dict[str, Any]) -> None:
    errors = [(op, status, r) for op, status, r in _responses(spec) if int(status) >= 400]
    assert len(errors) >= 12
    for op, status, r in errors:
        assert r["content"]["application/json"]["schema"] == {"$ref": ERROR_REF}, (op, status)
    for op, status, r in _responses(spec):
        assert r["headers"]["X-Request-ID"]["required"], (op, status)
    body = spec["components"]["schemas"]["ErrorBody"]
    assert set(body["required"]) == {"error", "detail", "limit", "request_id"}


def test_upscale_documents_its_bodies_statuses_and_a_required_scale(spec: dict[str, Any]) -> None:
    """Regression: ``scale`` was documented as optional, yet a request without it gets 422 ``bad_scale``.
    It is now required in the document (and the behaviour is unchanged: see the live test below)."""
    op = spec["paths"]["/upscale"]["post"]
    params = {p["name"]: p for p in op["parameters"]}
    assert params["scale"]["required"] is True
    assert (
        params["scale"]["schema"]["type"] == "number" and params["scale"]["schema"]["exclusiveMinimum"] == 1
    )
    assert not params["model"]["required"] and not params["ensemble"]["required"]
    assert set(op["requestBody"]["content"]) == {"image/*", "application/octet-stream", "multipart/form-data"}
    assert op["requestBody"]["content"]["multipart/form-data"]["schema"]["required"] == ["image"]
    assert set(op["responses"]) == {
        "200",
        "400",
        "401",
        "408",
        "413",
        "415",
        "422",
        "429",
        "500",
        "503",
        "504",
    }
    assert set(op["responses"]["200"]["content"]) == {"image/png"}
    assert op["responses"]["503"]["headers"]["Retry-After"]["required"]
    metrics = spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert set(metrics) == {"text/plain"}
    assert set(spec["paths"]["/v1/models/{name}"]["get"]["responses"]) == {"200", "404", "422", "503"}


@pytest.mark.parametrize(
    "exc",
    [
        ImageError(400, "corrupt_image", "x"),
        ImageError(413, "input_too_large", "x"),
        ImageError(415, "unsupported_format", "x"),
        ImageError(422, "bad_scale", "x"),
        QueueFullError(10, 5, 8, 1.0),
        RequestTooLargeError(10, 8),
        DeadlineExceededError("late"),
        StageDeadlineError("decode", "rid"),
        ShuttingDownError("bye"),
        EngineError("boom", "rid"),
        NotReadyError("not_ready", "warming up"),
        OverloadedError(4),
        ServiceError(415, "unsupported_media_type", "x"),
        ServiceError(400, "bad_multipart", "x"),
        ServiceError(422, "missing_image", "x"),
        DeadlineUnreachableError(40, 45.0, 30.0),
        BacklogError(4, 35.0, 30.0, 5),
        UploadTimeoutError(20.0),
        ServiceError(401, "unauthorized", "x"),
        ServiceError(429, "quota_exceeded", "x"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_every_status_the_error_mapping_produces_is_documented_for_upscale(
    spec: dict[str, Any], exc: Exception
) -> None:
    """A new domain error mapped to a new status must be added to ``service.openapi`` too. (499, the
    client went away, is only logged: no client ever reads it.)"""
    status = to_service_error(exc, request_timeout_s=30.0, retry_after_s=1).status
    assert str(status) in spec["paths"]["/upscale"]["post"]["responses"]


@pytest.fixture(scope="module")
def live_service() -> Iterator[SpawnedService]:
    if not DEFAULT_WEIGHTS.is_file():
        pytest.skip(f"shipped weights {DEFAULT_WEIGHTS} not present")
    from bench.spawn import serve_model_path

    # Small output limits: no fuzzed request can cost more than a fraction of a second of engine time.
    env = {"DRRN_MAX_OUTPUT_PIXELS": "65536", "DRRN_MAX_ENSEMBLE_OUTPUT_PIXELS": "16384"}
    with SpawnedService(env, model=Path(serve_model_path("fast"))) as svc:
        yield svc


def test_missing_scale_and_a_slashed_model_name_get_their_documented_errors(
    live_service: SpawnedService,
) -> None:
    png_1x1 = bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010800000000"
        "3a7e9b550000000a49444154789c63600000000200014827b4d70000000049454e44ae426082"
    )
    r = httpx.post(f"{live_service.url}/upscale", content=png_1x1, headers={"content-type": "image/png"})
    assert r.status_code == 422
    body = ErrorBody.model_validate(r.json())
    assert body.error == "bad_scale" and body.request_id == r.headers["x-request-id"]
    ok = httpx.post(
        f"{live_service.url}/upscale?scale=2", content=png_1x1, headers={"content-type": "image/png"}
    )
    assert ok.status_code == 200 and ok.content.startswith(b"\x89PNG")
    # A model name with a slash (encoded) matches no route: the documented 404, with the error body.
    slashed = httpx.get(f"{live_service.url}/v1/models/a%2Fb", timeout=10)
    assert slashed.status_code == 404 and ErrorBody.model_validate(slashed.json()).error == "not_found"


def test_live_service_conforms_to_its_openapi_document(live_service: SpawnedService, tmp_path: Path) -> None:
    report_path = tmp_path / "schemathesis.json"
    cmd = [
        *(sys.executable, "-m", "schemathesis.cli", "run", f"{live_service.url}/openapi.json"),
        *("--checks", ",".join(CHECKS), "--phases", "examples,coverage,fuzzing", "--mode", "all"),
        *("--max-examples", str(MAX_EXAMPLES), "--seed", "15", "--workers", "1"),
        *("--request-timeout", "60", "--report", "json", "--report-json-path", str(report_path)),
    ]
    # cwd: Schemathesis and Hypothesis keep their files (example database) out of the checkout.
    run = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-2000:]
    report = json.loads(report_path.read_text())
    spec = httpx.get(f"{live_service.url}/openapi.json", timeout=10).json()
    n_operations = sum(len(ops) for ops in spec["paths"].values())
    assert report["operations"]["tested"] == report["operations"]["total"] == n_operations
    assert report["test_cases"]["with_failures"] == 0 and report["test_cases"]["errored"] == 0
    assert not report["failures"] and not report["errors"]
    cases = {
        op: sum(sum(v for v in counts.values()) for counts in phases.values())
        for op, phases in report["valid_rates"].items()
    }
    assert cases["POST /upscale"] >= MAX_EXAMPLES and cases["GET /v1/models/{name}"] >= 10
    # The record (operations x cases) for the closing note; artifacts/ is not committed.
    out = ARTIFACTS / "test_api_schema.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = {"generated": report["test_cases"]["generated"], "cases_by_operation": cases}
    out.write_text(json.dumps({**summary, "max_examples": MAX_EXAMPLES, "seconds": report["running_time"]}))
    assert httpx.get(f"{live_service.url}/healthz", timeout=10).status_code == 200
