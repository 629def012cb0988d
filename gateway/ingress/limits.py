"""Per-client limits: open connections, and messages a minute, for each client address.

One noisy or hostile address must not take the relay from the others. Beyond
its connections it is greeted with 421; beyond its rate a new transaction gets
451, so a real mail server retries later and nothing is lost. Zero turns a
limit off.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class _Bucket:
    tokens: float
    at: float


@dataclass
class ClientLimits:
    connections: int
    per_minute: int
    now: Callable[[], float] = time.monotonic
    _open: dict[str, int] = field(default_factory=dict)
    _buckets: dict[str, _Bucket] = field(default_factory=dict)

    def connect(self, client: str) -> bool:
        """Count a new connection; False when the client already has its share open."""
        count = self._open.get(client, 0)
        if self.connections and count >= self.connections:
            return False
        self._open[client] = count + 1
        return True

    def disconnect(self, client: str) -> None:
        count = self._open.get(client, 0) - 1
        if count > 0:
            self._open[client] = count
        else:
            self._open.pop(client, None)

    def message(self, client: str) -> bool:
        """Take one message from the client's allowance (a token bucket refilled per minute)."""
        if not self.per_minute:
            return True
        now = self.now()
        bucket = self._buckets.get(client)
        if bucket is None:
            if len(self._buckets) > 10_000:
                self._forget_full(now)
            bucket = self._buckets[client] = _Bucket(float(self.per_minute), now)
        bucket.tokens = min(
            float(self.per_minute), bucket.tokens + (now - bucket.at) * self.per_minute / 60
        )
        bucket.at = now
        if bucket.tokens < 1:
            return False
        bucket.tokens -= 1
        return True

    def _forget_full(self, now: float) -> None:
        """Drop clients unseen for a minute: their allowance is full again (bounded memory)."""
        for client in [c for c, b in self._buckets.items() if now - b.at >= 60]:
            del self._buckets[client]
