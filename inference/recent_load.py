"""How much of the engine's time recent traffic took, by request size (plain Python; no clock of its own).

Why: admission estimates when a newcomer's engine work would be done from the work queued *now*
(:func:`inference.pacing.finish_estimate`). A large newcomer then looks as if it will have the engine to
itself once the queue ahead is done. Under a steady stream of smaller requests it does not: most of those
that arrive after it soon have the higher response ratio and go first (:mod:`inference.lane_queue`), so
it gets what that stream leaves, and at least the oldest request's share. In the soak, two 1.6–3 Mpx
requests admitted that way both ran into their last 10% of slack, had the engine to themselves
(:meth:`inference.pacer.Pacer.urgent`), and small requests behind them waited 11–16 s.
:class:`RecentLoad` measures the stream, so the estimate can stretch the newcomer's own work by it.
"""

from __future__ import annotations

from collections import deque


class RecentLoad:
    """Engine runs that ended in the last ``window_s`` seconds: ``(end time, seconds, lane, size of its
    largest request)``. Times are the caller's clock, in order (one engine call at a time); sizes are in
    full tiles of the run's lane. Older runs are forgotten as new ones are recorded."""

    def __init__(self, window_s: float) -> None:
        if window_s <= 0:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        self.window_s = window_s
        self._runs: deque[tuple[float, float, str, float]] = deque()

    def __len__(self) -> int:
        """Runs remembered."""
        return len(self._runs)

    def _forget(self, now: float) -> None:
        while self._runs and self._runs[0][0] <= now - self.window_s:
            self._runs.popleft()

    def record(self, lane: str, seconds: float, now: float, request_tiles: float) -> None:
        """A run of ``lane`` that took ``seconds`` ended at ``now``; the largest request it served has
        ``request_tiles`` full tiles of work in all."""
        self._forget(now)
        self._runs.append((now, seconds, lane, request_tiles))

    def share_below(self, lane: str, request_tiles: float, now: float) -> float:
        """The share of the last ``window_s`` seconds the engine spent on runs that would go before a
        request of ``request_tiles`` full tiles on ``lane`` arriving among them: runs of every other lane
        (the lane rotation gives each a run per run) and runs of smaller requests of ``lane``. Only the
        part of a run inside the window counts. In [0, 1]."""
        self._forget(now)
        start = now - self.window_s
        busy = sum(
            min(seconds, end - start)
            for end, seconds, name, size in self._runs
            if name != lane or size < request_tiles
        )
        return min(1.0, busy / self.window_s)
