"""The call generator's audio: a tone as 20 ms Opus packets, at real-time pace."""

from __future__ import annotations

import array
import asyncio
import fractions
import math
import time

import av
from aiortc import AudioStreamTrack
from aiortc.codecs.opus import OpusEncoder
from aiortc.mediastreams import MediaStreamError

RATE = 48000
PTIME = 0.020
SAMPLES = int(RATE * PTIME)  # 960 per frame
TONE_HZ = 440.0  # 440 whole cycles per second: one second of tone loops seamlessly
TIME_BASE = fractions.Fraction(1, RATE)


def _tone_opus() -> list[bytes]:
    """One second of a 440 Hz tone at -10 dBFS, encoded once into 50 Opus packets of 20 ms."""
    amp = 0.3 * 32767
    pcm = array.array(
        "h", (int(amp * math.sin(2 * math.pi * TONE_HZ * n / RATE)) for n in range(RATE))
    )
    encoder = OpusEncoder()
    packets: list[bytes] = []
    # Two passes: the encoder's look-ahead delays output, the second second is steady-state.
    for second in range(2):
        for n in range(0, RATE, SAMPLES):
            frame = av.AudioFrame(format="s16", layout="mono", samples=SAMPLES)
            frame.planes[0].update(pcm[n : n + SAMPLES].tobytes())
            frame.pts = second * RATE + n
            frame.sample_rate = RATE
            frame.time_base = TIME_BASE
            packets += encoder.encode(frame)[0]
    return packets[-RATE // SAMPLES :]


TONE = _tone_opus()


class ToneTrack(AudioStreamTrack):
    """20 ms Opus packets of a tone at real-time pace, from the first recv().

    The tone is encoded once up front and the track hands aiortc `av.Packet`s, which its sender
    packs as they are. Handing it raw frames instead costs ~3 ms of CPU per frame in the CLIENT
    (aiortc computes each sent frame's audio level in pure Python, then encodes): 100 such
    clients would need more than the whole machine and the bench would measure the clients.
    """

    def __init__(self) -> None:
        super().__init__()
        self._start: float | None = None
        self._pts = 0

    async def recv(self) -> av.Packet:  # type: ignore[override]
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        else:
            self._pts += SAMPLES
            delay = self._start + self._pts / RATE - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        packet = av.Packet(TONE[(self._pts // SAMPLES) % len(TONE)])
        packet.pts = self._pts
        packet.time_base = TIME_BASE
        return packet
