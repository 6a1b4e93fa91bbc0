"""A microphone stand-in for aiortc peers: a paced sine in 20 ms mono s16 frames."""

from __future__ import annotations

import array
import asyncio
import fractions
import math
import time

import av
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

RATE = 48000
SAMPLES = 960  # 20 ms
TONE_HZ = 440.0


class ToneTrack(MediaStreamTrack):
    """A paced 440 Hz sine, 20 ms mono s16 frames, like a microphone would deliver."""

    kind = "audio"

    def __init__(self, hz: float = TONE_HZ) -> None:
        super().__init__()
        self._hz = hz
        self._pts = 0
        self._start: float | None = None
        self.sent = 0

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        wait = self._start + self._pts / RATE - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        samples = array.array(
            "h",
            (
                int(12000 * math.sin(2 * math.pi * self._hz * (self._pts + i) / RATE))
                for i in range(SAMPLES)
            ),
        )
        frame = av.AudioFrame(format="s16", layout="mono", samples=SAMPLES)
        frame.planes[0].update(samples.tobytes())
        frame.sample_rate = RATE
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, RATE)
        self._pts += SAMPLES
        self.sent += 1
        return frame
