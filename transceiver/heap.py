"""Keep Python's cyclic garbage collector from stopping every call at once.

Every call's media shares one event loop, and a full (generation 2) collection walks every
tracked object while it holds that loop. A started `transceiver serve` already has ~70,000 of
them (aiortc, PyAV, aiohttp, prometheus-client, the app) that never become garbage. With the
transceiver in a test process (~100,000 objects), a full collection while five Chromium calls
set up held the loop 75-112 ms and every call's inbound audio stopped for as long, at the same
moment (the in-process probe behind bench.media_stall). `freeze_startup_heap` collects once and
then moves everything alive into the permanent generation (gc.freeze, Python >= 3.7): later
collections walk only what was allocated since, i.e. the calls' own objects, which they still
free. In bench.media_stall's 6 s rounds against a `serve` process no full collection happened
at all, with or without it: the stalls that bench still shows are something else (see its
loop-lag columns).
"""

from __future__ import annotations

import gc
import time

from prometheus_client import CollectorRegistry, Histogram


def freeze_startup_heap() -> int:
    """Collect, then freeze what is left; returns how many objects were frozen. Call it once,
    after start-up and before the first call."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


class GcPauses:
    """`txr_gc_pause_seconds{generation}`: how long each collection held the loop (gc.callbacks:
    called at the start and the end of every collection, in the collecting thread)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.pause = Histogram(
            "txr_gc_pause_seconds",
            "Garbage collections, by generation: each holds the loop every call shares",
            ["generation"],
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=registry,
        )
        self._children = [self.pause.labels(str(g)) for g in range(3)]
        self._started = 0.0

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self._children[info["generation"]].observe(time.perf_counter() - self._started)

    def start(self) -> None:
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)

    def stop(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)
