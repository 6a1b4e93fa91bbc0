"""Media stalls while calls set up: N headless Chromium calls placed at once, where their audio
stops and why.

Issue 12 saw five Chromium calls set up together lose all received audio for 400-500 ms at the
same moment. A stall that hits every call at once is the shared event loop of the transceiver
being held, or the transceiver not running at all; this benchmark tells which. `transceiver
serve` runs as a subprocess (127.0.0.1, the default echo app, Opus fast path), alternating:

- **--no-gc-freeze** (the baseline: how it was): ~100,000 objects of aiortc, PyAV, aiohttp and
  the rest stay in the garbage collector's generations, so a full collection, which new calls'
  allocations trigger, walks them all while it holds the loop (75-112 ms seen with the
  transceiver in a test process);
- **--gc-freeze** (the default now): the start-up heap is frozen (transceiver/heap.py), later
  collections walk only the calls' own objects;
- the same, with **two busy processes** beside it (each `while True: pass`, as a CI run beside
  the earlier measurements was): the machine's 2 CPUs shared with them and with Chromium.

Per round, one Chromium with N pages clicks "call" on all at once and keeps the calls up for
SECONDS; each page measures, in the page (the demo page's `watchGaps()`, a 10 ms timer on
getStats), the longest time without a new inbound audio packet after its first one. The server's
own view comes from its /metrics: garbage-collection pauses (`txr_gc_pause_seconds`) and
event-loop lag (`txr_event_loop_lag_seconds`, a 20 ms timer); and from /proc: its CPU and the
time its threads were runnable but waiting for a CPU (schedstat). The client's longest gap
includes Chromium's own scheduling and stats: about 65 ms is the floor this probe sees with
nothing wrong (getStats' counters move in steps).

What it shows: on an otherwise idle machine neither server stalls the loop: no loop lag passes
100 ms and no full collection runs in a round, while the server uses 6-7 % of a core to set up
five calls; with the heap frozen every call's longest gap is within ~15 ms of the probe's floor
(one 240 ms gap of the baseline came with no loop lag and no collection on the server: the
client's). With two busy processes beside it the server's CPU stays the same, its run-queue
wait grows from ~5-12 % to ~30-35 % of the round, and loop lags over 100 ms come back (worst
bucket 250 ms): the server is waiting to be scheduled, not working. The 400-500 ms stall the
issue measured is not reproduced with the start-up heap frozen; what is left is CPU starvation
of the host, which no change inside the server's loop removes (give the transceiver its own
CPUs: a Kubernetes CPU request, or `nice`/cgroup weights on a shared host).

    python -m bench.media_stall [--calls N] [--rounds N] [--seconds S]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from bench import prom
from bench.calls import Running, transceiver_server
from bench.table import Table
from lab import procstat
from lab.browsercall import ARGS as CHROMIUM_ARGS
from lab.browsercall import CHROMIUM, mint_token

CALLS = int(os.environ.get("BENCH_STALL_CALLS", "5"))
ROUNDS = int(os.environ.get("BENCH_STALL_ROUNDS", "3"))
SECONDS = float(os.environ.get("BENCH_STALL_SECONDS", "6"))
# (label, serve's flag, busy loops beside it): the last one shares the CPUs with two processes
# that never sleep, as the CI run beside the earlier measurements did.
VARIANTS = (("start-up heap in the collector (before)", "--no-gc-freeze", 0),
            ("start-up heap frozen (now)", "--gc-freeze", 0),
            ("frozen, 2 busy processes beside it", "--gc-freeze", 2))  # fmt: skip
BUSY = "while True: pass"


def one_round(flag: str, calls: int, seconds: float, busy: int = 0) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    server = transceiver_server("echo", calls + 2)
    server.argv.append(flag)
    running = Running(server)
    with running as (pid, url):
        assert running.api_key is not None
        before = prom.fetch(url)
        cpu0, wait0 = procstat.cpu_seconds(pid), procstat.runqueue_wait_seconds(pid)
        with tempfile.TemporaryDirectory(prefix="bench-stall-") as profile, sync_playwright() as pw:
            ctx = pw.chromium.launch_persistent_context(
                profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
            )
            hogs: list[subprocess.Popen[bytes]] = []
            try:
                pages = []
                for _ in range(calls):
                    page = ctx.new_page()
                    page.goto(f"{url}/#token={mint_token(url, running.api_key)}")
                    page.evaluate("window.watchGaps()")  # the demo page's gap timer
                    pages.append(page)
                hogs.extend(subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(busy))
                t0 = time.monotonic()
                for page in pages:  # as close to at once as the driver allows
                    page.evaluate("document.querySelector('#call').click()")
                for page in pages:
                    page.wait_for_function(
                        "window.callState === 'connected' || window.callState === 'failed'",
                        timeout=30_000,
                    )
                page.wait_for_timeout(seconds * 1000)
                gaps = [float(p.evaluate("window.edgeGap.max")) for p in pages]
                states = [p.evaluate("window.callState") for p in pages]
                packets = [int(p.evaluate("window.edgeGap.n")) for p in pages]
                elapsed = time.monotonic() - t0
                cpu = procstat.cpu_seconds(pid) - cpu0
                wait = procstat.runqueue_wait_seconds(pid) - wait0
            finally:
                for hog in hogs:
                    hog.kill()
                    hog.wait()
                ctx.close()
        after = prom.fetch(url)
    if states != ["connected"] * calls:
        raise RuntimeError(f"{flag}: calls ended {states}")
    # the round's own observations: the histograms after minus before (start-up left out)
    gc2 = prom.delta(after, before, "txr_gc_pause_seconds", 'generation="2",')
    lag = prom.delta(after, before, "txr_event_loop_lag_seconds")
    return {
        "gaps": gaps,
        "packets": packets,
        "gc2": gc2.get(float("inf"), 0),
        "gc2_over_50ms": prom.over(gc2, 0.05),
        "lag_over_50ms": prom.over(lag, 0.05),
        "lag_over_100ms": prom.over(lag, 0.1),
        "lag_worst": prom.worst_bound(lag),
        "gc2_worst": prom.worst_bound(gc2),
        "cpu_pct": 100 * cpu / elapsed,  # the server's CPU over the round (from the clicks)
        "wait_pct": 100 * wait / elapsed,  # its threads runnable, waiting for a CPU
    }


def measure(calls: int = CALLS, rounds: int = ROUNDS, seconds: float = SECONDS) -> dict:
    results: dict[str, list[dict[str, Any]]] = {label: [] for label, _, _ in VARIANTS}
    for _ in range(rounds):
        for label, flag, busy in VARIANTS:  # alternating: the machine's load hits all alike
            print(f"  media_stall: {label}, {calls} calls ...", file=sys.stderr, flush=True)
            results[label].append(one_round(flag, calls, seconds, busy))
    return results


def table(results: dict[str, list[dict[str, Any]]], calls: int, seconds: float) -> Table:
    t = Table(
        f"{calls} Chromium calls set up at once, {seconds:.0f} s each: longest audio gap at the "
        "client, the server's pauses",
        ["server", "rounds", "client gap p50 ms", "client gap max ms", "gen-2 GCs",
         "gen-2 GCs > 50 ms", "worst gen-2 GC ms", "loop lag > 50 ms", "loop lag > 100 ms",
         "worst loop lag ms", "server CPU %", "server run-queue wait %"],
    )  # fmt: skip
    base_max = None
    for label, _, _ in VARIANTS:
        rs = results[label]
        gaps = [g for r in rs for g in r["gaps"]]
        worst = max(gaps)
        base_max = worst if base_max is None else base_max
        t.add(label, len(rs), f"{statistics.median(gaps):.0f}", f"{worst:.0f}",
              sum(r["gc2"] for r in rs), sum(r["gc2_over_50ms"] for r in rs),
              " / ".join(r["gc2_worst"] for r in rs), sum(r["lag_over_50ms"] for r in rs),
              sum(r["lag_over_100ms"] for r in rs),
              " / ".join(r["lag_worst"] for r in rs),
              " / ".join(f"{r['cpu_pct']:.1f}" for r in rs),
              " / ".join(f"{r['wait_pct']:.1f}" for r in rs))  # fmt: skip
    t.notes.append(
        "client gap: per call, the longest time between two increases of its inbound audio "
        "packet count after the first (10 ms in-page timer on getStats); p50 and max over every "
        "call of every round; 20 ms is one packet time"
    )
    t.notes.append(
        "server columns from its /metrics over each round (histogram buckets: the worst is a "
        "bucket bound, one per round); one server process per round, started fresh"
    )
    t.notes.append(
        "server CPU % and run-queue wait %: of one core, over each round from the clicks to "
        "the end (/proc utime+stime, schedstat): a loop lag while the wait is high and the CPU "
        "low is the server not being scheduled (Chromium's processes on the same 2 CPUs), "
        "not the server's own work"
    )
    return t


def run() -> Table:
    return table(measure(), CALLS, SECONDS)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.media_stall",
        description="Media stalls while N Chromium calls set up at once, the transceiver with "
        "and without its start-up heap frozen (needs Chromium: make install).",
    )
    ap.add_argument("--calls", type=int, default=CALLS, help="calls at once (default %(default)s)")
    ap.add_argument("--rounds", type=int, default=ROUNDS, help="rounds (default %(default)s)")
    ap.add_argument(
        "--seconds", type=float, default=SECONDS, help="call length (default %(default)s)"
    )
    args = ap.parse_args(argv)
    print(
        table(
            measure(args.calls, args.rounds, args.seconds), args.calls, args.seconds
        ).render_text()
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
