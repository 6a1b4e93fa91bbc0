"""The application interface: PCM apps, custom apps, start/end events, metrics of a call."""

from __future__ import annotations

import asyncio
import itertools

import aiohttp
import av
import pytest

from lab.peer import call
from lab.tone import TONE_HZ, dominant_hz, rms
from transceiver.app import GREETING_FRAMES, Call, OpusFrame, load_app

pytestmark = pytest.mark.timeout(60)


class RecordingApp:
    """Opus app that answers every frame with a fixed payload and records its events."""

    media = "opus"

    def __init__(self, reply: bytes) -> None:
        self.reply = reply
        self.started: list[str] = []
        self.ended: list[tuple[str, str]] = []
        self.frames: list[OpusFrame] = []

    @property
    def payloads(self) -> list[bytes]:
        return [f.payload for f in self.frames]

    async def handle_call(self, call: Call) -> None:
        self.started.append(call.id)
        async for frame in call:
            assert isinstance(frame, OpusFrame)
            self.frames.append(frame)
            call.send(OpusFrame(self.reply))  # no timestamp: the transceiver numbers them

    async def call_ended(self, call: Call, reason: str) -> None:
        self.ended.append((call.id, reason))


async def test_pcm_echo_app_decodes_and_reencodes(start_txr, http: aiohttp.ClientSession):
    txr = await start_txr(app=load_app("pcm-echo"))
    client = await call(http, txr.http_url, want_frames=80)
    try:
        await client.wait_state("connected")
        await asyncio.wait_for(client.got_frames.wait(), 15)
        assert abs(dominant_hz(client.frames[-40:]) - TONE_HZ) < 30
        assert rms(client.frames[-40:]) > 1000
        (session,) = txr.manager.sessions.values()
        assert session.call.media == "pcm" and session.call.frames_in >= 50
    finally:
        await client.close()


async def test_opus_app_gets_encoded_frames_and_its_replies_go_out_verbatim(
    start_txr, http: aiohttp.ClientSession
) -> None:
    # One Opus packet of 20 ms silence (TOC 0xF8: CELT FB 20 ms, mono, 1 frame).
    silence = bytes([0xF8, 0xFF, 0xFE])
    app = RecordingApp(silence)
    txr = await start_txr(app=app)
    client = await call(http, txr.http_url, want_frames=30)
    try:
        await client.wait_state("connected")
        await asyncio.wait_for(client.got_frames.wait(), 15)
        (session,) = txr.manager.sessions.values()
        assert app.started == [session.id]
        # Real Opus from the client: TOC bytes of 20 ms frames, not PCM.
        assert len(app.payloads) >= 30 and all(2 < len(p) < 1200 for p in app.payloads)
        assert {p[0] & 0x03 for p in app.payloads} == {0}  # one frame per packet
        # Delivered on arrival with RTP numbering: consecutive on loopback, 20 ms apart.
        seqs = [f.sequence for f in app.frames]
        assert seqs == [(seqs[0] + i) % 65536 for i in range(len(seqs))]
        stamps = [f.timestamp for f in app.frames]
        steps = {(b - a) % 2**32 for a, b in itertools.pairwise(stamps)}
        assert steps == {960}
        # What the client decodes is our silence, not its tone.
        assert rms(client.frames[-10:]) < 50
        async with http.delete(txr.http_url + (client.location or "")) as resp:
            assert resp.status == 204
        assert app.ended == [(session.id, "deleted")]
    finally:
        await client.close()


def test_load_app_rejects_what_is_not_an_app() -> None:
    assert load_app("echo").media == "opus"
    with pytest.raises(ValueError, match="module:attr"):
        load_app("nonsense")
    with pytest.raises(ValueError, match="cannot load app"):
        load_app("json:dumps")
    with pytest.raises(ValueError, match="cannot load app"):
        load_app("no_such_module_xyz:App")
    with pytest.raises(ValueError, match="not a CallApp"):
        load_app("json:JSONDecoder")


async def test_call_send_checks_frame_type() -> None:
    c = Call("x", "opus")
    with pytest.raises(TypeError):
        c.send(av.AudioFrame(format="s16", layout="mono", samples=960))
    for _ in range(60):
        c.send(OpusFrame(b"\xf8\xff\xfe"))
    assert c.dropped_out == 10  # bounded queue drops the oldest


async def test_metrics_count_a_call(txr, http: aiohttp.ClientSession) -> None:
    client = await call(http, txr.http_url, want_frames=20)
    try:
        await client.wait_state("connected")
        await asyncio.wait_for(client.got_frames.wait(), 15)
        async with http.get(txr.http_url + "/metrics") as resp:
            text = await resp.text()
        values = {
            ln.rsplit(" ", 1)[0]: float(ln.rsplit(" ", 1)[1])
            for ln in text.splitlines()
            if ln and not ln.startswith("#")
        }
        assert values["txr_calls_active"] == 1
        assert values["txr_calls_started_total"] == 1
        assert values["txr_call_setup_seconds_count"] == 1
        assert values["txr_call_setup_seconds_sum"] < 5
        assert values['txr_packets_total{direction="in"}'] > 20
        assert values['txr_packets_total{direction="out"}'] > 20
        assert values['txr_bytes_total{direction="out"}'] > 20 * 12
    finally:
        await client.close()


class HangUpApp:
    """Hears 10 frames, then hangs up by returning; a second instance raises instead."""

    media = "opus"

    def __init__(self, fail: bool) -> None:
        self.fail = fail
        self.ended: list[str] = []

    async def handle_call(self, call: Call) -> None:
        for _ in range(10):
            await call.recv()
        if self.fail:
            raise RuntimeError("app bug")

    async def call_ended(self, call: Call, reason: str) -> None:
        self.ended.append(reason)


class FailingFrameApp:
    """An on_frame app whose function raises on the first frame: the call ends app_error."""

    media = "opus"

    def __init__(self) -> None:
        self.ended: list[str] = []

    async def handle_call(self, call: Call) -> None:
        def first(frame: object) -> None:
            raise RuntimeError("cannot take it")

        call.on_frame(first)
        await call.closed()

    async def call_ended(self, call: Call, reason: str) -> None:
        self.ended.append(reason)


@pytest.mark.parametrize(
    ("make_app", "reason"),
    [
        (lambda: HangUpApp(False), "app_done"),
        (lambda: HangUpApp(True), "app_error"),
        (FailingFrameApp, "app_error"),  # its on_frame function raises
    ],
    ids=["returns", "raises", "on_frame-raises"],
)
async def test_app_hangs_up_by_returning_or_failing(start_txr, http, make_app, reason) -> None:
    app = make_app()
    txr = await start_txr(app=app)
    client = await call(http, txr.http_url)
    try:
        await client.wait_state("connected")
        (session,) = txr.manager.sessions.values()
        await asyncio.wait_for(session.ended.wait(), 10)
        assert session.end_reason == reason and app.ended == [reason]
        assert session.call.frames_in >= 1
        assert await client.wait_state("closed", "failed") in ("closed", "failed")
    finally:
        await client.close()


async def test_greet_echo_speaks_first_then_echoes(start_txr, http: aiohttp.ClientSession):
    """greet-echo (the app bench.setup_rtts times against): its greeting frames reach the
    client before any echo, it stops greeting once the client talks (barge-in: every greeting
    packet was sent before the first echo, on the same path), and the client's frames come
    back."""
    txr = await start_txr(app=load_app("greet-echo"))
    client = await call(http, txr.http_url, want_frames=0)
    try:
        await client.wait_state("connected")
        await asyncio.wait_for(client.echoed.wait(), 10)
        assert client.greeting_ms is not None and client.echo_ms is not None
        assert client.greeting_ms <= client.echo_ms
        greeted = client.greeting_in
        assert 1 <= greeted <= GREETING_FRAMES
        seen = client.rtp_in
        for _ in range(500):  # 30 more packets: echoes only (polling state, not timing it)
            if client.rtp_in >= seen + 30:
                break
            await asyncio.sleep(0.01)
        assert client.rtp_in >= seen + 30 and client.greeting_in == greeted
    finally:
        await client.close()


async def test_on_frame_takes_queued_frames_first_then_each_as_it_arrives() -> None:
    c = Call("c1", "opus")
    c._deliver(OpusFrame(b"a"))
    c._deliver(OpusFrame(b"b"))
    got: list[bytes] = []
    c.on_frame(lambda f: got.append(f.payload))  # type: ignore[union-attr]
    assert got == [b"a", b"b"]
    c._deliver(OpusFrame(b"c"))
    assert got == [b"a", b"b", b"c"] and c.frames_in == 3 and not c._in  # nothing for recv()
    closed = asyncio.ensure_future(c.closed())
    await asyncio.sleep(0)
    assert not closed.done()
    c._end()
    await asyncio.wait_for(closed, 1)
    c._deliver(OpusFrame(b"d"))  # after the end: not handed on
    assert got == [b"a", b"b", b"c"]
    await asyncio.wait_for(c.closed(), 1)  # and closed() after the end returns at once


async def test_an_on_frame_function_that_raises_fails_closed() -> None:
    c = Call("c2", "opus")

    def fails(frame: object) -> None:
        raise ValueError("bad frame")

    c.on_frame(fails)
    c._deliver(OpusFrame(b"a"))  # the socket's callback is not the one that fails
    with pytest.raises(ValueError, match="bad frame"):
        await asyncio.wait_for(c.closed(), 1)
    c._deliver(OpusFrame(b"b"))  # fn is no longer called; frames queue for recv()
    assert (await c.recv()).payload == b"b"  # type: ignore[union-attr]
