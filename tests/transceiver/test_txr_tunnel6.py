"""IPv6 clients through the tunnel (docs/wire-format.md §3), without XDP: a test-side relay with
an IPv6 VIP on ::1 wraps the client's IPv6/UDP packets in the IPv4 tunnel; the transceiver
answers with an IPv6 candidate and IPv6 inner packets. A real aiortc client calls."""

from __future__ import annotations

import asyncio
import re
import socket

import aiohttp
import aioice.ice
import pytest

from lab.peer import CALLS_PATH, call, make_offer
from lab.tone import TONE_HZ, dominant_hz, rms
from lab.tunnelrelay import TunnelRelay
from wire import encap

pytestmark = pytest.mark.timeout(60)


async def test_ipv6_call_through_the_tunnel(
    start_txr, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the client gathers on IPv6 loopback only: the call's one candidate pair is IPv6
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["::1"])
    relay = await TunnelRelay.start(["127.0.0.1"], vip_host="::1")
    try:
        txr = await start_txr(
            vips=[relay.vip], relay_tunnel_port=relay.tunnel_port, relays=relay.relays
        )
        relay.txr = txr.udp_addr
        client = await call(http, txr.http_url, want_frames=60)
        try:
            assert f"::1 {relay.vip[1]} typ host" in client.answer_sdp
            await client.wait_state("connected")
            await asyncio.wait_for(client.got_frames.wait(), 15)
            local, remote = client.nominated()
            assert remote == relay.vip and ":" in local[0]
            assert abs(dominant_hz(client.frames[-40:]) - TONE_HZ) < 30
            assert rms(client.frames[-40:]) > 1000
            (session,) = txr.manager.sessions.values()
            (path,) = txr.mux.paths_of(session.ice)
            assert path.vip == relay.vip and path.client == local
            assert str(path) == f"[::1]:{local[1]} via [::1]:{relay.vip[1]}"
            assert relay.counts["up:127.0.0.1"] > 50 and relay.counts["down:127.0.0.1"] > 50
            assert relay.errors == []  # every reply was a correct IPv6/UDP packet from the VIP6
            assert txr.mux.drops == {}
        finally:
            await client.close()
    finally:
        relay.close()


async def test_ipv6_tunnel_bad_input_is_counted(start_txr) -> None:
    vip6 = ("2001:db8:ed::1", 3478)
    txr = await start_txr(vips=[("198.18.0.10", 3478), vip6], relays=["127.0.0.1"])
    good = encap.ipv6_udp("2001:db8:40::5", 5555, *vip6, b"\x17\xfe\xfd" + bytes(20))
    bad = [
        good[:6] + b"\x00" + good[7:],  # a hop-by-hop header: not plain, refused
        good[:6] + b"\x2c" + good[7:],  # a fragment
        good[:47],  # truncated
        good[:4] + b"\x00\x07" + good[6:],  # payload length shorter than UDP
        b"\x60",
    ]
    foreign = encap.ipv6_udp("2001:db8:40::5", 5555, "2001:db8:ed::2", 3478, b"\x00\x01")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for pkt in [*bad, foreign, good]:
            s.sendto(pkt, txr.udp_addr)
    await _wait(lambda: sum(txr.mux.drops.values()) >= len(bad) + 2)
    assert txr.mux.drops == {"tunnel_bad_inner": len(bad), "tunnel_foreign_vip": 1, "no_route": 1}


async def _wait(cond, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_dual_stack_answer_has_a_host_candidate_per_vip(
    start_txr, http: aiohttp.ClientSession
) -> None:
    """Both families' VIPs in one answer, in --vip order (the first the highest priority); the
    answer is read, not applied, so the client sends nothing."""
    vips = [("127.0.0.1", 3478), ("::1", 3478), ("::1", 443)]
    txr = await start_txr(vips=vips, relays=["127.0.0.1"])
    peer = await make_offer()
    try:
        sent = {"Content-Type": "application/sdp"}
        async with http.post(f"{txr.http_url}{CALLS_PATH}", data=peer.offer_sdp, headers=sent) as r:
            assert r.status == 201
            answer = await r.text()
    finally:
        await peer.close()
    cands = re.findall(r"a=candidate:\S+ 1 udp (\d+) (\S+) (\d+) typ host", answer)
    assert [(h, int(p)) for _, h, p in cands] == vips
    priorities = [int(p) for p, _, _ in cands]
    assert priorities == sorted(priorities, reverse=True) and len(set(priorities)) == 3
