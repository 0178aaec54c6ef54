"""Option values of ``drrn bench``, parsed from their command-line text.

Shared by :mod:`bench.cli` (which dispatches) and the bench modules that take the parsed
:class:`argparse.Namespace` (:mod:`bench.service_load`, :mod:`bench.sweep`), so that none of them imports
:mod:`bench.cli`: the bench package stays free of import cycles (checked by ``lint-imports``).
"""

from __future__ import annotations

from drrn.errors import UserError


def int_list(text: str | None) -> list[int] | None:
    """``"64,128"`` -> ``[64, 128]``; None stays None."""
    if text is None:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise UserError(f"expected a comma-separated list of integers, got {text!r}") from exc


def float_list(text: str | None) -> list[float] | None:
    """``"0.25,1"`` -> ``[0.25, 1.0]``; None stays None."""
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise UserError(f"expected a comma-separated list of numbers, got {text!r}") from exc


def env_pairs(items: list[str] | None) -> dict[str, str]:
    """``["DRRN_TILE=96", ...]`` -> ``{"DRRN_TILE": "96"}`` (keys must be ``DRRN_*``)."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.upper().startswith("DRRN_"):
            raise UserError(f"--set expects DRRN_NAME=VALUE, got {item!r}")
        out[key.upper()] = value
    return out


def str_list(text: str | None) -> list[str] | None:
    """``"fast,FSRCNN"`` -> ``["fast", "FSRCNN"]``; None stays None."""
    if text is None:
        return None
    return [v.strip() for v in text.split(",") if v.strip()]


def model_sets(items: list[str] | None) -> dict[str, set[str]]:
    """``["quality=Set5,Set14/ppt3"]`` -> ``{"quality": {"Set5", "Set14/ppt3"}}``: a model runs on those sets
    (``SET``) and images (``SET/IMAGE``, the file name without its suffix) only."""
    out: dict[str, set[str]] = {}
    for item in items or []:
        model, sep, sets = item.partition("=")
        if not sep or not model or not sets:
            raise UserError(f"--model-sets expects MODEL=SET,SET, got {item!r}")
        out[model.strip()] = set(str_list(sets) or [])
    return out
