"""A call's data channels as the application sees them: messages in and out, open and close.

Clients written for the OpenAI Realtime API open a data channel labelled `oai-events` beside
their microphone track and exchange JSON events on it. aiortc terminates SCTP (it rides the
call's DTLS association, which stays with aiortc also on the Opus fast path: the mux hands DTLS
records to aiortc, only SRTP to the fast path); this module turns its channel objects into one
bounded, typed event stream per call, `call.channels`:

    async for event in call.channels:        # ends when the call ends
        match event:
            case ChannelOpened(label):        ...
            case Message(label, data):        call.send_message(label, data)  # str or bytes
            case ChannelClosed(label):        ...

- Channels are named by their label. A channel opened later with a label already open replaces
  the earlier one for sending (the earlier one stays open until the client closes it).
- An open comes before the channel's first message and a close after its last, in arrival order.
- Inbound is bounded (`IN_QUEUE_MESSAGES`, `IN_QUEUE_BYTES`): a message that arrives while the
  app is that far behind is dropped and counted in `dropped_in`; so is one larger than
  `MAX_MESSAGE_BYTES` (what the answer's `a=max-message-size` advertises). Open and close
  events are never dropped; a call takes at most `MAX_CHANNELS` open channels, and none while
  the queue is full: further ones are closed at once (`refused`).
- Below this, SCTP itself is held to the 1 MiB receive window it advertises
  (`aiortc_seam.enforce_sctp_receive_window`): aiortc would buffer whatever a peer sends, e.g.
  the fragments of a message that never ends; chunks beyond the window are dropped
  (`window_dropped`), which a sender that respects the window never sees.
- `send_message()` never blocks. It returns False, counted in `dropped_out`, when the channel is
  not open or more than `OUT_BUFFER_BYTES` already wait in its send buffer (the client reads
  slower than the app writes); it raises `TypeError` for anything but str/bytes and
  `MessageTooBig` above the client's `a=max-message-size` (aiortc's limit check; 65536 when the
  client says nothing, RFC 8841 §6).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiortc import RTCDataChannel

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 262144  # aiortc's LOCAL_MAX_MESSAGE_SIZE: what our answer advertises
IN_QUEUE_MESSAGES = 1024  # events waiting for the app, per call
IN_QUEUE_BYTES = 1 << 20  # message bytes waiting for the app, per call (16 messages of 64 KB)
OUT_BUFFER_BYTES = 1 << 20  # bytes waiting in one channel's SCTP send buffer
MAX_CHANNELS = 16  # open channels per call (a client needs one or two)


class CallEnded(Exception):
    """Raised by `Call.recv()` and `Call.channels.recv()` once the call is over."""


class MessageTooBig(ValueError):
    """A message larger than the client accepts (its SDP `a=max-message-size`)."""


@dataclass(frozen=True, slots=True)
class Message:
    """One data channel message: `data` is str for a text message, bytes for a binary one."""

    channel: str
    data: str | bytes


@dataclass(frozen=True, slots=True)
class ChannelOpened:
    """The client opened a channel (RFC 8832 DATA_CHANNEL_OPEN); `protocol` is its subprotocol."""

    channel: str
    protocol: str = ""


@dataclass(frozen=True, slots=True)
class ChannelClosed:
    """The channel closed (by the client, or because the call ended)."""

    channel: str


ChannelEvent = Message | ChannelOpened | ChannelClosed


def _size(data: str | bytes) -> int:
    return len(data.encode()) if isinstance(data, str) else len(data)


class Channels:
    """One call's data channels: an async iterator of `ChannelEvent`s, and `send()`."""

    def __init__(self, call_id: str) -> None:
        self.call_id = call_id
        self._events: deque[ChannelEvent] = deque()
        self._queued_bytes = 0
        self._wake = asyncio.Event()
        self._open: dict[str, RTCDataChannel] = {}  # by label: the one send() uses
        self._live: set[RTCDataChannel] = set()  # every open channel (labels may repeat)
        self.ended = False
        self.messages_in = 0
        self.messages_out = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.dropped_in = 0  # inbound messages the app was too far behind for, or too big
        self.dropped_out = 0  # sends to a channel not open, or with a full send buffer
        self.refused = 0  # channels beyond MAX_CHANNELS, closed at once
        self.window_dropped = 0  # SCTP DATA chunks beyond the receive window (a rogue sender)

    @property
    def open(self) -> tuple[str, ...]:
        """Labels of the open channels."""
        return tuple(self._open)

    # --- the application's side ----------------------------------------------------------------

    async def recv(self) -> ChannelEvent:
        """The next event; events that arrived before the end are still returned first."""
        while not self._events:
            if self.ended:
                raise CallEnded(self.call_id)
            self._wake.clear()
            await self._wake.wait()
        event = self._events.popleft()
        if isinstance(event, Message):
            self._queued_bytes -= _size(event.data)
        return event

    def __aiter__(self) -> AsyncIterator[ChannelEvent]:
        return self

    async def __anext__(self) -> ChannelEvent:
        try:
            return await self.recv()
        except CallEnded:
            raise StopAsyncIteration from None

    async def messages(self) -> AsyncIterator[Message]:
        """Only the messages (open and close events skipped)."""
        async for event in self:
            if isinstance(event, Message):
                yield event

    def send(self, channel: str, data: str | bytes) -> bool:
        """Queue `data` on the open channel labelled `channel`; False (counted) if it cannot be."""
        if not isinstance(data, str | bytes):
            raise TypeError(f"a data channel message is str or bytes, not {type(data).__name__}")
        rtc = self._open.get(channel)
        size = _size(data)
        if (
            self.ended
            or rtc is None
            or rtc.readyState != "open"
            or rtc.bufferedAmount + size > OUT_BUFFER_BYTES
        ):
            self.dropped_out += 1
            return False
        try:
            rtc.send(data)
        except ValueError as exc:  # aiortc: larger than the client's max-message-size
            self.dropped_out += 1
            raise MessageTooBig(str(exc)) from None
        self.messages_out += 1
        self.bytes_out += size
        return True

    # --- the transceiver's side (transceiver/session.py) ---------------------------------------

    def attach(self, rtc: RTCDataChannel) -> None:
        """A channel the client opened (RTCPeerConnection's "datachannel" event)."""
        # A client cycling channels cannot grow the queue either: opens stop when it is full.
        if self.ended or len(self._live) >= MAX_CHANNELS or len(self._events) >= IN_QUEUE_MESSAGES:
            self.refused += 1
            log.info("call %s: data channel %r refused", self.call_id, rtc.label)
            rtc.close()
            return
        label = rtc.label
        self._live.add(rtc)
        self._open[label] = rtc
        self._push(ChannelOpened(label, rtc.protocol))

        def on_message(data: str | bytes) -> None:
            self._received(label, data)

        def on_close() -> None:
            if rtc not in self._live:
                return
            self._live.discard(rtc)
            if self._open.get(label) is rtc:  # an earlier one with the label takes over again
                del self._open[label]
                for other in self._live:
                    if other.label == label:
                        self._open[label] = other
            self._push(ChannelClosed(label))

        rtc.on("message", on_message)
        rtc.on("close", on_close)

    def window_drop(self) -> None:
        """One SCTP DATA chunk dropped beyond the receive window (aiortc_seam)."""
        self.window_dropped += 1

    def _received(self, label: str, data: str | bytes) -> None:
        if self.ended:
            return
        size = _size(data)
        if (
            size > MAX_MESSAGE_BYTES
            or len(self._events) >= IN_QUEUE_MESSAGES
            or self._queued_bytes + size > IN_QUEUE_BYTES
        ):
            self.dropped_in += 1
            return
        self.messages_in += 1
        self.bytes_in += size
        self._queued_bytes += size
        self._push(Message(label, data))

    def _push(self, event: ChannelEvent) -> None:
        self._events.append(event)
        self._wake.set()

    def _end(self) -> None:
        """The call ended: every channel closes, waiting recv()s see the end after the queue."""
        if self.ended:
            return
        if self.messages_in or self.refused or self.window_dropped or self.dropped_out:
            log.info(
                "call %s: data channels: %d messages in (%d dropped), %d out (%d dropped), "
                "%d refused, %d SCTP chunks beyond the window",
                self.call_id, self.messages_in, self.dropped_in, self.messages_out,
                self.dropped_out, self.refused, self.window_dropped,
            )  # fmt: skip
        for rtc in list(self._live):
            self._push(ChannelClosed(rtc.label))
        self._live.clear()
        self._open.clear()
        self.ended = True
        self._wake.set()
