"""Per-client request rate limits: a token bucket per client (burst of one second's worth)."""

from __future__ import annotations

import threading
import time

from modelheist.errors import RateLimitedError


class RateLimiter:
    """``allow(client, rate)`` admits a request or raises :class:`RateLimitedError`.

    Each client's bucket holds up to ``max(1, rate)`` tokens and refills at ``rate`` per second;
    a request takes one token. Limits count requests, not inputs (the query budget counts those).
    """

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def allow(self, client: str, rate: float | None, now: float | None = None) -> None:
        if rate is None:
            return
        now = time.monotonic() if now is None else now
        capacity = max(1.0, rate)
        with self._lock:
            tokens, last = self._buckets.get(client, (capacity, now))
            tokens = min(capacity, tokens + (now - last) * rate)
            if tokens < 1.0:
                self._buckets[client] = (tokens, now)
                raise RateLimitedError(
                    f"rate limit of {rate:g} requests/s exceeded; retry later",
                    retry_after=(1.0 - tokens) / rate,
                )
            self._buckets[client] = (tokens - 1.0, now)
