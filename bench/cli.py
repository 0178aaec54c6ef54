"""``drrn bench {engine,service,scaling,cost,margins,tiles,peers,soak}``: dispatch to bench modules.

- ``engine``: :func:`bench.engine.run_engine_bench` (backends x tiles x batches, peaks, headline ratio).
- ``service``: :func:`bench.service_load.run_service_bench` (closed-loop HTTP load, overhead ratio), or with
  ``--sweep`` :func:`bench.sweep.run_sweep` (one spawned service per setting combination).
- ``scaling``: :func:`bench.scaling.run_scaling` (time and peak RSS against output megapixels).
- ``cost``: :func:`bench.cost.run_cost` (a 1-Mpx output per served model, at its serving defaults).
- ``margins``: :func:`bench.margins.run_margins` (tiled vs whole-image quality against the tile margin).
- ``tiles``: :func:`bench.tiles.run_tiles` (tile-size sweep per model; tiling overhead across shapes).
- ``peers``: :func:`bench.peers.run_peers` (ours against OpenCV's dnn_superres models, same inputs).
- ``soak``: :func:`bench.soak.run_soak` (thousands of mixed requests; RSS, latency windows, pass/fail).

Nothing in ``bench`` imports this module (option-value parsing lives in :mod:`bench.options`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.options import env_pairs, float_list, int_list, model_sets, str_list
from drrn.errors import UserError


def run_bench_cli(args: argparse.Namespace) -> int:
    """Entry point of ``drrn bench``; returns the process exit code."""
    if args.target == "engine":
        from bench.engine import run_engine_bench

        run_engine_bench(
            model=args.model,
            json_out=args.json_out,
            quick=args.quick,
            b1u25=getattr(args, "b1u25", True),
            full=getattr(args, "full", False),
            tiles=int_list(getattr(args, "tiles", None)),
            batches=int_list(getattr(args, "batches", None)),
            backends=(args.backends.split(",") if getattr(args, "backends", None) else None),
            budget_s=getattr(args, "budget_s", 2.0),
            max_repeats=getattr(args, "repeats", 10),
        )
        return 0
    if args.target == "cost":
        from bench.cost import run_cost

        models = None if args.model in (None, "default") else args.model.split(",")
        ensembles = tuple(int_list(args.ensembles) or [1])
        run_cost(models, args.json_out, quick=args.quick, ensembles=ensembles)
        return 0
    if args.target == "tiles":
        from bench.tiles import run_tiles

        models = None if args.model in (None, "default") else args.model.split(",")
        run_tiles(models, args.json_out, quick=args.quick, tiles=int_list(getattr(args, "tiles", None)))
        return 0
    if args.target == "margins":
        from bench.margins import run_margins
        from drrn.paths import datasets_dir

        data = getattr(args, "data", None) or [str(datasets_dir() / n) for n in ("Set5", "Set14", "BSD100")]
        run_margins(
            model="fast" if args.model in (None, "default") else args.model,
            data=data,
            scales=int_list(getattr(args, "scales", None)) or [2, 3, 4],
            margins=int_list(getattr(args, "margins", None)),
            tile=getattr(args, "tile", None),
            json_out=args.json_out,
            quick=args.quick,
        )
        return 0
    if args.target == "peers":
        from bench.peers import run_peers

        run_peers(
            models=str_list(args.models),
            sets=str_list(args.sets),
            scales=int_list(args.scales),
            max_images=args.max_images,
            model_sets=model_sets(args.model_sets),
            json_out=args.json_out,
            plot_out=args.peers_plot,
            quick=args.quick,
            root=Path(args.root) if args.root else None,
            degradation=args.degradation,
            max_minutes=args.max_minutes,
        )
        return 0
    if args.target == "scaling":
        from bench.scaling import run_scaling

        run_scaling(
            model=args.model,
            json_out=args.json_out,
            quick=args.quick,
            megapixels=float_list(getattr(args, "sizes", None)),
            env=env_pairs(getattr(args, "set", None)),
            pipeline_megapixels=float_list(getattr(args, "pipeline_sizes", None)),
        )
        return 0
    if args.target == "service":
        if getattr(args, "sweep", False):
            from bench.sweep import run_sweep

            run_sweep(args)
            return 0
        from bench.service_load import run_service_bench

        run_service_bench(args)
        return 0
    if args.target == "soak":
        from bench.soak import run_soak

        return 0 if run_soak(args)["verdict"]["passed"] else 1
    raise UserError(f"unknown bench target {args.target!r}")


def add_bench_arguments(s: argparse.ArgumentParser) -> None:
    """The options of ``drrn bench`` (the parser lives here, beside the dispatch that reads it)."""
    s.add_argument(
        "target", choices=["engine", "service", "scaling", "cost", "margins", "tiles", "peers", "soak"]
    )
    s.add_argument("--model", default="default", help="default | b1u25 | FILE.onnx | FILE.safetensors")
    s.add_argument("--json", dest="json_out")
    s.add_argument("--quick", action="store_true", help="a few iterations only (smoke test)")
    s.add_argument("--url", default="http://127.0.0.1:8000")
    g = s.add_argument_group("engine")
    g.add_argument("--tiles", help="comma list, default 64,128,192,256 (tiles: 128..512 / 256..640)")
    g.add_argument("--batches", help="comma list, default 1,2,4,8")
    g.add_argument("--backends", help="comma list of torch-fp32,torch-bf16,ort-fp32-1t,ort-fp32,ort-fp16")
    g.add_argument("--b1u25", action=argparse.BooleanOptionalAction, default=True, help="also DRRN B1U25")
    g.add_argument("--full", action="store_true", help="full tile grid for B1U25 too (slow on a CPU)")
    g.add_argument("--budget-s", type=float, default=2.0, help="timed seconds per cell (>= 3 repeats)")
    g.add_argument("--repeats", type=int, default=10, help="most timed repeats per cell")
    g = s.add_argument_group("cost")
    g.add_argument("--ensembles", help="cost: comma list of 1 and/or 8 (default 1); 8 = ?ensemble=8")
    g = s.add_argument_group("margins")
    g.add_argument("--data", nargs="+", help="margins: dataset folders (default Set5, Set14, BSD100)")
    g.add_argument("--scales", help="margins: comma list, default 2,3,4")
    g.add_argument("--margins", help="margins: comma list, default depth, depth/2, ..., 8")
    g.add_argument("--tile", type=int, help="margins: tile side (default: the model card's)")
    g = s.add_argument_group("peers (also --scales)")
    g.add_argument("--models", help="peers: comma list, default bicubic,fast,fast-int8,quality,FSRCNN,...")
    g.add_argument("--sets", help="peers: comma list of NAME[:COUNT] or folders, default Set5,Set14,BSD100")
    g.add_argument("--max-images", type=int, help="peers: at most this many images per set")
    g.add_argument("--model-sets", action="append", metavar="MODEL=SET,SET/IMAGE", help="peers: only these")
    g.add_argument("--peers-plot", help="peers: scatter PNG (quality against speed)")
    g.add_argument("--root", help="peers: our models' repository (default artifacts/models)")
    g.add_argument("--degradation", choices=["matlab", "cv2"], default="matlab", help="peers: LR protocol")
    g.add_argument("--max-minutes", type=float, help="peers: start no new image after this many minutes")
    g = s.add_argument_group("service and scaling")
    g.add_argument("--spawn", action="store_true", help="start `drrn serve` on a free port for the run")
    g.add_argument("--set", action="append", metavar="DRRN_X=V", help="env for the spawned service(s)")
    g.add_argument("--concurrency", help="comma list, default 1,2,4,8,16,32")
    g.add_argument("--duration", type=float, default=None, help="measured seconds per concurrency level")
    g.add_argument("--requests", type=int, default=None, help="requests per level instead of --duration")
    g.add_argument("--engine-seconds", type=float, default=None, help="raw-engine timing budget")
    g.add_argument("--plot", help="latency/throughput PNG (default docs/bench/latency_throughput.png)")
    g.add_argument("--allow-remote", action="store_true", help="allow a --url that is not loopback")
    g.add_argument("--sweep", action="store_true", help="sweep service settings (spawns one per setting)")
    g.add_argument("--sweep-param", action="append", metavar="NAME=V1,V2", help="e.g. max_batch=4,8,16")
    g.add_argument("--sweep-mode", choices=["oat", "grid"], default="oat", help="one-at-a-time or product")
    g.add_argument("--sweep-concurrency", type=int, default=8)
    g.add_argument("--sizes", help="scaling: output megapixels, comma list, default 0.25,0.5,1,2")
    g.add_argument(
        "--pipeline-sizes", help="scaling: output megapixels for the pipeline alone, default 1,4,15.9"
    )
    g = s.add_argument_group("soak (also --set, --concurrency, --requests, --plot)")
    g.add_argument("--seed", type=int, default=0, help="soak: seed of the request mix")
    g.add_argument("--window", type=int, default=None, help="soak: requests per window, default 500")
    g.add_argument("--large-frac", type=float, default=0.05, help="soak: share sized up to the output limit")
    g.add_argument("--quality-frac", type=float, default=0.05, help="soak: share sent to the quality model")
    g.add_argument("--max-side", type=int, default=None, help="soak: cap on every output's long side (px)")
