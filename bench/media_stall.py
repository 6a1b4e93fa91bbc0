"""Media stalls while calls set up: N headless Chromium calls placed at once, where their audio
stops and why.

Issue 12 saw five Chromium calls set up together lose all received audio for 400-500 ms at the
same moment. A stall that hits every call at once is the shared event loop of the transceiver
being held; this benchmark shows by what. `transceiver serve` runs as a subprocess (127.0.0.1,
the default echo app, Opus fast path) twice in the same run, alternating:

- **--no-gc-freeze** (the baseline: how it was): ~100,000 objects of aiortc, PyAV, aiohttp and
  the rest stay in the garbage collector's generations, so a full collection, which new calls'
  allocations trigger, walks them all while it holds the loop;
- **--gc-freeze** (the default now): the start-up heap is frozen (transceiver/heap.py), later
  collections walk only the calls' own objects.

Per round, one Chromium with N pages clicks "call" on all at once and keeps the calls up for
SECONDS; each page measures, in the page (a 10 ms timer on getStats), the longest time without a
new inbound audio packet after its first one. The server's own view comes from its /metrics:
garbage-collection pauses (`txr_gc_pause_seconds`) and event-loop lag (`txr_event_loop_lag_seconds`,
a 20 ms timer). The client's longest gap includes Chromium's own scheduling and the 20 ms
packet time; the server's lag is what every call on that process waited for at once.

    python -m bench.media_stall [--calls N] [--rounds N] [--seconds S]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import urllib.request
from typing import Any

from bench.calls import Running, transceiver_server
from bench.table import Table
from lab.browsercall import ARGS as CHROMIUM_ARGS
from lab.browsercall import CHROMIUM, mint_token

CALLS = int(os.environ.get("BENCH_STALL_CALLS", "5"))
ROUNDS = int(os.environ.get("BENCH_STALL_ROUNDS", "3"))
SECONDS = float(os.environ.get("BENCH_STALL_SECONDS", "6"))
# In the page: the longest wait between two increases of the inbound packet count, after the first.
GAP_PROBE = """() => {
  const g = (window.edgeGap = {max: 0, last: null, n: 0});
  setInterval(async () => {
    const n = await window.inboundPackets();
    const t = performance.now();
    if (n > g.n) {
      if (g.last !== null) g.max = Math.max(g.max, t - g.last);
      g.last = t; g.n = n;
    }
  }, 10);
}"""
VARIANTS = (("--no-gc-freeze", "start-up heap in the collector (before)"),
            ("--gc-freeze", "start-up heap frozen (now)"))  # fmt: skip


def _metrics(url: str) -> str:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:
        return resp.read().decode()


def _buckets(text: str, name: str, labels: str = "") -> dict[float, float]:
    """{le: cumulative count} of one histogram series in Prometheus text."""
    out = {}
    pattern = rf'^{name}_bucket\{{{labels}le="([^"]+)"\}} (\S+)$'
    for le, value in re.findall(pattern, text, re.M):
        out[float("inf") if le == "+Inf" else float(le)] = float(value)
    return out


def _delta(after: str, before: str, name: str, labels: str = "") -> dict[float, float]:
    b = _buckets(before, name, labels)
    return {le: n - b.get(le, 0.0) for le, n in _buckets(after, name, labels).items()}


def _over(buckets: dict[float, float], le: float) -> float:
    """How many observations were above the bucket bound `le`."""
    return buckets.get(float("inf"), 0.0) - buckets.get(le, 0.0)


def _worst_bound(buckets: dict[float, float]) -> str:
    """The smallest bucket bound that holds every observation: the worst one is at most that."""
    total = buckets.get(float("inf"), 0.0)
    if not total:
        return "-"
    for le in sorted(buckets):
        if buckets[le] >= total:
            return "inf" if le == float("inf") else f"<= {le * 1000:.0f}"
    return "-"


def one_round(flag: str, calls: int, seconds: float) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    server = transceiver_server("echo", calls + 2)
    server.argv.append(flag)
    running = Running(server)
    with running as (_pid, url):
        assert running.api_key is not None
        before = _metrics(url)
        with tempfile.TemporaryDirectory(prefix="bench-stall-") as profile, sync_playwright() as pw:
            ctx = pw.chromium.launch_persistent_context(
                profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
            )
            try:
                pages = []
                for _ in range(calls):
                    page = ctx.new_page()
                    page.goto(f"{url}/#token={mint_token(url, running.api_key)}")
                    page.evaluate(GAP_PROBE)
                    pages.append(page)
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
            finally:
                ctx.close()
        after = _metrics(url)
    if states != ["connected"] * calls:
        raise RuntimeError(f"{flag}: calls ended {states}")
    # the round's own observations: the histograms after minus before (start-up left out)
    gc2 = _delta(after, before, "txr_gc_pause_seconds", 'generation="2",')
    lag = _delta(after, before, "txr_event_loop_lag_seconds")
    return {
        "gaps": gaps,
        "packets": packets,
        "gc2": gc2.get(float("inf"), 0),
        "gc2_over_50ms": _over(gc2, 0.05),
        "lag_over_50ms": _over(lag, 0.05),
        "lag_over_100ms": _over(lag, 0.1),
        "lag_worst": _worst_bound(lag),
        "gc2_worst": _worst_bound(gc2),
    }


def measure(calls: int = CALLS, rounds: int = ROUNDS, seconds: float = SECONDS) -> dict:
    results: dict[str, list[dict[str, Any]]] = {flag: [] for flag, _ in VARIANTS}
    for _ in range(rounds):
        for flag, _ in VARIANTS:  # alternating: the machine's load hits both alike
            print(f"  media_stall: {flag}, {calls} calls ...", file=sys.stderr, flush=True)
            results[flag].append(one_round(flag, calls, seconds))
    return results


def table(results: dict[str, list[dict[str, Any]]], calls: int, seconds: float) -> Table:
    t = Table(
        f"{calls} Chromium calls set up at once, {seconds:.0f} s each: longest audio gap at the "
        "client, the server's pauses",
        ["server", "rounds", "client gap p50 ms", "client gap max ms", "gen-2 GCs",
         "gen-2 GCs > 50 ms", "worst gen-2 GC ms", "loop lag > 50 ms", "loop lag > 100 ms",
         "worst loop lag ms"],
    )  # fmt: skip
    base_max = None
    for flag, label in VARIANTS:
        rs = results[flag]
        gaps = [g for r in rs for g in r["gaps"]]
        worst = max(gaps)
        base_max = worst if base_max is None else base_max
        t.add(label, len(rs), f"{statistics.median(gaps):.0f}", f"{worst:.0f}",
              sum(r["gc2"] for r in rs), sum(r["gc2_over_50ms"] for r in rs),
              " / ".join(r["gc2_worst"] for r in rs), sum(r["lag_over_50ms"] for r in rs),
              sum(r["lag_over_100ms"] for r in rs),
              " / ".join(r["lag_worst"] for r in rs))  # fmt: skip
    t.notes.append(
        "client gap: per call, the longest time between two increases of its inbound audio "
        "packet count after the first (10 ms in-page timer on getStats); p50 and max over every "
        "call of every round; 20 ms is one packet time"
    )
    t.notes.append(
        "server columns from its /metrics over each round (histogram buckets: the worst is a "
        "bucket bound, one per round); one server process per round, started fresh"
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
