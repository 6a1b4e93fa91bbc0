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
