"""Registry events: a thread that wakes the control loop on every `{prefix}:events` message.

The loop polls anyway; the events only make a change reach the maps sooner. The listener
reconnects with the shared backoff while Redis is away.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from wire.redisconn import Backoff, connect


class RegistryEvents:
    def __init__(self, url: str, prefix: str, wake: Callable[[], None]) -> None:
        self.url = url
        self.channel = f"{prefix}:events"
        self.wake = wake
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, name="redis-events", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _listen(self) -> None:
        import redis

        backoff = Backoff()
        while not self._stop.is_set():
            try:
                client = connect(self.url, timeout=2.0)
                with client.pubsub(ignore_subscribe_messages=True) as sub:
                    sub.subscribe(self.channel)
                    backoff.succeeded()
                    while not self._stop.is_set():
                        if sub.get_message(timeout=1.0):
                            self.wake()
                client.close()
            except (redis.RedisError, OSError):
                self._stop.wait(backoff.failed())
