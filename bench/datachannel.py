"""Data channel messages: round trip and server CPU per message, transceiver vs plain aiortc.

One call per server, each server a subprocess on 127.0.0.1; the client is an aiortc peer
(lab.peer.ClientPeer with an `oai-events` channel, pre-encoded Opus tone at real-time pace, echo
not decoded) in this process. On the open call it sends messages one at a time (one in flight)
and waits for each echo (lab.channelclient.ChannelEcho): JSON text of 100 B and of 64 KB.

- **transceiver (echo)**: `transceiver serve` direct mode, the default `echo` app: the Opus
  fast path echoes the audio, `EchoApp` echoes each message through `call.channels` and
  `call.send_message` (transceiver/channels.py); SCTP is aiortc's, over the call's DTLS.
- **plain aiortc** (`python -m bench.datachannel --baseline-server`): a stock RTCPeerConnection
  per call whose `datachannel` handler sends every message back (`channel.send` from the
  `message` event); the audio is received and not decoded, nothing sent back.

Server CPU per message = (server CPU over the messages - the same call's CPU rate with no
messages, measured over the second just before, x their duration) / messages: what the
messages add on top of the call's audio; CPU is the server threads' on-CPU time from
/proc/PID/task/*/schedstat (ns, where utime+stime tick at 10 ms). p50/p99 are of the
client's send-to-echo times. Loopback: every datagram is also delivered in the sender's
context, on both servers alike.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import signal
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench.calls import Running, Server, transceiver_server
from bench.table import Table
from lab.channelclient import LABEL, ChannelEcho, json_of_size
from lab.peer import ClientPeer

SIZES = (100, 65536)
COUNTS = {100: 300, 65536: 60}  # messages per size (sequential, so this is the run time)
IDLE_SECONDS = 1.0


@dataclass
class Result:
    server: str
    size: int
    messages: int
    p50_ms: float
    p99_ms: float
    cpu_us: float  # server CPU per message, the call's own rate subtracted
    call_cpu_pct: float  # the call's CPU with no messages, % of a core


def oncpu_seconds(pid: int) -> float:
    """CPU time of the process's threads in ns resolution (schedstat field 1): /proc's
    utime+stime tick at 10 ms, too coarse for a fraction of a millisecond per message."""
    total = 0
    for task in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        try:
            total += int(task.read_text().split()[0])
        except (OSError, IndexError, ValueError):
            continue
    return total / 1e9


def _q(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(
    pid: int, url: str, label: str, counts: dict[int, int], api_key: str | None = None
) -> list[Result]:
    peer = ClientPeer(audio="opus", decode=False, data_channels=(LABEL,))
    echo = ChannelEcho(peer.channels[0])
    out = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
        try:
            await peer.start(http, url, token=api_key)
            await echo.wait_open()
            await echo.exchange([json_of_size(n) for n in counts])  # warm-up: one of each
            for size, count in counts.items():
                message = json_of_size(size)
                c0, t0 = oncpu_seconds(pid), time.monotonic()
                await asyncio.sleep(IDLE_SECONDS)
                c1, t1 = oncpu_seconds(pid), time.monotonic()
                rtts = (await echo.exchange([message] * count))[size]
                c2, t2 = oncpu_seconds(pid), time.monotonic()
                idle_rate = (c1 - c0) / (t1 - t0)
                per_msg = max(0.0, (c2 - c1) - idle_rate * (t2 - t1)) / count
                out.append(
                    Result(label, size, count, statistics.median(rtts), _q(rtts, 0.99),
                           per_msg * 1e6, idle_rate * 100)
                )  # fmt: skip
        finally:
            await peer.hang_up(http)
    return out


def baseline_server() -> Server:
    return Server(
        "plain aiortc",
        [sys.executable, "-m", "bench.datachannel", "--baseline-server"],
        "READY ",
    )


def run(counts: dict[int, int] | None = None) -> Table:
    counts = counts or COUNTS
    results: list[Result] = []
    for server in (transceiver_server("echo", 4), baseline_server()):
        print(f"  {server.label}: messages ...", file=sys.stderr, flush=True)
        running = Running(server)
        with running as (pid, url):
            results += asyncio.run(measure(pid, url, server.label, counts, running.api_key))
    table = Table(
        "Data channel message round trip and server CPU (one call, one message in flight)",
        ["server", "message", "messages", "RTT p50 ms", "RTT p99 ms", "server CPU us/msg",
         "call alone, % core"],
    )  # fmt: skip
    for r in results:
        size = f"{r.size // 1024} KB" if r.size >= 1024 else f"{r.size} B"
        table.add(r.server, size, r.messages, r.p50_ms, r.p99_ms, r.cpu_us, r.call_cpu_pct)
    table.notes.append(
        "JSON text messages on `oai-events`, echoed by the server; audio flowing both ways on "
        "the transceiver (Opus fast path), received only by plain aiortc."
    )
    return table


# --- the baseline server: stock aiortc, data channel echo ---------------------------------------


async def serve_baseline() -> None:
    from aiohttp import web
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    from lab.peer import _NoDecode
    from transceiver import aiortc_seam

    pcs: dict[str, RTCPeerConnection] = {}
    ids = itertools.count(1)

    async def create(request: web.Request) -> web.Response:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        # Receive the audio without decoding it (a transceiver made before the offer is used
        # for its audio m-line); send none back.
        audio = pc.addTransceiver("audio", direction="recvonly")
        aiortc_seam.replace_decoder_queue(audio.receiver, _NoDecode())

        @pc.on("datachannel")
        def on_channel(channel: Any) -> None:
            channel.on("message", channel.send)

        await pc.setRemoteDescription(RTCSessionDescription(sdp=await request.text(), type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        call_id = f"c{next(ids)}"
        pcs[call_id] = pc
        return web.Response(
            status=201,
            content_type="application/sdp",
            text=pc.localDescription.sdp,
            headers={"Location": f"/v1/calls/{call_id}"},
        )

    async def delete(request: web.Request) -> web.Response:
        pc = pcs.pop(request.match_info["call_id"], None)
        if pc is None:
            return web.Response(status=404)
        await pc.close()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/v1/calls", create)
    app.router.add_delete("/v1/calls/{call_id}", delete)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    print(f"READY http://{host}:{port}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for pc in pcs.values():
            await pc.close()
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.datachannel", description=__doc__.splitlines()[0]
    )
    ap.add_argument("--small", type=int, default=COUNTS[100], help="100 B messages (%(default)s)")
    ap.add_argument("--large", type=int, default=COUNTS[65536], help="64 KB messages (%(default)s)")
    ap.add_argument(
        "--baseline-server",
        action="store_true",
        help="run the plain aiortc echo server (prints READY URL) instead of the benchmark",
    )
    args = ap.parse_args(argv)
    if args.baseline_server:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve_baseline())
        return 0
    print(run({100: args.small, 65536: args.large}).render_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
