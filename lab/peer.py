"""The lab's one WebRTC client: a standard aiortc peer calling a WHIP-style endpoint.

The transceiver tests (in process), the namespace call client (lab.callclient, driven over
stdin/stdout), the end-to-end tests, the demo and the call generator (bench.callgen) all place
calls with this class, so "a call" means the same thing everywhere:

    peer = ClientPeer(audio="pcm", want_frames=50)   # or audio="opus", decode=False for load
    await peer.start(http, "http://198.18.2.2:8080")  # offer, POST, answer, wait connected
    ... peer.rtp_in, peer.max_gap, peer.frames ...
    await peer.restart_ice(http, "127.0.0.2")           # ICE restart onto a new address
    await peer.hang_up(http)

Echoed RTP is counted where it arrives (before any jitter buffer), so a gap in the path shows
as a gap in the counts. The few private aiortc attributes a client needs (the RTP tap, the
decoder queue, the nominated pair, the sender's packet count) go through transceiver/aiortc_seam.py,
the project's one seam into aiortc.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import queue
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import aiohttp
import av
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from lab.tone import OpusToneTrack, ToneTrack
from transceiver import aiortc_seam as seam
from transceiver.app import GREETING_PAYLOAD

CALLS_PATH = "/v1/calls"
TOKENS_PATH = "/v1/tokens"
SETUP_TIMEOUT = 20.0
BROWSER_RTCP_INTERVAL = 5.0  # libwebrtc's RTCP report interval for audio (aiortc's is 1 s)


@contextlib.contextmanager
def browser_rtcp() -> Iterator[None]:
    """This process's aiortc clients send RTCP as a browser does for audio, every ~5 s: a
    server measured with them gets a browser's RTCP load per call. Restored on exit."""
    before = seam.rtcp_interval()
    seam.set_rtcp_interval(BROWSER_RTCP_INTERVAL)
    try:
        yield
    finally:
        seam.set_rtcp_interval(before)


class _NoDecode:
    """Stands in for the receiver's decoder queue: frames are dropped, not decoded. The
    decoder thread waits on get() until the receiver stops and sends it the None sentinel."""

    def __init__(self) -> None:
        self._sentinel: queue.Queue[None] = queue.Queue()

    def put(self, item: object) -> None:
        if item is None:
            self._sentinel.put(None)

    def get(self) -> None:
        return self._sentinel.get()


class CallRefused(RuntimeError):
    """The server answered the offer with something other than 201."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"POST {CALLS_PATH} answered {status}: {body.strip()[:200]}")
        self.status = status
        self.body = body


def auth_header(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


async def client_token(http: aiohttp.ClientSession, url: str, api_key: str) -> str:
    """What an application server does for a browser: mint a single-use client token."""
    async with http.post(f"{url}{TOKENS_PATH}", headers=auth_header(api_key)) as resp:
        if resp.status != 201:
            raise CallRefused(resp.status, await resp.text())
        return str((await resp.json())["value"])


def read_api_key(path: str | None) -> str | None:
    """The first key of an API keys file (the lab's clients act as the application server)."""
    if not path:
        return None
    from transceiver.auth import read_key_file

    return read_key_file(path)[0]


def add_api_keys_option(parser: argparse.ArgumentParser) -> None:
    """`--api-keys FILE` for a lab client command (default env TXR_API_KEYS_FILE): the client
    acts as the application server and mints client tokens with the file's first key."""
    parser.add_argument(
        "--api-keys",
        metavar="FILE",
        default=os.environ.get("TXR_API_KEYS_FILE"),
        help="the transceiver's API keys file: calls use client tokens minted with its first "
        "key (default: env TXR_API_KEYS_FILE; none: the server runs --no-auth)",
    )


LAB_KEYS_FILE = "api-keys"


def lab_key_file(tmpdir: Path) -> Path:
    """A lab's API keys file (one fresh key, mode 0600), made once: its transceivers get
    `--api-keys` it, its clients (lab.callclient) mint client tokens with it."""
    from transceiver.auth import write_key_file

    path = Path(tmpdir) / LAB_KEYS_FILE
    write_key_file(path)
    return path


class ClientPeer:
    """One call. audio="pcm": a paced tone encoded by aiortc (like a browser); "opus": the tone
    pre-encoded (cheap, for load). decode=False: the echo is counted, never decoded.
    want_frames=N: keep the decoded echo in `frames`; `got_frames` is set once N have arrived
    (raise `want_frames` and clear `got_frames` to wait for more). data_channels: labels of data
    channels opened before the audio track (`channels`)."""

    def __init__(
        self,
        *,
        audio: Literal["pcm", "opus"] = "pcm",
        decode: bool = True,
        want_frames: int = 0,
        data_channels: Sequence[str] = (),
    ) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        # Channels made first put the application m-line before the audio one.
        self.channels = [self.pc.createDataChannel(label) for label in data_channels]
        self.tone: ToneTrack | OpusToneTrack = ToneTrack() if audio == "pcm" else OpusToneTrack()
        transceiver = self.pc.addTransceiver(self.tone, direction="sendrecv")
        self.url = ""
        self.location: str | None = None
        self.offer_sdp = ""
        self.answer_sdp = ""
        # set-up times, ms from the POST: answer received, ICE completed, connected
        self.answer_ms: float | None = None
        self.ice_ms: float | None = None
        self.setup_ms: float | None = None
        self._t0: float | None = None  # perf_counter() at the POST
        # echoed RTP, counted on arrival
        self.rtp_in = 0
        self.first_at = 0.0
        self.last_at = 0.0
        self.max_gap = 0.0
        self.first_audio = asyncio.Event()
        # ms from the POST to the first packet of the server's own audio (a greet-echo app's
        # greeting) and to the first echo of ours: set-up counted to what the user hears
        self.greeting_ms: float | None = None
        self.echo_ms: float | None = None
        self.echoed = asyncio.Event()  # set with echo_ms
        self.greeting_in = 0  # greeting packets received
        self.want_frames = want_frames
        self.frames: list[av.AudioFrame] = []
        self.got_frames = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        seam.tap_rtp(transceiver.receiver, self._arrived)
        if not decode and not want_frames and seam.has_decoder_queue(transceiver.receiver):
            # Nothing is decoded: the receiver's track then yields nothing to read.
            seam.replace_decoder_queue(transceiver.receiver, _NoDecode())
        else:
            self.pc.on("track", self._on_track)

    # --- placing the call ------------------------------------------------------------------------

    async def make_offer(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())  # gathers host candidates
        self.offer_sdp = self.pc.localDescription.sdp
        return self.offer_sdp

    async def post(
        self,
        http: aiohttp.ClientSession,
        url: str,
        headers: Mapping[str, str] | None = None,
        token: str | None = None,
    ) -> str:
        """POST the offer and apply the answer; raises CallRefused on anything but 201.
        `token`: an API key or a client token (`Authorization: Bearer`)."""
        if not self.offer_sdp:
            await self.make_offer()
        self.url = url
        t0 = time.perf_counter()
        sent = {"Content-Type": "application/sdp", **auth_header(token), **(headers or {})}
        async with http.post(f"{url}{CALLS_PATH}", data=self.offer_sdp, headers=sent) as resp:
            body = await resp.text()
            if resp.status != 201:
                raise CallRefused(resp.status, body)
            self.location = resp.headers.get("Location")
        self.answer_ms = (time.perf_counter() - t0) * 1000
        self.answer_sdp = body
        self._t0 = t0
        self.pc.on("iceconnectionstatechange", self._ice_state)
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
        return body

    async def start(
        self,
        http: aiohttp.ClientSession,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        token: str | None = None,
        timeout: float = SETUP_TIMEOUT,
    ) -> None:
        """Offer, POST, answer, and wait until connected (raises on failure or timeout)."""
        await self.post(http, url, headers, token)
        await self.wait_state("connected", timeout=timeout)
        self.setup_ms = (time.perf_counter() - self._t0) * 1000

    async def wait_state(self, *states: str, timeout: float = SETUP_TIMEOUT) -> str:
        """Wait for one of `states`; "failed"/"closed" end the wait with an error unless asked."""
        deadline = time.monotonic() + timeout
        changed = asyncio.Event()
        self.pc.on("connectionstatechange", changed.set)
        while self.pc.connectionState not in states:
            if self.pc.connectionState in ("failed", "closed"):
                raise ConnectionError(f"call {self.pc.connectionState}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"client state {self.pc.connectionState}, wanted {states}")
            changed.clear()
            try:
                await asyncio.wait_for(changed.wait(), left)
            except TimeoutError:
                pass
        return self.pc.connectionState

    def _ice_state(self) -> None:
        if self.pc.iceConnectionState == "completed" and self.ice_ms is None:
            self.ice_ms = (time.perf_counter() - self._t0) * 1000

    # --- ICE restart -----------------------------------------------------------------------------

    async def restart_ice(
        self, http: aiohttp.ClientSession, host: str, token: str | None = None
    ) -> float:
        """ICE restart after a network change: a new ICE agent on `host` (a new local address
        and port; the old one goes silent at once), its credentials PATCHed to the call's
        resource (RFC 9725 §4.3), the answer's applied; returns once the new path is connected
        (ms from the PATCH). Raises CallRefused on anything but 200."""
        from aioice import Candidate

        from transceiver.sdp import SDPFRAG, ice_fragment, parse_ice_fragment

        agent = await seam.client_ice_agent(host)
        body = ice_fragment(
            agent.local_username, agent.local_password, agent.local_candidates, lite=False
        )
        sent = {"Content-Type": SDPFRAG, "If-Match": "*", **auth_header(token)}
        t0 = time.perf_counter()
        try:
            async with http.patch(f"{self.url}{self.location}", data=body, headers=sent) as resp:
                answer = await resp.text()
                if resp.status != 200:
                    raise CallRefused(resp.status, answer)
            frag = parse_ice_fragment(answer)
            if frag.ufrag is None or frag.pwd is None:
                raise CallRefused(resp.status, "answer has no ICE credentials")
            candidates = [Candidate.from_sdp(c) for c in frag.candidates]
            await seam.restart_client_ice(self.pc, agent, frag.ufrag, frag.pwd, candidates)
        except BaseException:
            await agent.close()
            raise
        # As a WHIP client does: the answer SDP now carries the new server credentials.
        self.answer_sdp = re.sub(r"a=ice-ufrag:\S+", f"a=ice-ufrag:{frag.ufrag}", self.answer_sdp)
        self.answer_sdp = re.sub(r"a=ice-pwd:\S+", f"a=ice-pwd:{frag.pwd}", self.answer_sdp)
        self.offer_sdp = re.sub(
            r"a=ice-ufrag:\S+", f"a=ice-ufrag:{agent.local_username}", self.offer_sdp
        )
        return (time.perf_counter() - t0) * 1000

    # --- what comes back -------------------------------------------------------------------------

    def _arrived(self, packet: object) -> None:
        now = time.monotonic()
        if getattr(packet, "payload", None) == GREETING_PAYLOAD:
            self.greeting_in += 1
            if self.greeting_ms is None and self._t0 is not None:
                self.greeting_ms = (time.perf_counter() - self._t0) * 1000
        elif self.echo_ms is None and self._t0 is not None:
            self.echo_ms = (time.perf_counter() - self._t0) * 1000
            self.echoed.set()
        if self.rtp_in:
            self.max_gap = max(self.max_gap, now - self.last_at)
        else:
            self.first_at = now
            self.first_audio.set()
        self.last_at = now
        self.rtp_in += 1

    async def wait_audio(self, timeout: float = SETUP_TIMEOUT) -> None:
        """Until the first echoed RTP packet arrived (connected is not yet audio)."""
        await asyncio.wait_for(self.first_audio.wait(), timeout)

    def _on_track(self, track: MediaStreamTrack) -> None:
        self._tasks.append(asyncio.ensure_future(self._read(track)))

    async def _read(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                frame = await track.recv()
                if self.want_frames:
                    self.frames.append(frame)
                    if len(self.frames) >= self.want_frames:
                        self.got_frames.set()
        except MediaStreamError:
            return

    # --- facts about the call --------------------------------------------------------------------

    @property
    def sent(self) -> int | None:
        """RTP packets our sender sent (None if aiortc keeps no such count)."""
        senders = self.pc.getSenders()
        return seam.sender_counters(senders[0]).packet_count if senders else None

    def nominated(self) -> tuple[tuple[str, int], tuple[str, int]]:
        """(local address, remote address) of the nominated ICE pair."""
        pair = seam.nominated_pair(seam.ice_connection(self.pc))
        if pair is None:
            raise ConnectionError("no nominated ICE pair yet")
        local = pair.local_candidate
        return (local.host, local.port), (pair.remote_addr[0], pair.remote_addr[1])

    def credentials(self) -> tuple[str, str, str]:
        """(server ufrag, server pwd, client ufrag) from the SDP."""
        s_ufrag = re.search(r"a=ice-ufrag:(\S+)", self.answer_sdp)
        s_pwd = re.search(r"a=ice-pwd:(\S+)", self.answer_sdp)
        c_ufrag = re.search(r"a=ice-ufrag:(\S+)", self.offer_sdp)
        if not (s_ufrag and s_pwd and c_ufrag):
            raise ValueError("no ICE credentials in the SDP")
        return s_ufrag.group(1), s_pwd.group(1), c_ufrag.group(1)

    def client_password(self) -> str:
        """The client's own ICE password (it signs answers to the server's checks)."""
        pwd = re.search(r"a=ice-pwd:(\S+)", self.offer_sdp)
        if not pwd:
            raise ValueError("no ICE password in the offer")
        return pwd.group(1)

    def stats(self) -> dict[str, Any]:
        since = (time.monotonic() - self.last_at) * 1000 if self.rtp_in else None
        return {
            "sent": self.sent,
            "rtp": self.rtp_in,
            "max_gap_ms": round(self.max_gap * 1000, 1),
            "since_ms": None if since is None else round(since, 1),
            "state": self.pc.connectionState,
        }

    async def rtp_counts(self) -> tuple[int, int, int]:
        """(RTP sent, RTP received, received packets missing by sequence) from getStats."""
        sent = received = lost = 0
        for report in (await self.pc.getStats()).values():
            if report.type == "outbound-rtp":
                sent += report.packetsSent
            elif report.type == "inbound-rtp":
                received += report.packetsReceived
                lost += report.packetsLost
        return sent, received, lost

    # --- the end ---------------------------------------------------------------------------------

    async def hang_up(self, http: aiohttp.ClientSession | None = None) -> int | None:
        """DELETE the call (if the server is still there) and close; returns the DELETE status."""
        status = None
        if http is not None and self.location:
            try:
                async with http.delete(self.url + self.location) as resp:
                    await resp.read()
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError):
                pass  # the transceiver may be gone: the call ends here anyway
        await self.close()
        return status

    async def close(self) -> None:
        await self.pc.close()
        for task in self._tasks:
            task.cancel()


# --- the short forms the transceiver tests use ------------------------------------------------


async def make_offer(want_frames: int = 50) -> ClientPeer:
    """A peer with its offer made (not posted): for tests that post it themselves."""
    peer = ClientPeer(want_frames=want_frames)
    await peer.make_offer()
    return peer


async def call(
    http: aiohttp.ClientSession,
    base: str,
    want_frames: int = 50,
    headers: Mapping[str, str] | None = None,
    token: str | None = None,
) -> ClientPeer:
    """Offer, POST, apply the answer; returns once the answer is applied (not yet connected).
    A refusal raises CallRefused; the peer is closed then."""
    peer = await make_offer(want_frames)
    try:
        await peer.post(http, base, headers, token)
    except BaseException:
        await peer.close()
        raise
    return peer
