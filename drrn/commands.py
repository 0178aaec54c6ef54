"""The ``drrn`` subcommands' handlers: ``handler(args) -> exit status``. Each imports its implementation
lazily, so ``drrn serve`` and ``drrn upscale`` with an ONNX model never import torch, and a bad argument
fails (in :mod:`drrn.cli`'s parser) before any heavy import. A user's error raises :class:`UserError`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from drrn.errors import UserError


def model_info(args: argparse.Namespace) -> int:
    from model_export.model import DRRN, DRRNConfig, count_params

    if args.weights:
        from model_export.weights import WeightsError, read_meta

        try:
            cfg = read_meta(args.weights).config
        except WeightsError as exc:
            raise UserError(str(exc)) from exc
    else:
        cfg = DRRNConfig(
            blocks=args.blocks,
            units=args.units,
            channels=args.channels,
            batch_norm=args.batch_norm,
            bias=args.bias,
            share_weights=not args.no_share,
            multi_path=not args.chained,
            rectified_skips=args.rectified_skips,
        )
    info = {
        "name": cfg.name,
        "depth": cfg.depth,
        "params": count_params(DRRN(cfg)),
        "receptive_field": cfg.receptive_field,
        "flops_per_pixel": cfg.flops_per_pixel(),
        "rectified_skips": cfg.rectified_skips,
    }
    if args.json:
        print(json.dumps(info))
    else:
        for k, v in info.items():
            print(f"{k:>16}: {v:,}" if type(v) is int else f"{k:>16}: {v}")
    return 0


def convert(args: argparse.Namespace) -> int:
    if args.source_format == "mxnet":
        from model_export.mxnet_import import convert_mxnet

        meta = convert_mxnet(args.src, args.output, symbol=args.symbol)
    else:
        from model_export.vdsr_import import convert_vdsr

        meta = convert_vdsr(args.src, args.output)
    print(f"wrote {args.output}: {meta.config.name}")
    return 0


def quantize(args: argparse.Namespace) -> int:
    from drrn.paths import datasets_dir
    from model_export.quantize import calibration_crops, quantize_int8, write_recipe

    if not Path(args.model).is_file():
        raise UserError(f"model file not found: {args.model}")
    folders = (
        [Path(d) for d in args.calib] if args.calib else [datasets_dir() / "T91", datasets_dir() / "BSD200"]
    )
    crops = calibration_crops(folders, count=args.count)
    about = f"{args.count} crops of 96x96, x2/x3/x4, seed 0, from {', '.join(f.name for f in folders)}"
    if args.recipe:
        write_recipe(args.model, args.output, args.recipe, crops, about, args.cpu_default)
        print(f"wrote {args.recipe} (cpu_default={args.cpu_default}); `drrn models build` uses it")
    else:
        quantize_int8(args.model, args.output, crops)
    print(f"wrote {args.output} (int8 QDQ, calibrated on {about})")
    return 0


def export(args: argparse.Namespace) -> int:
    from model_export.cli_support import run_export

    return run_export(args.weights, args.output, args.fp16)


def evaluate(args: argparse.Namespace) -> int:
    from evaluation.runner import run_eval_cli

    return run_eval_cli(args)


def train(args: argparse.Namespace) -> int:
    from training.cli import run_training_cli

    return run_training_cli(args)


def serve(args: argparse.Namespace) -> int:
    from service.main import serve as run_server

    run_server(host=args.host, port=args.port)
    return 0


def upscale(args: argparse.Namespace) -> int:
    if args.out_dir is None and (len(args.inputs) != 2 or args.url):
        raise UserError("give INPUT OUTPUT (one file, locally), or INPUT... -o OUTDIR [--url URL]")
    from drrn.folder_upscale import run_folder_cli  # httpx and tqdm only, until it runs locally

    if args.url:
        return run_folder_cli(args)
    from service.settings import settings_from_env

    # The service's DRRN_* settings apply; the tile only when set (else the model card's, as served).
    s = settings_from_env()
    local = {
        "limits": s.image_limits(),
        "tile": s.tile if "tile" in s.model_fields_set else None,
        "margin": s.margin,
        "max_batch": s.max_batch,
        "intra_op_threads": s.intra_op_threads,
        "inter_op_threads": s.inter_op_threads,
        "graph_optimization": s.graph_optimization,
        "root": Path(args.root) if args.root else None,
    }
    if args.out_dir is not None:
        return run_folder_cli(args, local)
    from inference.local import upscale_file

    upscale_file(args.inputs[0], args.inputs[1], args.scale, args.model, **local)
    return 0


def models(args: argparse.Namespace) -> int:
    from drrn.paths import MODELS_DIR, WEIGHTS_DIR

    root = Path(args.root or MODELS_DIR)
    if args.action == "build":
        from model_export.repository_build import build_repository

        build_repository(Path(args.weights_dir or WEIGHTS_DIR), root, progress=print)
        return 0
    from engines.repository import ModelRepository

    cards = ModelRepository(root).cards()
    if args.json:
        print(json.dumps([card.to_dict() for card in cards], indent=2))
        return 0
    print(
        f"{'name':<12} {'architecture':<24} {'depth':>5} {'params':>9} {'MFLOP/px':>8} {'tile':>4} "
        f"{'margin':>6}  files"
    )
    for k in cards:
        files = ",".join(p for p in ("fp32", "fp16") if k.onnx_path(p == "fp16").is_file())
        print(
            f"{k.name:<12} {k.architecture:<24} {k.depth:>5} {k.params:>9,} {k.mflop_per_pixel:>8.2f} "
            f"{k.tile:>4} {k.margin:>6}  {files}"
        )
    return 0


def keys(args: argparse.Namespace) -> int:
    import os

    from service.api_keys import add_key, read_keys, revoke_key

    path = args.file or os.environ.get("DRRN_API_KEYS_FILE")
    if not path:
        raise UserError("give --file PATH (or set DRRN_API_KEYS_FILE)")
    if args.action == "add":
        key = add_key(path, args.name)
        print(f"added key {args.name!r} to {path}; the key is shown only now:", file=sys.stderr)
        print(key)  # alone on stdout: KEY=$(drrn keys add NAME --file PATH)
    elif args.action == "revoke":
        revoke_key(path, args.name)
        print(f"revoked key {args.name!r} in {path}", file=sys.stderr)
    else:
        for record in read_keys(path):
            print(record.name)
    return 0


def bench(args: argparse.Namespace) -> int:
    from bench.cli import run_bench_cli

    return run_bench_cli(args)
