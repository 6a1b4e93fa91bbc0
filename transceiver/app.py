"""The application interface: how a voice-AI application gets each call's audio and talks back.

An application is any object with this shape (see `CallApp`):

    class MyApp:
        media = "opus"                       # or "pcm"
        async def handle_call(self, call: Call) -> None:
            async for frame in call:         # ends when the call ends
                call.send(frame)             # echo
        async def call_ended(self, call: Call, reason: str) -> None:
            ...

- `handle_call` is the call-start event: it runs once per call, as soon as the call's media path
  is up (DTLS connected), and is cancelled if it is still running when the call ends. Returning
  from it hangs up (reason "app_done"); raising hangs up too ("app_error").
- `call_ended` is the call-end event, with a reason ("deleted", "consent_expired",
  "peer_closed", "setup_timeout", "drain_timeout", "shutdown", "app_done", ...).
- `media = "opus"`: `call.recv()` yields `OpusFrame`s, the RTP payloads exactly as the client
  sent them, delivered as they arrive (with RTP sequence number and timestamp), and
  `call.send()` takes `OpusFrame`s that go out as RTP payloads unchanged: no decoding, no
  encoding, no resampling anywhere in the process.
- `media = "pcm"`: `call.recv()` yields `av.AudioFrame`s (48 kHz, s16, decoded by aiortc) and
  `call.send()` takes `av.AudioFrame`s, which aiortc encodes to Opus.

For an app that answers each frame at once (a pass-through, a filter), `call.on_frame(fn)` hands
every frame to `fn(frame)` as it arrives, in the socket's callback, instead of queueing it for
`recv()`: no future and no task wake-up per frame (10-20 % of the echo's CPU per packet in
bench.srtp_blast). `fn` must not block or await; if it raises, the call hangs up ("app_error").
`await call.closed()` then waits for the end:

    async def handle_call(self, call: Call) -> None:
        call.on_frame(call.send)             # echo, frame by frame, in the socket's callback
        await call.closed()

`call.send()` never blocks. Opus calls on the fast path (transceiver/fastpath.py) send the frame
at once; otherwise the outbound queue holds about a second of audio, the oldest frame dropped
when an app sends faster than real time (counted in `call.dropped_out`).

Data channels (transceiver/channels.py): `call.channels` is the call's stream of data channel
events, `ChannelOpened(label)`, `Message(label, data)` (data is str for text, bytes for binary)
and `ChannelClosed(label)`; `call.send_message(label, data)` sends on the open channel with that
label (`oai-events` is the one OpenAI Realtime API clients open). Run it beside the audio loop:

    async def handle_call(self, call: Call) -> None:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self.events(call))
            async for frame in call:
                call.send(frame)

    async def events(self, call: Call) -> None:
        async for message in call.channels.messages():     # or `async for event in call.channels`
            event = json.loads(message.data)
            call.send_message(message.channel, json.dumps({"type": "ack", "of": event["type"]}))

Both streams end when the call ends. Inbound events are bounded (a slow app loses messages,
counted in `call.channels.dropped_in`); `send_message()` never blocks (False, counted in
`dropped_out`, when the channel is closed or its send buffer is full).

The default application is `EchoApp` (Opus, no codec work; data channel messages back on their
channel); `PcmEchoApp` echoes through the decoder and encoder. `load_app("module:attr")` loads
another one (`transceiver serve --app`).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import av

from transceiver.channels import CallEnded, Channels, MessageTooBig

MediaFormat = Literal["opus", "pcm"]
OPUS_CLOCK = 48000
OPUS_FRAME_TICKS = 960  # 20 ms at 48 kHz: how far apart frames sent without a timestamp are
OUT_QUEUE_FRAMES = 50  # 1 s of 20 ms frames


@dataclass(frozen=True)
class OpusFrame:
    """One Opus packet (an RTP payload).

    `timestamp` is in RTP units (48 kHz); on send, None lets the transceiver number frames
    20 ms apart. `sequence` is the client's RTP sequence number on received frames (they are
    delivered on arrival, so a lost or late packet shows as a gap); it is ignored on send.
    """

    payload: bytes
    timestamp: int | None = None
    sequence: int | None = None


Frame = OpusFrame | av.AudioFrame


class Call:
    """One call as the application sees it."""

    def __init__(self, call_id: str, media: MediaFormat) -> None:
        self.id = call_id
        self.media = media
        self.frames_in = 0
        self.frames_out = 0
        self.dropped_out = 0
        # Inbound frames: a deque plus the futures of waiting recv()s, not an asyncio.Queue:
        # this runs for every packet of every call, and Queue.get/put_nowait cost about twice.
        self._in: deque[Frame] = deque()
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._out: asyncio.Queue[Frame | None] = asyncio.Queue(OUT_QUEUE_FRAMES)
        # Set by the Opus fast path (transceiver/fastpath.py): frames go out at once instead
        # of through the queue aiortc's sender drains.
        self._sink: Callable[[OpusFrame], None] | None = None
        self.channels = Channels(call_id)  # data channel events; fed by transceiver/session.py
        self.ended = False
        self._on_frame: Callable[[Frame], None] | None = None  # on_frame(): instead of _in
        self._closed: asyncio.Future[None] | None = None  # closed(): the end, or fn's error

    async def recv(self) -> Frame:
        """The next frame; frames that arrived before the end are still returned first."""
        while not self._in:
            if self.ended:
                raise CallEnded(self.id)
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:  # cancelled: leave the queue, pass on a wake-up we got
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
                if self._in and not waiter.cancelled():
                    self._wake_one()
                raise
        return self._in.popleft()

    def __aiter__(self) -> AsyncIterator[Frame]:
        return self

    async def __anext__(self) -> Frame:
        try:
            return await self.recv()
        except CallEnded:
            raise StopAsyncIteration from None

    def on_frame(self, fn: Callable[[Frame], None]) -> None:
        """Hand every frame to fn(frame) as it arrives instead of to recv(); frames already
        queued go to fn first. fn runs in the socket's callback: it must not block."""
        self._on_frame = fn
        while self._in and self._on_frame is fn:
            self._call_on_frame(self._in.popleft())

    async def closed(self) -> None:
        """Until the call ends; raises what an on_frame function raised (the call then hangs
        up with "app_error", as when handle_call raises)."""
        await asyncio.shield(self._closing())

    def _closing(self) -> asyncio.Future[None]:
        """closed()'s future, made on first use (a Call may be made outside a running loop)."""
        if self._closed is None:
            self._closed = asyncio.get_running_loop().create_future()
            if self.ended:
                self._closed.set_result(None)
        return self._closed

    def _call_on_frame(self, frame: Frame) -> None:
        try:
            self._on_frame(frame)  # type: ignore[misc]
        except Exception as exc:  # given to closed(): the app's own failure, not ours
            self._on_frame = None
            if not self._closing().done():
                self._closing().set_exception(exc)

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def send(self, frame: Frame) -> None:
        if self.ended:
            return
        want = OpusFrame if self.media == "opus" else av.AudioFrame
        if not isinstance(frame, want):
            raise TypeError(f"a {self.media} call sends {want.__name__}, not {type(frame)}")
        if self._sink is not None:
            self.frames_out += 1
            self._sink(frame)  # type: ignore[arg-type]
            return
        if self._out.full():
            self._out.get_nowait()
            self.dropped_out += 1
        self._out.put_nowait(frame)
        self.frames_out += 1

    def send_message(self, channel: str, data: str | bytes) -> bool:
        """Send a data channel message (see transceiver/channels.py); never blocks."""
        return self.channels.send(channel, data)

    # --- used by the transceiver's media glue (transceiver/media.py) -------------------------

    def _deliver(self, frame: Frame) -> None:
        if not self.ended:
            self.frames_in += 1
            if self._on_frame is not None:
                self._call_on_frame(frame)
                return
            self._in.append(frame)
            if self._waiters:
                self._wake_one()

    async def _next_out(self) -> Frame | None:
        return await self._out.get()

    def _end(self) -> None:
        if not self.ended:
            self.ended = True
            self._sink = None
            self._on_frame = None
            self.channels._end()
            if self._closed is not None and not self._closed.done():
                self._closed.set_result(None)
            while self._waiters:  # every waiting recv() sees the end
                waiter = self._waiters.popleft()
                if not waiter.done():
                    waiter.set_result(None)
            if self._out.full():
                self._out.get_nowait()
            self._out.put_nowait(None)


@runtime_checkable
class CallApp(Protocol):
    media: MediaFormat

    async def handle_call(self, call: Call) -> None: ...

    async def call_ended(self, call: Call, reason: str) -> None: ...


class EchoApp:
    """Sends every Opus packet straight back (the zero-codec path), and every data channel
    message back on its channel."""

    media: MediaFormat = "opus"

    async def handle_call(self, call: Call) -> None:
        messages = asyncio.ensure_future(self.echo_messages(call))
        try:
            call.on_frame(call.send)  # each frame back in the socket's callback: no task hop
            await call.closed()
        finally:
            messages.cancel()

    async def echo_messages(self, call: Call) -> None:
        async for message in call.channels.messages():
            # A client may send more than it accepts back (its max-message-size): not echoed.
            with contextlib.suppress(MessageTooBig):
                call.send_message(message.channel, message.data)

    async def call_ended(self, call: Call, reason: str) -> None:
        return None


class PcmEchoApp(EchoApp):
    """Echo through aiortc's Opus decoder and encoder (for apps that want samples)."""

    media: MediaFormat = "pcm"


# An Opus frame of silence (RFC 6716: TOC 0xF8 = CELT fullband 20 ms, mono, one frame; then
# the two bytes libopus writes for a silent frame): what GreetEchoApp says first.
GREETING_PAYLOAD = bytes([0xF8, 0xFF, 0xFE])
GREETING_FRAMES = 25  # 0.5 s


class GreetEchoApp(EchoApp):
    """Speaks first, as a voice model greeting its user does: 0.5 s of Opus frames
    (GREETING_PAYLOAD, silence) from the moment the call connects, until the client's first
    frame arrives (barge-in); then echo, re-timed onto the call's one timeline. So a client can
    time set-up to the first audio the server sends on its own and to its first echo
    (bench.setup_rtts)."""

    async def handle_call(self, call: Call) -> None:
        greeting = asyncio.ensure_future(self.greet(call))
        messages = asyncio.ensure_future(self.echo_messages(call))
        try:
            async for frame in call:
                greeting.cancel()
                assert isinstance(frame, OpusFrame)
                call.send(OpusFrame(frame.payload))
        finally:
            greeting.cancel()
            messages.cancel()

    async def greet(self, call: Call) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        for n in range(GREETING_FRAMES):  # paced from the start: no drift, no burst
            call.send(OpusFrame(GREETING_PAYLOAD))
            await asyncio.sleep(
                max(0.0, start + (n + 1) * OPUS_FRAME_TICKS / OPUS_CLOCK - loop.time())
            )


BUILTIN_APPS: dict[str, type] = {
    "echo": EchoApp,
    "pcm-echo": PcmEchoApp,
    "greet-echo": GreetEchoApp,
}


def load_app(spec: str) -> CallApp:
    """`echo`, `pcm-echo`, `greet-echo`, or `package.module:attr` naming an app class/factory
    or instance."""
    if spec in BUILTIN_APPS:
        return BUILTIN_APPS[spec]()
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"app must be {', '.join(BUILTIN_APPS)} or module:attr, got {spec!r}")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
        # A class also passes isinstance(obj, CallApp) (it has the attributes), so test for
        # a class first: a class or a factory is called, an instance is used as it is.
        if isinstance(obj, type) or (callable(obj) and not isinstance(obj, CallApp)):
            app = obj()
        else:
            app = obj
    except (ImportError, AttributeError, TypeError) as exc:
        raise ValueError(f"cannot load app {spec}: {exc}") from None
    if not isinstance(app, CallApp) or app.media not in ("opus", "pcm"):
        raise ValueError(f"{spec} is not a CallApp (needs media, handle_call, call_ended)")
    return app
