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


class MemoryRateLimiter:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, tuple[int, int]] = {}  # identity -> (window, count)

    def hit(self, identity: str, limit: int) -> float | None:
        now = time.time()
        window = int(now // WINDOW_SECONDS)
        with self._lock:
            if len(self._counts) > 10_000:  # forget old windows so anonymous clients cannot grow this forever
                self._counts = {k: v for k, v in self._counts.items() if v[0] == window}
            seen_window, count = self._counts.get(identity, (window, 0))
            count = count + 1 if seen_window == window else 1
            self._counts[identity] = (window, count)
        if count > limit:
            return (window + 1) * WINDOW_SECONDS - now
        return None

    def peek(self, identity: str, limit: int) -> float | None:
        now = time.time()
        window = int(now // WINDOW_SECONDS)
        with self._lock:
            seen_window, count = self._counts.get(identity, (window, 0))
        if seen_window == window and count >= limit:
            return (window + 1) * WINDOW_SECONDS - now
        return None


class RedisRateLimiter:
    def __init__(self, redis_url: str, namespace: str) -> None:
        from redis import Redis

        self._redis = Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=2)
        self._namespace = namespace

    def hit(self, identity: str, limit: int) -> float | None:
        now = time.time()
        window = int(now // WINDOW_SECONDS)
        key = f"{self._namespace}:ratelimit:{identity}:{window}"
        try:
            pipe = self._redis.pipeline()
            pipe.incr(key)
            pipe.expire(key, WINDOW_SECONDS * 2)
            count = int(pipe.execute()[0])
        except Exception:  # an unreachable Redis must not take the API down with it: let the request through
            log.warning("rate limiter unavailable; request allowed", exc_info=True)
            return None
        if count > limit:
            return (window + 1) * WINDOW_SECONDS - now
        return None

    def peek(self, identity: str, limit: int) -> float | None:
        now = time.time()
        window = int(now // WINDOW_SECONDS)
        try:
            count = int(self._redis.get(f"{self._namespace}:ratelimit:{identity}:{window}") or 0)
        except Exception:
            log.warning("rate limiter unavailable; request allowed", exc_info=True)
            return None
        if count >= limit:
            return (window + 1) * WINDOW_SECONDS - now
        return None
