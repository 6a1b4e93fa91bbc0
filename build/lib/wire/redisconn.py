"""How every component reaches the registry's Redis: one client factory and one backoff policy.

relayctl (its control loop, event listener and slow path) and transceivers connect the same way,
so a setting (a timeout, later credentials and TLS) has one home, and every loop that retries
Redis waits the same way between attempts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def connect(url: str, *, timeout: float, retries: bool = True) -> Any:
    """A redis.Redis for `url` with connect and I/O timeouts of `timeout` seconds.

    retries=False: no client-side retry, for loops that have their own backoff and must never
    block for longer than one timeout. ValueError for a malformed URL (redis-py's parser).
    """
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    kwargs: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    if not retries:
        kwargs["retry"] = Retry(NoBackoff(), 0)
    return redis.Redis.from_url(url, **kwargs)


def redact(url: str) -> str:
    """The URL without its password (redis://user:secret@host -> redis://***@host): for logs."""
    head, at, tail = url.rpartition("@")
    return f"{head.split('//')[0]}//***@{tail}" if at else url


class Backoff:
    """Exponential backoff between attempts at something that failed: first, 2x first, ... cap.

    `ready()` says whether the next attempt is due; `failed()` returns the new delay;
    `succeeded()` resets it.
    """

    def __init__(
        self, first: float = 0.25, cap: float = 5.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.first = first
        self.cap = cap
        self.clock = clock
        self.delay = 0.0
        self.until = 0.0

    @property
    def failing(self) -> bool:
        return self.delay > 0

    def ready(self) -> bool:
        return self.clock() >= self.until

    def remaining(self) -> float:
        """Seconds until the next attempt is due (0 when it is)."""
        return max(0.0, self.until - self.clock())

    def failed(self) -> float:
        self.delay = min(self.cap, self.delay * 2) if self.delay else self.first
        self.until = self.clock() + self.delay
        return self.delay

    def succeeded(self) -> None:
        self.delay = 0.0
        self.until = 0.0
