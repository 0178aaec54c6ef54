"""Print the serving image's requirements: the core dependencies plus the ``serve`` extra from pyproject.toml,
with every ``onnxruntime`` line dropped, or swapped for the runtime the image wants (``onnxruntime-gpu==X``).

Used by ``docker/Dockerfile`` so the images follow pyproject.toml instead of a copied list.
``onnxruntime`` and ``onnxruntime-gpu`` both install the ``onnxruntime`` module; installing both leaves
whichever came last, so the GPU image must never see the CPU requirement. Stdlib only (it runs before
anything is installed).

    python serve_requirements.py [--pyproject pyproject.toml] [--onnxruntime 'onnxruntime-gpu==1.26.0']
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def requirement_name(req: str) -> str:
    """The normalised distribution name of a PEP 508 requirement (``uvicorn[standard]>=0.30`` -> uvicorn)."""
    match = _NAME.match(req)
    if not match:
        raise ValueError(f"not a requirement: {req!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def serve_requirements(pyproject: Path, onnxruntime: str | None = None) -> list[str]:
    """Core + ``serve`` requirements of the project; every ``onnxruntime*`` entry removed, and ``onnxruntime``
    (when given) appended instead."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    reqs = list(project.get("dependencies", [])) + list(project["optional-dependencies"]["serve"])
    kept = [r for r in reqs if not requirement_name(r).startswith("onnxruntime")]
    if len(kept) == len(reqs):
        raise ValueError("the serve extra has no onnxruntime requirement to replace; update this script")
    return [*kept, onnxruntime] if onnxruntime else kept


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pyproject", type=Path, default=Path("pyproject.toml"))
    p.add_argument(
        "--onnxruntime", help="the ONNX Runtime requirement, e.g. onnxruntime-gpu==1.26.0 (default: none)"
    )
    args = p.parse_args(argv)
    if args.onnxruntime and not requirement_name(args.onnxruntime).startswith("onnxruntime"):
        p.error(f"--onnxruntime must name an onnxruntime distribution, got {args.onnxruntime!r}")
    sys.stdout.write("".join(f"{r}\n" for r in serve_requirements(args.pyproject, args.onnxruntime)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
