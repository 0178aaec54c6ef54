"""How much of the engine's time recent traffic took, by request size (plain Python; no clock of its own).

Why: admission estimates when a newcomer's engine work would be done from the work queued *now*
(:func:`inference.pacing.finish_estimate`). A large newcomer then looks as if it will have the engine to
itself once the queue ahead is done. Under a steady stream of smaller requests it does not: each one that
arrives after it outranks it in the response-ratio turns (:mod:`inference.scheduling`), so it gets what
that stream leaves, and at least the oldest request's share. In the soak, two 1.6–3 Mpx requests admitted
that way both ran into their last 10% of slack, had the engine to themselves (:meth:`Pacer.urgent`), and
small requests behind them waited 11–16 s. :class:`RecentLoad` measures the stream, so the estimate can
stretch the newcomer's own work by it.
"""

from __future__ import annotations

from collections import deque


class RecentLoad:
    """Engine runs that ended recently: ``(end time, seconds, lane, size of its largest request)``.
    Times are the caller's clock; sizes are in full tiles of the run's lane."""

    def __init__(self) -> None:
        self._runs: deque[tuple[float, float, str, float]] = deque()

    def record(self, lane: str, seconds: float, now: float, request_tiles: float) -> None:
        """A run of ``lane`` that took ``seconds`` ended at ``now``; the largest request it served has
        ``request_tiles`` full tiles of work in all."""
        self._runs.append((now, seconds, lane, request_tiles))

    def share_below(self, lane: str, request_tiles: float, now: float, window_s: float) -> float:
        """The share of the last ``window_s`` seconds the engine spent on runs that would go before a
        request of ``request_tiles`` full tiles on ``lane`` arriving among them: runs of every other lane
        (the lane rotation gives each a run per run) and runs of smaller requests of ``lane``. In [0, 1];
        runs older than the window are forgotten."""
        if window_s <= 0:
            return 0.0
        while self._runs and self._runs[0][0] < now - window_s:
            self._runs.popleft()
        busy = sum(s for _, s, name, size in self._runs if name != lane or size < request_tiles)
        return min(1.0, busy / window_s)
