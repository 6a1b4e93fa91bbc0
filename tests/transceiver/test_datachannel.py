"""Data channels (transceiver/channels.py): an aiortc client opens `oai-events`, its JSON and
binary messages of every size come back identical while the audio echo flows (on the Opus fast
path, through aiortc's PCM path, through the tunnel), and the app sees open/close events in
order, bounded queues and clear errors."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from lab.channelclient import LABEL, ChannelEcho, json_of_size, standard_messages
from lab.peer import ClientPeer
from lab.tunnelrelay import TunnelRelay
from transceiver import aiortc_seam
from transceiver import channels as ch
from transceiver.app import Call, load_app
from transceiver.channels import ChannelClosed, ChannelOpened, Message, MessageTooBig
from transceiver.service import TransceiverService

pytestmark = pytest.mark.timeout(90)


async def _connect(http: aiohttp.ClientSession, url: str, *labels: str) -> ClientPeer:
    client = ClientPeer(audio="pcm", decode=False, data_channels=labels or (LABEL,))
    try:
        await client.start(http, url)
    except BaseException:
        await client.close()
        raise
    return client


async def _echo_everything(client: ClientPeer) -> dict[int, list[float]]:
    """Every standard message comes back identical while echoed audio keeps arriving."""
    echo = ChannelEcho(client.channels[0])
    await echo.wait_open()
    before = client.rtp_in
    rtts = await echo.exchange(standard_messages())
    assert 0 in rtts and 65536 in rtts and len(rtts[65536]) == 2  # text and binary
    # Audio flowed during the exchange too (50 packets a second echoed).
    got_audio = asyncio.Event()
    deadline = before + 25
    for _ in range(200):
        if client.rtp_in >= deadline:
            got_audio.set()
            break
        await asyncio.sleep(0.02)
    assert got_audio.is_set(), f"audio echo stalled: {before} -> {client.rtp_in}"
    return rtts


async def test_oai_events_echo_on_the_fast_path(
    txr: TransceiverService, http: aiohttp.ClientSession
) -> None:
    client = await _connect(http, txr.http_url)
    try:
        await _echo_everything(client)
        (session,) = txr.manager.sessions.values()
        # The audio went through the Opus fast path; SCTP (DTLS records) went to aiortc.
        assert session.fastpath is not None and session.fastpath.rtp_in >= 25
        assert session.fastpath.rtp_out >= 25 and session.fastpath.rx_errors == 0
        channels = session.call.channels
        count = len(standard_messages())
        assert channels.open == (LABEL,)
        assert channels.messages_in == count and channels.messages_out == count
        assert channels.dropped_in == channels.dropped_out == channels.refused == 0
        assert "a=max-message-size:262144" in client.answer_sdp
        # Every echo went out at once: the messages' own DTLS records earned the send credit
        # their echoes spent (none waited for an SCTP retransmission, none was refused).
        assert txr.mux.drops["send_no_credit"] == 0
        assert session.ice.refused == 0
    finally:
        await client.close()


async def test_audio_mline_first_as_openai_clients_offer(
    txr: TransceiverService, http: aiohttp.ClientSession
) -> None:
    # ClientPeer's channels come first; OpenAI's example adds the microphone, then the channel.
    client = ClientPeer(audio="pcm", decode=False)
    client.channels.append(client.pc.createDataChannel(LABEL))
    try:
        offer = await client.make_offer()
        assert offer.index("m=audio") < offer.index("m=application")
        await client.start(http, txr.http_url)
        await _echo_everything(client)
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("app", "media_path"), [("pcm-echo", "fast"), ("echo", "aiortc")], ids=["pcm", "aiortc-path"]
)
async def test_echo_without_the_fast_path(
    start_txr, http: aiohttp.ClientSession, app: str, media_path: str
) -> None:
    txr = await start_txr(app=load_app(app), media_path=media_path)
    client = await _connect(http, txr.http_url)
    try:
        await _echo_everything(client)
        (session,) = txr.manager.sessions.values()
        assert session.fastpath is None and session.call.frames_out >= 25
    finally:
        await client.close()


async def test_messages_through_the_tunnel(start_txr, http: aiohttp.ClientSession) -> None:
    relay = await TunnelRelay.start(["127.0.0.1"])
    try:
        txr = await start_txr(
            vips=[relay.vip], relay_tunnel_port=relay.tunnel_port, relays=relay.relays
        )
        relay.txr = txr.udp_addr
        client = await _connect(http, txr.http_url)
        try:
            await _echo_everything(client)
            assert relay.errors == []  # every reply's checksums verified by the relay
            (session,) = txr.manager.sessions.values()
            assert session.fastpath is not None and session.fastpath.rtp_in >= 25
        finally:
            await client.close()
    finally:
        relay.close()


class EventApp:
    """Records every channel event; answers each text message with a JSON ack."""

    media = "opus"

    def __init__(self, read: asyncio.Event | None = None) -> None:
        self.events: list[object] = []
        self.read = read  # when set: do not read the channels until it is set
        self.call: Call | None = None
        self.sent: list[bool] = []
        self.too_big: list[str] = []
        self.started = asyncio.Event()

    async def handle_call(self, call: Call) -> None:
        self.call = call
        self.started.set()
        if self.read is not None:
            await self.read.wait()
        async for event in call.channels:
            self.events.append(event)
            if isinstance(event, Message) and isinstance(event.data, str):
                payload = json.loads(event.data)
                if payload == "too big":
                    try:
                        call.send_message(event.channel, b"x" * (ch.MAX_MESSAGE_BYTES + 1))
                    except MessageTooBig as exc:
                        self.too_big.append(str(exc))
                    payload = {"type": "too big"}
                self.sent.append(call.send_message("nobody", "lost"))
                ack = json.dumps({"type": "ack", "of": payload["type"]})
                self.sent.append(call.send_message(event.channel, ack))

    async def call_ended(self, call: Call, reason: str) -> None:
        # handle_call was cancelled at the end; what was still queued can be read here.
        self.events.extend([e async for e in call.channels])


async def test_app_sees_open_message_close_in_order(start_txr, http: aiohttp.ClientSession) -> None:
    app = EventApp()
    txr = await start_txr(app=app)
    client = await _connect(http, txr.http_url, LABEL, "second")
    try:
        events, second = (ChannelEcho(c) for c in client.channels)
        await asyncio.gather(events.wait_open(), second.wait_open())
        events.channel.send(json.dumps({"type": "session.update"}))
        back = await asyncio.wait_for(events.received.get(), 10)
        assert json.loads(back) == {"type": "ack", "of": "session.update"}
        with pytest.raises(TypeError):
            app.call.send_message(LABEL, 42)  # type: ignore[arg-type,union-attr]
        events.channel.send('"too big"')  # JSON string: the app tries an oversized reply
        await asyncio.wait_for(events.received.get(), 10)
        assert app.too_big and "262144" in app.too_big[0]
        second.channel.close()
        assert app.call is not None
        for _ in range(250):
            if app.call.channels.open == (LABEL,):
                break
            await asyncio.sleep(0.02)
        assert app.call.channels.open == (LABEL,)
        # Sends to a label nobody opened are refused and counted, never raised; the oversized
        # one raised and was counted too.
        assert app.sent == [False, True, False, True] and app.call.channels.dropped_out == 3
    finally:
        await client.hang_up(http)
    assert app.call is not None
    for _ in range(250):
        if app.call.ended and app.events and isinstance(app.events[-1], ChannelClosed):
            break
        await asyncio.sleep(0.02)
    kinds = [(type(e).__name__, e.channel) for e in app.events]  # type: ignore[attr-defined]
    assert sorted(kinds[:2]) == [("ChannelOpened", LABEL), ("ChannelOpened", "second")]
    assert kinds[2:] == [
        ("Message", LABEL),
        ("Message", LABEL),
        ("ChannelClosed", "second"),
        ("ChannelClosed", LABEL),  # the call ended
    ]
    assert isinstance(app.events[0], ChannelOpened)


async def test_echo_skips_what_the_client_would_not_accept(
    txr: TransceiverService, http: aiohttp.ClientSession
) -> None:
    # A client that says it takes at most 1000-byte messages but sends more: the echo leaves
    # that one out (counted) and goes on echoing.
    client = ClientPeer(audio="opus", decode=False, data_channels=(LABEL,))
    offer = await client.make_offer()
    assert "a=max-message-size:262144" in offer
    client.offer_sdp = offer.replace("a=max-message-size:262144", "a=max-message-size:1000")
    try:
        await client.start(http, txr.http_url)
        echo = ChannelEcho(client.channels[0])
        await echo.wait_open()
        echo.channel.send(json_of_size(2000))
        assert await echo.round_trip(json_of_size(1000)) > 0  # the next one, not the 2000
        (session,) = txr.manager.sessions.values()
        assert session.call.channels.messages_in == 2 and session.call.channels.dropped_out == 1
    finally:
        await client.close()


async def test_slow_app_loses_counted_messages_not_memory(
    start_txr, http: aiohttp.ClientSession
) -> None:
    read = asyncio.Event()
    app = EventApp(read=read)
    txr = await start_txr(app=app)
    client = await _connect(http, txr.http_url)
    try:
        echo = ChannelEcho(client.channels[0])
        await echo.wait_open()
        await asyncio.wait_for(app.started.wait(), 10)
        assert app.call is not None
        channels = app.call.channels
        big = json_of_size(65536)
        sent = ch.IN_QUEUE_BYTES // 65536 + 8  # more than the queue holds
        for _ in range(sent):
            echo.channel.send(big)
        for _ in range(500):
            if channels.messages_in + channels.dropped_in == sent:
                break
            await asyncio.sleep(0.02)
        assert channels.messages_in + channels.dropped_in == sent
        assert channels.dropped_in >= 8 and channels.messages_in * 65536 <= ch.IN_QUEUE_BYTES
        read.set()  # the app catches up: exactly the kept messages, then new ones again
        for _ in range(500):
            if len(app.events) == 1 + channels.messages_in:
                break
            await asyncio.sleep(0.02)
        assert len(app.events) == 1 + channels.messages_in
        assert all(isinstance(e, Message) and e.data == big for e in app.events[1:])
    finally:
        await client.close()


async def test_a_peer_ignoring_the_sctp_window_cannot_make_us_buffer(
    txr: TransceiverService, http: aiohttp.ClientSession
) -> None:
    # aiortc's own sender ignores the receive window; past the size check, one 8 MB message
    # (that cannot fit) is what a rogue client sends. Unguarded, aiortc buffered all of it.
    client = ClientPeer(audio="opus", decode=False, data_channels=(LABEL,))
    await client.start(http, txr.http_url)
    try:
        echo = ChannelEcho(client.channels[0])
        await echo.wait_open()
        (session,) = txr.manager.sessions.values()
        sctp = session.pc.sctp
        assert sctp is not None
        sending = asyncio.ensure_future(
            aiortc_seam.send_ignoring_limits(client.channels[0], bytes(8 << 20))
        )
        lowest = aiortc_seam.sctp_receive_window(sctp)
        channels = session.call.channels
        audio = client.rtp_in
        # The window fills within a second; then aiortc's sender, in retransmission back-off,
        # pushes about two chunks a second beyond it. Wait for dozens of those beyond-window
        # pushes (the deadline only bounds a slow machine).
        deadline = asyncio.get_running_loop().time() + 40
        while channels.window_dropped < 40 and asyncio.get_running_loop().time() < deadline:
            lowest = min(lowest, aiortc_seam.sctp_receive_window(sctp))
            await asyncio.sleep(0.01)
        lowest = min(lowest, aiortc_seam.sctp_receive_window(sctp))
        assert channels.window_dropped >= 40
        assert lowest < 4096  # the sender did fill the whole window ...
        assert lowest >= 0  # ... and never got more buffered than the 1 MiB it advertises
        assert channels.messages_in == 0  # the 8 MB message never completed
        assert client.rtp_in > audio and session.end_reason is None  # the call goes on
        sending.cancel()
    finally:
        await client.close()


class BurstApp:
    """Sends 40 messages of 64 KB the moment a channel opens, faster than SCTP can carry them."""

    media = "opus"

    def __init__(self) -> None:
        self.accepted: list[bool] = []

    async def handle_call(self, call: Call) -> None:
        async for event in call.channels:
            if isinstance(event, ChannelOpened):
                for _ in range(40):
                    self.accepted.append(call.send_message(event.channel, bytes(65536)))
            elif isinstance(event, Message):  # echoed after the burst, on the same ordered channel
                call.send_message(event.channel, event.data)

    async def call_ended(self, call: Call, reason: str) -> None: ...


async def test_send_buffer_is_bounded(start_txr, http: aiohttp.ClientSession) -> None:
    app = BurstApp()
    txr = await start_txr(app=app)
    client = await _connect(http, txr.http_url)
    try:
        echo = ChannelEcho(client.channels[0])
        await echo.wait_open()
        fits = ch.OUT_BUFFER_BYTES // 65536
        got = [await asyncio.wait_for(echo.received.get(), 10) for _ in range(fits)]
        assert app.accepted == [True] * fits + [False] * (40 - fits)
        assert all(m == bytes(65536) for m in got)
        (session,) = txr.manager.sessions.values()
        assert session.call.channels.dropped_out == 40 - fits
        # Ordered channel: an echo sent after the burst arrives right after the accepted part.
        assert await echo.round_trip("the rest was refused") > 0 and echo.received.empty()
    finally:
        await client.close()


async def test_a_repeated_label_sends_on_the_latest_open_channel(
    txr: TransceiverService, http: aiohttp.ClientSession
) -> None:
    client = await _connect(http, txr.http_url, "dup", "dup")
    try:
        first, second = (ChannelEcho(c) for c in client.channels)
        await asyncio.gather(first.wait_open(), second.wait_open())
        (session,) = txr.manager.sessions.values()
        for _ in range(250):
            if len(session.call.channels._live) == 2:
                break
            await asyncio.sleep(0.02)
        first.channel.send("to the latest")
        assert await asyncio.wait_for(second.received.get(), 10) == "to the latest"
        second.channel.close()
        for _ in range(250):
            if len(session.call.channels._live) == 1:
                break
            await asyncio.sleep(0.02)
        assert await first.round_trip("back to the first") > 0  # the one still open took over
    finally:
        await client.close()


async def test_channels_beyond_the_limit_are_refused(
    txr: TransceiverService, http: aiohttp.ClientSession
) -> None:
    labels = [f"c{i}" for i in range(ch.MAX_CHANNELS + 3)]
    client = await _connect(http, txr.http_url, *labels)
    try:
        (session,) = txr.manager.sessions.values()
        channels = session.call.channels
        for _ in range(500):
            if channels.refused == 3:
                break
            await asyncio.sleep(0.02)
        assert channels.refused == 3 and len(channels.open) == ch.MAX_CHANNELS
        # The refused ones are closed on the client too; the others still echo.
        for _ in range(500):
            if sum(c.readyState == "closed" for c in client.channels) == 3:
                break
            await asyncio.sleep(0.02)
        assert sum(c.readyState == "closed" for c in client.channels) == 3
        live = next(c for c in client.channels if c.readyState == "open")
        assert await ChannelEcho(live).round_trip("still here") >= 0
    finally:
        await client.close()


def test_test_messages_are_json_of_the_sizes_claimed() -> None:
    for n in (1, 63, 64, 65, 65536):
        text = json_of_size(n, 7)
        assert len(text.encode()) == n and json.loads(text) is not None


async def test_inbound_bounds_and_end_without_a_peer() -> None:
    # The queue's own rules, on a Channels with no aiortc behind it.
    channels = ch.Channels("unit")
    channels._received("x", b"a" * (ch.MAX_MESSAGE_BYTES + 1))  # bigger than we advertise
    assert channels.dropped_in == 1 and channels.messages_in == 0
    for _ in range(ch.IN_QUEUE_MESSAGES + 5):
        channels._received("x", "m")
    assert channels.messages_in == ch.IN_QUEUE_MESSAGES and channels.dropped_in == 6
    assert channels.send("x", "nobody listens") is False and channels.dropped_out == 1
    waiter = asyncio.ensure_future(channels.recv())
    assert await asyncio.wait_for(waiter, 1) == Message("x", "m")
    channels._end()
    assert [e async for e in channels.messages()] == [Message("x", "m")] * (
        ch.IN_QUEUE_MESSAGES - 1
    )
    with pytest.raises(ch.CallEnded):
        await channels.recv()


class DocumentedAgent:
    """The example of docs/transceiver.md's data channel section, as written there."""

    media = "opus"

    async def handle_call(self, call: Call) -> None:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self.events(call))
            async for frame in call:
                call.send(frame)

    async def events(self, call: Call) -> None:
        async for event in call.channels:
            match event:
                case ChannelOpened(label):
                    call.send_message(label, json.dumps({"type": "session.created"}))
                case Message(label, str() as text):
                    ack = {"type": "ack", "of": json.loads(text)["type"]}
                    call.send_message(label, json.dumps(ack))
                case Message(label, bytes() as blob):
                    call.send_message(label, blob)
                case ChannelClosed(label):
                    ...

    async def call_ended(self, call: Call, reason: str) -> None: ...


async def test_the_documented_example_works(start_txr, http: aiohttp.ClientSession) -> None:
    txr = await start_txr(app=DocumentedAgent())
    client = await _connect(http, txr.http_url)
    try:
        echo = ChannelEcho(client.channels[0])
        await echo.wait_open()
        first = await asyncio.wait_for(echo.received.get(), 10)
        assert json.loads(first) == {"type": "session.created"}
        echo.channel.send(json.dumps({"type": "response.create"}))
        ack = await asyncio.wait_for(echo.received.get(), 10)
        assert json.loads(ack) == {"type": "ack", "of": "response.create"}
        assert await echo.round_trip(b"\x00\xffbinary") > 0
        before = client.rtp_in
        for _ in range(250):
            if client.rtp_in >= before + 10:
                break
            await asyncio.sleep(0.02)
        assert client.rtp_in >= before + 10  # the audio loop runs beside the events
    finally:
        await client.close()
