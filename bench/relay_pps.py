"""Relay throughput and latency: the XDP relay vs the userspace Python relay, same run, same lab.

For each relay, in the same RelayLab (client -> relay -> stand-in transceiver namespaces, veth
links; frames XDP redirects into a veth are dropped unless its peer runs XDP or has GRO on, so
the lab attaches an XDP_PASS program to the peer ends):

1. a call is set up with a STUN Binding request carrying a minted routing ufrag (flow learned);
2. latency: sequential request/replies on that flow (client -> relay -> stand-in, echoed back
   through the tunnel and the relay), RTT p50/p99;
3. throughput: a bounded blast of UDP packets on that flow (sendmmsg from the client namespace).
   "forwarded" counts the tunnel datagrams that reached the transceiver's link (its kernel rx
   counter, sampled every 2 ms; the forwarded rate is taken over the window in which that counter
   moved), "stand-in saw" what the count-only stand-in process read from its socket.

The XDP relay runs first (loaded by relayctl), then it is unloaded and lab/pyrelay.py serves the
same VIP and tunnel port; sender, stand-in, payload and lab are the same. lab/pyrelay.py builds
headers from per-flow precomputed words, so the baseline is not slowed by generic packet code.
"""

from __future__ import annotations

import os
import socket
import statistics
import threading
import time
from dataclasses import dataclass

from bench.table import Table
from lab import netns
from lab.blaster import blast
from lab.topology import RelayLab, Service
from wire import stun

BLAST = int(os.environ.get("BENCH_RELAY_PACKETS", "200000"))
PINGS = int(os.environ.get("BENCH_RELAY_PINGS", "2000"))
PAYLOAD = b"\x80" + bytes(159)  # RTP-like, a 20 ms Opus frame's worth of bytes
SAMPLE_S = 0.002
SETTLE_S = 0.3  # a counter is final once it has not moved for this long


@dataclass
class Result:
    relay: str
    sent: int
    forwarded: int
    seen: int
    offered_pps: float
    forwarded_pps: float
    rtt_p50_us: float
    rtt_p99_us: float
    lost_pings: int


class RateProbe:
    """Samples a link's rx counter on a thread; the rate over the window in which it moved."""

    def __init__(self, counters: netns.LinkCounters) -> None:
        self.counters = counters
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), self.counters.read()[0]))
            self._stop.wait(SAMPLE_S)

    def start(self) -> RateProbe:
        self.samples.append((time.monotonic(), self.counters.read()[0]))
        self._thread.start()
        return self

    def wait_settled(self, budget_s: float = 20) -> None:
        """Until the counter has not moved for SETTLE_S (bounded by budget_s)."""
        deadline = time.monotonic() + budget_s
        while time.monotonic() < deadline:
            t, v = self.samples[-1]
            moved = [ts for ts, val in self.samples if val != v]
            if v != self.samples[0][1] and moved and t - moved[-1] >= SETTLE_S:
                break
            self._stop.wait(SETTLE_S / 3)  # polling interval, not an assertion
        self._stop.set()
        self._thread.join()

    def result(self) -> tuple[int, float]:
        """(packets counted, packets per second over the active window)."""
        base, final = self.samples[0][1], self.samples[-1][1]
        if final == base:
            return 0, 0.0
        first = next(i for i, (_, v) in enumerate(self.samples) if v != base)
        last = next(i for i, (_, v) in enumerate(self.samples) if v == final)
        t0, v0 = self.samples[first - 1]
        t1, v1 = self.samples[last]
        return final - base, (v1 - v0) / (t1 - t0) if t1 > t0 else 0.0


def _connect_call(lab: RelayLab, txr: int = 0) -> socket.socket:
    """A client socket whose flow the relay has learned (the Binding request got its echo)."""
    sock = lab.client_socket()
    sock.connect((lab.vip, lab.vip_port))
    req = stun.build_binding_request(f"{lab.mint(txr)}:bench")
    for _ in range(5):  # the first packet may race the relay's start: retry, bounded
        sock.send(req)
        try:
            if sock.recv(2048).endswith(req):
                return sock
        except TimeoutError:
            continue
    raise RuntimeError("the call set-up request got no echo through the relay")


def _pings(sock: socket.socket, count: int) -> tuple[list[float], int]:
    rtts: list[float] = []
    lost = 0
    sock.settimeout(1.0)
    for seq in range(count):
        msg = b"\x80" + seq.to_bytes(4, "big") + PAYLOAD[5:]
        t0 = time.perf_counter_ns()
        sock.send(msg)
        try:
            while True:  # skip a late echo of an earlier (timed-out) ping
                if sock.recv(2048).endswith(msg):
                    break
        except TimeoutError:
            lost += 1
            continue
        rtts.append((time.perf_counter_ns() - t0) / 1000)
    return rtts, lost


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def measure(lab: RelayLab, relay: str) -> Result:
    """Latency then throughput through whatever relay is running in the lab now."""
    echo = lab.start_standin_process(0, prefix="")
    try:
        sock = _connect_call(lab)
        rtts, lost = _pings(sock, PINGS)
    finally:
        echo.finish()
    counter: Service = lab.start_standin_process(0, reply=False)
    link = netns.LinkCounters(lab.txrs[0].ns, "tr")
    try:
        probe = RateProbe(link).start()
        res = blast(sock, PAYLOAD, BLAST, max_seconds=20)
        probe.wait_settled()
        forwarded, rate = probe.result()
    finally:
        seen = int(counter.finish()["tunnel"])
        link.close()
        sock.close()
    return Result(
        relay=relay,
        sent=res.sent,
        forwarded=forwarded,
        seen=seen,
        offered_pps=res.pps,
        forwarded_pps=rate,
        rtt_p50_us=_percentile(rtts, 50),
        rtt_p99_us=_percentile(rtts, 99),
        lost_pings=lost,
    )


def run() -> Table:
    with RelayLab(transceivers=1, mode=os.environ.get("BENCH_XDP_MODE", "native")) as lab:
        xdp = measure(lab, f"XDP ({lab.mode})")
        lab.unload()
        py = lab.start_pyrelay()
        try:
            user = measure(lab, "Python userspace (lab/pyrelay.py)")
        finally:
            py.finish()
    table = Table(
        "Relay: forwarding rate and request/reply latency (one flow, same lab, same run)",
        [
            "relay",
            "sent",
            "forwarded",
            "stand-in saw",
            "offered pps",
            "forwarded pps",
            "RTT p50 µs",
            "RTT p99 µs",
        ],
    )
    for r in (xdp, user):
        table.add(
            r.relay,
            r.sent,
            r.forwarded,
            r.seen,
            r.offered_pps,
            r.forwarded_pps,
            r.rtt_p50_us,
            r.rtt_p99_us,
        )
    ratio = xdp.forwarded_pps / user.forwarded_pps if user.forwarded_pps else float("nan")
    lat = user.rtt_p50_us / xdp.rtt_p50_us if xdp.rtt_p50_us else float("nan")
    table.add("XDP vs Python", "", "", "", "", f"{ratio:.1f}x", f"{lat:.1f}x lower", "")
    if xdp.forwarded == xdp.sent:
        table.notes.append(
            "The XDP relay forwarded every packet at the rate they were offered: its figure is"
            " the sender's limit, so the ratio is a lower bound (bench.bpf_paths has the"
            " program's own cost per packet)."
        )
    table.notes += [
        f"{BLAST:,} packets of {len(PAYLOAD)} B UDP payload, one flow; offered pps = the"
        " sender's rate; forwarded pps = rate at the transceiver's link while packets arrived.",
        f"RTT over {PINGS:,} sequential pings, the stand-in's Python echo in both paths;"
        f" lost pings: XDP {xdp.lost_pings}, Python {user.lost_pings}.",
        "Sender, relay and stand-in share the machine's CPUs (XDP runs in softirq, often on the"
        " sender's CPU; the Python relay is its own process), so absolute numbers are low"
        " and move with load; the ratio is the point.",
    ]
    return table


if __name__ == "__main__":
    print(run().render_text())
