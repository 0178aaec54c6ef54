"""The two concurrency bounds of the Upscaler: bodies being received, and requests being served.

A request holds an *upload* slot while its body arrives and an *in-flight* slot only once the body is in,
so clients that stall or trickle their bodies (bounded by ``max_uploads``) never hold the slots that bound
decode and compute (``max_inflight``). Each change is reported to the observer (the Prometheus gauges),
and :meth:`RequestSlots.wait_idle` lets a drain wait for both counts to reach zero.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

from inference.upscaler_types import OverloadedError, UpscalerObserver


class RequestSlots:
    """Counts of admitted requests; all methods run on the event loop's thread."""

    def __init__(self, max_uploads: int, max_inflight: int, observer: UpscalerObserver) -> None:
        self.max_uploads, self.max_inflight, self.observer = max_uploads, max_inflight, observer
        self.uploading = 0  # admitted requests whose body is arriving
        self.inflight = 0  # admitted requests whose body has arrived
        self._idle = asyncio.Event()
        self._idle.set()

    def check(self) -> None:
        """Raise :class:`OverloadedError` if a new request could not take both slots in turn now."""
        self._check_inflight()
        if self.uploading >= self.max_uploads:
            raise OverloadedError("max_uploads", self.max_uploads)

    def _check_inflight(self) -> None:
        if self.inflight >= self.max_inflight:
            raise OverloadedError("max_inflight_requests", self.max_inflight)

    @contextmanager
    def upload(self) -> Iterator[None]:
        """Hold an upload slot (the caller checked :meth:`check` first)."""
        self._count(uploading=+1)
        try:
            yield
        finally:
            self._count(uploading=-1)

    @contextmanager
    def serve(self) -> Iterator[None]:
        """Take an in-flight slot, or raise :class:`OverloadedError` (``max_inflight_requests``)."""
        self._check_inflight()
        self._count(inflight=+1)
        try:
            yield
        finally:
            self._count(inflight=-1)

    @property
    def busy(self) -> bool:
        return bool(self.inflight or self.uploading)

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no request holds a slot; False if ``timeout_s`` passed first."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout_s
        while self.busy:  # the event may have been set and cleared again before this task ran
            try:
                await asyncio.wait_for(self._idle.wait(), timeout=max(0.0, end - loop.time()))
            except TimeoutError:
                return False
        return True

    def _count(self, uploading: int = 0, inflight: int = 0) -> None:
        if uploading:
            self.uploading += uploading
            self.observer.on_uploading(self.uploading)
        if inflight:
            self.inflight += inflight
            self.observer.on_inflight(self.inflight)
        if self.busy:
            self._idle.clear()
        else:
            self._idle.set()
