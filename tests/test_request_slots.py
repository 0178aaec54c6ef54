"""The request slots a drain waits on, and what runs on the event loop during admission."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from inference import pipeline
from inference.request_slots import RequestSlots
from inference.upscaler_types import UpscalerObserver
from tests.service_harness import gated, png, serving, up


def test_wait_idle_is_not_fooled_by_a_momentary_idle() -> None:
    """Both counts at zero for an instant, then busy again before the waiter runs: still busy."""

    async def main() -> None:
        slots = RequestSlots(4, 4, UpscalerObserver())
        upload = slots.upload()
        upload.__enter__()
        waiter = asyncio.create_task(slots.wait_idle(5.0))
        for _ in range(10):  # a few steps of the loop: wait_for (3.11) runs the wait in a task of its own
            await asyncio.sleep(0)
        assert not waiter.done()
        upload.__exit__(None, None, None)  # idle: the event is set ...
        serve = slots.serve()
        serve.__enter__()  # ... and cleared again, in the same step of the loop
        await asyncio.sleep(0.05)
        assert not waiter.done(), "wait_idle returned while a request held a slot"
        serve.__exit__(None, None, None)
        assert await asyncio.wait_for(waiter, 1.0) is True
        upload = slots.upload()
        upload.__enter__()
        assert await slots.wait_idle(0.05) is False

    asyncio.run(main())


class _Recorder(UpscalerObserver):
    """Forwards to the service's observer and records (uploading, inflight) after each change."""

    def __init__(self, slots: RequestSlots) -> None:
        self.slots, self.inner, self.states = slots, slots.observer, []

    def on_uploading(self, requests: int) -> None:
        self.inner.on_uploading(requests)
        self.states.append((self.slots.uploading, self.slots.inflight))

    def on_inflight(self, requests: int) -> None:
        self.inner.on_inflight(requests)
        self.states.append((self.slots.uploading, self.slots.inflight))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_a_request_holds_a_slot_from_upload_to_response(tiny_onnx: Path) -> None:
    """A drain that saw no slot held would stop the batcher under a request between upload and serve."""
    app, _ = gated(tiny_onnx)

    async def main() -> None:
        async with serving(app) as client:
            slots = app.state.upscaler.slots
            recorder = _Recorder(slots)
            slots.observer = recorder
            r = await up(client, png(24, 20))
            assert r.status_code == 200, r.text
            assert recorder.states == [(1, 0), (1, 1), (0, 1), (0, 0)]

    asyncio.run(main())


def test_the_header_is_read_off_the_event_loop(tiny_onnx: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading a header can inflate every text chunk of a PNG; on the loop it would stall every request."""
    app, _ = gated(tiny_onnx)
    threads: list[int] = []
    probe = pipeline.probe

    def recording_probe(*args: Any) -> Any:
        threads.append(threading.get_ident())
        return probe(*args)

    monkeypatch.setattr(pipeline, "probe", recording_probe)

    async def main() -> None:
        async with serving(app) as client:
            r = await up(client, png(24, 20))
            assert r.status_code == 200, r.text
            loop_thread = threading.get_ident()
            assert threads and loop_thread not in threads

    asyncio.run(main())
