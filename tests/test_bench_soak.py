"""``drrn bench soak``, short: 300 mixed requests at concurrency 8 against a spawned service serving the tiny
two-model repository. Asserts what the soak checks, minus its relative timing and memory criteria (which
need thousands of requests): the JSON's structure, no 5xx but 503s (each with ``Retry-After``), every
request answered or deliberately aborted, every malformed input refused with a 4xx, and the service's
gauges back at 0 after the aborts. No timed assertions.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import engine as bench_engine
from bench import spawn as bench_spawn
from bench.soak_traffic import ABORT_KINDS, FORMAT_MODES, MALFORMED_FRAC, make_request
from drrn.cli import main


@pytest.fixture(autouse=True)
def _bench_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench_engine, "BENCH_ARTIFACTS", tmp_path / "artifacts")
    monkeypatch.setattr(bench_spawn, "LOG_DIR", tmp_path / "logs")


def test_request_mix_is_seeded_and_within_limits() -> None:
    limits = {"max_output_pixels": 4_000_000}
    mix = {"large_frac": 0.5, "quality_frac": 0.2, "max_side": None}
    reqs = [make_request(i, 7, ["fast", "quality"], limits, mix) for i in range(200)]
    assert [r.body for r in reqs[:20]] == [
        make_request(i, 7, ["fast", "quality"], limits, mix).body for i in range(20)
    ]
    valid = [r for r in reqs if r.kind == "valid"]
    assert all(max(r.out_w, r.out_h) >= 16 // 4 and r.out_w * r.out_h <= 4_000_000 for r in valid)
    assert all(1.5 <= r.scale <= 4 for r in valid)
    assert all(max(r.out_w, r.out_h) <= 64 + 4 for r in valid if r.model == "quality")
    assert max(r.out_w * r.out_h for r in valid) > 256**2  # the large share reaches past the small range
    assert {r.kind for r in reqs} == {"valid", "malformed", "abort"}
    assert sum(r.kind == "malformed" for r in reqs) < 4 * MALFORMED_FRAC * len(reqs)


def test_soak_short(tiny_repo: Path, tmp_path: Path) -> None:
    out, plot = tmp_path / "soak.json", tmp_path / "soak.png"
    argv = ["bench", "soak", "--requests", "300", "--concurrency", "8", "--window", "100"]
    service = ["--set", f"DRRN_MODEL_DIR={tiny_repo}", "--set", "DRRN_TILE=64", "--max-side", "256"]
    rc = main([*argv, *service, "--json", str(out), "--plot", str(plot)])
    report = json.loads(out.read_text())
    assert report["schema"] == "drrn-bench-soak/1" and rc == (0 if report["verdict"]["passed"] else 1)
    assert report["models"] == ["fast", "quality"] and report["load"]["requests"] == 300
    assert [w["requests"] for w in report["windows"]] == [[0, 100], [100, 200], [200, 300]]
    v = report["verdict"]
    # every request: an answer (200, 4xx, 503) or a deliberate abort; no 5xx but 503, no lost request
    assert sum(v["statuses"].values()) == 300
    assert all(k == "aborted" or k == "200" or k.startswith("4") or k == "503" for k in v["statuses"])
    assert set(v["statuses_by_kind"]["abort"]) == {"aborted"}
    assert all(k.startswith("4") for k in v["statuses_by_kind"]["malformed"])
    for name in ("server_errors_5xx", "503_without_retry_after", "no_answer", "wrong_output_size",
                 "valid_image_refused_4xx", "malformed_not_4xx", "gauges_back_to_zero"):  # fmt: skip
        assert v["checks"][name]["ok"], (name, v["checks"][name], report["failures"])
    assert {"rss_growth", "p99_last_over_second_window"} <= set(v["checks"])
    assert v["deadline_engine_seconds"] is not None and v["failed_indices"] == []
    sent = report["sent"]["by_kind_detail"]
    assert {f"valid:{f}/{m}" for f, modes in FORMAT_MODES.items() for m in modes} <= set(sent)
    assert any(k.startswith("abort:") for k in sent) and set(report["sent"]["by_model"]) == {
        "fast",
        "quality",
    }
    assert all(k.split(":")[1] in ABORT_KINDS for k in sent if k.startswith("abort:"))
    assert report["rss_samples"] and all(kib > 0 for _, kib, _ in report["rss_samples"])
    assert all(w["ok"] > 0 and w["rss_median_mib"] > 0 for w in report["windows"])
    assert plot.read_bytes().startswith(b"\x89PNG")
