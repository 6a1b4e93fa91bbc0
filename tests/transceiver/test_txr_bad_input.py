"""Bad input never hurts: garbage datagrams, forged STUN, broken offers -> counted drops or 4xx."""

from __future__ import annotations

import asyncio
import os
import socket

import aiohttp
import pytest
from aioice import stun

from lab.peer import call, make_offer

pytestmark = pytest.mark.timeout(60)


def binding(username: str, password: str, **attrs: object) -> bytes:
    msg = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    msg.attributes["USERNAME"] = username
    msg.attributes["PRIORITY"] = 12345
    msg.attributes["ICE-CONTROLLING"] = 1
    msg.attributes.update(attrs)
    msg.add_message_integrity(password.encode())
    return bytes(msg)


def answer_ufrag(sdp: str) -> str:
    return next(ln.split(":", 1)[1] for ln in sdp.splitlines() if ln.startswith("a=ice-ufrag:"))


async def recv_or_none(sock: socket.socket, timeout: float = 1.0) -> bytes | None:
    loop = asyncio.get_running_loop()
    try:
        return await asyncio.wait_for(loop.sock_recv(sock, 2048), timeout)
    except TimeoutError:
        return None


async def test_garbage_and_forged_stun_are_dropped_and_the_call_goes_on(
    txr, http: aiohttp.ClientSession
) -> None:
    client = await call(http, txr.http_url, want_frames=30)
    try:
        await client.wait_state("connected")
        await asyncio.wait_for(client.got_frames.wait(), 15)
        (session,) = txr.manager.sessions.values()
        server_ufrag = answer_ufrag(client.answer_sdp)
        checks_before = session.ice.checks
        selected_before = session.ice.selected

        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.setblocking(False)
            s.bind(("127.0.0.1", 0))
            for junk in (
                b"",
                b"\xff" * 40,  # first byte in no RFC 7983 range
                b"\x00\x01\x00\x00" + b"\x00" * 16,  # STUN header, wrong cookie
                b"\x00\x01\x00\x08\x21\x12\xa4\x42" + os.urandom(12),  # length past the end
                b"\x17\xfe\xfd" + os.urandom(60),  # DTLS record from a stranger
                b"\x80\x6f" + os.urandom(100),  # RTP from a stranger
            ):
                s.sendto(junk, txr.udp_addr)
            # A Binding request for a ufrag nobody minted: silently dropped.
            s.sendto(binding("AAAAAAAAAAAAAAAAAAAAAAAA:x", "p" * 22), txr.udp_addr)
            assert await recv_or_none(s, 0.5) is None
            # The live call's ufrag with the wrong password (even with USE-CANDIDATE): 401.
            forged = binding(f"{server_ufrag}:evil", "w" * 22, **{"USE-CANDIDATE": None})
            s.sendto(forged, txr.udp_addr)
            reply = stun.parse_message(await recv_or_none(s) or b"")
            assert reply.message_class == stun.Class.ERROR and reply.error_code == 401
            # No MESSAGE-INTEGRITY at all: 400.
            bare = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
            bare.attributes["USERNAME"] = f"{server_ufrag}:evil"
            s.sendto(bytes(bare), txr.udp_addr)
            reply = stun.parse_message(await recv_or_none(s) or b"")
            assert reply.error_code == 400

        assert dict(txr.mux.drops) == {
            "not_webrtc": 2,
            "bad_stun": 2,
            "no_route": 2,
            "unknown_ufrag": 1,
            "bad_integrity": 1,
            "no_username": 1,
        }
        # No state change: the forged check neither counted nor moved the selected pair.
        assert session.ice.selected == selected_before
        assert session.ice.checks == checks_before
        assert len(txr.mux.paths_of(session.ice)) == 1
        # And the call keeps flowing.
        client.got_frames.clear()
        client.want_frames = len(client.frames) + 25
        await asyncio.wait_for(client.got_frames.wait(), 10)
        assert txr.manager.active == 1
        metrics = await (await http.get(txr.http_url + "/metrics")).text()
        assert 'txr_drops_total{reason="bad_integrity"} 1.0' in metrics
    finally:
        await client.close()


async def post(http: aiohttp.ClientSession, base: str, body: str, ctype: str = "application/sdp"):
    async with http.post(f"{base}/v1/calls", data=body, headers={"Content-Type": ctype}) as r:
        return r.status, await r.text()


async def test_bad_offers_get_400_with_a_reason(txr, http: aiohttp.ClientSession) -> None:
    client = await make_offer()
    try:
        good = client.pc.localDescription.sdp
        assert await post(http, txr.http_url, "hello, I am not SDP") == (
            400,
            "body is not an SDP offer (must start with v=0)\n",
        )
        status, body = await post(http, txr.http_url, good, ctype="text/plain")
        assert status == 415 and "application/sdp" in body
        no_fp = "\r\n".join(ln for ln in good.split("\r\n") if not ln.startswith("a=fingerprint"))
        assert await post(http, txr.http_url, no_fp) == (
            400,
            "m-line audio has no DTLS fingerprint\n",
        )
        head, _, _ = good.partition("m=audio")
        status, body = await post(http, txr.http_url, head)
        assert (status, body) == (400, "offer has no audio m-line\n")
        video = good.replace("m=audio", "m=video")
        status, body = await post(http, txr.http_url, video)
        assert status == 400 and "video" in body
        no_opus = good.replace("opus/48000/2", "speex/48000/2")
        status, body = await post(http, txr.http_url, no_opus)
        assert status == 400 and "Opus" in body
        status, body = await post(http, txr.http_url, "v=0\r\n" + "a=x\r\n" * 100_000)
        assert status in (400, 413)
        assert txr.manager.active == 0 and txr.mux.registered() == []
    finally:
        await client.close()


async def test_capacity_and_draining_refuse_with_503(start_txr, http: aiohttp.ClientSession):
    txr = await start_txr(capacity=1)
    first = await call(http, txr.http_url)
    try:
        extra = await make_offer()
        try:
            status, body = await post(http, txr.http_url, extra.pc.localDescription.sdp)
            assert status == 503 and body.startswith("full")
            await txr.manager.delete(next(iter(txr.manager.sessions)))
            txr.manager.draining = True
            status, body = await post(http, txr.http_url, extra.pc.localDescription.sdp)
            assert status == 503 and body.startswith("draining")
            async with http.get(txr.http_url + "/healthz") as resp:
                assert (await resp.json())["status"] == "draining"
        finally:
            await extra.close()
    finally:
        await first.close()


def fuzz_datagrams(seed: int, count: int) -> list[bytes]:
    """Random datagrams biased toward every branch of the demux: tunnel, STUN, DTLS, RTP."""
    import random

    from wire import encap

    rng = random.Random(seed)
    out: list[bytes] = []
    for _ in range(count):
        body = rng.randbytes(rng.randrange(0, 200))
        kind = rng.randrange(6)
        if kind == 0:  # STUN header with the right cookie, random attributes
            out.append(bytes([0, 1]) + len(body).to_bytes(2, "big") + b"\x21\x12\xa4\x42" + body)
        elif kind == 1:  # a well-formed tunnel datagram around random payload
            inner = bytes([rng.choice([0, 1, 0x17, 0x80, 0xFF])]) + body
            out.append(encap.ipv4_udp("198.18.1.2", 4000, "127.0.0.1", 9, inner))
        elif kind == 2:  # tunnel-looking prefix, random rest
            out.append(b"\x45" + body)
        else:
            out.append(bytes([rng.randrange(256)]) + body)
    return out


async def test_fuzzed_datagrams_never_break_the_socket_or_a_call(
    txr, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    client = await call(http, txr.http_url, want_frames=20)
    try:
        await client.wait_state("connected")

        def rx() -> float:
            return txr.metrics.registry.get_sample_value("txr_packets_total", {"direction": "in"})

        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            datagrams = fuzz_datagrams(seed=7, count=600)
            start = rx()
            for d in datagrams:
                s.sendto(d, txr.udp_addr)
                await asyncio.sleep(0)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        # The fuzz arrives interleaved with the call's own packets: wait for at least as many.
        while rx() - start < len(datagrams):
            assert loop.time() < deadline
            await asyncio.sleep(0.02)
        assert sum(txr.mux.drops.values()) >= 0.9 * len(datagrams)
        assert not [r for r in caplog.records if r.name == "transceiver.mux"], "mux raised"
        client.got_frames.clear()
        client.want_frames = len(client.frames) + 25
        await asyncio.wait_for(client.got_frames.wait(), 10)
        assert txr.manager.active == 1
    finally:
        await client.close()
