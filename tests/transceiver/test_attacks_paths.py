"""Issue 8, items 1 and 2, on a real transceiver with real aiortc calls through the tunnel
stand-in (lab/tunnelrelay.py): nobody can take a call's replies or aim a call at a third party,
and a client that really changes address keeps its call.

Every attacker here is a UDP socket on loopback that counts what it receives; the calls are
real (DTLS, SRTP, the echo app), so "unaffected" means the client kept receiving its echo.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
from aioice import stun

from lab.peer import ClientPeer, call
from lab.tunnelrelay import TunnelRelay
from wire import encap

pytestmark = pytest.mark.timeout(90)
RELAYS = ["127.0.0.1", "127.0.0.2"]
# Looks like SRTP (RFC 7983 first byte 128..191, PT 111), and like DTLS.
FAKE_RTP = b"\x80\x6f" + bytes(10) + b"forged media" * 4
FAKE_DTLS = b"\x17\xfe\xfd" + bytes(40)


class Counter(asyncio.DatagramProtocol):
    """A socket that counts what it is sent (an attacker, or a victim)."""

    def __init__(self) -> None:
        self.got: list[bytes] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.got.append(data)

    @property
    def addr(self) -> tuple[str, int]:
        assert self.transport is not None
        return self.transport.get_extra_info("sockname")[:2]


@pytest.fixture
async def sockets() -> AsyncIterator[Callable[[str], object]]:
    opened: list[asyncio.DatagramTransport] = []

    async def open_at(host: str) -> Counter:
        loop = asyncio.get_running_loop()
        transport, proto = await loop.create_datagram_endpoint(Counter, local_addr=(host, 0))
        opened.append(transport)
        return proto

    yield open_at
    for t in opened:
        t.close()


@pytest.fixture
async def edge(start_txr) -> AsyncIterator[tuple[object, TunnelRelay]]:
    relay = await TunnelRelay.start(RELAYS)
    try:
        txr = await start_txr(
            vips=[relay.vip], relay_tunnel_port=relay.tunnel_port, relays=[RELAYS[0]]
        )
        relay.txr = txr.udp_addr
        yield txr, relay
    finally:
        relay.close()


async def talking(http: aiohttp.ClientSession, txr) -> ClientPeer:
    client = await call(http, txr.http_url, want_frames=0)
    await client.wait_state("connected")
    await until(lambda: client.rtp_in > 50, 15, "echo flowing")
    return client


async def until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def test_tunnel_datagrams_from_an_unknown_host_are_dropped(edge, http, sockets) -> None:
    """Item 1: a stranger's tunnel datagrams naming a live client never get a reply."""
    txr, relay = edge
    client = await talking(http, txr)
    try:
        client_addr = client.nominated()[0]
        attacker = await sockets("127.0.0.3")  # not a relay the transceiver knows
        forged = [encap.ipv4_udp(*client_addr, *relay.vip, p) for p in (FAKE_RTP, FAKE_DTLS)]
        before, down = client.rtp_in, relay.counts["down:127.0.0.1"]
        for _ in range(50):  # 50 a second for a second, as in the issue
            for packet in forged:
                attacker.transport.sendto(packet, txr.udp_addr)
            await asyncio.sleep(0.02)
        await until(lambda: txr.mux.drops["tunnel_unknown_relay"] >= 100, 5, "the drops")
        await until(lambda: client.rtp_in > before + 50, 5, "the echo after the attack")
        assert attacker.got == []
        assert txr.mux.drops["tunnel_unknown_relay"] == 100
        assert b'reason="tunnel_unknown_relay"} 100.0' in txr.metrics.render()
        assert relay.counts["down:127.0.0.1"] > down + 40  # replies still go the real way
        assert txr.mux.drops["send_no_credit"] == 0  # a talking call never meets its limit
    finally:
        await client.close()


@pytest.mark.parametrize("media_path", ["fast", "aiortc"])
async def test_forged_media_from_a_known_relay_address_does_not_move_the_path(
    start_txr, http, sockets, media_path: str
) -> None:
    """Item 1 with a source the transceiver does trust: media that does not authenticate under
    the call's keys never moves the reply path; media that does (the flow really moved to the
    other relay) moves it, on the fast path and on aiortc's alike."""
    relay = await TunnelRelay.start(RELAYS)
    try:
        txr = await start_txr(
            vips=[relay.vip],
            relay_tunnel_port=relay.tunnel_port,
            relays=RELAYS,
            media_path=media_path,
            rtcp_interval=0.5,  # RTCP reports go out while the forgery runs (below)
        )
        relay.txr = txr.udp_addr
        client = await talking(http, txr)
        try:
            client_addr = client.nominated()[0]
            # Same address as relay 2 (its real tunnel socket counts what reaches it).
            forger = await sockets("127.0.0.2")
            rtcp = b"\x80\xc8" + bytes(40)  # SRTCP-looking: aiortc's to unprotect
            forged = [
                encap.ipv4_udp(*client_addr, *relay.vip, p) for p in (FAKE_RTP, FAKE_DTLS, rtcp)
            ]
            (session,) = txr.manager.sessions.values()
            (route,) = session.ice.routes
            # While the client is silent (no real datagram resets anything), forge for 1.2 s:
            # aiortc's RTCP reports keep going out meanwhile, to wherever the path points.
            relay.paused = True
            for _ in range(60):
                for packet in forged:
                    forger.transport.sendto(packet, txr.udp_addr)
                await asyncio.sleep(0.02)
            if session.fastpath is not None:
                await until(lambda: session.fastpath.rx_errors >= 60, 5, "refused RTP")
            assert route.relay == "127.0.0.1"
            relay.paused = False
            before = client.rtp_in
            await until(lambda: client.rtp_in > before + 50, 5, "the echo after the attack")
            assert relay.counts["down:127.0.0.2"] == 0 and forger.got == []
            assert route.relay == "127.0.0.1"
            # The client's flow really moves to relay 2: its authenticated media moves the path.
            relay.via = "127.0.0.2"
            await until(lambda: relay.counts["down:127.0.0.2"] > 20, 10, "replies via relay 2")
            assert route.relay == "127.0.0.2" and relay.errors == []
        finally:
            await client.close()
    finally:
        relay.close()


async def test_a_spoofed_nomination_does_not_aim_the_call_at_a_victim(edge, http, sockets) -> None:
    """Item 2: the attacker's own call, one Binding request with USE-CANDIDATE and valid
    integrity from a spoofed source (the victim): the victim gets no media at all, only the
    check's answer and our check back, each about the request's size."""
    txr, relay = edge
    victim = await sockets("127.0.0.1")
    attacker = await talking(http, txr)  # the attacker's own call: it knows the password
    try:
        s_ufrag, s_pwd, c_ufrag = attacker.credentials()
        requests = 0
        for _ in range(10):  # and keeps "consent" up for the victim path, once a second
            msg = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
            msg.attributes["USERNAME"] = f"{s_ufrag}:{c_ufrag}"
            msg.attributes["PRIORITY"] = 1 << 30
            msg.attributes["ICE-CONTROLLING"] = 1
            msg.attributes["USE-CANDIDATE"] = None
            msg.add_message_integrity(s_pwd.encode())
            msg.add_fingerprint()
            spoofed = bytes(msg)
            relay._from_client(spoofed, victim.addr)  # the relay wraps what it got, spoofed
            requests += 1
            await asyncio.sleep(0.3)
        await until(lambda: len(victim.got) >= 2 * requests, 5, "the answers")
        await asyncio.sleep(0.5)
        (session,) = txr.manager.sessions.values()
        assert session.ice.selected.client == attacker.nominated()[0]
        media = [d for d in victim.got if d[0] >= 20]  # anything but STUN (0..3)
        assert media == []
        assert len(victim.got) == 2 * requests  # per request: our check, and its answer
        assert all(len(d) <= len(spoofed) + 8 for d in victim.got)
        # The attacker's own call is untouched.
        before = attacker.rtp_in
        await until(lambda: attacker.rtp_in > before + 20, 5, "the attacker's echo")
    finally:
        await attacker.close()


async def test_a_client_that_changes_address_keeps_its_call(edge, http, capsys) -> None:
    """Its old path goes silent, its next consent check comes from the new address, the
    transceiver checks back there, and the audio continues on the new path."""
    txr, relay = edge
    client = await talking(http, txr)
    try:
        old = client.nominated()[0]
        free = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        free.bind(("127.0.0.1", 0))
        new_port = free.getsockname()[1]
        free.close()
        relay.rebind(old, new_port)  # a NAT in front of the relay gave it a new mapping
        changed, before = time.monotonic(), client.rtp_in
        (session,) = txr.manager.sessions.values()
        await until(lambda: session.ice.selected.client == (old[0], new_port), 15, "the move")
        await until(lambda: client.rtp_in > before + 100, 10, "the echo on the new path")
        gap = client.max_gap
        with capsys.disabled():
            print(f"\naddress change: call moved in {time.monotonic() - changed:.2f} s, "
                  f"longest echo gap {gap * 1000:.0f} ms")  # fmt: skip
        assert txr.manager.active == 1 and client.pc.connectionState == "connected"
        assert gap < 8  # aioice sends a consent check every 4-6 s
    finally:
        await client.close()
