"""Measure the transceiver: call set-up time, server CPU per call, in-server echo latency.

    .venv/bin/python -m bench.txr_measure --calls 10 --seconds 10 --app echo
    .venv/bin/python -m bench.txr_measure --latency --app pcm-echo

The first starts `transceiver serve` as a subprocess on 127.0.0.1, runs N aiortc tone clients in
this process, reads the set-up histogram from /metrics and the server's CPU time from /proc.
`--latency` runs one call against an in-process transceiver and times, on its UDP socket, each
RTP packet in against the echoed RTP packet out (the k-th out carries the k-th in).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import sys
import time
from pathlib import Path

import aiohttp

from lab.peer import call
from lab.procstat import cpu_seconds
from transceiver.config import Settings
from transceiver.fastpath import is_rtp
from transceiver.service import TransceiverService

EXE = Path(sys.executable).parent / "transceiver"


async def main(calls: int, seconds: float, app: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        str(EXE), "serve", "--listen=127.0.0.1:0", "--udp=127.0.0.1:0", f"--app={app}",
        "--log-level=warning", stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        url = re.search(rb"http=(\S+)", line).group(1).decode()
        async with aiohttp.ClientSession() as http:
            idle0, t0 = cpu_seconds(proc.pid), time.monotonic()
            await asyncio.sleep(2)
            idle = (cpu_seconds(proc.pid) - idle0) / (time.monotonic() - t0)
            clients = await asyncio.gather(*(call(http, url, want_frames=10) for _ in range(calls)))
            await asyncio.gather(*(c.wait_state("connected", timeout=30) for c in clients))
            await asyncio.gather(*(c.got_frames.wait() for c in clients))
            c0, t0 = cpu_seconds(proc.pid), time.monotonic()
            n0 = sum(len(c.frames) for c in clients)
            await asyncio.sleep(seconds)
            busy = (cpu_seconds(proc.pid) - c0) / (time.monotonic() - t0)
            echoed = (sum(len(c.frames) for c in clients) - n0) / seconds / calls
            text = await (await http.get(url + "/metrics")).text()
            total = float(re.search(r"txr_call_setup_seconds_sum (\S+)", text).group(1))
            count = float(re.search(r"txr_call_setup_seconds_count (\S+)", text).group(1))
            await asyncio.gather(*(c.close() for c in clients))
        p50 = _histogram_p50(text, "txr_call_setup_seconds")
        print(f"app={app} calls={calls} setup_mean={1000 * total / count:.0f} ms p50~{p50:.0f} ms")
        print(f"server CPU: idle {100 * idle:.1f}%, with calls {100 * busy:.1f}% of one core")
        per_call = 100 * (busy - idle) / calls
        print(f"  = {per_call:.2f}% of a core per call; client heard {echoed:.1f} frames/s")
    finally:
        proc.terminate()
        await proc.wait()


def _histogram_p50(text: str, name: str) -> float:
    """Median in ms, interpolated linearly inside the Prometheus bucket that holds it."""
    buckets = [
        (float(le), float(n))
        for le, n in re.findall(rf'{name}_bucket{{le="([^"]+)"}} (\S+)', text)
        if le != "+Inf"
    ]
    total = float(re.search(rf"{name}_count (\S+)", text).group(1))
    lower, below = 0.0, 0.0
    for le, n in buckets:
        if n >= total / 2:
            return 1000 * (lower + (le - lower) * (total / 2 - below) / max(n - below, 1))
        lower, below = le, n
    return float("inf")


async def latency(app: str, frames: int = 300) -> None:
    txr = TransceiverService(Settings(http=("127.0.0.1", 0), udp=("127.0.0.1", 0), app=app))
    await txr.start()
    ins: list[float] = []
    outs: list[float] = []
    received = txr.mux.datagram_received
    transport = txr.mux.transport
    assert transport is not None
    sendto = transport.sendto

    def timed_received(data: bytes, addr: tuple[str, int]) -> None:
        if is_rtp(data):
            ins.append(time.perf_counter())
        received(data, addr)

    def timed_sendto(data: bytes, addr: tuple[str, int] | None = None) -> None:
        if is_rtp(data):
            outs.append(time.perf_counter())
        sendto(data, addr)

    txr.mux.datagram_received = timed_received  # type: ignore[method-assign]
    transport.sendto = timed_sendto  # type: ignore[method-assign]
    try:
        async with aiohttp.ClientSession() as http:
            client = await call(http, txr.http_url, want_frames=frames)
            await client.wait_state("connected")
            await asyncio.wait_for(client.got_frames.wait(), frames / 50 + 20)
            await client.close()
    finally:
        await txr.stop()
    gaps = sorted((o - i) * 1000 for i, o in zip(ins[20:frames], outs[20:frames], strict=False))
    p90 = gaps[int(0.9 * len(gaps))]
    print(f"app={app}: RTP in -> echo out median {statistics.median(gaps):.2f} ms, p90 {p90:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--app", default="echo")
    parser.add_argument("--latency", action="store_true")
    args = parser.parse_args()
    if args.latency:
        asyncio.run(latency(args.app))
    else:
        asyncio.run(main(args.calls, args.seconds, args.app))
