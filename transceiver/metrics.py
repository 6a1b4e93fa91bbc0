"""Prometheus metrics of one transceiver, in their own registry (served at GET /metrics).

Per-datagram counts are plain ints read by a collector at scrape time: a prometheus_client
Counter.inc() takes a lock and costs about a microsecond, and the socket mux counts two of
them for every datagram in each direction.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from transceiver.drops import DROP_REASONS

SETUP_BUCKETS = (0.01, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class FastPathCounts(Protocol):
    rtp_in: int
    rtp_out: int


class _DatagramCounts(Collector):
    """txr_packets_total / txr_bytes_total {direction}, and the Opus fast path's RTP counts."""

    def __init__(self) -> None:
        self.pkts_in = self.pkts_out = self.bytes_in = self.bytes_out = 0
        self.fast_rtp_in = self.fast_rtp_out = 0  # of fast paths whose call has ended
        self.fast_sources: list[FastPathCounts] = []  # live OpusFastPath objects (rtp_in, rtp_out)

    def collect(self) -> Iterator[Metric]:
        packets = CounterMetricFamily("txr_packets", "UDP datagrams", labels=["direction"])
        packets.add_metric(["in"], self.pkts_in)
        packets.add_metric(["out"], self.pkts_out)
        octets = CounterMetricFamily("txr_bytes", "UDP payload bytes", labels=["direction"])
        octets.add_metric(["in"], self.bytes_in)
        octets.add_metric(["out"], self.bytes_out)
        fast = CounterMetricFamily(
            "txr_fastpath_rtp", "RTP packets carried by the Opus fast path", labels=["direction"]
        )
        live_in = sum(s.rtp_in for s in self.fast_sources)
        live_out = sum(s.rtp_out for s in self.fast_sources)
        fast.add_metric(["in"], self.fast_rtp_in + live_in)
        fast.add_metric(["out"], self.fast_rtp_out + live_out)
        return iter((packets, octets, fast))


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.calls_active = Gauge("txr_calls_active", "Calls in progress", registry=r)
        self.calls_started = Counter("txr_calls_started", "Offers answered", registry=r)
        self.calls_rejected = Counter(
            "txr_calls_rejected", "Offers refused", ["reason"], registry=r
        )
        self.calls_ended = Counter("txr_calls_ended", "Calls ended", ["reason"], registry=r)
        self.ice_restarts = Counter("txr_ice_restarts", "ICE restarts (PATCH)", registry=r)
        self.setup_seconds = Histogram(
            "txr_call_setup_seconds",
            "Offer received to DTLS connected",
            buckets=SETUP_BUCKETS,
            registry=r,
        )
        self.drops = Counter("txr_drops", "Datagrams dropped", ["reason"], registry=r)
        self._drop_children = {reason: self.drops.labels(reason) for reason in DROP_REASONS}
        self.counts = _DatagramCounts()
        r.register(self.counts)

    # MuxStats
    def rx(self, nbytes: int) -> None:
        c = self.counts
        c.pkts_in += 1
        c.bytes_in += nbytes

    def tx(self, nbytes: int) -> None:
        c = self.counts
        c.pkts_out += 1
        c.bytes_out += nbytes

    def drop(self, reason: str) -> None:
        child = self._drop_children.get(reason)
        (child if child is not None else self.drops.labels(reason)).inc()

    # Opus fast path (transceiver/fastpath.py): live objects are summed at scrape time.
    def fastpath_started(self, fast: FastPathCounts) -> None:
        self.counts.fast_sources.append(fast)

    def fastpath_ended(self, fast: FastPathCounts) -> None:
        c = self.counts
        if fast in c.fast_sources:
            c.fast_sources.remove(fast)
            c.fast_rtp_in += fast.rtp_in
            c.fast_rtp_out += fast.rtp_out

    def render(self) -> bytes:
        return generate_latest(self.registry)
