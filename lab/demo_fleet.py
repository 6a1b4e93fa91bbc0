"""`make demo-fleet` (`python -m lab.demo_fleet`): the global fleet in a lab, calls from every
region, a report, teardown.

Builds the GlobeLab (lab/globe.py): three regions behind one global VIP (each region's clients
reach it at their own region's XDP relay), a registry per region, transceivers in two regions,
a backbone of tens of ms between them. The fleet's signaling front (`transceiver front`,
docs/front.md) runs at the core; every region's client POSTs its offer there with its location in
a header ("LAT,LON", as a CDN in front would set it), the front places the call at the nearest
cluster with room, and the client's audio enters the fleet at its own region's relay, which
tunnels it across the backbone when the cluster is elsewhere. Prints per call: the client's
region, the relay that carried it, the cluster, set-up time, RTT (STUN round trips through the
relay), RTP sent and echoed (loss), the longest gap; and the relays' counters.

With DEMO_BROWSER=1, also a headless Chromium call from every region's client host through the
front (lab/browsercall.py: the demo page served at the front's origin, the location header on
its requests, a single-use client token minted with the lab's API key, as for the aiortc calls),
one row each in the same table: the relay by its selected candidate pair's local address, the
cluster, set-up time, RTT (the pair's currentRoundTripTime), the echoed packets it received.

Everything is removed at the end, also on Ctrl-C or SIGTERM. Exits 1 if a call failed or its
audio did not come back.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import statistics
import sys
import time
from typing import Any

from lab.calldriver import CallDriver
from lab.demo import Interrupted, _on_signal, browser_call, failed_calls
from lab.globe import GlobeLab
from lab.topology import sweep_stale_labs


def run_calls(lab: GlobeLab, seconds: float) -> list[dict[str, Any]]:
    rows = []
    drivers = []
    try:
        for i, region in enumerate(lab.regions):
            d = CallDriver(
                lab.client(i),  # type: ignore[arg-type]
                [lab.front_url(i)],
                headers={"X-Edge-Location": f"{region.lat},{region.lon}"},
            )
            drivers.append(d)
        calls = [d.wait_call() for d in drivers]
        for d in drivers:
            d.wait_rtp(0, int(seconds * 50), timeout=seconds + 20)
        rtts = [d.rtt(0, 20) for d in drivers]
        where = [lab.carrier(tuple(c["local"])) for c in calls]
        finals = [d.hangup()[0] for d in drivers]
    finally:
        for d in drivers:
            d.close()
    for i, c in enumerate(calls):
        rows.append({**c, **finals[i], "region": lab.regions[i].name, "rtts": rtts[i],
                     "where": where[i], "client": "aiortc"})  # fmt: skip
    return rows


def browser_rows(lab: GlobeLab, seconds: float) -> list[dict[str, Any]]:
    """DEMO_BROWSER=1: a headless Chromium call from every region's client host through the
    front, one after the other (three Chromiums at once crowd a small host). A row as
    run_calls's: RTP sent and received from Chromium's getStats, loss from its packetsLost
    (what RTP sequence numbers say, not a count against what was sent: the page cannot know
    what the echo did not send), the longest gap timed in the page (--gaps), the RTT Chromium's
    last STUN round trip."""
    rows = []
    for i, region in enumerate(lab.regions):
        res = browser_call(
            lab.client(i),
            lab.front_url(i),
            "--serve-page",  # the front serves no page: the application's server would
            "--gaps",
            "--header",
            f"X-Edge-Location: {region.lat},{region.lon}",
            packets=max(50, int(seconds * 50)),
        )
        # The relay that held the call's flow, by the browser's side of the selected pair (the
        # client host has no NAT: the relay saw that address and port). browsercall hangs up
        # before it reports, but a relay keeps a flow until it idles out, so it is still there.
        local = ((res.get("pair") or {}).get("local")) or {}
        where = lab.carrier((local["address"], local["port"])) if local.get("address") else []
        rtt = (res.get("pair") or {}).get("rtt")
        rows.append({"region": region.name, "client": "chromium", "where": where,
                     "setup_ms": res.get("setup_ms"), "rtts": [] if rtt is None else [1000 * rtt],
                     "sent": res.get("sent"), "rtp": res.get("packets"),
                     "lost": res.get("lost"), "max_gap_ms": res.get("max_gap_ms"),
                     "state": res.get("state"), "error": res.get("error")})  # fmt: skip
    return rows


def _cell(value: Any, width: int, spec: str = "") -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}{spec}}"


def report(lab: GlobeLab, rows: list[dict[str, Any]], setup_s: float) -> None:
    names = [r.name for r in lab.regions]
    print(f"\nlab set up in {setup_s:.1f} s: regions {', '.join(names)}; backbone one way "
          + ", ".join(f"{names[i]}-{names[j]} {lab.one_way_ms(i, j):.0f} ms"
                      for i in range(len(names)) for j in range(i + 1, len(names))))  # fmt: skip
    print("\ncalls (client -> front places it -> global VIP at its region's relay -> cluster)")
    head = f"{'client region':<14} {'client':<8} {'relay':<10} {'cluster':>7} {'setup ms':>9} "
    print(head + f"{'RTT p50':>8} {'RTT p99':>8} {'RTP sent':>8} {'echoed':>7} {'loss %':>6} "
          f"{'max gap ms':>10}")  # fmt: skip
    for r in rows:
        relay = ",".join(names[w[0]] for w in r["where"]) or "-"
        cluster = ",".join(str(w[1]) for w in r["where"]) or "-"
        rtts = sorted(r["rtts"])
        p50 = statistics.median(rtts) if rtts else None
        p99 = rtts[-1] if len(rtts) > 1 else None  # one sample (Chromium's): no p99
        sent, loss = r["sent"], None
        if r.get("lost") is not None:  # Chromium: its own count of packets that never came
            loss = 100 * r["lost"] / max(1, r["lost"] + (r["rtp"] or 0))
        elif sent is not None:
            # the packets still on their way back at hang-up are not lost: one RTT's worth
            in_flight = math.ceil((p50 or 0) / 20)
            loss = 100 * max(0, sent - r["rtp"] - in_flight) / sent if sent else 100.0
        print(f"{r['region']:<14} {r['client']:<8} {relay:<10} {cluster:>7} "
              f"{_cell(r['setup_ms'], 9, '.1f')} {_cell(p50, 8, '.2f')} {_cell(p99, 8, '.2f')} "
              f"{_cell(sent, 8)} {_cell(r['rtp'], 7)} {_cell(loss, 6, '.1f')} "
              f"{_cell(r['max_gap_ms'], 10, '.1f')}")  # fmt: skip
    for i, name in enumerate(names):
        stats = {k: v for k, v in lab.stats(i).items() if v}
        print(f"\n$ relayctl stats   (relay of {name})")
        for k, v in stats.items():
            print(f"  {k:<24} {v:>8}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="audio per call before the report")
    args = ap.parse_args(argv)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _on_signal)
    for leftover in sweep_stale_labs():
        print(f"removed leftover {leftover}")
    lab = GlobeLab()
    rows: list[dict[str, Any]] = []
    browsers: list[dict[str, Any]] = []
    try:
        print(f"building lab {lab.prefix}: 3 regions, 3 relays, 2 transceivers, 3 registries, "
              "a backbone ...", flush=True)  # fmt: skip
        t0 = time.monotonic()
        with lab:
            lab.start_front()
            setup_s = time.monotonic() - t0
            print(f"lab up in {setup_s:.1f} s: placing a call from every region ...", flush=True)
            rows = run_calls(lab, args.seconds)
            if os.environ.get("DEMO_BROWSER") == "1":
                print("placing a headless Chromium call from every region ...", flush=True)
                browsers = browser_rows(lab, args.seconds)
            report(lab, rows + browsers, setup_s)
    except (KeyboardInterrupt, Interrupted):
        print("\ninterrupted: lab removed", file=sys.stderr)
        return 130
    except Exception as exc:  # a clear message, no traceback, the lab already removed
        print(f"demo-fleet failed: {exc}", file=sys.stderr)
        return 1
    print("\nlab removed")
    bad = failed_calls(rows, "region")
    for b in browsers:
        if b["state"] != "connected":
            print(f"FAILED: the Chromium call from {b['region']}: {b['error'] or b['state']}",
                  file=sys.stderr)  # fmt: skip
            return 1
        if len(b["where"]) != 1:
            print(f"FAILED: the Chromium call from {b['region']}: not on one relay "
                  f"({len(b['where'])} hold its flow)", file=sys.stderr)  # fmt: skip
            return 1
    if bad:
        print(f"FAILED: calls from {bad}: audio not echoed or not on one relay",
              file=sys.stderr)  # fmt: skip
        return 1
    more = f" and {len(browsers)} Chromium calls" if browsers else ""
    print(f"OK: {len(rows)} calls{more}, one from each region, placed by the front, echoed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
