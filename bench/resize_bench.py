"""Time imaging.imresize (MATLAB bicubic) against Pillow's bicubic on a 1024x768 image, x2.

Run:  python -m bench.resize_bench  (or python bench/resize_bench.py)  [--repeat 5] [--scale 2]

Prints a markdown table with the best-of-N wall time of each variant. Pillow is shown for scale only:
it is not MATLAB-compatible at the borders (see imaging/resize.py).
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable

import numpy as np
from PIL import Image

from imaging.resize import imresize, resize_weights


def best_of(fn: Callable[[], object], repeat: int) -> float:
    """Best wall time in seconds over ``repeat`` calls (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--height", type=int, default=768)
    parser.add_argument("--scale", type=float, default=2.0)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    base = rng.random((args.height, args.width))
    out_w, out_h = math.ceil(args.width * args.scale), math.ceil(args.height * args.scale)
    img64 = base.astype(np.float64)
    img32 = base.astype(np.float32)
    pil_f = Image.fromarray(img32, mode="F")
    pil_l = Image.fromarray((base * 255).astype(np.uint8), mode="L")

    rows = [
        ("imaging.imresize float64", lambda: imresize(img64, args.scale)),
        ("imaging.imresize float32", lambda: imresize(img32, args.scale)),
        ("PIL bicubic float32 (mode F)", lambda: pil_f.resize((out_w, out_h), Image.Resampling.BICUBIC)),
        ("PIL bicubic uint8 (mode L)", lambda: pil_l.resize((out_w, out_h), Image.Resampling.BICUBIC)),
    ]

    def uncached_weights() -> None:
        # What the lru_cache saves per call: building both axes' weight tables from scratch.
        resize_weights.cache_clear()
        resize_weights(args.height, math.ceil(args.height * args.scale), args.scale)
        resize_weights(args.width, math.ceil(args.width * args.scale), args.scale)

    print(f"{args.width}x{args.height} (WxH), single channel, x{args.scale:g}, best of {args.repeat}\n")
    print("| variant | time (ms) |")
    print("|---|---:|")
    for name, fn in rows:
        print(f"| {name} | {best_of(fn, args.repeat) * 1e3:.1f} |")
    print(f"| resize_weights, both axes, uncached | {best_of(uncached_weights, args.repeat) * 1e3:.1f} |")


if __name__ == "__main__":
    main()
