"""Established calls whose audio a pacing thread sends: what bench.media_burst and
bench.calls_scale drive a transceiver with.

Each call is set up by a real aiortc client (ICE-lite, DTLS, SRTP keys from the handshake);
then its aiortc socket is handed to two threads: a pacer that sends one pre-protected 80-byte
Opus packet per call every 20 ms (the calls' phases spread over the period), and a receiver
that reads the echoes (with the kernel's receive timestamps, or only counting them). STUN
consent responses and RTCP still go to the client's aioice and aiortc, so the calls stay up.
The same threads drive plain UDP sockets too (`plain_calls`), for a bare echo server.
"""

from __future__ import annotations

import array
import asyncio
import itertools
import os
import re
import selectors
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from lab.peer import ClientPeer
from transceiver import aiortc_seam
from transceiver.fastpath import is_rtp

RAMP_PER_S = 20.0  # calls are set up at this rate
PTIME = 0.020
OPUS_PAYLOAD = bytes([0xFC]) + bytes(79)  # an 80-byte Opus packet (CELT FB 20 ms, silence)
TONE_SETTLE_S = 0.3  # the clients' own tone stops, its echoes come back, then the hand-over
SRTP_TAG_LEN = 10  # AES_CM_128_HMAC_SHA1_80, what aiortc negotiates
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_RTP_HEAD = struct.Struct("!BBHII")


@dataclass
class Established:
    """One call: its socket (a dup of the aiortc client's), where it sends, the packets it
    will send, and its echoes (kernel arrival times, or only their count)."""

    sock: socket.socket
    dest: tuple[str, int]
    packets: list[bytes]
    protocol: Any  # aioice's protocol for the socket: STUN, DTLS and RTCP go back to it
    arrivals: array.array = field(default_factory=lambda: array.array("d"))
    echoes: int = 0


class Media:
    """The pacing thread and the receiving thread for all calls.

    slack: a packet due within this many seconds is sent now, with the others due by then
    (0: each at its own time; more: fewer sleeps for the pacer, packets in short trains).
    timestamps: keep every echo's kernel arrival time (gaps); else only count echoes.
    poll_every: None: the receiver sleeps in select() until an echo arrives; else it looks
    every this many seconds and sleeps in between, so no echo has to wake it: over loopback
    the sender's sendto (the server's) pays that wake-up, which a NIC would not charge it.
    """

    def __init__(
        self,
        calls: list[Established],
        loop: asyncio.AbstractEventLoop,
        slack: float = 0.0,
        timestamps: bool = True,
        poll_every: float | None = None,
    ) -> None:
        self.calls = calls
        self.loop = loop
        self.slack = slack
        self.timestamps = timestamps
        self.poll_every = poll_every
        self.stop = threading.Event()
        self.stop_sending = threading.Event()  # the pacer stops, the receiver goes on
        self.late = array.array("d")  # per packet: seconds after its due time it was sent
        self.sent_at = array.array("d")  # and when (monotonic), to cut by window
        self.start_at = 0.0
        self.ran_out = False
        self._threads = [
            threading.Thread(target=self._pace, name="paced-sender", daemon=True),
            threading.Thread(target=self._receive, name="paced-receiver", daemon=True),
        ]
        # kernel receive timestamps are CLOCK_REALTIME; the windows are monotonic
        self._offset = time.time() - time.monotonic()

    def start(self) -> None:
        self.start_at = time.monotonic() + 0.1
        for t in self._threads:
            t.start()

    def close(self) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(5)

    def echoes(self) -> int:
        """Echoes counted so far, over all calls."""
        return sum(c.echoes for c in self.calls)

    def sent(self) -> int:
        """Packets sent so far, over all calls."""
        return len(self.sent_at)

    def settle(self, quiet: float = 0.2, timeout: float = 3.0) -> int:
        """Stop sending, wait until no echo has arrived for `quiet` s (at most `timeout`), and
        return the packets that were never echoed."""
        self.stop_sending.set()
        deadline = time.monotonic() + timeout
        seen = -1
        while time.monotonic() < deadline and self.echoes() != seen:
            seen = self.echoes()
            time.sleep(quiet)
        return self.sent() - self.echoes()

    def _pace(self) -> None:
        n = len(self.calls)
        slots = [(i * PTIME / n, c) for i, c in enumerate(self.calls)]  # phases over 20 ms
        k = 0  # packet index of the current period
        while not (self.stop.is_set() or self.stop_sending.is_set()):
            period = self.start_at + k * PTIME
            for phase, call in slots:
                due = period + phase
                now = time.monotonic()
                if due > now + self.slack:
                    time.sleep(due - now)
                    now = time.monotonic()
                if k >= len(call.packets):
                    self.ran_out = True
                    return
                try:
                    call.sock.sendto(call.packets[k], call.dest)
                except OSError:  # a full buffer counts as lost, it does not end the bench
                    continue
                self.late.append(max(0.0, now - due))
                self.sent_at.append(now)
            k += 1

    def _receive(self) -> None:
        sel = selectors.DefaultSelector()
        for c in self.calls:
            sel.register(c.sock, selectors.EVENT_READ, c)
        anc = socket.CMSG_SPACE(16)
        try:
            poll = self.poll_every
            while not self.stop.is_set():
                if poll is not None:
                    time.sleep(poll)
                for key, _ in sel.select(0.1 if poll is None else 0):
                    call: Established = key.data
                    while True:
                        try:
                            data, cmsgs, _, addr = call.sock.recvmsg(2048, anc)
                        except BlockingIOError:
                            break
                        if not is_rtp(data):  # consent responses, RTCP: to aiortc
                            if call.protocol is not None:
                                self.loop.call_soon_threadsafe(
                                    call.protocol.datagram_received, data, addr
                                )
                            continue
                        call.echoes += 1
                        if not self.timestamps:
                            continue
                        for level, kind, raw in cmsgs:
                            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                                sec, nsec = struct.unpack("qq", raw[:16])
                                call.arrivals.append(sec + nsec / 1e9 - self._offset)
        finally:
            sel.close()

    def gaps(self, start: float, end: float) -> tuple[list[float], int, int]:
        """Every call's echo inter-arrival gaps (s) within [start, end), the echoes that
        arrived, and the echoes expected (50 per call-second)."""
        out: list[float] = []
        got = 0
        for c in self.calls:
            times = [t for t in c.arrivals if start <= t < end]
            got += len(times)
            out += [b - a for a, b in itertools.pairwise(times)]
        return out, got, round(len(self.calls) * (end - start) / PTIME)

    def lateness(self, start: float, end: float) -> list[float]:
        return [late for late, at in zip(self.late, self.sent_at, strict=True) if start <= at < end]


def _rtp(pt: int, ssrc: int, k: int) -> bytes:
    return _RTP_HEAD.pack(0x80, pt, k & 0xFFFF, (k * 960) & 0xFFFFFFFF, ssrc) + OPUS_PAYLOAD


async def establish(
    url: str, token: str | None, n: int, packets_each: int, timestamps: bool = True
) -> tuple[list[Established], list[ClientPeer]]:
    """n calls set up by aiortc clients at RAMP_PER_S; each then handed to the media threads
    (the peers are returned too: they are closed at the end)."""
    peers = [ClientPeer(audio="opus", decode=False) for _ in range(n)]
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as http:

        async def one(i: int, peer: ClientPeer) -> None:
            await asyncio.sleep(i / RAMP_PER_S)
            await peer.start(http, url, token=token, timeout=30)

        await asyncio.gather(*(one(i, p) for i, p in enumerate(peers)))
    for peer in peers:
        peer.tone.stop()  # from here the pacing thread sends this call's audio
    # the tone's last echoes are still in flight: they are let arrive, and what the socket
    # holds at the hand-over is dropped, so the receiver counts only echoes of the pacer's
    await asyncio.sleep(TONE_SETTLE_S)
    calls = []
    for peer in peers:
        pc = peer.pc
        answer = peer.answer_sdp
        pt = int(re.search(r"a=rtpmap:(\d+) opus/48000", answer, re.I).group(1))  # type: ignore[union-attr]
        pair = aiortc_seam.nominated_pair(aiortc_seam.ice_connection(pc))
        assert pair is not None, "no nominated pair"
        transport = pair.protocol.transport
        transport.pause_reading()  # the receiving thread reads this socket from now on
        fd = transport.get_extra_info("socket").fileno()
        sock = socket.socket(fileno=os.dup(fd))
        sock.setblocking(False)
        _drop_backlog(sock, pair.protocol)
        if timestamps:
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        tx = aiortc_seam.srtp_sessions(pc.getTransceivers()[0].sender.transport)[1]
        ssrc = int.from_bytes(os.urandom(4), "big")
        packets = [tx.protect(_rtp(pt, ssrc, k)) for k in range(packets_each)]
        calls.append(Established(sock, pair.remote_addr, packets, pair.protocol))
    return calls, peers


def _drop_backlog(sock: socket.socket, protocol: Any) -> None:
    """Empty a client's socket at the hand-over: while hundreds of calls set up, aiortc falls
    seconds behind on reading the tone's echoes. RTP is dropped; STUN and RTCP go to aiortc."""
    while True:
        try:
            data, addr = sock.recvfrom(2048)
        except BlockingIOError:
            return
        if not is_rtp(data):
            protocol.datagram_received(data, addr)


def plain_calls(dest: tuple[str, int], n: int, packets_each: int) -> list[Established]:
    """n plain UDP sockets sending RTP of the SRTP packets' size (no call, no keys) to dest:
    the same load for a bare echo server."""
    calls = []
    for _ in range(n):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        ssrc = int.from_bytes(os.urandom(4), "big")
        pad = bytes(SRTP_TAG_LEN)
        packets = [_rtp(111, ssrc, k) + pad for k in range(packets_each)]
        calls.append(Established(sock, dest, packets, None))
    return calls
