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

`call.send()` never blocks: the outbound queue holds about a second of audio, the oldest frame
is dropped when an app sends faster than real time (counted in `call.dropped_out`).

The default application is `EchoApp` (Opus, no codec work); `PcmEchoApp` echoes through the
decoder and encoder. `load_app("module:attr")` loads another one (`transceiver serve --app`).
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import av

MediaFormat = Literal["opus", "pcm"]
OPUS_CLOCK = 48000
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


class CallEnded(Exception):
    """Raised by `Call.recv()` once the call is over."""


class Call:
    """One call as the application sees it."""

    def __init__(self, call_id: str, media: MediaFormat) -> None:
        self.id = call_id
        self.media = media
        self.frames_in = 0
        self.frames_out = 0
        self.dropped_out = 0
        self._in: asyncio.Queue[Frame | None] = asyncio.Queue()
        self._out: asyncio.Queue[Frame | None] = asyncio.Queue(OUT_QUEUE_FRAMES)
        self.ended = False

    async def recv(self) -> Frame:
        frame = await self._in.get()
        if frame is None:
            self._in.put_nowait(None)
            raise CallEnded(self.id)
        return frame

    def __aiter__(self) -> AsyncIterator[Frame]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Frame]:
        while True:
            try:
                yield await self.recv()
            except CallEnded:
                return

    def send(self, frame: Frame) -> None:
        if self.ended:
            return
        want = OpusFrame if self.media == "opus" else av.AudioFrame
        if not isinstance(frame, want):
            raise TypeError(f"a {self.media} call sends {want.__name__}, not {type(frame)}")
        if self._out.full():
            self._out.get_nowait()
            self.dropped_out += 1
        self._out.put_nowait(frame)
        self.frames_out += 1

    # --- used by the transceiver's media glue (transceiver/media.py) -------------------------

    def _deliver(self, frame: Frame) -> None:
        if not self.ended:
            self.frames_in += 1
            self._in.put_nowait(frame)

    async def _next_out(self) -> Frame | None:
        return await self._out.get()

    def _end(self) -> None:
        if not self.ended:
            self.ended = True
            self._in.put_nowait(None)
            if self._out.full():
                self._out.get_nowait()
            self._out.put_nowait(None)


@runtime_checkable
class CallApp(Protocol):
    media: MediaFormat

    async def handle_call(self, call: Call) -> None: ...

    async def call_ended(self, call: Call, reason: str) -> None: ...


class EchoApp:
    """Sends every Opus packet straight back: the zero-codec path."""

    media: MediaFormat = "opus"

    async def handle_call(self, call: Call) -> None:
        async for frame in call:
            call.send(frame)

    async def call_ended(self, call: Call, reason: str) -> None:
        return None


class PcmEchoApp(EchoApp):
    """Echo through aiortc's Opus decoder and encoder (for apps that want samples)."""

    media: MediaFormat = "pcm"


BUILTIN_APPS: dict[str, type] = {"echo": EchoApp, "pcm-echo": PcmEchoApp}


def load_app(spec: str) -> CallApp:
    """`echo`, `pcm-echo`, or `package.module:attr` naming an app class/factory or instance."""
    if spec in BUILTIN_APPS:
        return BUILTIN_APPS[spec]()
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"app must be echo, pcm-echo or module:attr, got {spec!r}")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
        app = obj() if callable(obj) and not isinstance(obj, CallApp) else obj
    except (ImportError, AttributeError, TypeError) as exc:
        raise ValueError(f"cannot load app {spec}: {exc}") from None
    if not isinstance(app, CallApp) or app.media not in ("opus", "pcm"):
        raise ValueError(f"{spec} is not a CallApp (needs media, handle_call, call_ended)")
    return app
