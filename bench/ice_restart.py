"""ICE restart after the client's network changes, through the XDP relays: the audio gap.

In one EdgeLab (lab/edge.py: two XDP relays behind one VIP, `relayctl run`, `transceiver
serve --redis`), a call echoes audio through the VIP; then, RESTARTS times, the client's
network changes (lab/netchange.py: a new address on its link, the old one removed, so the old
path is silent) and the client restarts ICE by PATCH (RFC 9725 §4.3) on the same call. The new
server ufrag's first check makes the new flow on whichever relay the router picks; the same
DTLS association carries on (tests/e2e/test_ice_restart_relay.py asserts all that).

- aiortc (lab/callclient.py `restart`): the client restarts at once on the new address (as an
  app told of the change by the OS); gap = the longest time between two echoed RTP packets
  arriving at the client, i.e. the last one before the change -> the first after. PATCH ms is
  PATCH sent -> the new path connected (the PATCH round trip, the new checks through the relay).
- Chromium (lab/browserrestart.py, the demo page's window.restartIce()): either the page waits
  until Chromium notices (ICE state leaves connected: "disconnected") or calls restartIce() right
  after the change. gap from getStats' lastPacketReceivedTimestamp sampled every 20 ms (so up to
  20 ms long); detect ms = change -> "disconnected"; restartIce ms = restartIce() -> answer
  applied (new offer, PATCH); new pair answered ms = change -> a check on a new candidate pair
  answered (through the relay, by the transceiver); switch ms = change -> Chromium's selected
  candidate pair is the new one (both sampled). Chromium sends its first check on the new pair
  only once the old pair has received nothing for a while, so "answered" is late, not the relay.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Iterator

from bench.table import Table
from lab.browserrestart import BrowserDriver
from lab.calldriver import CallDriver
from lab.edge import EdgeLab, LabError
from lab.netchange import client_addrs, move_client, moved_addr

RESTARTS = int(os.environ.get("BENCH_RESTARTS", "8"))


def _changes() -> Iterator[str]:
    """One fresh client address per network change, for the whole lab's life."""
    n = 0
    while True:
        yield moved_addr(n)
        n += 1


def _aiortc(lab: EdgeLab, addrs: Iterator[str]) -> list[dict[str, float]]:
    out = []
    driver = CallDriver(lab, [lab.txrs[0].url])
    try:
        driver.wait_call()
        driver.wait_rtp(0, 50)
        for _ in range(RESTARTS):
            new = next(addrs)
            gone = move_client(lab, client_addrs(lab), new)
            told = (time.monotonic() - gone) * 1000
            try:
                r = driver.restart(0, new)
                s = driver.wait_rtp(0, 50)
            except LabError as exc:  # counted in the table; the next change restarts again
                print(f"ice_restart: aiortc restart failed: {exc}", file=sys.stderr)
                print(f"  client: {driver.stats()}, relays: {_drops(lab)}", file=sys.stderr)
                out.append({"failed": 1})
                continue
            out.append({"patch": r["ms"], "gap": s["max_gap_ms"], "told": told})
        driver.hangup()
    finally:
        driver.close()
    return out


def _chromium(lab: EdgeLab, addrs: Iterator[str], detect: bool) -> list[dict[str, float]]:
    out = []
    with BrowserDriver(lab, lab.txrs[1].url) as b:
        b.wait_call()
        for _ in range(RESTARTS):
            move_client(lab, client_addrs(lab), next(addrs))
            try:
                r = b.restart(detect=detect)
            except LabError as exc:  # counted; the page has ended the call (its 'failed')
                print(f"ice_restart: Chromium restart failed: {exc}", file=sys.stderr)
                print(f"  relays: {_drops(lab)}", file=sys.stderr)
                out.append({"failed": 1})
                return out
            keys = ("detect", "restart", "answered", "switch", "gap")
            out.append({k: r[f"{k}_ms"] for k in keys})
        b.hangup()
    return out


def _drops(lab: EdgeLab) -> list[dict[str, int]]:
    """Each relay's drop counters that are not zero (for a failed restart's report)."""
    stats = [lab.stats(r.index) for r in lab.relays]
    return [{k: v for k, v in s.items() if k.startswith("drop_") and v} for s in stats]


def _p50(runs: list[dict[str, float]], key: str) -> str:
    values = [r[key] for r in runs if r.get(key) is not None]
    return f"{statistics.median(values):.0f}" if values else "-"


def _max(runs: list[dict[str, float]], key: str) -> str:
    values = [r[key] for r in runs if r.get(key) is not None]
    return f"{max(values):.0f}" if values else "-"


def run() -> Table:
    with EdgeLab() as lab:
        addrs = _changes()
        rows = [
            ("aiortc", "at once", _aiortc(lab, addrs)),
            ("Chromium", "on ICE 'disconnected'", _chromium(lab, addrs, detect=True)),
            ("Chromium", "at once", _chromium(lab, addrs, detect=False)),
        ]
    table = Table(
        f"Audio gap across an ICE restart after a network change, via the XDP relays "
        f"({RESTARTS} restarts per row, one call each)",
        ["client", "restart", "restarts", "failed", "detect ms p50", "PATCH / restartIce ms p50",
         "new pair answered ms p50", "switch ms p50", "gap ms p50", "gap ms max"],
    )  # fmt: skip
    for client, when, runs in rows:
        patch = "patch" if client == "aiortc" else "restart"
        ok = [r for r in runs if not r.get("failed")]
        table.add(client, when, len(ok), len(runs) - len(ok), _p50(runs, "detect"),
                  _p50(runs, patch), _p50(runs, "answered"), _p50(runs, "switch"),
                  _p50(runs, "gap"), _max(runs, "gap"))  # fmt: skip
    table.notes.append(
        "aiortc: PATCH sent -> new path connected; Chromium: restartIce() -> answer applied"
        " (new offer, PATCH round trip); switch: change -> Chromium's selected pair moved"
    )
    table.notes.append(
        "the aiortc client is told of the change once the lab has removed the old address and"
        f" checked (old address gone -> told: {_p50(rows[0][2], 'told')} ms p50); that is in its"
        " gap"
    )
    table.notes.append(
        "command: python -m bench --only ice_restart (BENCH_RESTARTS=N restarts per row)"
    )
    return table


if __name__ == "__main__":
    print(run().render_text())
