"""The slow path's rate limit is per source: a 2,000 pps flood from one spoofed source plus a
2,000 pps flood spread over one /24 do not starve a legitimate failover from elsewhere. A real
relay (XDP in a lab netns), `relayctl run` with its default limits, a real redis-server; the
packets come from a raw socket in the client netns."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
import redis

from datapath.slowpath import SourceLimiter
from lab import netns
from lab.topology import RelayLab
from lab.wait import wait_until
from tests.control.runlab import RunProc, flow_in_map
from wire import registry
from wire.encap import ipv4_udp
from wire.registry import TransceiverRecord

pytestmark = [pytest.mark.lab, pytest.mark.timeout(120)]
FLOOD_PPS = 2000  # each flood
LEGIT = 50  # calls failing over from 50 other hosts, one packet each
DTLS = b"\x17\xfe\xfd" + bytes(60)


class Flood:
    """`pps` datagrams a second from `sources()` to the VIP, new client ports every packet."""

    def __init__(self, raw: socket.socket, vip: tuple[str, int], sources: list[str]) -> None:
        self.raw, self.vip, self.sources = raw, vip, sources
        self.sent = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        t0 = time.monotonic()
        while not self.stop.is_set():
            due = int((time.monotonic() - t0) * FLOOD_PPS)
            while self.sent < due:
                src = self.sources[self.sent % len(self.sources)]
                pkt = ipv4_udp(src, 1024 + self.sent % 60000, *self.vip, DTLS)
                self.raw.sendto(pkt, (self.vip[0], 0))
                self.sent += 1
            time.sleep(0.005)

    def __enter__(self) -> Flood:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=5)


@pytest.fixture
def lab() -> Iterator[RelayLab]:
    with RelayLab(transceivers=1) as lab:
        # Routes back to the spoofed sources (through the client link): the relay's loose
        # reverse-path filter would drop them as martians before they reach the slow path.
        for net in ("203.0.113.0/24", "203.0.114.0/24", "198.51.100.0/24"):
            netns.add_route(lab.relay_ns, net, lab.client_addrs[0])
        yield lab


def test_floods_from_one_source_or_one_net_do_not_starve_a_failover(
    lab: RelayLab, redis_url: str
) -> None:
    r = redis.Redis.from_url(redis_url)
    t = lab.txrs[0]
    registry.set_key(r, lab.key_id, lab.key)
    registry.register(r, TransceiverRecord(t.cluster, t.id, t.tunnel), ttl=60)
    legit = [f"198.51.100.{i + 1}" for i in range(LEGIT)]
    for src in legit:  # flows another relay learned: the failover takes them over
        r.set(f"edge:flow:{src}:40000:{lab.vip}:{lab.vip_port}", f"{t.cluster}:{t.id}", ex=60)
    proc = RunProc(lab.relay_ns, lab.name, redis_url)  # default limits
    raw = netns.socket_in(lab.client_ns, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    vip = (lab.vip, lab.vip_port)
    try:
        proc.wait_ready()
        one = Flood(raw, vip, ["203.0.113.9"])
        net = Flood(raw, vip, [f"203.0.114.{i}" for i in range(1, 255)])
        with one, net:
            wait_until(lambda: one.sent + net.sent > FLOOD_PPS, 5, "the floods to be going")
            for src in legit:
                raw.sendto(ipv4_udp(src, 40000, *vip, DTLS), (lab.vip, 0))
                time.sleep(0.01)  # spread over half a second, as a failover's packets are

            def taken_over() -> int:
                return sum(
                    flow_in_map(lab.name, s, 40000, *vip) == (t.cluster, t.id) for s in legit
                )

            wait_until(lambda: taken_over() == LEGIT, 5, "every legitimate flow taken over")
        m = proc.metrics()
        limited = m["relayctl_slow_path_packets_total{outcome=source_limited}"]
        # Most of the floods were cut at their source's (or /24's) bucket, not the global one.
        assert limited > 0.5 * (one.sent + net.sent), (m, one.sent, net.sent)
        assert m["relayctl_slow_path_packets_total{outcome=forwarded}"] >= LEGIT
        assert proc.alive() and "Traceback" not in proc.text()
    finally:
        raw.close()
        proc.close()
        r.close()


def test_source_limiter_buckets_and_bounds() -> None:
    now = [0.0]
    lim = SourceLimiter(10, 20, 100, 200, max_entries=4, clock=lambda: now[0])
    assert sum(lim.take("192.0.2.1") for _ in range(50)) == 20  # one host: its burst
    assert lim.take("192.0.2.2")  # another host of the same /24: its own bucket
    now[0] += 1.0
    assert sum(lim.take("192.0.2.1") for _ in range(50)) == 10  # refilled at its rate
    # Many hosts of one /24: the /24's bucket caps them together.
    total = sum(lim.take(f"198.51.100.{i % 250}") for i in range(1000))
    assert total == 200
    # Bounded: only max_entries sources are remembered; the oldest go first.
    for i in range(10):
        lim.take(f"10.{i}.0.1")
    assert len(lim.hosts) == 4 and len(lim.nets) == 4
    assert "10.9.0.1" in lim.hosts and "192.0.2.1" not in lim.hosts
