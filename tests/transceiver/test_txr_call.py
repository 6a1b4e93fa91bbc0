"""Direct mode end to end: real aiortc clients against the real transceiver on 127.0.0.1."""

from __future__ import annotations

import asyncio
import re

import aiohttp
import pytest

from lab.peer import ClientPeer, call
from lab.tone import TONE_HZ, dominant_hz, rms
from transceiver.service import TransceiverService
from wire import ufrag

pytestmark = pytest.mark.timeout(60)


async def test_call_connects_echoes_and_delete_ends_it(
    txr: TransceiverService, http: aiohttp.ClientSession
) -> None:
    client = await call(http, txr.http_url, want_frames=100)
    try:
        assert await client.wait_state("connected") == "connected"
        await asyncio.wait_for(client.got_frames.wait(), 15)
        # The echo is our own tone, not silence and not noise.
        tail = client.frames[-50:]
        assert rms(tail) > 1000
        assert abs(dominant_hz(tail) - TONE_HZ) < 30
        assert client.tone.sent >= 100

        # The answer is ICE-lite, passive, with our minted ufrag and only the advertised address.
        answer = client.answer_sdp
        assert "a=ice-lite" in answer.splitlines()
        assert "a=setup:passive" in answer
        assert re.search(r"^a=fingerprint:sha-256 ([0-9A-F]{2}:){31}[0-9A-F]{2}\r$", answer, re.M)
        assert "a=end-of-candidates" in answer
        pwd = next(ln.split(":", 1)[1] for ln in answer.splitlines() if "ice-pwd" in ln)
        assert len(pwd) >= 22
        server_ufrag = next(ln.split(":", 1)[1] for ln in answer.splitlines() if "ice-ufrag" in ln)
        hint = ufrag.verify(server_ufrag, {3: bytes.fromhex("000102030405060708090a0b0c0d0e0f")})
        assert (hint.cluster, hint.transceiver) == (2, 7)
        cands = [ln for ln in answer.splitlines() if ln.startswith("a=candidate:")]
        assert len(cands) == 1 and f"127.0.0.1 {txr.udp_addr[1]} typ host" in cands[0]
        assert client.nominated()[1] == txr.udp_addr

        (session,) = txr.manager.sessions.values()
        assert session.call.frames_in >= 100 and session.call.frames_out >= 100

        async with http.delete(txr.http_url + client.location) as resp:
            assert resp.status == 204
        assert txr.manager.active == 0
        assert session.end_reason == "deleted"
        async with http.delete(txr.http_url + client.location) as resp:
            assert resp.status == 404
    finally:
        await client.close()


async def test_offer_with_a_data_channel_still_gets_audio_echo(
    txr: TransceiverService, http: aiohttp.ClientSession
) -> None:
    client = ClientPeer(data_channels=("chat",), want_frames=30)  # application m-line first
    try:
        answer = await client.post(http, txr.http_url)
        assert answer.count("a=candidate:") == 2  # one per m-line, both the same address
        await client.wait_state("connected")
        await asyncio.wait_for(client.got_frames.wait(), 15)
        assert abs(dominant_hz(client.frames[-20:]) - TONE_HZ) < 30
    finally:
        await client.close()


async def test_index_page_and_healthz(txr: TransceiverService, http: aiohttp.ClientSession) -> None:
    from transceiver.server import STATIC_DIR

    async with http.get(txr.http_url + "/") as resp:
        if (STATIC_DIR / "index.html").is_file():
            assert resp.status == 200 and resp.content_type == "text/html"
        else:
            assert resp.status == 404
    async with http.get(txr.http_url + "/healthz") as resp:
        assert resp.status == 200
        assert await resp.json() == {"status": "ok", "active": 0, "capacity": 20}
