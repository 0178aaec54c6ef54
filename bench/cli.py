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
        run_cost(models, args.json_out, quick=args.quick)
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
