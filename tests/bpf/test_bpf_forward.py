"""Client -> transceiver: flow hits, STUN routing, flow-map writes, and every FIB outcome."""

from __future__ import annotations

import struct

import pytest
from bpfharness import (
    CLIENT,
    CLIENT_PORT,
    NEAR,
    NO_NEIGH,
    ON_CLIENT_LINK,
    RTP,
    SMALL_MTU,
    TUNNEL_ADDR,
    UNREACHABLE,
    VIP,
    VIP_PORTS,
    XDP_DROP,
    XDP_PASS,
    XDP_REDIRECT,
    XDP_TX,
    Relay,
    Txr,
    binding,
    client_frame,
    eth,
    mac,
)

from control.reasons import Reason
from lab.fibsandbox import CLIENT_LINK, NEAR_TXR, TX_TXR, TXR_LINK
from wire.encap import checksum, encapsulate, flow_entropy, ipv4_udp
from wire.stun import build_message


def test_flow_hit_encapsulates_whole_packet(relay: Relay) -> None:
    relay.set_flow(NEAR)
    inner = ipv4_udp(CLIENT, CLIENT_PORT, VIP, VIP_PORTS[0], RTP, tos=0xB8, ttl=57)
    frame = eth(inner)
    out = relay.run(frame)

    assert out.action == XDP_REDIRECT  # in on cli0, out on txr0
    assert out.counts == {Reason.FWD_FLOW: (1, len(frame))}
    data = out.data
    assert len(data) == len(frame) + 28
    # Ethernet: from txr0 to the transceiver's (permanent) neighbour entry
    assert data[:14] == mac(NEAR_TXR[1]) + mac(TXR_LINK.mac) + b"\x08\x00"
    outer_ip, outer_udp, rest = data[14:34], data[34:42], data[42:]
    ver, tos, total, ident, frag, ttl, proto, _csum = struct.unpack(">BBHHHBBH", outer_ip[:12])
    assert (ver, tos, total, ident, frag, ttl, proto) == (
        0x45,
        0xB8,
        28 + len(inner),
        0,
        0x4000,
        64,
        17,
    )
    assert outer_ip[12:16] == bytes(map(int, TUNNEL_ADDR.split(".")))
    assert outer_ip[16:20] == bytes(map(int, NEAR.addr.split(".")))
    assert checksum(outer_ip) == 0
    sport, dport, ulen, ucsum = struct.unpack(">HHHH", outer_udp)
    assert sport == flow_entropy(CLIENT, CLIENT_PORT, VIP_PORTS[0]) and sport & 0x8000
    assert (dport, ulen, ucsum) == (NEAR.port, 8 + len(inner), 0)
    assert rest == inner  # untouched, TTL and checksum included
    assert data[14:] == encapsulate(inner, TUNNEL_ADDR, NEAR.addr, NEAR.port)


def test_flow_hit_same_link_is_xdp_tx(relay: Relay) -> None:
    relay.set_flow(ON_CLIENT_LINK)
    frame = client_frame(RTP)
    out = relay.run(frame)
    assert out.action == XDP_TX
    assert out.counts == {Reason.FWD_FLOW: (1, len(frame))}
    assert out.data[:14] == mac(TX_TXR[1]) + mac(CLIENT_LINK.mac) + b"\x08\x00"
    assert out.data[14:] == encapsulate(frame[14:], TUNNEL_ADDR, ON_CLIENT_LINK.addr, 5000)


def test_flow_miss_is_dropped(relay: Relay) -> None:
    relay.set_flow(NEAR, port=CLIENT_PORT + 1)  # another client port: a different flow
    out = relay.run(client_frame(RTP))
    assert (out.action, out.reason) == (XDP_DROP, Reason.DROP_NO_FLOW)


def test_flow_per_vip_port(relay: Relay) -> None:
    relay.set_flow(NEAR, vip_port=VIP_PORTS[1])
    assert relay.run(client_frame(RTP, vip_port=VIP_PORTS[0])).reason == Reason.DROP_NO_FLOW
    assert relay.run(client_frame(RTP, vip_port=VIP_PORTS[1])).reason == Reason.FWD_FLOW


def test_empty_payload_follows_the_flow(relay: Relay) -> None:
    assert relay.run(client_frame(b"")).reason == Reason.DROP_NO_FLOW
    relay.set_flow(NEAR)
    assert relay.run(client_frame(b"")).reason == Reason.FWD_FLOW


def test_stun_new_flow_creates_entry(relay: Relay) -> None:
    assert relay.flows() == []
    frame = client_frame(binding(NEAR))
    out = relay.run(frame)
    assert out.action == XDP_REDIRECT
    assert out.counts == {Reason.FWD_STUN_NEW: (1, len(frame))}
    assert out.data[14:] == encapsulate(frame[14:], TUNNEL_ADDR, NEAR.addr, NEAR.port)
    ((key, val),) = relay.flows()
    assert bytes(key) == bytes(relay.flow_key())  # client addr, VIP addr, client port, VIP port
    assert (val.cluster, val.pad, val.id) == (NEAR.cluster, 0, NEAR.id)
    assert val.created_ns > 0


def test_stun_known_does_not_rewrite(relay: Relay) -> None:
    assert relay.run(client_frame(binding(NEAR))).reason == Reason.FWD_STUN_NEW
    created = relay.get_flow().created_ns
    again = relay.run(client_frame(binding(NEAR, nonce=b"zzzzz")))  # another session, same txr
    assert (again.action, again.reason) == (XDP_REDIRECT, Reason.FWD_STUN_KNOWN)
    assert relay.get_flow().created_ns == created
    assert len(relay.flows()) == 1


def test_stun_moves_flow_to_other_transceiver(relay: Relay) -> None:
    relay.set_flow(NEAR, created_ns=5)
    frame = client_frame(binding(ON_CLIENT_LINK))
    out = relay.run(frame)
    assert (out.action, out.reason) == (XDP_TX, Reason.FWD_STUN_NEW)
    flow = relay.get_flow()
    assert (flow.id, flow.cluster) == (ON_CLIENT_LINK.id, ON_CLIENT_LINK.cluster)
    assert flow.created_ns > 5
    # later media follows the moved flow
    assert (
        relay.run(client_frame(RTP)).data[14:34]
        == encapsulate(client_frame(RTP)[14:], TUNNEL_ADDR, ON_CLIENT_LINK.addr, 5000)[:20]
    )


def test_other_stun_follows_the_flow(relay: Relay) -> None:
    success = build_message(0x0101, [(0x0020, b"\x00\x01\x02\x03")])  # Binding success response
    indication = build_message(0x0011, [])
    odd_len = bytearray(binding(NEAR))
    odd_len[3] |= 2  # header length not a multiple of 4: not STUN (RFC 8489)
    for payload in (success, indication, bytes(odd_len)):
        assert relay.run(client_frame(payload)).reason == Reason.DROP_NO_FLOW
    relay.set_flow(NEAR)
    for payload in (success, indication, bytes(odd_len)):
        assert relay.run(client_frame(payload)).reason == Reason.FWD_FLOW
    assert len(relay.flows()) == 1


def test_stun_to_unknown_transceiver(relay: Relay) -> None:
    stranger = Txr(NEAR.cluster, 999, NEAR.addr, NEAR.port)
    out = relay.run(client_frame(binding(stranger)))
    assert (out.action, out.reason) == (XDP_DROP, Reason.DROP_UNKNOWN_TXR)
    other_cluster = Txr(NEAR.cluster + 1, NEAR.id, NEAR.addr, NEAR.port)
    assert relay.run(client_frame(binding(other_cluster))).reason == Reason.DROP_UNKNOWN_TXR
    assert relay.flows() == []  # nothing is learned from a packet that routes nowhere


def test_flow_to_removed_transceiver_is_dropped(relay: Relay) -> None:
    relay.set_flow(NEAR)
    relay.remove_txr(NEAR)
    out = relay.run(client_frame(RTP))
    assert (out.action, out.reason) == (XDP_DROP, Reason.DROP_UNKNOWN_TXR)


def test_moved_transceiver_keeps_its_flows(relay: Relay) -> None:
    relay.set_flow(NEAR)
    moved = Txr(NEAR.cluster, NEAR.id, ON_CLIENT_LINK.addr, 7000)
    relay.add_txr(moved)  # same ids, new address
    out = relay.run(client_frame(RTP))
    assert (out.action, out.reason) == (XDP_TX, Reason.FWD_FLOW)
    assert out.data[14 + 16 : 14 + 20] == bytes(map(int, moved.addr.split(".")))
    assert out.data[36:38] == (7000).to_bytes(2, "big")


def test_unresolved_neighbour_goes_to_the_kernel_encapsulated(relay: Relay) -> None:
    relay.set_flow(NO_NEIGH)
    frame = client_frame(RTP)
    out = relay.run(frame)
    assert (out.action, out.reason) == (XDP_PASS, Reason.PASS_FIB_NO_NEIGH)
    # Ethernet kept (our MAC as destination, so the kernel forwards it), tunnel header in place
    assert out.data[:14] == frame[:14]
    assert out.data[14:] == encapsulate(frame[14:], TUNNEL_ADDR, NO_NEIGH.addr, NO_NEIGH.port)


def test_no_route_is_dropped(relay: Relay) -> None:
    relay.set_flow(UNREACHABLE)
    out = relay.run(client_frame(RTP))
    assert (out.action, out.reason) == (XDP_DROP, Reason.DROP_FIB)


@pytest.mark.parametrize(("size", "reason"), [(600, Reason.FWD_FLOW), (601, Reason.DROP_TOO_BIG)])
def test_route_mtu(relay: Relay, size: int, reason: Reason) -> None:
    # the route to SMALL_MTU has mtu 600: the outer packet is the inner one + 28 bytes
    relay.set_flow(SMALL_MTU)
    frame = client_frame(bytes([0x80]) + bytes(size - 28 - 28 - 1))
    assert len(frame) - 14 + 28 == size
    assert relay.run(frame).reason == reason


def test_ethernet_padding_is_not_tunnelled(relay: Relay) -> None:
    relay.set_flow(NEAR)
    frame = client_frame(b"\x80\x01")  # a 46-byte frame: a NIC pads it to 60
    padded = frame + b"\xee" * (60 - len(frame))
    out = relay.run(padded)
    assert out.counts == {Reason.FWD_FLOW: (1, 60)}
    assert out.data[14:] == encapsulate(frame[14:], TUNNEL_ADDR, NEAR.addr, NEAR.port)


def test_unconfigured_relay_drops_vip_traffic_only(relay: Relay) -> None:
    relay.configure(None, 0)
    relay.set_flow(NEAR)
    assert relay.run(client_frame(RTP)).counts == {
        Reason.DROP_NO_CONFIG: (1, len(client_frame(RTP)))
    }
    other = eth(ipv4_udp(CLIENT, CLIENT_PORT, VIP, 9999, RTP))
    out = relay.run(other)
    assert (out.action, out.reason, out.data) == (XDP_PASS, Reason.PASS_NOT_OURS, other)
