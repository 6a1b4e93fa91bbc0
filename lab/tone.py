"""A microphone stand-in for aiortc client peers, and the measures that tell its echo apart.

Two tracks of the same 440 Hz tone, paced in real time as a microphone delivers it:
- `ToneTrack`: 20 ms mono s16 frames, encoded by aiortc's sender (what a browser sends); the
  transceiver tests decode the echo and check its pitch with `dominant_hz`/`rms`.
- `OpusToneTrack`: the tone encoded once up front into 50 Opus packets, handed to aiortc as
  `av.Packet`s it sends as they are. Raw frames cost ~3 ms of CPU per frame in the CLIENT
  (aiortc computes each sent frame's audio level in pure Python, then encodes): 100 such
  clients would need more than the whole machine, and the bench would measure the clients.
"""

from __future__ import annotations

import array
import asyncio
import fractions
import math
import time

import av
from aiortc import MediaStreamTrack
from aiortc.codecs.opus import OpusEncoder
from aiortc.mediastreams import MediaStreamError

RATE = 48000
SAMPLES = 960  # 20 ms
TONE_HZ = 440.0  # 440 whole cycles per second: one second of tone loops seamlessly
AMPLITUDE = 12000
TIME_BASE = fractions.Fraction(1, RATE)


def _samples(start: int, count: int, hz: float = TONE_HZ) -> array.array[int]:
    return array.array(
        "h",
        (int(AMPLITUDE * math.sin(2 * math.pi * hz * (start + i) / RATE)) for i in range(count)),
    )


def _frame(samples: array.array[int], pts: int) -> av.AudioFrame:
    frame = av.AudioFrame(format="s16", layout="mono", samples=len(samples))
    frame.planes[0].update(samples.tobytes())
    frame.sample_rate = RATE
    frame.pts = pts
    frame.time_base = TIME_BASE
    return frame


class _Paced(MediaStreamTrack):
    """Frame n is due n * 20 ms after the first recv()."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._start: float | None = None
        self._pts = 0
        self.sent = 0

    async def _next_pts(self) -> int:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        wait = self._start + self._pts / RATE - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        pts = self._pts
        self._pts += SAMPLES
        self.sent += 1
        return pts


class ToneTrack(_Paced):
    """A paced sine, 20 ms mono s16 frames, like a microphone would deliver."""

    def __init__(self, hz: float = TONE_HZ) -> None:
        super().__init__()
        self._hz = hz

    async def recv(self) -> av.AudioFrame:
        pts = await self._next_pts()
        return _frame(_samples(pts, SAMPLES, self._hz), pts)


def _tone_opus() -> list[bytes]:
    """One second of the tone encoded into 50 Opus packets of 20 ms (steady state: the
    encoder's look-ahead delays its output, so the second of two passes is kept)."""
    encoder = OpusEncoder()
    packets: list[bytes] = []
    for second in range(2):
        for n in range(0, RATE, SAMPLES):
            pts = second * RATE + n
            packets += encoder.encode(_frame(_samples(n, SAMPLES), pts))[0]
    return packets[-RATE // SAMPLES :]


TONE_OPUS = _tone_opus()


class OpusToneTrack(_Paced):
    """20 ms Opus packets of the tone at real-time pace: no client-side encoding."""

    async def recv(self) -> av.Packet:  # type: ignore[override]
        pts = await self._next_pts()
        packet = av.Packet(TONE_OPUS[(pts // SAMPLES) % len(TONE_OPUS)])
        packet.pts = pts
        packet.time_base = TIME_BASE
        return packet


# --- what came back ----------------------------------------------------------------------------


def _channel0(frames: list[av.AudioFrame]) -> list[int]:
    out: list[int] = []
    for frame in frames:
        channels = len(frame.layout.channels)
        data = array.array("h", bytes(frame.planes[0])[: frame.samples * channels * 2])
        out.extend(data[::channels])
    return out


def dominant_hz(frames: list[av.AudioFrame]) -> float:
    """Zero-crossing estimate of the frequency of the first channel of s16 frames."""
    samples = _channel0(frames)
    crossings, prev = 0, 0
    for s in samples:
        if (prev < 0 <= s) or (prev >= 0 > s):
            crossings += 1
        prev = s
    return crossings / 2 / (len(samples) / RATE) if samples else 0.0


def rms(frames: list[av.AudioFrame]) -> float:
    samples = _channel0(frames)
    return math.sqrt(sum(s * s for s in samples) / len(samples)) if samples else 0.0
