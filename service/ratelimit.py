"""Rate limits per tenant, per client address and of wrong keys: fixed one-minute windows, kept in Redis when
there is one (shared by replicas)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Protocol

log = logging.getLogger(__name__)
WINDOW_SECONDS = 60


class RateLimiter(Protocol):
    def hit(self, identity: str, limit: int) -> float | None:
        """Count one request; ``None`` if allowed, else the seconds until the window resets."""

    def peek(self, identity: str, limit: int) -> float | None:
        """Count nothing; ``None`` if fewer than ``limit`` were counted in this window, else the seconds left."""


def _now() -> tuple[float, int]:
    """The time and the number of its one-minute window."""
    now = time.time()
    return now, int(now // WINDOW_SECONDS)


def _wait(over: bool, now: float, window: int) -> float | None:
    """Seconds until ``window`` ends when the count is ``over`` the limit; else ``None``."""
    return (window + 1) * WINDOW_SECONDS - now if over else None


class MemoryRateLimiter:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, tuple[int, int]] = {}  # identity -> (window, count)

    def hit(self, identity: str, limit: int) -> float | None:
        now, window = _now()
        with self._lock:
            if len(self._counts) > 10_000:  # forget old windows so anonymous clients cannot grow this forever
                self._counts = {k: v for k, v in self._counts.items() if v[0] == window}
            seen_window, count = self._counts.get(identity, (window, 0))
            count = count + 1 if seen_window == window else 1
            self._counts[identity] = (window, count)
        return _wait(count > limit, now, window)

    def peek(self, identity: str, limit: int) -> float | None:
        now, window = _now()
        with self._lock:
            seen_window, count = self._counts.get(identity, (window, 0))
        return _wait(seen_window == window and count >= limit, now, window)


class RedisRateLimiter:
    def __init__(self, redis_url: str, namespace: str) -> None:
        from redis import Redis

        self._redis = Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=2)
        self._namespace = namespace

    def hit(self, identity: str, limit: int) -> float | None:
        now, window = _now()
        key = f"{self._namespace}:ratelimit:{identity}:{window}"
        try:
            pipe = self._redis.pipeline()
            pipe.incr(key)
            pipe.expire(key, WINDOW_SECONDS * 2)
            count = int(pipe.execute()[0])
        except Exception:  # an unreachable Redis must not take the API down with it: let the request through
            log.warning("rate limiter unavailable; request allowed", exc_info=True)
            return None
        return _wait(count > limit, now, window)

    def peek(self, identity: str, limit: int) -> float | None:
        now, window = _now()
        try:
            count = int(self._redis.get(f"{self._namespace}:ratelimit:{identity}:{window}") or 0)
        except Exception:
            log.warning("rate limiter unavailable; request allowed", exc_info=True)
            return None
        return _wait(count >= limit, now, window)
