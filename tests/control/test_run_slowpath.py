"""The slow path's bounds and bad input, and the bounded flow export, on a real loaded relay
(veth pair in namespaces, XDP native) with a real redis-server."""

from __future__ import annotations

import time

import pytest
import redis

from control.flowexport import FlowExporter
from datapath.maps import FlowKey, FlowVal, RelayMaps, be16, be32
from lab.wait import wait_until
from tests.control.ctl_lab import CLIENT_ADDR, RELAY_ADDR, Lab
from tests.control.runlab import BPFFS, RunProc, packets

pytestmark = pytest.mark.lab
VIP, VPORT = RELAY_ADDR, 3478


def test_slow_path_is_rate_limited_and_counts_every_packet_once(
    loaded: Lab, redis_url: str
) -> None:
    r = redis.Redis.from_url(redis_url)
    # A flow key somebody wrote by hand: not CLUSTER:ID.
    r.set(f"edge:flow:{CLIENT_ADDR}:41000:{VIP}:{VPORT}", "garbage")
    proc = RunProc(
        loaded.relay_ns, loaded.name, redis_url, "--slow-path-rate", "2", "--slow-path-burst", "1"
    )
    try:
        proc.wait_ready()
        loaded.send_udp([b"\x17\xfe\xfd" + bytes(40)], VPORT, sport=41000)
        wait_until(
            lambda: proc.metrics()["relayctl_slow_path_packets_total{outcome=bad_entry}"] == 1,
            3,
            "bad_entry counted",
        )
        # Let the one-token bucket refill, then a burst: one token, the rest rate-limited.
        time.sleep(0.6)  # not an assertion: the bucket needs time to hold a token again
        loaded.send_udp([b"\x80" + bytes(20)] * 20, VPORT, sport=41001)
        outcomes = ("bad_entry", "unknown_flow", "rate_limited", "forwarded")

        def total() -> float:
            m = proc.metrics()
            return sum(m[f"relayctl_slow_path_packets_total{{outcome={o}}}"] for o in outcomes)

        wait_until(lambda: total() == 21, 3, "21 slow-path outcomes")
        m = proc.metrics()
        assert m["relayctl_slow_path_packets_total{outcome=unknown_flow}"] == 1
        assert m["relayctl_slow_path_packets_total{outcome=rate_limited}"] == 19
        assert m["relayctl_slow_path_packets_total{outcome=forwarded}"] == 0
        assert packets(loaded.name, "pass_slow_path") == 21
        assert m["relayctl_xdp_packets_total{reason=pass_slow_path}"] == 21
        assert proc.alive() and "Traceback" not in proc.text()
    finally:
        proc.close()
        r.close()


def _flow(i: int) -> FlowKey:
    return FlowKey(be32(CLIENT_ADDR), be32(VIP), be16(42000 + i), be16(VPORT))


def test_flow_export_is_bounded_per_pass_and_follows_the_map(loaded: Lab, redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url)
    with RelayMaps(BPFFS / loaded.name) as maps:
        flows = maps["flows"]
        for i in range(10):
            flows.update(_flow(i), FlowVal(1, 0, 7, time.monotonic_ns()))
        exp = FlowExporter(flows, prefix="edge", ttl=60, batch=3)
        results = [exp.step(r) for _ in range(4)]
        assert [x.walked for x in results] == [3, 3, 3, 1]
        assert [x.written for x in results] == [3, 3, 3, 1]
        assert [x.cycle_done for x in results] == [False, False, False, True]
        assert exp.last_count == 10
        keys = sorted(k.decode() for k in r.scan_iter("edge:flow:*"))
        assert keys == sorted(
            f"edge:flow:{CLIENT_ADDR}:{42000 + i}:{VIP}:{VPORT}" for i in range(10)
        )
        assert {r.get(k) for k in keys} == {b"1:7"}
        assert all(0 < r.pttl(k) <= 60_000 for k in keys)

        # Nothing new: a second cycle writes nothing.
        assert sum(exp.step(r).written for _ in range(4)) == 0
        # Five flows leave the map, one moves to another transceiver: one write, cache shrinks.
        for i in range(5):
            assert flows.delete(_flow(i))
        flows.update(_flow(9), FlowVal(1, 0, 8, time.monotonic_ns()))
        written = 0
        while True:
            res = exp.step(r)
            written += res.written
            if res.cycle_done:
                break
        assert written == 1 and exp.last_count == 5 and len(exp.cache) == 5
        assert r.get(f"edge:flow:{CLIENT_ADDR}:42009:{VIP}:{VPORT}") == b"1:8"
        # Flows still in the map are written again once a third of the TTL has passed.
        exp.clock = lambda: time.monotonic() + 21
        assert sum(exp.step(r).written for _ in range(2)) == 5
        # Redis errors propagate and the cursor stays: nothing is skipped.
        broken = redis.Redis.from_url("unix:///nonexistent/redis.sock")
        exp.forget()
        with pytest.raises(redis.ConnectionError):
            exp.step(broken)
        assert exp.step(r).written == 3
        flows_count = sum(1 for _ in flows.keys())
        assert flows_count == 5
    r.close()
