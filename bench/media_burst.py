"""Media while calls arrive: the echoed audio of established calls while a burst of new calls
sets up on the same transceiver.

Issue 12 asks that a burst of 50 new calls in one second add at most 20 ms to the p99
inter-arrival gap of the echoed audio on 100 established calls. `transceiver serve` runs as a
subprocess (127.0.0.1, the default echo app, Opus fast path). This process holds the
established calls: each is set up by a real aiortc client (ICE-lite, DTLS, SRTP keys); then its
media is sent by a pacing thread (bench/paced.py) from SRTP packets protected beforehand (one
80-byte Opus packet per call every 20 ms, the calls' phases spread over the period), and its
echoes are read by another thread with the kernel's receive timestamps (SO_TIMESTAMPNS). So
neither this process's event loop nor its Python speed is in the measured gaps: what moves
them is when the server sent (and the pacer's lateness, which the table shows). A second
process places the burst: 50 aiortc calls (bench/callgen.py's client: a pre-encoded tone, the
echo counted) at 50 per second, kept up and sending until the round ends, so the burst's own
media is load too.

Per round two windows of the same calls: **quiet** (3 s before the burst's first POST: the
baseline) and **burst** (from the first POST until 1 s after the last burst call connected).
Per window, every inter-arrival gap of every established call's echoes: p50, p99, max; echoes
missing; the server's CPU and run-queue wait (/proc); its event-loop lag (`/metrics`,
`txr_event_loop_lag_seconds`, a 20 ms timer). The burst generator runs at nice 10: on two
shared CPUs its 50 DTLS handshakes and ICE agents would otherwise compete with the server it
loads, and that would measure the generator.

What it shows (two runs of 3 rounds, this 2-CPU machine): the burst adds 3.7-9.0 ms to the
established calls' p99 gap (20-21 ms quiet, 24-30 ms during the burst), within the issue's
20 ms, with the set-up
work (SDP, ICE, DTLS handshakes) still on the server's one event loop: each piece of it is a
few ms of CPU between two media wake-ups, and the Opus fast path handles a datagram in the
socket's callback, so media waits for at most the callback in front of it. No echo was lost.
The worst single gap is longer (68-86 ms; at most one loop lag over 50 ms in three bursts),
while the server's run-queue wait rose from 3-4 % to 6-19 %: the burst's clients share the two
CPUs. Moving set-up to a worker was not needed for the target; it stays the lever
if a larger burst per core is wanted (the DTLS handshake is the largest piece).

    python -m bench.media_burst [--established N] [--burst N] [--rounds N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from bench import prom
from bench.calls import Running, transceiver_server
from bench.paced import PTIME, Media, establish
from bench.table import Table
from lab import procstat

ESTABLISHED = int(os.environ.get("BENCH_BURST_ESTABLISHED", "100"))
BURST = int(os.environ.get("BENCH_BURST_CALLS", "50"))
ROUNDS = int(os.environ.get("BENCH_BURST_ROUNDS", "3"))
QUIET_S = 3.0  # the baseline window before each burst
TAIL_S = 1.0  # the burst window runs on this long after its last call connected
ROUND_S = 15.0  # the most a round can take (for the packets protected beforehand)
LAG = "txr_event_loop_lag_seconds"
TARGET_MS = 20.0  # what the issue allows a burst to add to the p99 gap


@dataclass
class Window:
    gaps: list[float]
    got: int
    expected: int
    late: list[float]
    cpu_s: float
    wait_s: float
    seconds: float
    lag_over_20ms: float
    lag_over_50ms: float


class Burst:
    """The burst's process: `--burst-worker`, started niced, waiting for "go" on stdin."""

    def __init__(self, url: str, calls: int, keys_file: str | None) -> None:
        argv = [sys.executable, "-m", "bench.media_burst", "--burst-worker", url, str(calls)]
        env = {**os.environ, "TXR_API_KEYS_FILE": keys_file or ""}
        self.proc = subprocess.Popen(
            ["nice", "-n", "10", *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )

    def line(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        box: list[str] = []
        t = threading.Thread(target=lambda: box.append(self.proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
        t.start()
        t.join(timeout)
        if not box or not box[0]:
            raise RuntimeError(f"burst worker: no answer within {timeout:.0f} s")
        return box[0]

    def send(self, word: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(word + "\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send("stop")
                self.proc.wait(30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


async def burst_worker(url: str, calls: int) -> None:
    """Place `calls` calls at `calls` per second on "go"; print their times as JSON; keep them
    up, sending, until "stop"; hang up."""
    from bench import callgen
    from lab.peer import read_api_key

    callgen.API_KEY = read_api_key(os.environ.get("TXR_API_KEYS_FILE") or None)
    clients = [callgen.Client() for _ in range(calls)]
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        print("ready", flush=True)
        await loop.run_in_executor(None, sys.stdin.readline)
        go = time.monotonic()
        connected: list[float | None] = [None] * calls

        async def one(i: int, client: callgen.Client) -> None:
            await asyncio.sleep(max(0.0, go + i / calls - time.monotonic()))
            try:
                await client.start(http, url, 30)
                connected[i] = time.monotonic()
            except Exception as exc:
                client.result.error = f"{type(exc).__name__}: {exc}"[:200]

        await asyncio.gather(*(one(i, c) for i, c in enumerate(clients)))
        setup = [c.result.setup_ms for c in clients]
        errors = [c.result.error for c in clients if c.result.error]
        print(json.dumps({"go": go, "connected": connected, "setup_ms": setup, "errors": errors}))
        sys.stdout.flush()
        await loop.run_in_executor(None, sys.stdin.readline)
        for c in clients:
            c.tone.stop()
        await asyncio.gather(*(c.hang_up(http, url) for c in clients), return_exceptions=True)


async def measure_async(established: int, burst: int, rounds: int) -> dict[str, Any]:
    sys.setswitchinterval(0.0005)  # the pacer waits for the GIL at most this long
    server = transceiver_server("echo", established + burst + 10)
    running = Running(server)
    with running as (pid, url):
        keys = str(running.keys_file) if running.keys_file else None
        packets_each = int((rounds * ROUND_S + 10) / PTIME)
        calls, peers = await establish(url, running.api_key, established, packets_each)
        media = Media(calls, asyncio.get_running_loop())
        media.start()
        quiet: list[Window] = []
        busy: list[Window] = []
        setups: list[float] = []
        errors: list[str] = []
        try:
            await asyncio.sleep(1.0)  # the echoes are flowing before the first window
            for _ in range(rounds):
                worker = Burst(url, burst, keys)
                try:
                    await asyncio.to_thread(worker.line, 60)  # "ready"
                    t0, m0 = time.monotonic(), await asyncio.to_thread(prom.fetch, url)
                    cpu0, wait0 = procstat.cpu_seconds(pid), procstat.runqueue_wait_seconds(pid)
                    await asyncio.sleep(QUIET_S)
                    t1, m1 = time.monotonic(), await asyncio.to_thread(prom.fetch, url)
                    cpu1, wait1 = procstat.cpu_seconds(pid), procstat.runqueue_wait_seconds(pid)
                    worker.send("go")
                    done = json.loads(await asyncio.to_thread(worker.line, 60))
                    ends = [t for t in done["connected"] if t is not None]
                    end = (max(ends) if ends else time.monotonic()) + TAIL_S
                    await asyncio.sleep(max(0.0, end - time.monotonic()))
                    t2, m2 = time.monotonic(), await asyncio.to_thread(prom.fetch, url)
                    cpu2, wait2 = procstat.cpu_seconds(pid), procstat.runqueue_wait_seconds(pid)
                    go = float(done["go"])
                    setups += [s for s in done["setup_ms"] if s is not None]
                    errors += done["errors"]
                finally:
                    await asyncio.to_thread(worker.close)
                for into, a, b, ma, mb, ca, cb, wa, wb in (
                    (quiet, t1 - QUIET_S, t1, m0, m1, cpu0, cpu1, wait0, wait1),
                    (busy, go, end, m1, m2, cpu1, cpu2, wait1, wait2),
                ):
                    gaps, got, expected = media.gaps(a, b)
                    into.append(
                        Window(gaps, got, expected, media.lateness(a, b), cb - ca, wb - wa,
                               t2 - t1 if into is busy else t1 - t0,
                               prom.over(prom.delta(mb, ma, LAG), 0.02),
                               prom.over(prom.delta(mb, ma, LAG), 0.05))
                    )  # fmt: skip
                await asyncio.sleep(1.0)  # the burst's calls are gone before the next quiet
        finally:
            media.close()
            for c in calls:
                c.sock.close()
            await asyncio.gather(*(p.pc.close() for p in peers), return_exceptions=True)
        if media.ran_out:
            raise RuntimeError("the pacer ran out of packets before the last window ended")
    return {"quiet": quiet, "burst": busy, "setups": setups, "errors": errors}


def measure(established: int = ESTABLISHED, burst: int = BURST, rounds: int = ROUNDS) -> dict:
    return asyncio.run(measure_async(established, burst, rounds))


def _q(values: list[float], q: float) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[round(q) - 1]


def table(results: dict[str, Any], established: int, burst: int) -> Table:
    t = Table(
        f"{established} established calls' echoed audio, quiet and while {burst} new calls "
        "arrive in 1 s (ms)",
        ["window", "rounds", "gap p50", "gap p99", "gap max", "echoes missing %",
         "pacer late p99", "server CPU %", "server run-queue wait %", "loop lag > 20 ms",
         "loop lag > 50 ms"],
    )  # fmt: skip
    p99 = {}
    for key, label in (("quiet", "quiet (baseline)"), ("burst", f"{burst} new calls arriving")):
        ws: list[Window] = results[key]
        gaps = [g * 1000 for w in ws for g in w.gaps]
        late = [x * 1000 for w in ws for x in w.late]
        got, expected = sum(w.got for w in ws), sum(w.expected for w in ws)
        p99[key] = _q(gaps, 99)
        t.add(label, len(ws), f"{_q(gaps, 50):.1f}", f"{p99[key]:.1f}", f"{max(gaps):.1f}",
              f"{max(0.0, 100 * (1 - got / expected)):.2f}", f"{_q(late, 99):.2f}",
              " / ".join(f"{100 * w.cpu_s / w.seconds:.0f}" for w in ws),
              " / ".join(f"{100 * w.wait_s / w.seconds:.0f}" for w in ws),
              sum(w.lag_over_20ms for w in ws), sum(w.lag_over_50ms for w in ws))  # fmt: skip
    added = p99["burst"] - p99["quiet"]
    verdict = "within" if added <= TARGET_MS else "over"
    t.add("burst adds to p99", "", "", f"{added:+.1f}", "", "", "", "", "", "", "")
    setups = results["setups"]
    t.notes.append(
        f"gaps: every inter-arrival gap of every established call's echoes in the window, by "
        f"the kernel's receive timestamps; 20 ms is one packet time; the burst adds "
        f"{added:+.1f} ms to the p99, {verdict} the issue's {TARGET_MS:.0f} ms"
    )
    t.notes.append(
        f"burst calls: {len(setups)} connected, {len(results['errors'])} failed; set-up "
        f"(POST -> connected) p50 {_q(setups, 50):.0f} ms, p99 {_q(setups, 99):.0f} ms"
    )
    t.notes.append(
        "quiet: 3 s before each burst's first POST; burst: from it to 1 s after its last call "
        "connected; server CPU % and run-queue wait % of one core over each window, per round"
    )
    t.notes.append(
        "pacer late: how long after its due time this process sent a packet (in both windows: "
        "the gaps it adds are the measurement's floor, not the server's)"
    )
    return t


def run() -> Table:
    return table(measure(), ESTABLISHED, BURST)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.media_burst",
        description="Echoed audio on established calls, quiet and while a burst of new calls "
        "sets up on the same transceiver.",
    )
    ap.add_argument("--established", type=int, default=ESTABLISHED, help="default %(default)s")
    ap.add_argument("--burst", type=int, default=BURST, help="new calls in 1 s (%(default)s)")
    ap.add_argument("--rounds", type=int, default=ROUNDS, help="default %(default)s")
    ap.add_argument("--burst-worker", nargs=2, metavar=("URL", "CALLS"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.burst_worker:
        asyncio.run(burst_worker(args.burst_worker[0], int(args.burst_worker[1])))
        return 0
    results = measure(args.established, args.burst, args.rounds)
    print(table(results, args.established, args.burst).render_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
