"""Smoke tests of ``drrn bench``: each command runs for a few iterations on the tiny model and writes JSON
with the documented fields and sane values. No timing assertions: only that numbers exist and are positive.

The service tests spawn a real ``drrn serve`` subprocess (``--spawn``) on a free loopback port.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from bench import engine as bench_engine
from bench import spawn as bench_spawn
from bench.loadgen import metrics_delta, parse_metrics
from bench.report import linear_fit, percentile
from bench.service_load import check_loopback
from bench.sweep import combinations
from drrn.cli import main
from drrn.errors import UserError

SMALL_SERVICE = ["--set", "DRRN_TILE=64", "--set", "DRRN_MAX_BATCH=4"]


@pytest.fixture(autouse=True)
def _bench_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Exports and service logs go to the test's tmp dir, not the checkout's artifacts/."""
    monkeypatch.setattr(bench_engine, "BENCH_ARTIFACTS", tmp_path / "artifacts")
    monkeypatch.setattr(bench_spawn, "LOG_DIR", tmp_path / "logs")


def _positive(x: object) -> bool:
    return isinstance(x, int | float) and math.isfinite(x) and x > 0


def test_helpers() -> None:
    assert percentile([1, 2, 3, 4], 50) == 2.5
    fit = linear_fit([1, 2, 3], [3, 5, 7])
    assert fit["a"] == pytest.approx(1) and fit["b"] == pytest.approx(2) and fit["r2"] == pytest.approx(1)
    before = parse_metrics("# HELP x\ndrrn_batch_size_tiles_sum 4.0\ndrrn_batch_size_tiles_count 2.0\n")
    after = parse_metrics(
        "drrn_batch_size_tiles_sum 16.0\ndrrn_batch_size_tiles_count 5.0\n"
        'drrn_rejections_total{reason="queue_full"} 3.0\n'
    )
    delta = metrics_delta(before, after, wall_s=1.0)
    assert delta["mean_batch_tiles"] == 4.0 and delta["server_rejections"] == {"queue_full": 3}
    assert combinations({"a": ["1", 2], "b": [3]}, {"a": 1.0, "b": 4}, "oat") == [{}, {"a": 2}, {"b": 3}]
    assert len(combinations({"a": [1, 2], "b": [3, 4]}, {}, "grid")) == 4
    check_loopback("http://127.0.0.1:8000", allow_remote=False)
    with pytest.raises(UserError):
        check_loopback("http://10.0.0.1:8000", allow_remote=False)


def test_make_bench_weights(tmp_path: Path) -> None:
    from model_export.weights import load_weights

    path = bench_engine.make_bench_weights(tmp_path / "w.safetensors", units=1, channels=4)
    _, meta = load_weights(path)
    assert (meta.config.units, meta.config.channels) == (1, 4) and meta.provenance["trained"] is False


def test_engine_quick(tiny_weights: Path, tmp_path: Path) -> None:
    out = tmp_path / "engine.json"
    assert (
        main(["bench", "engine", "--model", str(tiny_weights), "--quick", "--no-b1u25", "--json", str(out)])
        == 0
    )
    report = json.loads(out.read_text())
    assert report["schema"] == "drrn-bench-engine/1" and report["quick"] is True
    assert report["machine"]["cpu_count"] >= 1
    for peak in report["peaks"]["by_threads"].values():
        assert _positive(peak["gemm_best_gflops"]) and all(map(_positive, peak["conv_torch_gflops"].values()))
    (model,) = report["models"]
    assert model["flops_per_pixel"] == 4896 and model["onnx"] and model["onnx_fp16"]
    assert {r["backend"] for r in model["results"]} == set(bench_engine.BACKENDS)
    for r in model["results"]:
        assert r["n"] == 2 and r["ms_p90"] >= r["ms_min"] > 0
        for key in ("ms_median", "mpx_per_s", "gflops", "frac_gemm_peak", "frac_conv_peak"):
            assert _positive(r[key]), (key, r)
    diffs = model["accuracy"]["max_abs_diff"]
    assert (
        model["accuracy"]["reference"] == "torch-fp32"
        and diffs["ort-fp32"] < 1e-4
        and diffs["torch-bf16"] < 0.05
    )
    assert _positive(model["headline"]["speedup_ort_fp32_over_torch_fp32"])


def test_service_quick_spawn(tiny_onnx: Path, tmp_path: Path) -> None:
    out, plot = tmp_path / "service.json", tmp_path / "plot.png"
    argv = ["bench", "service", "--spawn", "--model", str(tiny_onnx), "--quick", "--json", str(out)]
    assert main([*argv, *SMALL_SERVICE, "--plot", str(plot)]) == 0
    report = json.loads(out.read_text())
    assert report["schema"] == "drrn-bench-service/2"
    assert report["serving"]["tile"] == 64 and report["serving"]["max_batch"] == 4
    assert [lv["concurrency"] for lv in report["levels"]] == [1, 4]
    assert len(report["request_mix"]) == 5
    for lv in report["levels"]:
        assert lv["ok"] == 4 and lv["errors"] == 0 and lv["rejected_503"] == 0
        for key in ("req_per_s", "output_mpx_per_s", "tiles_per_s"):
            assert _positive(lv[key])
        lat = lv["latency_ms"]
        # 4 samples: a p95 or p99 would only be the largest one or two
        assert lat["n"] == 4 and lat["max"] >= lat["p50"] > 0 and lat["p95"] is None and lat["p99"] is None
        assert 1 <= lv["mean_batch_tiles"] <= 4 and lv["engine_runs"] >= 1
    engine = report["engine"]
    assert _positive(engine["tiles_per_s"]) and engine["max_batch"] == 4
    assert engine["precision"] == report["model"]["precision"]
    # timed on the tile shapes the service cut the mix into, each request's tiles at their shape's cost
    mix = report["request_mix"]
    assert {tuple(s["tile_hw"]) for s in engine["shapes"]} == {tuple(r["tile_hw"]) for r in mix}
    assert engine["mix_tiles"] == sum(r["tiles"] for r in mix)
    ov = report["overhead"]
    assert _positive(ov["service_over_engine"]) and ov["saturated_levels"]
    lo, hi = ov["service_over_engine_range"]
    assert lo <= ov["service_over_engine"] <= hi
    # and each level against the engine alone timed right after it
    assert all(_positive(lv["engine_alone_tiles_per_s"]) for lv in report["levels"])
    lo, hi = ov["paired_range"]
    assert _positive(ov["paired_service_over_engine"]) and lo <= ov["paired_service_over_engine"] <= hi
    assert report["probe"]["request"] == "crop64_x2" and report["probe"]["n"] == 3
    lc, probe = report["latency_c1"], report["probe"]
    # both sides from the same alternating pairs; the overhead is the median of their differences
    assert lc["pairs"] == probe["n"] == 3 and _positive(lc["engine_ms"]) and _positive(lc["service_p50_ms"])
    assert lc["engine_ms"] == probe["engine_p50_ms"] and lc["overhead_ms"] == probe["overhead_p50_ms"]
    assert plot.read_bytes().startswith(b"\x89PNG")


def test_service_timed_level_stops_on_time(tiny_onnx: Path, tmp_path: Path) -> None:
    """A time-based level stops issuing at the window's end, lets the requests in flight finish (their
    latency counts) and waits for the service to idle."""
    out = tmp_path / "service.json"
    argv = ["bench", "service", "--spawn", "--model", str(tiny_onnx), "--json", str(out)]
    timing = ["--concurrency", "2", "--duration", "3", "--engine-seconds", "0.3"]
    assert main([*argv, *SMALL_SERVICE, *timing, "--plot", str(tmp_path / "p.png")]) == 0
    (level,) = json.loads(out.read_text())["levels"]
    assert level["wall_s"] == 3 and level["errors"] == 0 and level["ok"] >= 1
    assert 0 <= level["in_flight_at_stop"] <= 2 and level["cancelled_at_drain"] == 0
    assert level["idle_wait_s"] < 60 and level["latency_ms"]["n"] >= 1
    assert _positive(level["engine_tiles_per_s"]) and _positive(level["engine_output_mpx_per_s"])


def test_scaling_quick(tiny_onnx: Path, tmp_path: Path) -> None:
    out = tmp_path / "scaling.json"
    argv = [
        "bench",
        "scaling",
        "--model",
        str(tiny_onnx),
        "--quick",
        "--sizes",
        "0.005,0.01",
        "--json",
        str(out),
    ]
    assert main([*argv, *SMALL_SERVICE]) == 0
    report = json.loads(out.read_text())
    assert report["schema"] == "drrn-bench-scaling/2" and len(report["sizes"]) == 2
    for size in report["sizes"]:
        assert _positive(size["time_s_median"]) and _positive(size["peak_rss_mib"]) and size["tiles"] >= 1
    assert set(report["time_fit"]) == {"a", "b", "r2"}
    assert [round(r["target_mpx"], 2) for r in report["pipeline_memory"]] == [0.02, 0.08]
    for row in report["pipeline_memory"]:  # the identity engine: the pipeline's own memory
        assert _positive(row["peak_rss_mib"]) and row["tiles"] >= 1
    assert set(report["pipeline_rss_fit"]) == {"a", "b", "r2"}


def test_sweep_quick(tiny_onnx: Path, tmp_path: Path) -> None:
    out = tmp_path / "sweep.json"
    argv = [
        "bench",
        "service",
        "--spawn",
        "--sweep",
        "--model",
        str(tiny_onnx),
        "--quick",
        "--json",
        str(out),
    ]
    assert main([*argv, *SMALL_SERVICE, "--sweep-param", "max_batch=2", "--requests", "2"]) == 0
    report = json.loads(out.read_text())
    assert [r["label"] for r in report["runs"]] == ["base", "max_batch=2"]
    assert all(_positive(r["output_mpx_per_s"]) for r in report["runs"]) and report["best"]


def test_spawn_retries_a_port_taken_after_it_was_chosen(tiny_onnx: Path) -> None:
    """On a shared machine another process can bind the port free_port() picked before the child does."""
    import socket

    import httpx

    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        svc = bench_spawn.SpawnedService({"DRRN_TILE": "64", "DRRN_MAX_BATCH": "1"}, model=tiny_onnx)
        svc._use_port(taken)
        with svc:
            assert svc.port != taken
            assert httpx.get(f"{svc.url}/readyz").status_code == 200
        first_log = (bench_spawn.LOG_DIR / f"serve-{taken}.log").read_text().lower()
        assert "address already in use" in first_log


def test_cost_quick(tiny_repo: Path, tmp_path: Path) -> None:
    from bench.cost import run_cost

    report = run_cost(None, str(tmp_path / "cost.json"), quick=True, root=tiny_repo, ensembles=(8, 1))
    assert report["schema"] == "drrn-bench-cost/1" and report["input"] == "64x64 x4"
    rows = {(r["model"], r["ensemble"]): r for r in report["models"]}
    assert sorted(rows) == [("fast", 1), ("fast", 8), ("quality", 1), ("quality", 8)]  # 1 measured first
    for r in rows.values():
        assert r["seconds"] > 0 and r["computed_over_output_px"] >= 1.0 and r["tiles"] >= 1
        assert r["effective_gflops"] > 0 and r["efficiency_vs_gemm_peak"] > 0
    for model in ("fast", "quality"):
        one, eight = rows[model, 1], rows[model, 8]
        assert one["cost_vs_single"] == 1.0
        assert eight["cost_vs_single"] == pytest.approx(eight["seconds"] / one["seconds"])
    with pytest.raises(ValueError, match="ensembles"):
        run_cost(None, None, quick=True, root=tiny_repo, ensembles=(2,))
    assert json.loads((tmp_path / "cost.json").read_text())["models"][0]["model"] == "fast"


def test_margins_quick(tiny_repo: Path, tmp_path: Path) -> None:
    from PIL import Image

    from bench.margins import default_margins, run_margins

    assert default_margins(52, 256) == [52, 26, 13, 8] and default_margins(20, 128) == [20, 10, 8]
    data = tmp_path / "set"
    data.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (72, 90, 3), dtype=np.uint8)).save(data / "a.png")
    out = tmp_path / "margins.json"
    report = run_margins("fast", [str(data)], [2], margins=[6, 2], tile=32, json_out=str(out), root=tiny_repo)
    cells = {r["margin"]: r for r in report["cells"]}
    assert sorted(cells) == [2, 6] and report["depth"] == 6
    # margin = depth is exact tiling (the image is larger than a tile on both axes): no difference at all
    assert cells[6]["max_grey_levels"] == 0 and abs(cells[6]["dpsnr_db"]) < 1e-9
    assert cells[2]["max_grey_levels"] >= cells[6]["max_grey_levels"]
    assert report["recommended_margin"] in (2, 6)
    assert report["computed_over_output_px_1mpx"][6] > report["computed_over_output_px_1mpx"][2]
    assert json.loads(out.read_text())["schema"] == "drrn-bench-margins/1"


def test_tiles_quick(tiny_repo: Path, tmp_path: Path) -> None:
    """`drrn bench tiles`: the overhead grid over shapes (fit tiles stay within the issue's 1.5x at the
    real models' defaults) and a sweep row per tile size with a recommendation."""
    from bench.tiles import overhead_grid, run_tiles

    assert max(r["computed_over_output"] for r in overhead_grid(384, 20)) <= 1.5  # fast's defaults
    assert max(r["computed_over_output"] for r in overhead_grid(640, 52)) <= 1.5  # quality's
    assert max(r["computed_over_output"] for r in overhead_grid(128, 20)) > 1.5  # the old default did not
    out = tmp_path / "tiles.json"
    report = run_tiles(["fast"], str(out), quick=True, tiles=[32, 64], side=48, root=tiny_repo)
    doc = report["models"]["fast"]
    assert [r["tile"] for r in doc["sweep"]] == [32, 64] and doc["recommended_tile"] in (32, 64)
    assert all(r["s_per_output_mpx"] > 0 and r["computed_over_output"] >= 1 for r in doc["sweep"])
    assert json.loads(out.read_text())["schema"] == "drrn-bench-tiles/1"
