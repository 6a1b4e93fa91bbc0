"""Server CPU per echoed Opus packet, measured with a steady synthetic packet rate.

    .venv/bin/python -m bench.srtp_blast --pps 1000 --seconds 10
    .venv/bin/python -m bench.srtp_blast --media-path aiortc
    .venv/bin/python -m bench.srtp_blast --source /path/to/other/checkout

Real calls (bench/txr_measure.py, bench/calls.py) need many aiortc clients whose own CPU competes
with the server on a small machine. Here one real aiortc client sets a call up (ICE-lite, DTLS,
SRTP keys), then sends pre-built SRTP Opus packets at `--pps` from its nominated socket and
only counts what comes back, so almost all client work is gone. The server's CPU time over the
window divided by the packets it echoed is its cost per echo; a 20 ms call is 50 echoes/s.
`--source` runs `transceiver serve` from another source tree (e.g. `git archive HEAD`), for
before/after comparisons on the same machine state.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shlex
import struct
import sys
import time
from pathlib import Path

import aiohttp
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription

from lab.procstat import cpu_seconds, user_system_seconds
from transceiver import aiortc_seam
from transceiver.fastpath import is_rtp

EXE = Path(sys.executable).parent / "transceiver"
# Runs `transceiver serve` from argv[1]'s tree; the editable install's finder would win over
# PYTHONPATH, so the package is loaded from that directory explicitly.
RUN_FROM_SOURCE = """
import importlib.util, sys
src = sys.argv.pop(1)
pkg = src + "/transceiver"
spec = importlib.util.spec_from_file_location(
    "transceiver", pkg + "/__init__.py", submodule_search_locations=[pkg]
)
mod = importlib.util.module_from_spec(spec)
sys.modules["transceiver"] = mod
spec.loader.exec_module(mod)
from transceiver.cli import main
sys.argv[0] = "transceiver"
main()
"""
OPUS_PAYLOAD = bytes([0xFC]) + bytes(79)  # an 80-byte Opus packet (CELT FB 20 ms, silence)


class Silent(MediaStreamTrack):
    """A send track that never yields a frame: the blaster sends the RTP itself."""

    kind = "audio"

    async def recv(self):  # type: ignore[override]
        await asyncio.Event().wait()


async def _server(
    source: str | None, media_path: str | None, command: str | None = None
) -> tuple[asyncio.subprocess.Process, str]:
    if command:  # e.g. a profiling wrapper; it must print "http=URL" on its first line
        proc = await asyncio.create_subprocess_exec(
            *shlex.split(command), stdout=asyncio.subprocess.PIPE
        )
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        return proc, re.search(rb"http=(\S+)", line).group(1).decode()
    # --no-auth: one local call on loopback, no application server to hold a key
    args = [
        "serve",
        "--listen=127.0.0.1:0",
        "--udp=127.0.0.1:0",
        "--log-level=warning",
        "--no-auth",
    ]
    if media_path:
        args.append(f"--media-path={media_path}")
    if source:
        argv = [sys.executable, "-c", RUN_FROM_SOURCE, source, *args]
    else:
        argv = [str(EXE), *args]
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE)
    line = await asyncio.wait_for(proc.stdout.readline(), 20)
    return proc, re.search(rb"http=(\S+)", line).group(1).decode()


async def blast(
    pps: int, seconds: float, source: str | None, media_path: str | None, command: str | None
) -> None:
    proc, url = await _server(source, media_path, command)
    pc = RTCPeerConnection()
    try:
        pc.addTrack(Silent())
        await pc.setLocalDescription(await pc.createOffer())
        async with aiohttp.ClientSession() as http:
            async with http.post(
                url + "/v1/calls",
                data=pc.localDescription.sdp,
                headers={"Content-Type": "application/sdp"},
            ) as resp:
                answer = await resp.text()
                assert resp.status == 201, answer
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        for _ in range(300):
            if pc.connectionState == "connected":
                break
            await asyncio.sleep(0.05)
        assert pc.connectionState == "connected", pc.connectionState
        pt = int(re.search(r"a=rtpmap:(\d+) opus/48000", answer, re.I).group(1))
        dtls = pc.getTransceivers()[0].sender.transport
        pair = aiortc_seam.nominated_pair(aiortc_seam.ice_connection(pc))
        assert pair is not None, "no nominated pair"
        transport, dest = pair.protocol.transport, pair.remote_addr
        echoed = 0

        def count(data: bytes, addr: object) -> None:  # replaces the client's whole rx path
            nonlocal echoed
            if is_rtp(data):
                echoed += 1

        pair.protocol.datagram_received = count
        ssrc, seq, ts = int.from_bytes(os.urandom(4), "big"), 0, 0
        tx = aiortc_seam.srtp_sessions(dtls)[1]

        async def send_for(duration: float) -> int:
            nonlocal seq, ts
            sent, start = 0, time.monotonic()
            while (now := time.monotonic()) - start < duration:
                due = int((now - start) * pps) - sent
                for _ in range(due):
                    rtp = struct.pack("!BBHII", 0x80, pt, seq, ts, ssrc) + OPUS_PAYLOAD
                    transport.sendto(tx.protect(rtp), dest)
                    seq, ts, sent = (seq + 1) & 0xFFFF, (ts + 960) & 0xFFFFFFFF, sent + 1
                await asyncio.sleep(0.005)
            return sent

        await send_for(1.0)  # warm-up: the call's state is built, queues are flowing
        echoed0, cpu0, t0 = echoed, cpu_seconds(proc.pid), time.monotonic()
        sent = await send_for(seconds)
        await asyncio.sleep(0.2)  # the last replies
        cpu, wall = cpu_seconds(proc.pid) - cpu0, time.monotonic() - t0
        got = echoed - echoed0
        per_echo_us = 1e6 * cpu / max(got, 1)
        user, system = user_system_seconds(proc.pid)
        load = os.getloadavg()[0]
        print(
            f"server {source or 'this tree'} media-path={media_path or 'default'} load={load:.1f}"
        )
        pct = 100 * got / max(sent, 1)
        print(f"  sent {sent} ({sent / seconds:.0f}/s), echoed {got} ({pct:.1f}%)")
        print(f"  server CPU {100 * cpu / wall:.1f}% of a core = {per_echo_us:.1f} us per echo")
        print(f"  = {50 * per_echo_us / 1e4:.3f}% of a core per 20 ms call (50 echoes/s)")
        print(f"  (whole run: user {user:.2f} s, system {system:.2f} s)")
    finally:
        await pc.close()
        proc.terminate()
        await proc.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pps", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--source", help="run the server from this source tree")
    parser.add_argument("--media-path", choices=["fast", "aiortc"])
    parser.add_argument("--command", help="run this server command instead (prints http=URL)")
    args = parser.parse_args()
    asyncio.run(blast(args.pps, args.seconds, args.source, args.media_path, args.command))
