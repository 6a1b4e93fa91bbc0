"""The per-CPU next-hop cache in front of bpf_fib_lookup (bpf/fib.h): a hit forwards exactly as
a lookup does, only successful lookups are cached, route and neighbour changes are seen after the
validity window (aged here by rewriting the entries, never by sleeping) or an explicit flush."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

from control.reasons import Reason
from lab.fibsandbox import CLIENT_LINK, NEAR_TXR, TXR_LINK
from tests.bpf.bpfharness import (
    CLIENT,
    CLIENT_PORT,
    NEAR,
    NO_NEIGH,
    ON_CLIENT_LINK,
    RTP,
    SMALL_MTU,
    TUNNEL_ADDR,
    TUNNEL_PORT,
    UNREACHABLE,
    VIP,
    VIP_PORTS,
    XDP_DROP,
    XDP_PASS,
    XDP_REDIRECT,
    XDP_TX,
    Outcome,
    Relay,
    Txr,
    client_frame,
    eth,
    mac,
)
from wire.encap import flow_entropy, ipv4_udp

OTHER_MAC = "02:ed:00:00:01:99"


def _ip(relay: Relay, *args: str) -> None:
    subprocess.run(["ip", "-n", relay.sandbox.name, *args], check=True, capture_output=True)


@contextmanager
def neighbour_mac(relay: Relay, new_mac: str) -> Iterator[None]:
    """The transceiver NEAR's permanent neighbour entry moved to another MAC, for a while."""
    _ip(
        relay,
        "neigh",
        "replace",
        NEAR.addr,
        "lladdr",
        new_mac,
        "nud",
        "permanent",
        "dev",
        TXR_LINK.name,
    )
    try:
        yield
    finally:
        _ip(
            relay,
            "neigh",
            "replace",
            NEAR.addr,
            "lladdr",
            NEAR_TXR[1],
            "nud",
            "permanent",
            "dev",
            TXR_LINK.name,
        )


@contextmanager
def route(relay: Relay, *spec: str) -> Iterator[None]:
    _ip(relay, "route", "add", *spec)
    try:
        yield
    finally:
        _ip(relay, "route", "del", *spec)


def flow_slot(relay: Relay, txr: Txr) -> int:
    """The cache slot of a client packet's lookup (CLIENT:CLIENT_PORT -> VIP, tunnelled to txr)."""
    sport = flow_entropy(CLIENT, CLIENT_PORT, VIP_PORTS[0])
    return relay.nexthop_slot(txr.addr, TUNNEL_ADDR, sport, txr.port, CLIENT_LINK.name)


def decap_slot(relay: Relay) -> int:
    return relay.nexthop_slot(CLIENT, VIP, VIP_PORTS[0], CLIENT_PORT, TXR_LINK.name)


def spread(relay: Relay, slot: int) -> None:
    """Copy the slot's valid per-CPU copy to every CPU, so that the next test run hits it
    whichever CPU it lands on (the cache is per CPU; the worker thread may migrate)."""
    valid = relay.valid_nexthops(slot)
    assert valid, "nothing cached in that slot"
    copies = relay.nexthop(slot)
    for cpu in range(len(copies)):
        copies[cpu] = valid[0]
    relay.set_nexthop(slot, copies)


def tunnel_frame(inner: bytes) -> bytes:
    outer = ipv4_udp(NEAR.addr, NEAR.port, TUNNEL_ADDR, TUNNEL_PORT, inner)
    return eth(outer, dst=TXR_LINK.mac, src=NEAR_TXR[1])


def run_flow(relay: Relay, frame: bytes | None = None) -> Outcome:
    return relay.run(frame if frame is not None else client_frame(RTP))


def test_hit_gives_the_same_bytes_as_a_lookup(relay: Relay) -> None:
    reply = tunnel_frame(ipv4_udp(VIP, VIP_PORTS[0], CLIENT, CLIENT_PORT, b"\x80reply"))
    cases = [
        (NEAR, client_frame(RTP), CLIENT_LINK.name, XDP_REDIRECT, Reason.FWD_FLOW),
        (ON_CLIENT_LINK, client_frame(RTP), CLIENT_LINK.name, XDP_TX, Reason.FWD_FLOW),
        (None, reply, TXR_LINK.name, XDP_REDIRECT, Reason.FWD_DECAP),
    ]
    for txr, frame, ingress, action, reason in cases:
        relay.flush_nexthops()
        slot = flow_slot(relay, txr) if txr is not None else decap_slot(relay)
        assert relay.valid_nexthops(slot) == []
        relay.set_flow(txr or NEAR)  # the client's flow; the reply needs it as well
        miss = relay.run(frame, ingress=ingress)
        spread(relay, slot)  # the lookup's answer was cached (asserted there)
        hit = relay.run(frame, ingress=ingress)
        assert (miss.action, miss.reason) == (hit.action, hit.reason) == (action, reason)
        assert hit.data == miss.data


def test_hit_uses_the_cached_answer(relay: Relay) -> None:
    """Proof that the second packet did not ask the FIB: a doctored entry is obeyed."""
    relay.set_flow(NEAR)
    first = run_flow(relay)
    assert first.data[:6] == mac(NEAR_TXR[1])
    slot = flow_slot(relay, NEAR)
    spread(relay, slot)
    copies = relay.nexthop(slot)
    for c in copies:
        c.val.dmac[:] = list(mac(OTHER_MAC))
    relay.set_nexthop(slot, copies)
    assert run_flow(relay).data[:6] == mac(OTHER_MAC)


def test_neighbour_change_seen_after_the_window(relay: Relay) -> None:
    relay.set_flow(NEAR)
    assert run_flow(relay).data[:6] == mac(NEAR_TXR[1])
    spread(relay, flow_slot(relay, NEAR))
    with neighbour_mac(relay, OTHER_MAC):
        assert run_flow(relay).data[:6] == mac(NEAR_TXR[1])  # within the window: cached
        relay.expire_nexthops(flow_slot(relay, NEAR))
        out = run_flow(relay)
        assert (out.action, out.reason) == (XDP_REDIRECT, Reason.FWD_FLOW)
        assert out.data[:6] == mac(OTHER_MAC)
    relay.flush_nexthops()
    assert run_flow(relay).data[:6] == mac(NEAR_TXR[1])


def test_route_change_seen_after_a_flush(relay: Relay) -> None:
    relay.set_flow(NEAR)
    assert run_flow(relay).action == XDP_REDIRECT
    spread(relay, flow_slot(relay, NEAR))
    with route(relay, f"{NEAR.addr}/32", "via", CLIENT_LINK.gateway):
        assert run_flow(relay).action == XDP_REDIRECT  # within the window: cached
        relay.flush_nexthops()
        out = run_flow(relay)
        assert (out.action, out.reason) == (XDP_TX, Reason.FWD_FLOW)  # now via the client side
        assert out.data[:12] == mac(CLIENT_LINK.gateway_mac) + mac(CLIENT_LINK.mac)
        spread(relay, flow_slot(relay, NEAR))
    relay.expire_nexthops(flow_slot(relay, NEAR))
    assert run_flow(relay).action == XDP_REDIRECT  # the route is gone again


def test_removed_route_drops_after_the_window(relay: Relay) -> None:
    relay.set_flow(NEAR)
    assert run_flow(relay).action == XDP_REDIRECT
    with route(relay, "unreachable", f"{NEAR.addr}/32"):
        relay.expire_nexthops(flow_slot(relay, NEAR))
        out = run_flow(relay)
        assert (out.action, out.reason) == (XDP_DROP, Reason.DROP_FIB)
        out = run_flow(relay)  # the refusal is not cached, nor is the old answer revived
        assert (out.action, out.reason) == (XDP_DROP, Reason.DROP_FIB)


def test_refusals_are_never_cached(relay: Relay) -> None:
    for txr, action, reason in [
        (UNREACHABLE, XDP_DROP, Reason.DROP_FIB),
        (NO_NEIGH, XDP_PASS, Reason.PASS_FIB_NO_NEIGH),
    ]:
        relay.set_flow(txr)
        for _ in range(3):
            out = run_flow(relay)
            assert (out.action, out.reason) == (action, reason)
        assert relay.valid_nexthops(flow_slot(relay, txr)) == []


def test_cache_never_forwards_what_the_route_mtu_refuses(relay: Relay) -> None:
    # the route to SMALL_MTU has mtu 600; the outer packet is the frame - 14 + 28 bytes
    def frame(size: int) -> bytes:
        return client_frame(bytes([0x80]) + bytes(size - 28 - 28 - 1))

    relay.set_flow(SMALL_MTU)
    slot = flow_slot(relay, SMALL_MTU)
    assert run_flow(relay, frame(500)).reason == Reason.FWD_FLOW  # cached, up to 500 bytes
    spread(relay, slot)
    assert run_flow(relay, frame(601)).reason == Reason.DROP_TOO_BIG  # the FIB was asked
    assert run_flow(relay, frame(600)).reason == Reason.FWD_FLOW  # asked too, and now cached
    spread(relay, slot)
    assert run_flow(relay, frame(601)).reason == Reason.DROP_TOO_BIG
    assert run_flow(relay, frame(100)).reason == Reason.FWD_FLOW
