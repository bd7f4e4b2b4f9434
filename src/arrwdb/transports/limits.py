"""Per-client limits: requests per second (a token bucket per API key, or per client address
when the server is open) and open streams (SSE streams and WebSocket connections) per client.

A request over the rate gets 429 ``rate_limited`` with ``Retry-After``; a WebSocket message
over it gets an error response with that code (the socket stays open). A stream beyond the
connection limit is refused the same way (WebSocket: closed with 1013, "try again later").
Used from the event loop only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from arrwdb.domain.errors import RateLimitedError

#: Clients remembered at most (the least recently seen are forgotten first).
_MAX_CLIENTS = 10_000


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    """``rate`` requests per second per client, in bursts of up to ``burst``; ``rate`` 0: no
    limit."""

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else 2 * rate
        self._buckets: dict[str, _Bucket] = {}

    def check(self, client: str) -> None:
        """Take one request of ``client``'s allowance; ``RateLimitedError`` if there is none."""
        if self.rate <= 0:
            return
        now = time.monotonic()
        bucket = self._buckets.pop(client, None)  # re-inserted: most recently seen last
        if bucket is None:
            bucket = _Bucket(self.burst, now)
            if len(self._buckets) >= _MAX_CLIENTS:
                del self._buckets[next(iter(self._buckets))]
        else:
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.at) * self.rate)
            bucket.at = now
        self._buckets[client] = bucket
        if bucket.tokens < 1.0:
            wait = (1.0 - bucket.tokens) / self.rate
            raise RateLimitedError(
                f"more than {self.rate:g} requests per second (rate_limit); retry in {wait:.2f} s",
                retry_after=wait,
                limit="rate_limit",
            )
        bucket.tokens -= 1.0


class StreamCounter:
    """Open SSE streams and WebSocket connections per client, at most ``limit`` each (0: no
    limit)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: dict[str, int] = {}

    def open(self, client: str) -> None:
        """Count one more stream of ``client``; ``RateLimitedError`` beyond the limit."""
        count = self._open.get(client, 0)
        if self.limit > 0 and count >= self.limit:
            raise RateLimitedError(
                f"this client already has {count} open streams (max_streams_per_client)",
                retry_after=1.0,
                limit="max_streams_per_client",
            )
        self._open[client] = count + 1

    def close(self, client: str) -> None:
        count = self._open.get(client, 0) - 1
        if count > 0:
            self._open[client] = count
        else:
            self._open.pop(client, None)
