"""Prometheus metrics of one transceiver, in their own registry (served at GET /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from transceiver.mux import DROP_REASONS

SETUP_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


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
        self.setup_seconds = Histogram(
            "txr_call_setup_seconds",
            "Offer received to DTLS connected",
            buckets=SETUP_BUCKETS,
            registry=r,
        )
        self.packets = Counter("txr_packets", "UDP datagrams", ["direction"], registry=r)
        self.bytes = Counter("txr_bytes", "UDP payload bytes", ["direction"], registry=r)
        self.drops = Counter("txr_drops", "Datagrams dropped", ["reason"], registry=r)
        self._pkts_in = self.packets.labels("in")
        self._pkts_out = self.packets.labels("out")
        self._bytes_in = self.bytes.labels("in")
        self._bytes_out = self.bytes.labels("out")
        for reason in DROP_REASONS:  # export zeros so dashboards see every reason
            self.drops.labels(reason)

    # MuxStats
    def rx(self, nbytes: int) -> None:
        self._pkts_in.inc()
        self._bytes_in.inc(nbytes)

    def tx(self, nbytes: int) -> None:
        self._pkts_out.inc()
        self._bytes_out.inc(nbytes)

    def drop(self, reason: str) -> None:
        self.drops.labels(reason).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
