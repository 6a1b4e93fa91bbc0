"""The Opus media fast path (transceiver/fastpath.py): it carries the media directly and through
the tunnel, the echo is still our tone, bad input is counted, and `--media-path aiortc` keeps
the old path."""

from __future__ import annotations

import asyncio
import os
import re
import struct

import aiohttp
import pytest

from lab.peer import call
from lab.tone import TONE_HZ, dominant_hz, rms
from lab.tunnelrelay import TunnelRelay
from transceiver import aiortc_seam
from transceiver.app import OpusFrame, PcmEchoApp
from transceiver.certs import SharedCertificate
from transceiver.fastpath import parse_rtp
from transceiver.service import TransceiverService

pytestmark = pytest.mark.timeout(60)


def _metric(txr: TransceiverService, name: str, **labels: str) -> float:
    value = txr.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def _echo_call(txr: TransceiverService, http: aiohttp.ClientSession, frames: int = 80):
    client = await call(http, txr.http_url, want_frames=frames)
    await client.wait_state("connected")
    await asyncio.wait_for(client.got_frames.wait(), 15)
    tail = client.frames[-40:]
    assert rms(tail) > 1000
    assert abs(dominant_hz(tail) - TONE_HZ) < 30
    return client


async def test_fast_path_carries_the_echo(
    txr: TransceiverService, http: aiohttp.ClientSession
) -> None:
    client = await _echo_call(txr, http)
    try:
        (session,) = txr.manager.sessions.values()
        fast = session.fastpath
        assert fast is not None
        # Every frame the app got came through the fast path, and every reply left through it.
        assert fast.rtp_in >= 80 and fast.rtp_in == session.call.frames_in
        assert fast.rtp_out >= 80 and fast.rtp_out == session.call.frames_out
        assert fast.rx_errors == 0
        # aiortc's receiver never saw the RTP (it only gets DTLS and RTCP now).
        rtp = session.pc.getTransceivers()[0]
        assert aiortc_seam.remote_stream_count(rtp.receiver) == 0
        # The client demultiplexed our RTP by the SSRC and payload type the answer announced.
        answer = client.answer_sdp
        ssrc = int(re.search(r"^a=ssrc:(\d+) ", answer, re.M).group(1))
        assert ssrc == aiortc_seam.sender_ssrc(rtp.sender)
        stats = await client.pc.getStats()
        inbound = [s for s in stats.values() if s.type == "inbound-rtp"]
        assert inbound and inbound[0].packetsReceived >= 80
        # aiortc's sender (its RTCP SR, its stats) reports what the fast path sent: the counters
        # are fed every 16 packets.
        (sent,) = [s for s in (await rtp.sender.getStats()).values() if s.type == "outbound-rtp"]
        assert 0 < sent.packetsSent <= fast.rtp_out and sent.packetsSent > fast.rtp_out - 16
        assert sent.ssrc == ssrc
        assert _metric(txr, "txr_fastpath_rtp_total", direction="in") >= 80
        assert _metric(txr, "txr_fastpath_rtp_total", direction="out") >= 80

        # Garbage that reaches the fast path on the call's path is counted, nothing breaks.
        before = fast.rtp_in
        fast.rtp_received(b"\x80\x6f" + os.urandom(60))  # fails SRTP authentication
        fast.rtp_received(b"\x80")
        fast.rtp_received(b"\x80\x6f" + bytes(1600))  # bigger than libsrtp's buffer
        assert fast.rx_errors == 3
        out_before = fast.rtp_out
        session.call.send(OpusFrame(bytes(70000)))  # cannot be one RTP packet: counted, not sent
        assert fast.tx_errors == 1 and fast.rtp_out == out_before
        client.got_frames.clear()
        client.want_frames = len(client.frames) + 20
        await asyncio.wait_for(client.got_frames.wait(), 10)
        assert fast.rtp_in > before

        # Counts survive the call's end in the metric.
        async with http.delete(txr.http_url + client.location) as resp:
            assert resp.status == 204
        assert _metric(txr, "txr_fastpath_rtp_total", direction="in") >= fast.rtp_in
    finally:
        await client.close()


async def test_aiortc_media_path_still_echoes(start_txr, http: aiohttp.ClientSession) -> None:
    txr = await start_txr(media_path="aiortc")
    client = await _echo_call(txr, http)
    try:
        (session,) = txr.manager.sessions.values()
        assert session.fastpath is None
        assert session.call.frames_in >= 80
        assert _metric(txr, "txr_fastpath_rtp_total", direction="in") == 0
    finally:
        await client.close()


async def test_pcm_app_stays_on_aiortc(start_txr, http: aiohttp.ClientSession) -> None:
    txr = await start_txr(app=PcmEchoApp())
    client = await _echo_call(txr, http, frames=60)
    try:
        (session,) = txr.manager.sessions.values()
        assert session.fastpath is None
    finally:
        await client.close()


async def test_bad_media_path_setting_is_refused(start_txr) -> None:
    from transceiver.service import ConfigError

    with pytest.raises(ConfigError, match="media path"):
        await start_txr(media_path="warp")


async def test_fast_path_through_a_tunnel(start_txr, http: aiohttp.ClientSession) -> None:
    relay = await TunnelRelay.start(["127.0.0.1"])
    try:
        txr = await start_txr(
            vips=[relay.vip], relay_tunnel_port=relay.tunnel_port, relays=relay.relays
        )
        relay.txr = txr.udp_addr
        client = await _echo_call(txr, http)
        try:
            (session,) = txr.manager.sessions.values()
            assert session.fastpath is not None and session.fastpath.rtp_out >= 80
            # The relay checks both checksums of every reply (verify_checksums=True).
            assert relay.errors == []
            assert relay.counts["down:127.0.0.1"] >= 80
        finally:
            await client.close()
    finally:
        relay.close()


async def test_calls_share_one_certificate(
    txr: TransceiverService, http: aiohttp.ClientSession
) -> None:
    a = await call(http, txr.http_url)
    b = await call(http, txr.http_url)
    try:
        prints = [re.search(r"^a=fingerprint:(.*)$", c.answer_sdp, re.M) for c in (a, b)]
        assert prints[0] and prints[1] and prints[0].group(1) == prints[1].group(1)
        await asyncio.gather(a.wait_state("connected"), b.wait_state("connected"))
    finally:
        await asyncio.gather(a.close(), b.close())


def test_shared_certificate_renews_when_old() -> None:
    cert = SharedCertificate()
    assert cert.get() is cert.get()
    stale = SharedCertificate(max_age=0.0)
    first = stale.get()
    assert stale.get() is not first


def _rtp(payload: bytes, *, csrcs: int = 0, ext: bytes | None = None, pad: int = 0) -> bytes:
    b0 = 0x80 | csrcs | (0x10 if ext is not None else 0) | (0x20 if pad else 0)
    out = struct.pack("!BBHII", b0, 0x6F, 513, 48000, 0x1234) + bytes(4 * csrcs)
    if ext is not None:
        out += struct.pack("!HH", 0xBEDE, len(ext) // 4) + ext
    out += payload
    if pad:
        out += bytes(pad - 1) + bytes([pad])
    return out


def test_parse_rtp_layouts_and_garbage() -> None:
    assert parse_rtp(_rtp(b"opus")) == (0x6F, 513, 48000, b"opus")
    assert parse_rtp(_rtp(b"opus", csrcs=2, ext=b"\x10\xaa\x00\x00", pad=3))[3] == b"opus"
    assert parse_rtp(b"\x80\x6f") is None  # truncated
    assert parse_rtp(b"\x40" + bytes(20)) is None  # RTP version 1
    assert parse_rtp(b"\x90" + bytes(11) + b"\xbe\xde") is None  # extension header cut off
    assert parse_rtp(b"\x90" + bytes(11) + b"\xbe\xde\x00\x09" + bytes(8)) is None  # ext too long
    assert parse_rtp(b"\xa0" + bytes(11) + b"\x01\xff") is None  # padding longer than packet


async def test_call_inbound_queue_semantics() -> None:
    from transceiver.app import Call, CallEnded

    c = Call("q", "opus")
    # A cancelled receiver does not swallow the frame meant for the next one.
    first = asyncio.ensure_future(c.recv())
    second = asyncio.ensure_future(c.recv())
    await asyncio.sleep(0)
    first.cancel()
    c._deliver(OpusFrame(b"a", 0, 1))
    assert (await asyncio.wait_for(second, 1)).payload == b"a"
    assert first.cancelled()
    # Frames that arrived before the end are still read, then the end.
    c._deliver(OpusFrame(b"b", 960, 2))
    c._end()
    c._deliver(OpusFrame(b"late", 1920, 3))  # after the end: ignored
    assert [f.payload async for f in c] == [b"b"]
    with pytest.raises(CallEnded):
        await c.recv()
    # A receiver already waiting when the call ends is woken with CallEnded.
    d = Call("r", "opus")
    waiting = asyncio.ensure_future(d.recv())
    await asyncio.sleep(0)
    d._end()
    with pytest.raises(CallEnded):
        await asyncio.wait_for(waiting, 1)
