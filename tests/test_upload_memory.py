"""A queued request holds its tiles, not its upload: once prepared, nothing in the service keeps the body.

Under load the queue holds up to ``DRRN_MAX_INFLIGHT_REQUESTS`` requests; each one's upload is up to
``DRRN_MAX_UPLOAD_BYTES``, and nothing needs it after decoding. The test captures the bytes object the
service read (wrapping ``Upscaler._receive``) and, while an engine run holding the request's tiles is
held, asks the garbage collector what still refers to it: a suspended coroutine's frame, a closure, a
tuple of arguments, an executor's work item or any other container would show up.
"""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path
from typing import Any

from tests.conftest import until
from tests.service_harness import gated, png, serving, up


def _capture_uploads(upscaler: Any, captured: list[bytes]) -> None:
    """Append each request's bytes, as the service received them, to ``captured``."""
    receive = upscaler._receive

    async def capturing(*args: Any, **kwargs: Any) -> bytes:
        data = await receive(*args, **kwargs)
        captured.append(data)
        return data

    upscaler._receive = capturing


def _referrers(captured: list[bytes]) -> list[str]:
    """What refers to ``captured[0]``, ``captured`` itself aside (by qualified name or type)."""
    found = [r for r in gc.get_referrers(captured[0]) if r is not captured]
    return [getattr(r, "__qualname__", None) or type(r).__name__ for r in found]


def test_upload_is_not_held_while_its_tiles_wait_for_the_engine(tiny_onnx: Path) -> None:
    app, engine = gated(tiny_onnx)
    captured: list[bytes] = []

    async def main() -> None:
        async with serving(app) as client:
            _capture_uploads(app.state.upscaler, captured)
            engine.hold_next = True
            request = asyncio.create_task(up(client, png(48, 40, seed=7)))
            await until(engine.run_entered.is_set)  # prepared, its tiles in the held engine run
            held = _referrers(captured)
            engine.run_gate.set()
            r = await request
            assert r.status_code == 200, r.text
            assert len(captured) == 1
            assert held == [], f"the upload is still referenced while queued: {held}"

    asyncio.run(main())


def test_the_check_sees_an_upload_the_service_still_holds(tiny_onnx: Path) -> None:
    """The control for the test above: the same check, while the request awaits ``prepare`` (the upload
    still needed), finds ``_run`` holding it, so an empty result there means the bytes are gone."""
    app, _ = gated(tiny_onnx)
    captured: list[bytes] = []
    seen: list[list[str]] = []
    lookers: list[asyncio.Task] = []

    async def look() -> None:  # runs once the request's task is suspended on prepare's future
        seen.append(_referrers(captured))

    async def main() -> None:
        async with serving(app) as client:
            upscaler = app.state.upscaler
            _capture_uploads(upscaler, captured)
            original = upscaler.cpu.run

            def spying_run(stage, megapixels, fn, *args):  # type: ignore[no-untyped-def]
                future = original(stage, megapixels, fn, *args)
                if stage[0] == "prepare":
                    # queued now, so it runs before the pool's result (two callbacks later) wakes _run
                    lookers.append(asyncio.ensure_future(look()))
                return future

            upscaler.cpu.run = spying_run
            r = await up(client, png(48, 40, seed=7))
            assert r.status_code == 200, r.text

    asyncio.run(main())
    assert len(seen) == 1 and "Upscaler._run" in seen[0], seen
