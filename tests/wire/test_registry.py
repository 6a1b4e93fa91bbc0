"""The Redis registry layout against a real redis-server (fixture in tests/conftest.py)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from wire import registry
from wire.registry import RegistryError, TransceiverRecord

KEY1 = bytes.fromhex("00112233445566778899aabbccddeeff")
KEY2 = bytes.fromhex("ffeeddccbbaa99887766554433221100")


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def test_register_writes_the_documented_layout(r: redis.Redis) -> None:
    rec = TransceiverRecord(1, 7, "198.18.2.2:5000", capacity=100, active=3, version="0.1")
    registry.register(r, rec, ttl=10)
    h = {k.decode(): v.decode() for k, v in r.hgetall("edge:txr:1:7").items()}
    assert h["cluster"] == "1" and h["id"] == "7" and h["tunnel"] == "198.18.2.2:5000"
    assert h["capacity"] == "100" and h["active"] == "3" and h["draining"] == "0"
    assert h["version"] == "0.1" and abs(float(h["updated"]) - time.time()) < 5
    assert 0 < r.pttl("edge:txr:1:7") <= 10_000


def test_read_registry_round_trip_and_events(r: redis.Redis) -> None:
    sub = r.pubsub()
    sub.subscribe("edge:events")
    assert sub.get_message(timeout=5)["type"] == "subscribe"
    a = TransceiverRecord(1, 7, "198.18.2.2:5000", draining=True)
    b = TransceiverRecord(2, 1, "198.18.2.3:5001")
    registry.register(r, a)
    registry.register(r, b)
    registry.register(r, TransceiverRecord(9, 9, "198.18.2.9:1"), prefix="other")
    registry.set_key(r, 1, KEY1)
    registry.set_key(r, 2, KEY2)
    registry.set_current_key(r, 2)
    reg = registry.read_registry(r)
    assert set(reg.transceivers) == {(1, 7), (2, 1)}
    assert reg.transceivers[(1, 7)].draining and reg.transceivers[(1, 7)].tunnel == a.tunnel
    assert reg.keys == {1: KEY1, 2: KEY2} and reg.current_key == 2 and not reg.problems
    events = []
    deadline = time.monotonic() + 5
    while len(events) < 5 and time.monotonic() < deadline:
        msg = sub.get_message(timeout=1)
        if msg and msg["type"] == "message":
            events.append(json.loads(msg["data"]))
    assert [e["event"] for e in events] == ["register", "register", "key", "key", "current_key"]
    registry.deregister(r, a)
    registry.remove_key(r, 1)
    reg = registry.read_registry(r)
    assert set(reg.transceivers) == {(2, 1)} and set(reg.keys) == {2}
    sub.close()


def test_expired_transceiver_disappears(r: redis.Redis) -> None:
    registry.register(r, TransceiverRecord(1, 1, "198.18.2.2:5000"), ttl=0.2)
    assert (1, 1) in registry.read_registry(r).transceivers
    deadline = time.monotonic() + 5
    while r.exists("edge:txr:1:1") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert r.sismember("edge:txrs", "1:1")  # only readers prune the index
    assert (1, 1) not in registry.read_registry(r).transceivers
    assert not r.sismember("edge:txrs", "1:1")


def test_reader_finds_transceivers_by_index_not_by_scan(r: redis.Redis) -> None:
    registry.register(r, TransceiverRecord(1, 1, "198.18.2.2:5000"))
    # A hash that is not in the index (a stray key, or a flow key lookalike) is not read.
    r.hset("edge:txr:9:9", mapping={"cluster": "9", "id": "9", "tunnel": "198.18.2.9:5000"})
    assert set(registry.read_registry(r).transceivers) == {(1, 1)}
    registry.deregister(r, TransceiverRecord(1, 1, "198.18.2.2:5000"))
    assert r.smembers("edge:txrs") == set()


def test_pruning_spares_a_transceiver_that_came_back(r: redis.Redis) -> None:
    # The prune script runs after HGETALL saw nothing; if the hash exists again by then, the
    # member stays (otherwise the relay would drop a live transceiver until its next refresh).
    r.sadd("edge:txrs", "1:5")
    r.hset("edge:txr:1:5", mapping={"cluster": "1", "id": "5", "tunnel": "198.18.2.5:5000"})
    r.eval(registry._PRUNE, 2, "edge:txr:1:5", "edge:txrs", "1:5")
    assert r.sismember("edge:txrs", "1:5")
    r.delete("edge:txr:1:5")
    r.eval(registry._PRUNE, 2, "edge:txr:1:5", "edge:txrs", "1:5")
    assert not r.sismember("edge:txrs", "1:5")


def test_malformed_entries_are_skipped_with_a_reason(r: redis.Redis) -> None:
    r.hset("edge:txr:1:2", mapping={"cluster": "1", "id": "2", "tunnel": "nowhere"})
    r.hset("edge:txr:1:3", mapping={"cluster": "1"})
    r.sadd("edge:txrs", "1:2", "1:3")
    r.hset("edge:keys", mapping={"1": "zz", "20": KEY1.hex(), "3": KEY1.hex()})
    r.set("edge:keys:current", "x")
    reg = registry.read_registry(r)
    assert reg.transceivers == {} and reg.keys == {3: KEY1} and reg.current_key is None
    assert len(reg.problems) == 5
    assert any("edge:txr:1:2" in p and "IPV4:PORT" in p for p in reg.problems)


def test_registry_file(tmp_path: Path) -> None:
    p = tmp_path / "reg.json"
    p.write_text(
        json.dumps(
            {
                "keys": {"1": KEY1.hex()},
                "current_key": 1,
                "transceivers": [{"cluster": 1, "id": 7, "tunnel": "198.18.2.2:5000"}],
            }
        )
    )
    reg = registry.load_registry_file(p)
    assert reg.keys == {1: KEY1} and reg.current_key == 1
    assert reg.transceivers[(1, 7)].tunnel_endpoint == ("198.18.2.2", 5000)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{", "not JSON"),
        ("[]", "JSON object"),
        ('{"keys": {"1": "abcd"}}', "16"),
        ('{"keys": {"16": "00112233445566778899aabbccddeeff"}}', "0..15"),
        ('{"transceivers": [{"cluster": 1, "id": 7}]}', "tunnel"),
        ('{"transceivers": [{"cluster": 1, "id": 7, "tunnel": "1.2.3.4:x"}]}', "port"),
        ('{"transceivers": [{"cluster": 70000, "id": 7, "tunnel": "1.2.3.4:1"}]}', "cluster"),
        (
            '{"transceivers": [{"cluster": 1, "id": 7, "tunnel": "1.2.3.4:1"},'
            ' {"cluster": 1, "id": 7, "tunnel": "1.2.3.4:2"}]}',
            "twice",
        ),
    ],
)
def test_registry_file_errors(tmp_path: Path, content: str, message: str) -> None:
    p = tmp_path / "reg.json"
    p.write_text(content)
    with pytest.raises(RegistryError, match=message) as err:
        registry.load_registry_file(p)
    assert str(p) in str(err.value)


def test_missing_file() -> None:
    with pytest.raises(RegistryError, match="No such file"):
        registry.load_registry_file("/nonexistent/registry.json")


def test_current_key_must_be_loaded(r: redis.Redis, tmp_path: Path) -> None:
    registry.set_key(r, 1, KEY1)
    registry.set_current_key(r, 2)
    assert registry.read_registry(r).problems == ["current key 2 is not among the keys"]
    p = tmp_path / "reg.json"
    p.write_text(json.dumps({"keys": {"1": KEY1.hex()}, "current_key": 3}))
    assert registry.load_registry_file(p).problems == ["current key 3 is not among the keys"]


def test_relay_registration_layout_expiry_and_problems(r: redis.Redis) -> None:
    rec = registry.RelayRecord("host-a/edge", "198.18.1.1:6080")
    registry.register_relay(r, rec, ttl=0.3)
    h = {k.decode(): v.decode() for k, v in r.hgetall("edge:relay:198.18.1.1").items()}
    assert h["name"] == "host-a/edge" and h["tunnel"] == "198.18.1.1:6080"
    assert r.smembers("edge:relays") == {b"198.18.1.1"}
    relays, problems = registry.read_relays(r)
    assert list(relays) == ["198.18.1.1"] and relays["198.18.1.1"].name == "host-a/edge"
    assert not problems
    # An entry whose tunnel does not sit at its own key is refused, not trusted.
    r.sadd("edge:relays", "198.18.1.9")
    r.hset("edge:relay:198.18.1.9", mapping={"name": "x", "tunnel": "203.0.113.5:6080"})
    relays, problems = registry.read_relays(r)
    assert "198.18.1.9" not in relays and "is not at 198.18.1.9" in problems[0]
    deadline = time.monotonic() + 5
    while r.exists("edge:relay:198.18.1.1") and time.monotonic() < deadline:
        time.sleep(0.05)
    relays, _ = registry.read_relays(r)
    assert "198.18.1.1" not in relays and not r.sismember("edge:relays", "198.18.1.1")
    registry.deregister_relay(r, "198.18.1.9")
    assert r.smembers("edge:relays") == set()


def test_relay_record_refuses_a_bad_tunnel() -> None:
    with pytest.raises(RegistryError, match="relay tunnel"):
        registry.RelayRecord("h/e", "not-an-address")


def test_set_flows_builds_the_keys_and_values_flow_key_does(r: redis.Redis) -> None:
    """The Lua flow writer (used by the flow export) and flow_key/flow_value agree byte for byte,
    at the edges of every field."""
    import socket

    cases = [
        ("0.0.0.0", 0, "255.255.255.255", 65535, 0, 0),
        ("198.18.1.2", 40000, "203.0.113.10", 3478, 1, 7),
        ("10.200.3.4", 1, "198.18.0.1", 443, 65535, 4294967295),
        ("1.2.3.4", 256, "5.6.7.8", 255, 256, 16777216),
    ]
    blob = b""
    for client, cport, vip, vport, cluster, tid in cases:
        raw = (
            socket.inet_aton(client) + socket.inet_aton(vip)
            + cport.to_bytes(2, "big") + vport.to_bytes(2, "big")
        )  # fmt: skip
        blob += registry.flow_record(raw, cluster, tid)
    assert len(blob) == registry.FLOW_RECORD * len(cases)
    assert r.eval(registry.SET_FLOWS, 0, "edge", 60_000, blob) == len(cases)
    for client, cport, vip, vport, cluster, tid in cases:
        name = registry.flow_key("edge", client, cport, vip, vport)
        assert r.get(name) == registry.flow_value(cluster, tid).encode(), name
        assert 0 < r.pttl(name) <= 60_000
    assert r.dbsize() == len(cases)


def test_a_transceivers_signaling_url_round_trips(r: redis.Redis) -> None:
    rec = TransceiverRecord(1, 8, "198.18.2.3:5000", http="http://10.1.0.8:8080")
    registry.register(r, rec, ttl=10)
    assert registry.read_registry(r).transceivers[(1, 8)].http == "http://10.1.0.8:8080"
    registry.register(r, TransceiverRecord(1, 9, "198.18.2.4:5000"), ttl=10)
    assert r.hget("edge:txr:1:9", "http") == b""  # none: no front places calls there
    for bad in ("ftp://x:1", "http://", "http://host", "http://h:99999"):
        with pytest.raises(registry.RegistryError, match="http"):
            TransceiverRecord(1, 9, "198.18.2.4:5000", http=bad)


def test_cluster_records_round_trip_and_bad_ones_are_problems(r: redis.Redis) -> None:
    eu = registry.ClusterRecord(2, "eu-west", 50.1, 8.7, "redis://:pw@10.2.0.1:6379/0")
    registry.put_cluster(r, eu)
    registry.put_cluster(r, registry.ClusterRecord(1, "us-east", 40.7, -74.0, draining=True))
    clusters, problems = registry.read_clusters(r)
    assert problems == [] and set(clusters) == {1, 2}
    assert clusters[2].registry == eu.registry and clusters[2].region == "eu-west"
    assert clusters[1].draining and clusters[1].registry == ""
    assert registry.read_registry(r).clusters == clusters
    r.hset("edge:cluster:1", "lat", "north")  # hand-edited
    r.sadd("edge:clusters", "5")  # listed, no hash
    clusters, problems = registry.read_clusters(r)
    assert set(clusters) == {2} and len(problems) == 2
    assert registry.remove_cluster(r, 2) and not registry.remove_cluster(r, 2)
    for args in (
        (70000, "x", 0, 0),
        (1, "EU West", 0, 0),
        (1, "x", 91, 0),
        (1, "x", 0, 0, "http://x"),
    ):
        with pytest.raises(registry.RegistryError):
            registry.ClusterRecord(*args)  # type: ignore[arg-type]


def test_reach_reports_round_trip_and_bad_ones_are_problems(r: redis.Redis) -> None:
    ap = registry.ReachReport("ap-south", 19.1, 72.9, 1764780000.25)
    registry.report_reach(r, ap)
    registry.report_reach(r, registry.ReachReport("us-east", 40.7, -74.0, 1.0))
    registry.report_reach(r, registry.ReachReport("us-east", 40.7, -74.0, 2.0))  # overwrites
    assert r.hget("edge:reach", "ap-south") == b"1764780000.25 19.1 72.9"  # the documented form
    reports, problems = registry.read_reach(r)
    assert problems == [] and reports == {"ap-south": ap, "us-east": reports["us-east"]}
    assert reports["us-east"].at == 2.0
    for bad in ("soon 1 2", "1 2", "1 2 3 4", "1 91 0", "nan 1 2", ""):
        r.hset("edge:reach", "x", bad)
        reports, problems = registry.read_reach(r)
        assert set(reports) == {"ap-south", "us-east"} and len(problems) == 1, bad
    r.hdel("edge:reach", "x")
    r.hset("edge:reach", "EU West", "1 2 3")  # a field that is no region name
    assert len(registry.read_reach(r)[1]) == 1
    for args in (("EU West", 0, 0, 1), ("x", 0, 181, 1), ("x", 0, 0, float("inf"))):
        with pytest.raises(registry.RegistryError):
            registry.ReachReport(*args)  # type: ignore[arg-type]
