"""Standard aiortc WebRTC calls to transceivers, driven over stdin/stdout (run in a client netns).

    python -m lab.callclient URL [URL ...]

One call per URL (WHIP-style POST of the offer; the answer's only candidates are the VIPs). It
prints one JSON line per event and reads commands, one per line:

    {"event": "call", "call": i, "state": "connected", "local": [a, p], "remote": [a, p],
     "setup_ms": ...}                               each call, once connected (or "failed")
    stats          -> {"event": "stats", "calls": [{"call", "rtp", "max_gap_ms", "since_ms",
                       "state"}]}   rtp: echoed RTP packets received; gaps between them
    call URL       -> a new call (a "call" event follows)
    rtt I N        -> {"event": "rtt", "call": I, "ms": [...]}  N authenticated STUN Binding
                      round trips on call I's credentials, from a fresh port, to the VIP
    rttdirect I N ADDR:PORT -> the same, sent straight to a transceiver's UDP socket
    hangup         -> DELETE every call, final "stats", exit 0

Echoed RTP is counted where it arrives (RTCRtpReceiver._handle_rtp_packet), before any jitter
buffer, so a gap in the path shows as a gap in the counts.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aioice import stun
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from lab.tone import ToneTrack


@dataclass
class Call:
    index: int
    url: str
    pc: RTCPeerConnection
    location: str = ""
    answer: str = ""
    offer: str = ""
    rtp: int = 0
    first: float = 0.0
    last: float = 0.0
    max_gap: float = 0.0
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def arrived(self) -> None:
        now = time.monotonic()
        if self.rtp:
            self.max_gap = max(self.max_gap, now - self.last)
        else:
            self.first = now
        self.last = now
        self.rtp += 1

    def stats(self) -> dict[str, Any]:
        since = (time.monotonic() - self.last) * 1000 if self.rtp else None
        senders = self.pc.getSenders()
        # RTP packets our sender sent (aiortc keeps the count privately; getStats is async).
        sent = getattr(senders[0], "_RTCRtpSender__packet_count", None) if senders else None
        return {
            "call": self.index,
            "sent": sent,
            "rtp": self.rtp,
            "max_gap_ms": round(self.max_gap * 1000, 1),
            "since_ms": None if since is None else round(since, 1),
            "state": self.pc.connectionState,
        }

    def credentials(self) -> tuple[str, str, str]:
        """(server ufrag, server pwd, client ufrag) from the SDP."""
        s_ufrag = re.search(r"a=ice-ufrag:(\S+)", self.answer)
        s_pwd = re.search(r"a=ice-pwd:(\S+)", self.answer)
        c_ufrag = re.search(r"a=ice-ufrag:(\S+)", self.offer)
        if not (s_ufrag and s_pwd and c_ufrag):
            raise ValueError("no ICE credentials in the SDP")
        return s_ufrag.group(1), s_pwd.group(1), c_ufrag.group(1)


def emit(doc: dict[str, Any]) -> None:
    print(json.dumps(doc), flush=True)


class Client:
    def __init__(self, http: aiohttp.ClientSession) -> None:
        self.http = http
        self.calls: list[Call] = []

    async def place(self, url: str) -> None:
        t0 = time.monotonic()
        pc = RTCPeerConnection()
        call = Call(len(self.calls), url, pc)
        self.calls.append(call)
        try:
            pc.addTrack(ToneTrack())
            pc.on("track", lambda track: call.tasks.append(asyncio.ensure_future(drain(track))))
            await pc.setLocalDescription(await pc.createOffer())
            call.offer = pc.localDescription.sdp
            headers = {"Content-Type": "application/sdp"}
            async with self.http.post(f"{url}/v1/calls", data=call.offer, headers=headers) as r:
                body = await r.text()
                if r.status != 201:
                    raise RuntimeError(f"POST answered {r.status}: {body.strip()}")
                call.location = r.headers["Location"]
                call.answer = body
            await pc.setRemoteDescription(RTCSessionDescription(sdp=call.answer, type="answer"))
            count_rtp(pc, call)
            await wait_connected(pc, 20)
            pair = ice(pc)._nominated[1]
            emit({
                "event": "call", "call": call.index, "state": "connected", "url": url,
                "local": [pair.local_candidate.host, pair.local_candidate.port],
                "remote": list(pair.remote_addr),
                "setup_ms": round((time.monotonic() - t0) * 1000, 1),
                "ufrag": call.credentials()[0],
            })  # fmt: skip
        except Exception as exc:  # reported, not raised: the other calls go on
            emit({"event": "call", "call": call.index, "state": "failed", "error": str(exc)})

    async def rtt(self, index: int, n: int, dest: tuple[str, int] | None) -> list[float]:
        """n authenticated Binding requests for call `index` from a fresh socket; the
        transceiver answers them (they do not carry USE-CANDIDATE, so nothing moves)."""
        call = self.calls[index]
        s_ufrag, s_pwd, c_ufrag = call.credentials()
        local = ice(call.pc)._nominated[1].local_candidate.host
        dest = dest or tuple(ice(call.pc)._nominated[1].remote_addr)
        out: list[float] = []
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((local, 0))
            sock.setblocking(False)
            loop = asyncio.get_running_loop()
            for _ in range(n):
                req = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
                req.attributes["USERNAME"] = f"{s_ufrag}:{c_ufrag}"
                req.attributes["PRIORITY"] = 1
                req.attributes["ICE-CONTROLLING"] = secrets.randbits(63)
                req.add_message_integrity(s_pwd.encode())
                req.add_fingerprint()
                t0 = time.perf_counter()
                await loop.sock_sendto(sock, bytes(req), dest)
                try:
                    while True:
                        data = await asyncio.wait_for(loop.sock_recv(sock, 2048), 1.0)
                        resp = stun.parse_message(data)
                        if resp.transaction_id == req.transaction_id:
                            break
                except TimeoutError:
                    continue  # a lost probe: not a sample
                out.append(round((time.perf_counter() - t0) * 1000, 3))
        return out

    async def hangup(self) -> None:
        for call in self.calls:
            if call.location:
                try:
                    async with self.http.delete(call.url + call.location) as r:
                        await r.read()
                except aiohttp.ClientError:
                    pass  # the transceiver may be gone: the call ends here anyway
            await call.pc.close()
            for t in call.tasks:
                t.cancel()


def ice(pc: RTCPeerConnection) -> Any:
    return pc.getTransceivers()[0].receiver.transport.transport._connection


def count_rtp(pc: RTCPeerConnection, call: Call) -> None:
    receiver = pc.getReceivers()[0]
    inner = receiver._handle_rtp_packet

    async def counted(packet: Any, arrival_time_ms: int) -> None:
        call.arrived()
        await inner(packet, arrival_time_ms=arrival_time_ms)

    receiver._handle_rtp_packet = counted  # type: ignore[method-assign]


async def drain(track: MediaStreamTrack) -> None:
    """Consume decoded frames so they do not pile up."""
    try:
        while True:
            await track.recv()
    except MediaStreamError:
        return


async def wait_connected(pc: RTCPeerConnection, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    changed = asyncio.Event()
    pc.on("connectionstatechange", changed.set)
    while pc.connectionState != "connected":
        if pc.connectionState in ("failed", "closed"):
            raise RuntimeError(f"call {pc.connectionState}")
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"not connected after {timeout} s ({pc.connectionState})")
        changed.clear()
        try:
            await asyncio.wait_for(changed.wait(), left)
        except TimeoutError:
            pass


async def main(urls: list[str]) -> int:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
        client = Client(http)
        for url in urls:
            await client.place(url)
        try:
            while line := (await reader.readline()).decode():
                cmd = line.split()
                if not cmd:
                    continue
                if cmd[0] == "stats":
                    emit({"event": "stats", "calls": [c.stats() for c in client.calls]})
                elif cmd[0] == "call" and len(cmd) == 2:
                    await client.place(cmd[1])
                elif cmd[0] in ("rtt", "rttdirect") and len(cmd) >= 3:
                    dest = None
                    if cmd[0] == "rttdirect":
                        host, port = cmd[3].rsplit(":", 1)
                        dest = (host, int(port))
                    ms = await client.rtt(int(cmd[1]), int(cmd[2]), dest)
                    emit({"event": "rtt", "call": int(cmd[1]), "ms": ms})
                elif cmd[0] == "hangup":
                    break
                else:
                    emit({"event": "error", "error": f"unknown command {line.strip()!r}"})
        finally:
            stats = [c.stats() for c in client.calls]
            await client.hangup()
            emit({"event": "stats", "final": True, "calls": stats})
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
