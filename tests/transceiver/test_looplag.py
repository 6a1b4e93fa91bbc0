"""transceiver/looplag.py: a callback that holds the event loop shows up as lag, in the
histogram and in `worst`; a transceiver serves it on /metrics."""

from __future__ import annotations

import asyncio
import time

import aiohttp
from prometheus_client import CollectorRegistry

from transceiver.looplag import LoopLag
from transceiver.service import TransceiverService


async def test_a_blocked_loop_is_measured_as_lag() -> None:
    registry = CollectorRegistry()
    lag = LoopLag(registry, interval=0.01)
    lag.start()
    try:
        await asyncio.sleep(0.05)  # a few quiet probes first
        quiet = lag.worst
        time.sleep(0.2)  # what a blocking callback does to every call on the loop
        before = registry.get_sample_value("txr_event_loop_lag_seconds_count") or 0
        deadline = time.monotonic() + 5
        while (registry.get_sample_value("txr_event_loop_lag_seconds_count") or 0) <= before + 2:
            assert time.monotonic() < deadline, "the probe stopped"
            await asyncio.sleep(0.01)
    finally:
        await lag.stop()
    assert quiet < 0.15
    assert 0.15 <= lag.worst < 1.0
    above = registry.get_sample_value("txr_event_loop_lag_seconds_bucket", {"le": "0.1"})
    total = registry.get_sample_value("txr_event_loop_lag_seconds_count")
    assert above is not None and total is not None and total - above >= 1  # one probe > 0.1 s


async def test_the_transceiver_serves_its_loop_lag(
    txr: TransceiverService, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{txr.http_url}/metrics") as resp:
        text = await resp.text()
    assert resp.status == 200
    assert 'txr_event_loop_lag_seconds_bucket{le="0.5"}' in text


def test_a_collection_is_timed() -> None:
    import gc

    from transceiver.heap import GcPauses

    registry = CollectorRegistry()
    pauses = GcPauses(registry)
    pauses.start()
    try:
        gc.collect(2)
    finally:
        pauses.stop()
    count = registry.get_sample_value("txr_gc_pause_seconds_count", {"generation": "2"})
    assert count == 1
    assert pauses._callback not in gc.callbacks  # stop() leaves nothing behind


def test_the_frozen_start_up_heap_is_left_out_of_collections() -> None:
    """In a fresh process with the transceiver's libraries loaded (so as not to freeze this
    test process's heap): after freeze_startup_heap no generation holds those objects, so a
    full collection has only the objects made since to walk."""
    import subprocess
    import sys

    code = (
        "import gc, aiortc, av, aiohttp, transceiver.service\n"
        "from transceiver.heap import freeze_startup_heap\n"
        "gc.collect(); before = len(gc.get_objects(generation=2))\n"
        "frozen = freeze_startup_heap()\n"
        "print(before, frozen, len(gc.get_objects(generation=2)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    before, frozen, after = (int(x) for x in out.stdout.split())
    assert before > 50_000 and frozen > 50_000 and after < 100
