"""The ``drrn`` command line: the argument parser and :func:`main`. The handlers live in
:mod:`drrn.commands`; each imports its implementation lazily, so ``drrn serve`` and ``drrn upscale`` with
an ONNX model never import torch, and a bad argument fails before any heavy import.

Errors a user can cause (missing files, bad weights, bad images) print one line to stderr and exit 2;
tracebacks are for bugs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from drrn import commands
from drrn.errors import UserError


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
    s.set_defaults(func=commands.model_info)

    s = sub.add_parser("convert", help="import foreign weights into the project's safetensors format")
    s.add_argument("--from", dest="source_format", required=True, choices=["pytorch-vdsr", "mxnet"])
    s.add_argument("src")
    s.add_argument(
        "--symbol", help="mxnet: the graph JSON (default: NAME-symbol.json beside NAME-0000.params)"
    )
    s.add_argument("-o", "--output", required=True)
    s.set_defaults(func=commands.convert)

    s = sub.add_parser("export", help="export weights to ONNX and verify parity with ONNX Runtime")
    s.add_argument("weights")
    s.add_argument("-o", "--output", required=True)
    s.add_argument("--fp16", action="store_true", help="float16 weights and math, float32 I/O")
    s.set_defaults(func=commands.export)

    s = sub.add_parser("quantize", help="int8 (static QDQ) ONNX for the CPU, calibrated on training crops")
    s.add_argument("model", help="an fp32 export, e.g. artifacts/models/fast/model.onnx")
    s.add_argument("-o", "--output", required=True)
    s.add_argument("--calib", nargs="+", help="calibration image folders (default: T91 and BSD200)")
    s.add_argument("--count", type=int, default=48, help="calibration crops (96x96, x2/x3/x4 mixed)")
    s.add_argument("--recipe", help="also write the recipe (calibration ranges) `drrn models build` reuses")
    s.add_argument(
        "--cpu-default", action="store_true", help="recipe: serve int8 on the CPU (only after measuring it)"
    )
    s.set_defaults(func=commands.quantize)

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
    s.set_defaults(func=commands.evaluate)

    s = sub.add_parser("train", help="train a DRRN with a recipe (resumable)")
    s.add_argument("--recipe", required=True, help="recipe name (training/recipes/NAME.toml) or path")
    s.add_argument("--out", required=True, help="run directory, e.g. runs/NAME")
    s.add_argument("--resume", action="store_true")
    s.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    s.add_argument("--max-minutes", type=float, default=None, help="stop cleanly after this long")
    s.add_argument("--max-steps", type=int, default=None, help="stop cleanly after this many steps")
    s.add_argument("--data", nargs="+", default=None, help="override the recipe's training folders")
    s.add_argument("--init", default=None, help="warm-start from a weight file (same config)")
    s.set_defaults(func=commands.train)

    s = sub.add_parser("serve", help="run the HTTP service (settings from DRRN_* env vars)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.set_defaults(func=commands.serve)

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
    s.set_defaults(func=commands.upscale)

    s = sub.add_parser("models", help="the model repository (artifacts/models): build it, list it")
    actions = s.add_subparsers(dest="action", required=True)
    a = actions.add_parser("build", help="export every weights/*.safetensors (skips up-to-date models)")
    a.add_argument("--weights-dir", default=None, help="weight files to build (default weights/)")
    a.add_argument("--root", default=None, help="repository folder (default artifacts/models)")
    a.set_defaults(func=commands.models)
    a = actions.add_parser("list", help="the models and their cards")
    a.add_argument("--root", default=None, help="repository folder (default artifacts/models)")
    a.add_argument("--json", action="store_true", help="the cards as JSON")
    a.set_defaults(func=commands.models)

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
        a.set_defaults(func=commands.keys)

    s = sub.add_parser("bench", help="benchmarks (engine, service, scaling); see BENCHMARKS.md")
    try:
        from bench.cli import add_bench_arguments  # argparse only: cheap
    except ModuleNotFoundError as exc:  # the serving images ship drrn without bench/
        if exc.name != "bench":
            raise
        s.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
        s.set_defaults(func=_bench_not_installed)
    else:
        add_bench_arguments(s)
        s.set_defaults(func=commands.bench)
    return p


def _bench_not_installed(_args: argparse.Namespace) -> int:
    raise UserError("the benchmarks (bench/) are not part of this install; run them from a source checkout")


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
