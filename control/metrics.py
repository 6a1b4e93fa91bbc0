"""Prometheus metrics of `relayctl run`, on a registry of their own (no process defaults mixed in).

The XDP counters are read from the pinned `counters` map at scrape time, so a scrape always
shows the kernel's numbers, not a copy from the last pass.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from datapath.slowpath import OUTCOMES


class XdpCounters(Collector):
    """relayctl_xdp_packets_total / _bytes_total{reason}: the program's per-reason counters."""

    def __init__(self, pin_dir: Path) -> None:
        self.pin_dir = pin_dir

    def collect(self) -> Iterator[Any]:
        from control import views
        from datapath import DatapathError
        from datapath.maps import RelayMaps

        packets = CounterMetricFamily(
            "relayctl_xdp_packets",
            "Packets per XDP exit reason (docs/wire-format.md §5).",
            labels=["reason"],
        )
        nbytes = CounterMetricFamily(
            "relayctl_xdp_bytes", "Bytes (frame length) per XDP exit reason.", labels=["reason"]
        )
        loaded = GaugeMetricFamily("relayctl_relay_loaded", "1 when the relay's maps are pinned.")
        try:
            with RelayMaps(self.pin_dir) as maps:
                stats = views.stats(maps)
        except (DatapathError, OSError):
            loaded.add_metric([], 0)
            yield loaded
            return
        loaded.add_metric([], 1)
        for reason, v in stats.items():
            packets.add_metric([reason], v["packets"])
            nbytes.add_metric([reason], v["bytes"])
        yield from (loaded, packets, nbytes)


class Metrics:
    def __init__(self, pin_dir: Path) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.registry.register(XdpCounters(pin_dir))
        self.redis_up = Gauge(
            "relayctl_redis_up", "1 when the last Redis operation worked.", registry=r
        )
        self.sync_passes = Counter(
            "relayctl_sync_passes",
            "Registry sync passes by result (ok, error).",
            ["result"],
            registry=r,
        )
        self.sync_changes = Counter(
            "relayctl_sync_changes",
            "Map entries written by sync.",
            ["table", "action"],
            registry=r,
        )
        self.sync_seconds = Histogram(
            "relayctl_sync_duration_seconds",
            "Time of one registry read + map diff/apply.",
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5),
            registry=r,
        )
        self.last_sync = Gauge(
            "relayctl_last_sync_timestamp_seconds",
            "Unix time of the last successful sync.",
            registry=r,
        )
        self._last_sync_mono = 0.0
        self.sync_age = Gauge(
            "relayctl_sync_age_seconds",
            "Seconds since the last successful sync (the maps' lag behind the registry).",
            registry=r,
        )
        self.sync_age.set_function(self._age)
        self.transceivers = Gauge("relayctl_transceivers", "Transceivers in the map.", registry=r)
        self.draining = Gauge(
            "relayctl_transceivers_draining",
            "Registered transceivers that are draining.",
            registry=r,
        )
        self.flows = Gauge(
            "relayctl_flows", "Flows in the map (as of the last complete walk).", registry=r
        )
        self.flow_writes = Counter(
            "relayctl_flow_exports", "Flow keys written to Redis (new or refreshed).", registry=r
        )
        self.slow_path = Counter(
            "relayctl_slow_path_packets",
            "Slow-path datagrams by outcome.",
            ["outcome"],
            registry=r,
        )
        for outcome in OUTCOMES:
            self.slow_path.labels(outcome)
        self.slow_path_on = Gauge(
            "relayctl_slow_path_enabled",
            "1 while the slow-path flag is set by this controller.",
            registry=r,
        )
        self.errors = Counter(
            "relayctl_loop_errors",
            "Unexpected errors in the control loop, by part.",
            ["part"],
            registry=r,
        )

        self.remote_up = Gauge(
            "relayctl_remote_registry_up",
            "1 when a remote cluster's registry was read on its last try.",
            ["cluster"],
            registry=r,
        )
        self.remote_age = Gauge(
            "relayctl_remote_registry_age_seconds",
            "Seconds since a remote cluster's registry was last read (its view's age).",
            ["cluster"],
            registry=r,
        )
        self.remote_transceivers = Gauge(
            "relayctl_remote_transceivers",
            "Transceivers of a remote cluster in the map.",
            ["cluster"],
            registry=r,
        )
        self._remote_seen: set[str] = set()

    def remote_clusters(self, status: dict[int, Any]) -> None:
        """One series per remote cluster served now (control/fleet.py ClusterStatus); the
        series of a cluster no longer served are removed."""
        now = {str(cid) for cid in status}
        for gone in self._remote_seen - now:
            for gauge in (self.remote_up, self.remote_age, self.remote_transceivers):
                gauge.remove(gone)
        self._remote_seen = now
        for cid, st in status.items():
            self.remote_up.labels(str(cid)).set(1 if st.up else 0)
            self.remote_age.labels(str(cid)).set(st.age)
            self.remote_transceivers.labels(str(cid)).set(st.transceivers)

    def _age(self) -> float:
        return time.monotonic() - self._last_sync_mono if self._last_sync_mono else float("inf")

    def synced(self) -> None:
        self._last_sync_mono = time.monotonic()
        self.last_sync.set(time.time())

    def count_slow_path(self, outcome: str, n: int) -> None:
        self.slow_path.labels(outcome).inc(n)

    def serve(self, host: str, port: int) -> Callable[[], None]:
        """Serve /metrics on host:port in a thread; returns the function that stops it."""
        from prometheus_client import start_http_server

        server, thread = start_http_server(port, addr=host, registry=self.registry)

        def stop() -> None:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)

        return stop
