"""Tunnel mode without XDP: a test-side relay wraps client packets and unwraps the replies."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from lab.peer import call
from lab.tone import TONE_HZ, dominant_hz, rms
from lab.tunnelrelay import TunnelRelay

pytestmark = pytest.mark.timeout(60)


async def test_call_through_tunnel_follows_latest_relay(start_txr, http: aiohttp.ClientSession):
    relay = await TunnelRelay.start(["127.0.0.1", "127.0.0.2"])
    try:
        txr = await start_txr(
            vips=[relay.vip], relay_tunnel_port=relay.tunnel_port, relays=relay.relays
        )
        relay.txr = txr.udp_addr
        client = await call(http, txr.http_url, want_frames=60)
        try:
            assert f"127.0.0.1 {relay.vip[1]} typ host" in (client.answer_sdp)
            assert f" {txr.udp_addr[1]} typ" not in (client.answer_sdp)
            await client.wait_state("connected")
            await asyncio.wait_for(client.got_frames.wait(), 15)
            assert client.nominated()[1] == relay.vip
            assert abs(dominant_hz(client.frames[-40:]) - TONE_HZ) < 30
            assert rms(client.frames[-40:]) > 1000
            (session,) = txr.manager.sessions.values()
            (path,) = txr.mux.paths_of(session.ice)
            assert path.vip == relay.vip and path.client == client.nominated()[0]
            assert relay.counts["down:127.0.0.1"] > 50 and relay.counts["down:127.0.0.2"] == 0

            # The flow moves to the second relay: replies follow the latest delivering relay.
            relay.via = "127.0.0.2"
            before = len(client.frames)
            client.got_frames.clear()
            client.want_frames = before + 50
            await asyncio.wait_for(client.got_frames.wait(), 15)
            assert relay.counts["down:127.0.0.2"] > 40
            assert relay.errors == []
            assert txr.manager.active == 1
        finally:
            await client.close()
    finally:
        relay.close()


async def test_tunnel_garbage_and_foreign_vip_are_counted(start_txr):
    import socket

    from wire import encap

    txr = await start_txr(vips=[("198.18.0.10", 3478)], relays=["127.0.0.1"])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"\x45" + b"\x00" * 30, txr.udp_addr)  # claims IPv4, is not
        foreign = encap.ipv4_udp("198.18.1.1", 5555, "198.18.0.99", 3478, b"\x00\x01" + bytes(18))
        s.sendto(foreign, txr.udp_addr)
        ours = encap.ipv4_udp("198.18.1.1", 5555, "198.18.0.10", 3478, b"\x17\xfe\xfd" + bytes(20))
        s.sendto(ours, txr.udp_addr)  # DTLS-looking, but no call bound this path
    await _wait(lambda: sum(txr.mux.drops.values()) >= 3)
    assert txr.mux.drops == {"tunnel_bad_inner": 1, "tunnel_foreign_vip": 1, "no_route": 1}


async def _wait(cond, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)
