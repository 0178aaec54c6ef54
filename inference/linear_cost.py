"""A measured cost model: seconds per event as ``a + b * size``, fitted online (plain Python).

The batcher fits one per lane: an exponentially weighted least-squares fit of engine seconds per run as
``a + b * tiles``. A run's cost grows with its size on CPU (``a ~ 0``) and hardly at all on
a GPU (``b ~ 0``); one EWMA of seconds per run would, after a quiet period of 1-tile runs, under-estimate
the full runs a burst brings by up to ``max_batch`` times. While every run seen had about the same size the
fit is undetermined, and the cost is taken as proportional to the tiles (exact on CPU; on a GPU it
over-estimates, but its runs are milliseconds against a deadline of seconds). The Upscaler fits its CPU
stages the same way against output megapixels: a 16-Mpx output spends seconds in bicubic and PNG encoding
on a small CPU, outside the engine.
"""

from __future__ import annotations

ALPHA = 0.2  # weight of the newest run: ~the last 10 runs count
# Below this (size units^2: a spread of 0.1 full tile, or 0.1 Mpx) the sizes seen are too alike to fit a
# slope. Tiles fit each image, so on a CPU lane (one tile per run) every size lies in (0, 1]: a threshold
# in whole tiles (0.25) would never be reached there, and the lane would never refuse anything.
_MIN_SIZE_VARIANCE = 0.01


class LinearCost:
    """EWMA least-squares fit of seconds per event against its size: ``seconds(k) ~ a + b * k``.

    The batcher fits one per lane with ``k`` = full tiles per engine run; the Upscaler fits its CPU stages
    (decode + bicubic + tiling, and stitch + colour + PNG) with ``k`` = output megapixels."""

    def __init__(self, alpha: float = ALPHA) -> None:
        self.alpha, self.runs = alpha, 0
        self._k = self._s = self._kk = self._ks = 0.0  # weighted means of k, s, k^2, k*s
        self._slope: float | None = None  # the last slope the sizes seen could determine

    def observe(self, size: float, seconds: float) -> None:
        """One event of ``size`` took ``seconds``."""
        k, s = float(size), float(seconds)
        w = 1.0 if self.runs == 0 else self.alpha
        self._k += w * (k - self._k)
        self._s += w * (s - self._s)
        self._kk += w * (k * k - self._kk)
        self._ks += w * (k * s - self._ks)
        self.runs += 1
        var = self._kk - self._k * self._k
        if var >= _MIN_SIZE_VARIANCE:
            self._slope = max(0.0, (self._ks - self._k * self._s) / var)

    def coefficients(self) -> tuple[float, float] | None:
        """``(a, b)``: seconds per event and per unit of size; None before the first event.

        While the recent sizes are too alike to fit a slope, the last slope they could fit is kept (a CPU
        lane that served only small images for a while still knows what a full tile costs, and must
        refuse a 16-Mpx request that arrives then). Before any slope was fitted, the cost is taken as
        proportional to the size if the events were at least half a unit, and as the constant seen
        otherwise: the time of runs of a few pixels is mostly fixed per-run overhead, and scaling it up
        to a full tile would refuse everything (nothing is refused on a guess)."""
        if self.runs == 0:
            return None
        if self._slope is not None:
            slope = self._slope
            if self._kk - self._k * self._k < _MIN_SIZE_VARIANCE and self._k > 0:
                # a kept slope may not claim more per unit than the recent events cost (a noisy fit frozen
                # high would over-predict for ever, and what it refuses never runs to correct it)
                slope = min(slope, self._s / self._k)
            return max(0.0, self._s - slope * self._k), slope
        return (0.0, self._s / self._k) if self._k >= 0.5 else (self._s, 0.0)

    @property
    def typical_size(self) -> float:
        """The weighted mean size of the recent events (0 before the first)."""
        return self._k

    def seconds(self, size: float) -> float | None:
        """Expected seconds of one event of ``size``; None while :meth:`coefficients` is."""
        return self.work_seconds(1, size)

    def work_seconds(self, runs: int, size: float) -> float | None:
        """Expected seconds of ``runs`` events of ``size`` in all (None as :meth:`seconds`)."""
        coef = self.coefficients()
        return None if coef is None else runs * coef[0] + coef[1] * size
