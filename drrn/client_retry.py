"""The retry policy of :mod:`drrn.client`, one implementation for ``Client`` and ``AsyncClient``.

A call makes attempts; after each one :class:`Attempts` decides: success, retry after a wait, or raise the
typed error (:mod:`drrn.client_errors`). Retried: a lost connection (refused, reset, closed without an
answer), 503 and 429 (an API key's quota). Waits honour ``Retry-After`` (never shorter) with jitter, else
back off exponentially. Bounded by a count (``retries``) and a total time (``budget_s``, from the call's
start to the start of a retry). Standard library and httpx only.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from drrn.client_errors import ConnectionFailed, DRRNError, RequestTimeout, ServerBusy, error_from_response

# A killed or restarted server: no answer came back, and re-sending cannot do harm. A read timeout is not
# here: the server may still be working on that request, and a second copy would only add load.
_RETRYABLE_TRANSPORT = (httpx.NetworkError, httpx.ConnectTimeout, httpx.RemoteProtocolError)


@dataclass(frozen=True)
class RetryPolicy:
    """When to retry. ``retries``: most retries after the first attempt; ``budget_s``: no retry starts
    later than this many seconds after the call began; ``backoff_s`` doubling up to ``max_backoff_s``: the
    wait without ``Retry-After``; ``jitter``: the wait for a ``Retry-After`` of R is uniform in
    ``[R, R * (1 + jitter)]`` (or the backoff, when that is longer: a ``Retry-After: 0`` is no licence to
    hammer)."""

    retries: int = 4
    budget_s: float = 120.0
    backoff_s: float = 0.25
    max_backoff_s: float = 8.0
    jitter: float = 0.25

    def wait_s(self, retry: int, retry_after: float | None, rand: float) -> float:
        """Seconds to wait before retry number ``retry`` (1-based); ``rand`` uniform in [0, 1)."""
        backoff = min(self.max_backoff_s, self.backoff_s * 2 ** (retry - 1)) * (0.5 + 0.5 * rand)
        if retry_after is None:
            return backoff
        return max(retry_after * (1 + self.jitter * rand), backoff)


@dataclass(frozen=True)
class RetryEvent:
    """Passed to ``on_retry`` before each wait: ``attempt`` that just failed (1-based), its ``error``, the
    ``wait_s`` about to be slept and the ``retry_after_s`` the server asked for (None if it did not)."""

    attempt: int
    error: DRRNError
    wait_s: float
    retry_after_s: float | None


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds: delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    from email.utils import parsedate_to_datetime

    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


@dataclass
class Attempts:
    """One call's retry state, shared by both clients. After each attempt ``after_response`` /
    ``after_exception`` return the seconds to wait before retrying (None: the answer is a success), or
    raise the typed error when the attempt is final."""

    policy: RetryPolicy
    on_retry: Callable[[RetryEvent], None] | None
    rng: random.Random
    start: float = field(default_factory=time.monotonic)
    count: int = 0

    def after_response(self, resp: httpx.Response) -> float | None:
        self.count += 1
        if resp.is_success:
            return None
        error = error_from_response(resp.status_code, resp.content, dict(resp.headers), self.count)
        return self._retry_or_raise(error, parse_retry_after(resp.headers.get("retry-after")))

    def after_exception(self, exc: httpx.TransportError) -> float:
        self.count += 1
        if isinstance(exc, _RETRYABLE_TRANSPORT):
            return self._retry_or_raise(ConnectionFailed(_describe(exc), attempts=self.count), None)
        cls = RequestTimeout if isinstance(exc, httpx.TimeoutException) else ConnectionFailed
        raise cls(_describe(exc), attempts=self.count) from exc

    def _retry_or_raise(self, error: DRRNError, retry_after: float | None) -> float:
        if not isinstance(error, ServerBusy | ConnectionFailed) or self.count > self.policy.retries:
            raise error
        wait = self.policy.wait_s(self.count, retry_after, self.rng.random())
        if time.monotonic() - self.start + wait > self.policy.budget_s:
            raise error
        if self.on_retry is not None:
            self.on_retry(RetryEvent(self.count, error, wait, retry_after))
        return wait


def _describe(exc: httpx.TransportError) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
