"""Many calls at once on one transceiver: one shared UDP port, every call echoed."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from lab.peer import call
from lab.tone import TONE_HZ, dominant_hz

pytestmark = pytest.mark.timeout(90)

CALLS = 10


async def test_ten_calls_share_one_udp_port(txr, http: aiohttp.ClientSession) -> None:
    clients = await asyncio.gather(
        *(call(http, txr.http_url, want_frames=40) for _ in range(CALLS))
    )
    try:
        await asyncio.gather(*(c.wait_state("connected", timeout=30) for c in clients))
        await asyncio.wait_for(asyncio.gather(*(c.got_frames.wait() for c in clients)), 30)
        # Every client checked and nominated the same single server address:port ...
        assert {c.nominated()[1] for c in clients} == {txr.udp_addr}
        # ... with its own server ufrag, and each heard its own tone back.
        ufrags = {ln for c in clients for ln in (c.answer_sdp).splitlines() if "ice-ufrag" in ln}
        assert len(ufrags) == CALLS
        for c in clients:
            assert abs(dominant_hz(c.frames[-30:]) - TONE_HZ) < 30
        assert txr.manager.active == CALLS
        assert len({s.ice.selected for s in txr.manager.sessions.values()}) == CALLS

        # Ending half of them leaves the other half flowing.
        for c in clients[: CALLS // 2]:
            async with http.delete(txr.http_url + (c.location or "")) as resp:
                assert resp.status == 204
        assert txr.manager.active == CALLS - CALLS // 2
        rest = clients[CALLS // 2 :]
        for c in rest:
            c.got_frames.clear()
            c.want_frames = len(c.frames) + 25
        await asyncio.wait_for(asyncio.gather(*(c.got_frames.wait() for c in rest)), 20)
    finally:
        await asyncio.gather(*(c.close() for c in clients))
