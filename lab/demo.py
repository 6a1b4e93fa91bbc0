"""`make demo` (`python -m lab.demo`): real WebRTC calls through two XDP relays behind one VIP,
a report, teardown.

Builds the EdgeLab (lab/edge.py): a client namespace reaching the VIP over an ECMP route through
two relays (XDP program loaded by `relayctl load`, each with `relayctl run` syncing from Redis),
two transceivers (`transceiver serve --redis`, they register themselves; signaling needs the
API key of a key file in the lab's temp dir, lab.peer.lab_key_file), and a private
redis-server in a temp dir. Then places a few standard aiortc calls from the client namespace
(the client only ever sees the VIP as the transceiver's address), lets the audio be echoed,
measures round trips through the relay (with DEMO_BROWSER=1 also a headless Chromium call
from the client namespace, lab/browsercall.py; every call places with a single-use client
token minted with that key, as an application server does for a browser), and prints: set-up
time, RTP packets each way, RTT, which relay and transceiver carried each call, and the relays'
counters. Everything is removed at the end, also on Ctrl-C or SIGTERM. Exits 1 if a call failed
or its audio did not come back.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from types import FrameType
from typing import Any

from lab.calldriver import CallDriver
from lab.edge import EdgeLab
from lab.peer import lab_key_file
from lab.topology import sweep_stale_labs

MAIN_PID = os.getpid()
MIN_ECHO = 0.8  # fraction of the sent RTP packets that must come back


class Interrupted(Exception):
    """Ctrl-C or SIGTERM: leave through the lab's teardown."""


def _on_signal(signum: int, frame: FrameType | None) -> None:
    if os.getpid() != MAIN_PID:  # a helper child forked by a library: just go
        os._exit(128 + signum)
    raise Interrupted


def _ms(values: list[float], q: float) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    return f"{ordered[min(len(ordered) - 1, int(q * len(ordered)))]:.2f}"


def failed_calls(rows: list[dict[str, Any]], name: str) -> list[Any]:
    """row[name] of the calls whose audio did not come back or that were not on one relay."""
    bad = [r[name] for r in rows if not r["sent"] or r["rtp"] < MIN_ECHO * r["sent"]]
    return sorted(set(bad + [r[name] for r in rows if len(r["where"]) != 1]))


def run_calls(lab: EdgeLab, calls: int, seconds: float) -> list[dict[str, Any]]:
    urls = [lab.txrs[i % len(lab.txrs)].url for i in range(calls)]
    driver = CallDriver(lab, urls)
    try:
        for _ in urls:
            driver.wait_call()
        for i in range(calls):
            driver.wait_rtp(i, int(seconds * 50), timeout=seconds + 20)  # 50 packets a second
        rtts = [driver.rtt(i, 20) for i in range(calls)]
        where = [lab.carrier(tuple(c["local"])) for c in driver.calls]
        final = driver.hangup()
    finally:
        driver.close()
    rows = []
    for i, c in enumerate(driver.calls):
        rows.append({**c, **final[i], "rtts": rtts[i], "where": where[i]})
    return rows


def browser_call(
    host: Any, url: str, *extra: str, packets: int = 50, timeout: float = 90
) -> dict[str, Any]:
    """One headless Chromium call (lab/browsercall.py) from `host`'s client namespace (an
    EdgeLab, or a GlobeLab's client host) to `url`, its page's tokens minted with the lab's API
    key; `extra`: more lab.browsercall options. Its JSON line, or a failed state."""
    proc = host.spawn_client(
        [
            sys.executable,
            "-m",
            "lab.browsercall",
            "--api-keys",
            str(lab_key_file(host.tmpdir)),
            *extra,
            url,
            str(packets),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return {"state": "failed", "error": f"no result in {timeout:.0f} s"}
    lines = out.decode().strip().splitlines()
    return dict(json.loads(lines[-1])) if lines else {"state": "failed", "error": "no output"}


def report(lab: EdgeLab, rows: list[dict[str, Any]], setup_s: float) -> None:
    print(f"\nlab set up in {setup_s:.1f} s (namespaces, 2 relays loaded, controllers, Redis, "
          "2 transceivers registered)")  # fmt: skip
    print("\ncalls (aiortc client -> VIP -> XDP relay -> transceiver (echo) -> relay -> client)")
    head = f"{'call':>4}  {'client':<20} {'relay':>5} {'txr':>4} {'setup ms':>8} "
    print(
        head + f"{'RTP sent':>8} {'RTP back':>8} {'max gap ms':>10} {'RTT p50':>8} {'RTT p99':>8}"
    )
    for r in rows:
        client = f"{r['local'][0]}:{r['local'][1]}"
        relay = ",".join(str(w[0]) for w in r["where"]) or "-"
        txr = ",".join(str(w[1]) for w in r["where"]) or "-"
        print(
            f"{r['call']:>4}  {client:<20} {relay:>5} {txr:>4} {r['setup_ms']:>8.1f} "
            f"{r['sent'] or 0:>8} {r['rtp']:>8} {r['max_gap_ms']:>10.1f} "
            f"{_ms(r['rtts'], 0.5):>8} {_ms(r['rtts'], 0.99):>8}"
        )
    all_rtts = [x for r in rows for x in r["rtts"]]
    if all_rtts:
        print(f"RTT (STUN Binding round trips through the relay, ms): median "
              f"{statistics.median(all_rtts):.2f} over {len(all_rtts)} probes")  # fmt: skip
    for relay in lab.relays:
        stats = {k: v for k, v in lab.stats(relay.index).items() if v}
        print(f"\n$ relayctl stats --name {relay.name}   (relay {relay.index})")
        for k, v in stats.items():
            print(f"  {k:<24} {v:>8}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3.0, help="audio per call before the report")
    ap.add_argument("--mode", choices=("native", "generic"), default="native")
    ap.add_argument("--keep", action="store_true", help="keep the lab up until Ctrl-C")
    args = ap.parse_args(argv)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _on_signal)
    for leftover in sweep_stale_labs():  # labs of earlier runs that were killed outright
        print(f"removed leftover {leftover}")
    lab = EdgeLab(mode=args.mode)
    try:
        print(f"building lab {lab.prefix}: 2 relays, 2 transceivers, redis ...", flush=True)
        t0 = time.monotonic()
        with lab:
            setup_s = time.monotonic() - t0
            print(
                f"relays loaded: VIP {lab.vip}:{lab.vip_port} via ECMP over "
                f"{', '.join(r.ns for r in lab.relays)}",
                flush=True,
            )
            rows = run_calls(lab, args.calls, args.seconds)
            browser = None
            if os.environ.get("DEMO_BROWSER") == "1":
                browser = browser_call(lab, lab.txrs[0].url)
            report(lab, rows, setup_s)
            if browser is not None:
                print(f"\nheadless Chromium call (the page at {lab.txrs[0].url}/): {browser}")
            if args.keep:
                print(
                    f"\nlab kept: try `nsenter --net=/run/netns/{lab.relays[0].ns} "
                    f".venv/bin/relayctl flows --name {lab.relays[0].name}`; Ctrl-C removes it",
                    flush=True,
                )
                signal.pause()
    except (KeyboardInterrupt, Interrupted):
        print("\ninterrupted: lab removed", file=sys.stderr)
        return 130
    except Exception as exc:  # a clear message, no traceback, the lab already removed
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    print("\nlab removed")
    bad = failed_calls(rows, "call")
    if browser is not None and browser.get("state") != "connected":
        print(f"FAILED: the Chromium call: {browser.get('error')}", file=sys.stderr)
        return 1
    if bad:
        print(f"FAILED: calls {bad}: audio not echoed or not on one relay",
              file=sys.stderr)  # fmt: skip
        return 1
    print(f"OK: {len(rows)} calls, audio echoed through the XDP relays")
    return 0


if __name__ == "__main__":
    sys.exit(main())
