"""A queued request holds its tiles, not its upload: once prepared, no frame of the service keeps the body.

Under load the queue holds up to ``DRRN_MAX_INFLIGHT_REQUESTS`` requests; each one's upload is up to
``DRRN_MAX_UPLOAD_BYTES``, and nothing needs it after decoding. The check walks every task's coroutine
chain while an engine run is held, and looks in the locals of the frames of ``service/`` and
``inference/`` for a bytes object of the upload's length (the PNG is noise, so nothing else has it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

from tests.conftest import until
from tests.test_service_http import gated, png, serving, up

_OURS = ("/service/", "/inference/")


def _coroutine_frames() -> Iterator[FrameType]:
    """The frames of every task's chain of awaited coroutines (outermost first)."""
    for task in asyncio.all_tasks():
        coro = task.get_coro()
        while coro is not None and getattr(coro, "cr_frame", None) is not None:
            yield coro.cr_frame
            coro = getattr(coro, "cr_await", None)


def _holders(n_bytes: int) -> list[str]:
    """``"function: local"`` for each service/inference frame local (or item of a tuple or list local)
    that is a bytes-like object of ``n_bytes``."""
    found = []
    for frame in _coroutine_frames():
        if not any(part in frame.f_code.co_filename.replace("\\", "/") for part in _OURS):
            continue
        for name, value in frame.f_locals.items():
            items = value if isinstance(value, tuple | list) else (value,)
            if any(isinstance(v, bytes | bytearray | memoryview) and len(v) == n_bytes for v in items):
                found.append(f"{frame.f_code.co_name}: {name}")
    return found


def test_upload_is_not_held_while_its_tiles_wait_for_the_engine(tiny_onnx: Path) -> None:
    app, engine = gated(tiny_onnx)
    body = png(48, 40, seed=7)

    async def main() -> None:
        async with serving(app) as client:
            engine.hold_next = True
            request = asyncio.create_task(up(client, body))
            await until(engine.run_entered.is_set)  # prepared, its tiles in the held engine run
            held = _holders(len(body))
            engine.run_gate.set()
            r = await request
            assert r.status_code == 200, r.text
            assert held == [], f"the upload is still referenced while queued: {held}"

    asyncio.run(main())


def test_the_walk_finds_an_upload_a_service_frame_holds(tiny_onnx: Path) -> None:
    """The control for the test above: the same walk, while the request awaits ``prepare`` (the upload
    still needed), finds the body, so an empty result there means the bytes are gone, not a blind walk."""
    app, _ = gated(tiny_onnx)
    body = png(48, 40, seed=7)
    seen: list[list[str]] = []
    lookers: list[asyncio.Task] = []

    async def look() -> None:  # runs once the request's task is suspended on prepare's future
        seen.append(_holders(len(body)))

    async def main() -> None:
        async with serving(app) as client:
            cpu = app.state.upscaler.cpu
            original = cpu.run

            def spying_run(stage, megapixels, fn, *args):  # type: ignore[no-untyped-def]
                future = original(stage, megapixels, fn, *args)
                if stage[0] == "prepare":
                    lookers.append(asyncio.ensure_future(look()))  # runs before the result wakes the request
                return future

            cpu.run = spying_run
            r = await up(client, body)
            assert r.status_code == 200, r.text

    asyncio.run(main())
    assert len(seen) == 1 and "_run: data" in seen[0], seen
