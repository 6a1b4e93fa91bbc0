"""Glue between aiortc's RTP sender/receiver and the application's `Call` (transceiver/app.py).

Why these hooks (the private parts of them live in transceiver/aiortc_seam.py):
- Sending Opus without encoding needs no patching: RTCRtpSender packs any non-Frame a track
  returns via `encoder.pack()`, and aiortc's OpusEncoder.pack() copies an `av.Packet` verbatim
  into the RTP payload. So `OutboundTrack` returns `av.Packet`s for Opus apps.
- Receiving Opus without decoding: RTCRtpReceiver always decodes, in a thread fed by its private
  `__decoder_queue`. `OpusTap` takes that queue's place before the receiver starts, so nothing
  is decoded; only the shutdown sentinel reaches the (idle) decoder thread and the receiver
  still stops normally.
- Opus frames reach the app at RTP level, on arrival: `receiver._handle_rtp_packet` is wrapped
  on the instance. aiortc's own handler still runs first (SRTP is already done; it keeps the
  RTCP receiver statistics), but the app does not wait behind aiortc's audio jitter buffer,
  which holds 4 frames (~80 ms) before releasing one and stalls on a lost packet. Frames carry
  their RTP sequence number and timestamp so an app can reorder or conceal as it likes.
- PCM apps read the receiver's normal track, which yields decoded AudioFrames.
"""

from __future__ import annotations

import asyncio
import fractions
import queue
from typing import Any

import av
from aiortc import MediaStreamTrack, RTCRtpReceiver
from aiortc.mediastreams import MediaStreamError
from aiortc.rtp import RtpPacket

from transceiver import aiortc_seam
from transceiver.app import OPUS_CLOCK, OPUS_FRAME_TICKS, Call, OpusFrame

OPUS_TIME_BASE = fractions.Fraction(1, OPUS_CLOCK)


class OutboundTrack(MediaStreamTrack):
    """The track aiortc's RTCRtpSender pulls from: whatever the app `send()`s on its call."""

    kind = "audio"

    def __init__(self, call: Call) -> None:
        super().__init__()
        self._call = call
        self._next_ts = 0

    async def recv(self) -> av.AudioFrame | av.Packet:
        frame = await self._call._next_out()
        if frame is None:
            self.stop()
            raise MediaStreamError
        if isinstance(frame, OpusFrame):
            ts = self._next_ts if frame.timestamp is None else frame.timestamp
            self._next_ts = ts + OPUS_FRAME_TICKS
            packet = av.Packet(frame.payload)
            packet.pts = ts
            packet.time_base = OPUS_TIME_BASE
            return packet
        return frame


class OpusTap:
    """Stands in for RTCRtpReceiver's decoder queue: swallows frames, so nothing is decoded."""

    def __init__(self) -> None:
        self._sentinel: queue.Queue[None] = queue.Queue()

    def put(self, item: tuple[Any, Any] | None) -> None:
        if item is None:  # the receiver is stopping: let its decoder thread finish
            self._sentinel.put(None)

    def get(self) -> None:  # runs in aiortc's decoder thread, which now only waits to exit
        return self._sentinel.get()


def tap_opus(receiver: RTCRtpReceiver, call: Call, payload_types: set[int]) -> None:
    """Hand the receiver's Opus RTP payloads to `call` as they arrive; never decode them."""
    aiortc_seam.replace_decoder_queue(receiver, OpusTap())

    def deliver(packet: RtpPacket) -> None:
        if packet.payload_type in payload_types and packet.payload:
            call._deliver(
                OpusFrame(packet.payload, packet.timestamp, sequence=packet.sequence_number)
            )

    aiortc_seam.tap_rtp(receiver, deliver)


async def pump_pcm(track: MediaStreamTrack, call: Call) -> None:
    """Feed a PCM app the receiver track's decoded frames until the track ends."""
    try:
        while True:
            call._deliver(await track.recv())
    except (MediaStreamError, asyncio.CancelledError):
        return
