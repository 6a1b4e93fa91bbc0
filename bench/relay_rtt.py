"""Round-trip time added by the XDP relay path, and call set-up time through it.

In one EdgeLab (lab/edge.py: client -> two XDP relays behind one VIP -> transceivers, each relay
with `relayctl run`, transceivers `transceiver serve --redis`), an aiortc call is placed to a
transceiver; then authenticated STUN Binding requests on that call's ICE credentials are sent
from a fresh client port, alternating in rounds between

- the relay path: to the VIP; the relay routes the first by its ufrag and the rest by the flow
  it learned, encapsulates to the transceiver, and decapsulates the answer (XDP both ways);
- the direct path: to the transceiver's UDP socket itself; the packets cross the same relay
  namespace but as plain kernel IP forwarding (the program passes what is not for a VIP).

The transceiver answers both the same way, so the difference is what the tunnel costs. Set-up
time is offer -> connected (ICE + DTLS) of fresh aiortc calls through the relay, as the client
measures it. Probes are sequential (one in flight); a probe lost for 1 s is not a sample.
"""

from __future__ import annotations

import os
import statistics

from bench.table import Table
from lab.calldriver import CallDriver
from lab.edge import EdgeLab

ROUNDS = int(os.environ.get("BENCH_RTT_ROUNDS", "10"))
PER_ROUND = int(os.environ.get("BENCH_RTT_PROBES", "50"))
CALLS = int(os.environ.get("BENCH_RTT_CALLS", "5"))


def _q(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run() -> Table:
    with EdgeLab() as lab:
        txr = lab.txrs[0]
        driver = CallDriver(lab, [txr.url])
        try:
            setup = [driver.wait_call()["setup_ms"]]
            relay: list[float] = []
            direct: list[float] = []
            for _ in range(ROUNDS):
                relay += driver.rtt(0, PER_ROUND)
                direct += driver.rtt(0, PER_ROUND, txr.tunnel)
            for _ in range(CALLS - 1):
                setup.append(driver.call(txr.url)["setup_ms"])
            driver.hangup()
        finally:
            driver.close()
    table = Table(
        "Round trip: XDP relay path vs direct path (same call, same run)",
        ["path", "probes", "RTT p50 ms", "RTT p99 ms", "mean ms"],
    )
    for name, values in (("via VIP (XDP relay, tunnel)", relay), ("direct to transceiver", direct)):
        table.add(name, len(values), f"{_q(values, 0.5):.3f}", f"{_q(values, 0.99):.3f}",
                  f"{statistics.fmean(values):.3f}")  # fmt: skip
    added = _q(relay, 0.5) - _q(direct, 0.5)
    table.add("added by the relay (p50)", "", f"{added:+.3f}", "", "")
    med, top, mean = statistics.median(setup), max(setup), statistics.fmean(setup)
    label = f"call set-up via relay ({len(setup)} calls)"
    table.add(label, len(setup), f"{med:.1f}", f"{top:.1f}", f"{mean:.1f}")
    table.notes.append(
        f"{ROUNDS} alternating rounds of {PER_ROUND} sequential probes per path; lost probes: "
        f"relay {ROUNDS * PER_ROUND - len(relay)}, direct {ROUNDS * PER_ROUND - len(direct)}"
    )
    table.notes.append("set-up row: offer to connected (ICE + DTLS), ms; p99 column = max")
    return table


if __name__ == "__main__":
    print(run().render_text())
