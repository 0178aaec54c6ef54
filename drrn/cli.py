"""The ``drrn`` command line. Each subcommand imports its implementation lazily, so ``drrn serve`` and
``drrn upscale`` with an ONNX model never import torch, and a bad argument fails before any heavy import.

Errors a user can cause (missing files, bad weights, bad images) print one line to stderr and exit 2;
tracebacks are for bugs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from drrn.errors import UserError


def _model_info(args: argparse.Namespace) -> int:
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


def _convert(args: argparse.Namespace) -> int:
    if args.source_format == "mxnet":
        from model_export.mxnet_import import convert_mxnet

        meta = convert_mxnet(args.src, args.output, symbol=args.symbol)
    else:
        from model_export.vdsr_import import convert_vdsr

        meta = convert_vdsr(args.src, args.output)
    print(f"wrote {args.output}: {meta.config.name}")
    return 0


def _quantize(args: argparse.Namespace) -> int:
    from pathlib import Path

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


def _export(args: argparse.Namespace) -> int:
    from model_export.cli_support import run_export

    return run_export(args.weights, args.output, args.fp16)


def _eval(args: argparse.Namespace) -> int:
    from evaluation.runner import run_eval_cli

    return run_eval_cli(args)


def _train(args: argparse.Namespace) -> int:
    from training.cli import run_training_cli

    return run_training_cli(args)


def _serve(args: argparse.Namespace) -> int:
    from service.main import serve

    serve(host=args.host, port=args.port)
    return 0


def _upscale(args: argparse.Namespace) -> int:
    if args.out_dir is None and (len(args.inputs) != 2 or args.url):
        raise UserError("give INPUT OUTPUT (one file, locally), or INPUT... -o OUTDIR [--url URL]")
    from drrn.folder_upscale import run_folder_cli  # httpx and tqdm only, until it runs locally

    if args.url:
        return run_folder_cli(args)
    from service.settings import Settings

    # The service's DRRN_* settings apply; the tile only when set (else the model card's, as served).
    try:
        s = Settings()
    except ValueError as exc:  # pydantic's ValidationError: a bad DRRN_* variable
        raise UserError(f"invalid DRRN_* setting: {exc}".replace("\n", " ")) from exc
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


def _models(args: argparse.Namespace) -> int:
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


def _keys(args: argparse.Namespace) -> int:
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


def _bench(args: argparse.Namespace) -> int:
    from bench.cli import run_bench_cli

    return run_bench_cli(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="drrn", description="DRRN super-resolution: train, export, serve.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("model-info", help="depth, parameter count and receptive field of a config")
    s.add_argument("weights", nargs="?", help="read the config from this weight file instead of flags")
    s.add_argument("--blocks", "-B", type=int, default=1)
    s.add_argument("--units", "-U", type=int, default=9)
    s.add_argument("--channels", "-C", type=int, default=128)
    s.add_argument("--batch-norm", action="store_true")
    s.add_argument("--bias", action="store_true")
    s.add_argument("--no-share", action="store_true", help="DRRN_NS: no weight sharing between units")
    s.add_argument("--chained", action="store_true", help="DRRN_C: skip from the previous unit, not h0")
    s.add_argument(
        "--rectified-skips", action="store_true", help="skips carry ReLU(x), ReLU(h0) (in-place ReLU nets)"
    )
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_model_info)

    s = sub.add_parser("convert", help="import foreign weights into the project's safetensors format")
    s.add_argument("--from", dest="source_format", required=True, choices=["pytorch-vdsr", "mxnet"])
    s.add_argument("src")
    s.add_argument(
        "--symbol", help="mxnet: the graph JSON (default: NAME-symbol.json beside NAME-0000.params)"
    )
    s.add_argument("-o", "--output", required=True)
    s.set_defaults(func=_convert)

    s = sub.add_parser("export", help="export weights to ONNX and verify parity with ONNX Runtime")
    s.add_argument("weights")
    s.add_argument("-o", "--output", required=True)
    s.add_argument("--fp16", action="store_true", help="float16 weights and math, float32 I/O")
    s.set_defaults(func=_export)

    s = sub.add_parser("quantize", help="int8 (static QDQ) ONNX for the CPU, calibrated on training crops")
    s.add_argument("model", help="an fp32 export, e.g. artifacts/models/fast/model.onnx")
    s.add_argument("-o", "--output", required=True)
    s.add_argument("--calib", nargs="+", help="calibration image folders (default: T91 and BSD200)")
    s.add_argument("--count", type=int, default=48, help="calibration crops (96x96, x2/x3/x4 mixed)")
    s.add_argument("--recipe", help="also write the recipe (calibration ranges) `drrn models build` reuses")
    s.add_argument(
        "--cpu-default", action="store_true", help="recipe: serve int8 on the CPU (only after measuring it)"
    )
    s.set_defaults(func=_quantize)

    s = sub.add_parser("eval", help="PSNR/SSIM under the DRRN (MATLAB) protocol")
    s.add_argument(
        "--model", required=True, help="bicubic | NAME (default = fast) | FILE.safetensors | FILE.onnx"
    )
    s.add_argument("--data", nargs="+", required=True, help="one or more image folders")
    s.add_argument("--scales", nargs="+", type=int, default=[2, 3, 4])
    s.add_argument("--json", dest="json_out", help="write results JSON here")
    s.add_argument("--save-images", help="write the super-resolved Y images here")
    s.add_argument("--tile", type=int, default=None, help="tile side (default: the model card's)")
    s.add_argument("--margin", type=int, default=None, help="tile margin (default: the card's, else depth)")
    s.add_argument("--root", default=None, help="model repository for NAME (default artifacts/models)")
    s.add_argument("--ensemble", type=int, default=1, help="1, or 8: average the 8 flips/rotations (8x cost)")
    s.add_argument(
        "--precision",
        choices=["auto", "fp32", "fp16", "int8"],
        default="auto",
        help="a repository model's file (default auto: what the service runs on the CPU)",
    )
    s.add_argument(
        "--journal",
        help="append each image's score to this file; rerun with it to resume (skips recorded images)",
    )
    s.set_defaults(func=_eval)

    s = sub.add_parser("train", help="train a DRRN with a recipe (resumable)")
    s.add_argument("--recipe", required=True, help="recipe name (training/recipes/NAME.toml) or path")
    s.add_argument("--out", required=True, help="run directory, e.g. runs/NAME")
    s.add_argument("--resume", action="store_true")
    s.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    s.add_argument("--max-minutes", type=float, default=None, help="stop cleanly after this long")
    s.add_argument("--max-steps", type=int, default=None, help="stop cleanly after this many steps")
    s.add_argument("--data", nargs="+", default=None, help="override the recipe's training folders")
    s.add_argument("--init", default=None, help="warm-start from a weight file (same config)")
    s.set_defaults(func=_train)

    s = sub.add_parser("serve", help="run the HTTP service (settings from DRRN_* env vars)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.set_defaults(func=_serve)

    s = sub.add_parser(
        "upscale",
        help="upscale images: IN OUT (one file, locally), or IN... -o OUTDIR [--url URL] (files, folders)",
    )
    s.add_argument("inputs", nargs="+", metavar="INPUT", help="IN OUT, or image files and folders with -o")
    s.add_argument("-o", "--out-dir", help="write OUTDIR/<relative path>.png; existing outputs are skipped")
    s.add_argument("--url", help="send the images to this server or load balancer (else: run locally)")
    s.add_argument("--jobs", type=int, default=8, help="--url: concurrent requests (default 8)")
    s.add_argument(
        "--api-key",
        default=None,
        help="--url: the server's API key (default: $DRRN_API_KEY, which keeps it out of `ps`)",
    )
    s.add_argument("--scale", type=float, required=True)
    s.add_argument("--model", default="default", help="NAME (default = fast) | FILE.onnx | FILE.safetensors")
    s.add_argument("--root", default=None, help="model repository for NAME (default artifacts/models)")
    s.set_defaults(func=_upscale)

    s = sub.add_parser("models", help="the model repository (artifacts/models): build it, list it")
    actions = s.add_subparsers(dest="action", required=True)
    a = actions.add_parser("build", help="export every weights/*.safetensors (skips up-to-date models)")
    a.add_argument("--weights-dir", default=None, help="weight files to build (default weights/)")
    a.add_argument("--root", default=None, help="repository folder (default artifacts/models)")
    a.set_defaults(func=_models)
    a = actions.add_parser("list", help="the models and their cards")
    a.add_argument("--root", default=None, help="repository folder (default artifacts/models)")
    a.add_argument("--json", action="store_true", help="the cards as JSON")
    a.set_defaults(func=_models)

    s = sub.add_parser("keys", help="API keys (DRRN_API_KEYS_FILE): add one, list the names, revoke one")
    actions = s.add_subparsers(dest="action", required=True)
    for action, about in (
        ("add", "make a random key, print it once, append its salted hash (file created with mode 0600)"),
        ("list", "the names of the keys in the file"),
        ("revoke", "remove a key's line (a running service notices within seconds)"),
    ):
        a = actions.add_parser(action, help=about)
        if action != "list":
            a.add_argument("name", help="the key's name (shown in the access log; never the key)")
        a.add_argument("--file", help="the key file (default: $DRRN_API_KEYS_FILE)")
        a.set_defaults(func=_keys)

    s = sub.add_parser("bench", help="benchmarks (engine, service, scaling); see BENCHMARKS.md")
    from bench.cli import add_bench_arguments  # argparse only: cheap

    add_bench_arguments(s)
    s.set_defaults(func=_bench)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except UserError as exc:
        print(f"drrn {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
