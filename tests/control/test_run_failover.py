"""`relayctl run` on the lab topology (client / relay / transceiver namespaces, XDP on veths):
learned flows go to Redis, a fresh relay takes a call over through the slow path, a Redis
outage stops nothing that the data plane can do alone, and killing the controller mid-traffic
loses no packet."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from lab import netns
from lab.redis_server import RedisServer
from lab.standin import StandIn
from lab.topology import RelayLab
from lab.wait import wait_until
from tests.control.runlab import (
    RELAYCTL,
    RunProc,
    config_flags,
    flow_in_map,
    map_state,
    packets,
)
from wire import registry, stun
from wire.encap import flow_entropy, parse_ipv4_udp
from wire.registry import TransceiverRecord

pytestmark = pytest.mark.lab
DTLS = b"\x16\xfe\xfd" + bytes(range(60))  # a DTLS record header and some body
RTP = b"\x80\x6f\x00\x01" + b"\xab" * 156


@pytest.fixture
def lab() -> Iterator[RelayLab]:
    with RelayLab(transceivers=2) as lab:
        yield lab
    assert not netns.list_namespaces(lab.prefix)
    assert not [p for p in netns.BPFFS.iterdir() if p.name.startswith(lab.prefix)]


@pytest.fixture
def standin(lab: RelayLab) -> Iterator[StandIn]:
    s = lab.standin(0, prefix=b"T0|").start()
    try:
        yield s
    finally:
        s.stop()


def publish(r: Any, lab: RelayLab, txrs: int = 1) -> None:
    """The lab's key and transceivers in Redis, as transceivers register themselves."""
    registry.set_key(r, lab.key_id, lab.key)
    registry.set_current_key(r, lab.key_id)
    for t in lab.txrs[:txrs]:
        registry.register(r, TransceiverRecord(t.cluster, t.id, t.tunnel), ttl=60)


def controller(lab: RelayLab, name: str, redis_url: str) -> RunProc:
    proc = RunProc(lab.relay_ns, name, redis_url)
    try:
        proc.wait_ready()
    except BaseException:
        proc.close()
        raise
    return proc


def recv(sock: socket.socket, timeout: float = 3.0) -> tuple[bytes, tuple[str, int]]:
    sock.settimeout(timeout)
    try:
        return sock.recvfrom(65535)
    except TimeoutError:
        raise AssertionError(f"nothing came back to {sock.getsockname()}") from None


def binding(lab: RelayLab) -> bytes:
    return stun.build_binding_request(f"{lab.mint(0)}:clnt")


def flow_redis_key(lab: RelayLab, sock: socket.socket) -> str:
    client, cport = sock.getsockname()
    return f"edge:flow:{client}:{cport}:{lab.vip}:{lab.vip_port}"


def load_second_relay(lab: RelayLab, name: str) -> None:
    """Another relay (its own --name, empty maps) on the same links: a failover target."""
    argv = [RELAYCTL, "load", "--name", name, "--vip", f"{lab.vip}:{lab.vip_port}"]
    for iface in lab.relay_ifaces:
        argv += ["--iface", iface]
    argv += ["--tunnel", f"{lab.tunnel_addr}:{lab.tunnel_port}", "--mode", lab.mode]
    netns.run(lab.relay_ns, argv)


def unload(lab: RelayLab, name: str) -> None:
    netns.run(lab.relay_ns, [RELAYCTL, "unload", "--name", name], check=False)


def test_fresh_relay_takes_over_a_flow_via_the_slow_path(
    lab: RelayLab, standin: StandIn, redis_url: str
) -> None:
    import redis

    r = redis.Redis.from_url(redis_url)
    publish(r, lab)
    a = controller(lab, lab.name, redis_url)
    b_name = f"{lab.prefix}b"
    b: RunProc | None = None
    c = lab.client_socket()
    try:
        # Relay A learns the call from its Binding request; its controller publishes the flow.
        c.sendto(binding(lab), (lab.vip, lab.vip_port))
        assert recv(c)[1] == (lab.vip, lab.vip_port)
        key = flow_redis_key(lab, c)
        assert wait_until(lambda: r.get(key), 2.0, "the flow in Redis") == b"1:7"
        assert 0 < r.pttl(key) <= 120_000
        assert a.metrics()["relayctl_flow_exports_total"] >= 1
        wait_until(lambda: a.metrics()["relayctl_flows"] == 1, 2.0, "relayctl_flows 1")

        # Relay A dies; relay B, which never saw the call, comes up on the same links.
        assert a.stop() == 0
        lab.unload()
        load_second_relay(lab, b_name)
        assert flow_in_map(b_name, *c.getsockname(), lab.vip, lab.vip_port) is None
        # Without a controller, B drops what it cannot route (the flag is off after load).
        before = packets(b_name, "drop_no_flow")
        c.sendto(DTLS, (lab.vip, lab.vip_port))
        wait_until(lambda: packets(b_name, "drop_no_flow") == before + 1, 3, "drop_no_flow")

        b = controller(lab, b_name, redis_url)
        assert (1, 7) in map_state(b_name).transceivers
        # DTLS of the running call: slow path -> Redis -> flow installed -> tunnelled.
        seen_before = standin.snapshot()["tunnel"]
        c.sendto(DTLS, (lab.vip, lab.vip_port))
        assert standin.wait_for(seen_before + 1), "the slow path did not forward the packet"
        seen = standin.seen[-1]
        client, cport = c.getsockname()
        assert seen.relay == (lab.tunnel_addr, flow_entropy(client, cport, lab.vip_port))
        inner = parse_ipv4_udp(seen.inner, verify_checksums=True)
        assert (inner.src, inner.sport, inner.dst, inner.dport) == (
            client,
            cport,
            lab.vip,
            lab.vip_port,
        )
        assert inner.payload == DTLS and inner.ttl == 63  # one hop less, as XDP forwards it
        assert recv(c) == (b"T0|" + DTLS, (lab.vip, lab.vip_port)), "echo through relay B"
        assert flow_in_map(b_name, client, cport, lab.vip, lab.vip_port) == (1, 7)
        assert packets(b_name, "pass_slow_path") == 1
        m = b.metrics()
        assert m["relayctl_slow_path_packets_total{outcome=forwarded}"] == 1

        # Later packets take the XDP path.
        fwd = packets(b_name, "fwd_flow")
        for i in range(5):
            c.sendto(RTP + bytes([i]), (lab.vip, lab.vip_port))
            assert recv(c)[0] == b"T0|" + RTP + bytes([i])
        assert packets(b_name, "fwd_flow") == fwd + 5
        assert packets(b_name, "pass_slow_path") == 1

        # A flow no relay ever learned: dropped by the slow path, and counted.
        with lab.client_socket() as stranger:
            stranger.sendto(RTP, (lab.vip, lab.vip_port))
            wait_until(
                lambda: b.metrics()["relayctl_slow_path_packets_total{outcome=unknown_flow}"] == 1,
                3,
                "unknown_flow counted",
            )
            assert flow_in_map(b_name, *stranger.getsockname(), lab.vip, lab.vip_port) is None
        # A flow whose transceiver this relay does not have: counted, not installed.
        with lab.client_socket() as orphan:
            r.set(flow_redis_key(lab, orphan), "1:99", ex=60)
            orphan.sendto(RTP, (lab.vip, lab.vip_port))
            wait_until(
                lambda: b.metrics()["relayctl_slow_path_packets_total{outcome=unknown_txr}"] == 1,
                3,
                "unknown_txr counted",
            )
        assert packets(b_name, "pass_slow_path") == 3
        assert b.stop() == 0
        assert "Traceback" not in a.text() + b.text()
    finally:
        c.close()
        a.close()
        if b is not None:
            b.close()
        unload(lab, b_name)
        r.close()


def test_redis_outage_stops_only_what_needs_redis(lab: RelayLab, standin: StandIn) -> None:
    store = RedisServer().start()
    proc: RunProc | None = None
    try:
        r = store.client()
        publish(r, lab)
        proc = controller(lab, lab.name, store.url)
        with lab.client_socket() as known, lab.client_socket() as fresh:
            known.sendto(binding(lab), (lab.vip, lab.vip_port))
            recv(known)
            key = flow_redis_key(lab, known)
            wait_until(lambda: r.get(key), 2.0, "the flow in Redis")
            r.close()

            store.stop()
            wait_until(lambda: proc.metrics()["relayctl_redis_up"] == 0, 5, "redis_up 0")
            # The lag shows: no successful sync since Redis went away.
            wait_until(
                lambda: proc.metrics()["relayctl_sync_age_seconds"] >= 1.0, 5, "sync age growing"
            )
            fwd = packets(lab.name, "fwd_flow")
            for i in range(5):  # the known flow keeps forwarding
                known.sendto(RTP + bytes([i]), (lab.vip, lab.vip_port))
                assert recv(known)[0] == b"T0|" + RTP + bytes([i])
            assert packets(lab.name, "fwd_flow") == fwd + 5
            stun_new = packets(lab.name, "fwd_stun_new")
            fresh.sendto(binding(lab), (lab.vip, lab.vip_port))  # a new call routes by ufrag
            recv(fresh)
            assert packets(lab.name, "fwd_stun_new") == stun_new + 1
            # The slow path cannot ask Redis: a counted drop, not a crash.
            with lab.client_socket() as stranger:
                stranger.sendto(RTP, (lab.vip, lab.vip_port))
                wait_until(
                    lambda: (
                        proc.metrics()["relayctl_slow_path_packets_total{outcome=redis_down}"] == 1
                    ),
                    3,
                    "redis_down counted",
                )
            state = map_state(lab.name)
            assert (1, 7) in state.transceivers and state.keys, "maps are never emptied"
            assert proc.alive()

            # Redis comes back empty (no persistence): transceivers re-register, sync resumes,
            # flows are written again (also the one learned during the outage).
            store.start()
            r = store.client()
            publish(r, lab, txrs=2)
            wait_until(
                lambda: (1, 8) in map_state(lab.name).transceivers, 8, "sync after Redis returned"
            )
            assert proc.metrics()["relayctl_redis_up"] == 1
            wait_until(lambda: r.get(key) == b"1:7", 5, "the known flow written again")
            wait_until(lambda: r.get(flow_redis_key(lab, fresh)) == b"1:7", 5, "the new flow")
            r.close()
        assert proc.stop() == 0
        assert "redis unreachable" in proc.text() and "Traceback" not in proc.text()
    finally:
        if proc is not None:
            proc.close()
        store.close()


def test_killing_the_controller_loses_no_packet(
    lab: RelayLab, standin: StandIn, redis_url: str
) -> None:
    import redis

    r = redis.Redis.from_url(redis_url)
    publish(r, lab)
    r.close()
    proc = controller(lab, lab.name, redis_url)
    try:
        with lab.client_socket() as c:
            c.sendto(binding(lab), (lab.vip, lab.vip_port))
            recv(c)
            start = standin.snapshot()["tunnel"]
            total, killed = 2000, threading.Event()

            def send() -> None:
                for i in range(total):
                    c.sendto(RTP + i.to_bytes(4, "big"), (lab.vip, lab.vip_port))
                    if i == total // 2:
                        proc.kill()  # SIGKILL: no cleanup at all
                        killed.set()

            sender = threading.Thread(target=send)
            sender.start()
            sender.join(timeout=60)
            assert killed.is_set() and not proc.alive()
            assert standin.wait_for(start + total, timeout=10), standin.snapshot()
            assert standin.snapshot()["tunnel"] == start + total
            got = {bytes(s.datagram.payload[-4:]) for s in list(standin.seen)[-total:]}
            assert got == {i.to_bytes(4, "big") for i in range(total)}
        assert (1, 7) in map_state(lab.name).transceivers
        # SIGKILL left the slow-path flag set; the next controller adopts it and clears it.
        assert config_flags(lab.name) & 1
        again = controller(lab, lab.name, redis_url)
        try:
            assert again.metrics()["relayctl_slow_path_enabled"] == 1
            assert again.stop() == 0
        finally:
            again.close()
        assert config_flags(lab.name) & 1 == 0
    finally:
        proc.close()
