"""Real aiortc client peers for the transceiver tests: a tone source and an echo counter."""

from __future__ import annotations

import array
import asyncio
import math
import time
from dataclasses import dataclass, field

import aiohttp
import av
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from lab.tone import RATE, SAMPLES, TONE_HZ, ToneTrack  # noqa: F401  (tests import them here)


def dominant_hz(frames: list[av.AudioFrame]) -> float:
    """Zero-crossing estimate of the frequency of the first channel of s16 frames."""
    crossings = 0
    count = 0
    prev = 0
    for frame in frames:
        channels = len(frame.layout.channels)
        data = array.array("h", bytes(frame.planes[0])[: frame.samples * channels * 2])
        for s in data[::channels]:
            if (prev < 0 <= s) or (prev >= 0 > s):
                crossings += 1
            prev = s
            count += 1
    return crossings / 2 / (count / RATE) if count else 0.0


def rms(frames: list[av.AudioFrame]) -> float:
    total = 0
    n = 0
    for frame in frames:
        channels = len(frame.layout.channels)
        data = array.array("h", bytes(frame.planes[0])[: frame.samples * channels * 2])
        total += sum(s * s for s in data)
        n += len(data)
    return math.sqrt(total / n) if n else 0.0


@dataclass
class Client:
    """One call from an aiortc peer to the transceiver's HTTP API."""

    pc: RTCPeerConnection
    tone: ToneTrack
    location: str | None = None
    answer: str | None = None
    received: list[av.AudioFrame] = field(default_factory=list)
    got_frames: asyncio.Event = field(default_factory=asyncio.Event)
    want_frames: int = 50
    _reader: asyncio.Task[None] | None = None

    @property
    def ice(self):  # the client's aioice.Connection (test-side introspection only)
        return self.pc.getTransceivers()[0].receiver.transport.transport._connection

    def nominated_remote(self) -> tuple[str, int]:
        return self.ice._nominated[1].remote_addr

    def nominated_local(self) -> tuple[str, int]:
        c = self.ice._nominated[1].local_candidate
        return (c.host, c.port)

    def _on_track(self, track: MediaStreamTrack) -> None:
        async def read() -> None:
            try:
                while True:
                    self.received.append(await track.recv())
                    if len(self.received) >= self.want_frames:
                        self.got_frames.set()
            except MediaStreamError:
                return

        self._reader = asyncio.ensure_future(read())

    async def wait_state(self, *states: str, timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        changed = asyncio.Event()
        self.pc.on("connectionstatechange", changed.set)
        while self.pc.connectionState not in states:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"client state {self.pc.connectionState}, wanted {states}")
            changed.clear()
            try:
                await asyncio.wait_for(changed.wait(), left)
            except TimeoutError:
                pass
        return self.pc.connectionState

    async def close(self) -> None:
        await self.pc.close()
        if self._reader is not None:
            self._reader.cancel()


async def make_offer(want_frames: int = 50) -> Client:
    pc = RTCPeerConnection()
    tone = ToneTrack()
    client = Client(pc=pc, tone=tone, want_frames=want_frames)
    pc.addTrack(tone)
    pc.on("track", client._on_track)
    await pc.setLocalDescription(await pc.createOffer())
    return client


async def call(http: aiohttp.ClientSession, base: str, want_frames: int = 50) -> Client:
    """Offer, POST, apply the answer; returns once the answer is applied (not yet connected)."""
    client = await make_offer(want_frames)
    try:
        async with http.post(
            f"{base}/v1/calls",
            data=client.pc.localDescription.sdp,
            headers={"Content-Type": "application/sdp"},
        ) as resp:
            body = await resp.text()
            assert resp.status == 201, f"{resp.status}: {body}"
            client.location = resp.headers["Location"]
            client.answer = body
        await client.pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
    except BaseException:
        await client.close()
        raise
    return client
