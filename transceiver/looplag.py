"""How late the event loop runs its callbacks: every call's media, ICE and signaling share one
loop, so any callback that holds it (a DTLS handshake, a certificate, a slow app) delays every
call's packets by as much. A task asks to wake every INTERVAL and records how much later than
asked it woke: `txr_event_loop_lag_seconds` (histogram) and `worst` since start (for tests and
benchmarks, which read it around the moment they care about)."""

from __future__ import annotations

import asyncio
import contextlib
import time

from prometheus_client import CollectorRegistry, Histogram

INTERVAL = 0.02  # s: about one media packet time; the probe costs ~50 wake-ups a second
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class LoopLag:
    def __init__(self, registry: CollectorRegistry, interval: float = INTERVAL) -> None:
        self.interval = interval
        self.lag = Histogram(
            "txr_event_loop_lag_seconds",
            "How much later than asked the event loop woke a timer (every call shares the loop)",
            buckets=BUCKETS,
            registry=registry,
        )
        self.worst = 0.0  # s, the largest lag seen
        self.worst_at = 0.0  # time.monotonic() of it
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._probe(), name="loop-lag")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _probe(self) -> None:
        while True:
            asked = time.monotonic() + self.interval
            await asyncio.sleep(self.interval)
            now = time.monotonic()
            late = max(0.0, now - asked)
            self.lag.observe(late)
            if late > self.worst:
                self.worst, self.worst_at = late, now
