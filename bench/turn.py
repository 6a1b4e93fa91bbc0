"""Calls from a network without UDP: TURN over TLS on 443 (coturn) against UDP to the VIP.

In one TurnLab (lab/turn.py: RelayLab's client, XDP relay and transceiver namespaces, plus coturn
beside the relay with TLS on 443), headless Chromium places echo calls from the demo page,
alternating between

- **UDP**: no firewall, no ICE servers: the host candidate's checks and media go to the VIP, the
  XDP relay tunnels them to the transceiver;
- **TURN/TLS 443**: the client's nftables ruleset drops every UDP datagram and lets out TCP to
  443 only; the page asked `OPTIONS /v1/calls` for its ICE servers, Chromium allocates on coturn
  over TLS and its media goes client -TLS/TCP-> coturn -UDP-> VIP -XDP-> transceiver.

Per call the page reports: gathering (createOffer -> candidates gathered; for TURN this holds
the TCP and TLS handshakes and the Allocate exchange), set-up (offer POST -> connectionState
"connected": ICE checks and DTLS, over TURN on the TURN path) and the selected candidate pair's
STUN round trips once audio flows (the deltas of getStats totalRoundTripTime / responsesReceived
between the 10th echoed packet and the end, so the first checks, which run while ICE and DTLS
start, are left out; Chromium times each check to 1 ms).
The lab's links have no delay: what this shows is the hop's own cost (coturn in userspace, TLS,
TCP), not the distance a real TURN server adds (docs/architecture.md).

    python -m bench.turn [--calls N] [--packets N]   # or: python -m bench --only turn
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from typing import Any

from bench.table import Table
from lab.turn import TurnLab

CALLS = int(os.environ.get("BENCH_TURN_CALLS", "5"))
# Echoed packets a call waits for (20 ms each): long enough for a few consent checks per pair.
PACKETS = int(os.environ.get("BENCH_TURN_PACKETS", "250"))


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def measure(calls: int = CALLS, packets: int = PACKETS) -> dict[str, list[dict[str, Any]]]:
    """Alternating calls on both paths in one lab (machine load hits both alike)."""
    results: dict[str, list[dict[str, Any]]] = {"udp": [], "turn": []}
    with TurnLab() as lab:
        for _ in range(calls):
            for path in ("udp", "turn"):
                if path == "turn":
                    lab.block_udp()
                    r = lab.browser_call(packets=packets)
                    lab.unblock_udp()
                else:
                    r = lab.browser_call("--no-ice-servers", packets=packets)
                if r.get("state") != "connected":
                    raise RuntimeError(f"{path} call failed: {r}\n{lab.coturn_text()}")
                results[path].append(r)
    return results


def table(results: dict[str, list[dict[str, Any]]]) -> Table:
    t = Table(
        "Chromium calls through the XDP relay: UDP vs TURN over TLS on 443 (one lab, alternating)",
        ["path", "calls", "selected local candidate", "gather ms", "POST->connected ms",
         "gather+set-up ms", "ICE RTT ms", "checks timed", "echoed packets"],
    )  # fmt: skip
    for path, label in (("udp", "UDP to the VIP"), ("turn", "TURN/TLS 443 (UDP blocked)")):
        rs = results[path]
        pairs = {
            f"{(r['pair'] or {}).get('local', {}).get('type')}/"
            f"{(r['pair'] or {}).get('local', {}).get('relayProtocol') or 'udp'}"
            for r in rs
        }
        gather = [float(r["gather_ms"]) for r in rs]
        setup = [float(r["setup_ms"]) for r in rs]
        both = [g + s for g, s in zip(gather, setup, strict=True)]
        rtts = [float(r["steady_rtt_ms"]) for r in rs if r.get("steady_rtt_ms") is not None]
        t.add(label, len(rs), ", ".join(sorted(pairs)), f"{_median(gather):.0f}",
              f"{_median(setup):.0f}", f"{_median(both):.0f}",
              f"{_median(rtts):.2f}" if rtts else "-",
              sum(int(r.get("steady_checks") or 0) for r in rs),
              f"{_median([float(r['packets']) for r in rs]):.0f}")  # fmt: skip
    t.notes.append("medians over the calls; a call's ICE RTT: the mean of its selected pair's "
                   "STUN round trips after the first 10 echoed packets "
                   "(getStats totalRoundTripTime and responsesReceived deltas); checks timed: "
                   "summed")  # fmt: skip
    t.notes.append("the page waits at most 2 s for gathering before it POSTs (demo page)")
    return t


def run() -> Table:
    return table(measure())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.turn",
        description="Set-up time and RTT of Chromium calls through the XDP relay, UDP vs TURN "
        "over TLS on 443 (needs root: network namespaces, coturn, nftables, Chromium).",
    )
    ap.add_argument("--calls", type=int, default=CALLS, help="calls per path (default %(default)s)")
    ap.add_argument(
        "--packets", type=int, default=PACKETS, help="echoed packets per call (default %(default)s)"
    )
    args = ap.parse_args(argv)
    print(table(measure(args.calls, args.packets)).render_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
