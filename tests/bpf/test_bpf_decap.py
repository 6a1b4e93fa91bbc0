"""Transceiver -> client: the tunnel return path (spec §3), and everything it must refuse."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from bpfharness import (
    CLIENT,
    CLIENT_PORT,
    NEAR,
    TUNNEL_ADDR,
    TUNNEL_PORT,
    VIP,
    VIP_PORTS,
    XDP_DROP,
    XDP_PASS,
    XDP_REDIRECT,
    XDP_TX,
    Outcome,
    Relay,
    eth,
    mac,
)

from control.reasons import Reason
from lab.fibsandbox import CLIENT_LINK, NEAR_TXR, TXR_LINK, UNRESOLVED
from wire.encap import checksum, ipv4_udp

REPLY = ipv4_udp(VIP, VIP_PORTS[0], CLIENT, CLIENT_PORT, b"\x80\x00reply-media", tos=0x2E)


def tunnel_frame(
    inner: bytes,
    *,
    src: str = NEAR.addr,
    sport: int = NEAR.port,
    dst: str = TUNNEL_ADDR,
    dport: int = TUNNEL_PORT,
) -> bytes:
    """A transceiver's tunnel datagram as it arrives on txr0."""
    return eth(ipv4_udp(src, sport, dst, dport, inner), dst=TXR_LINK.mac, src=NEAR_TXR[1])


def run_tunnel(relay: Relay, frame: bytes) -> Outcome:
    return relay.run(frame, ingress=TXR_LINK.name)


def test_decap_forwards_inner_packet_exactly(relay: Relay) -> None:
    frame = tunnel_frame(REPLY)
    out = run_tunnel(relay, frame)
    assert out.action == XDP_REDIRECT  # in on txr0, out on cli0
    assert out.counts == {Reason.FWD_DECAP: (1, len(frame))}
    assert out.data == mac(CLIENT_LINK.gateway_mac) + mac(CLIENT_LINK.mac) + b"\x08\x00" + REPLY


def test_decap_from_second_vip_port(relay: Relay) -> None:
    inner = ipv4_udp(VIP, VIP_PORTS[1], CLIENT, CLIENT_PORT, b"x")
    out = run_tunnel(relay, tunnel_frame(inner))
    assert (out.action, out.reason, out.data[14:]) == (XDP_REDIRECT, Reason.FWD_DECAP, inner)


def test_decap_keeps_no_state(relay: Relay) -> None:
    assert run_tunnel(relay, tunnel_frame(REPLY)).reason == Reason.FWD_DECAP
    assert relay.flows() == []


def test_decap_to_unroutable_client(relay: Relay) -> None:
    inner = ipv4_udp(VIP, VIP_PORTS[0], "198.19.3.9", CLIENT_PORT, b"x")
    out = run_tunnel(relay, tunnel_frame(inner))
    assert (out.action, out.reason) == (XDP_DROP, Reason.DROP_FIB)


@pytest.mark.parametrize(
    ("src", "sport"),
    [
        ("198.19.1.99", NEAR.port),  # nobody registered there
        (NEAR.addr, NEAR.port + 1),  # a registered address, another port
        (CLIENT, CLIENT_PORT),  # a client talking to the tunnel port
    ],
)
def test_tunnel_stranger(relay: Relay, src: str, sport: int) -> None:
    frame = tunnel_frame(REPLY, src=src, sport=sport)
    out = run_tunnel(relay, frame)
    assert (out.action, out.counts) == (XDP_DROP, {Reason.DROP_TUNNEL_STRANGER: (1, len(frame))})


def test_tunnel_requires_registration_not_transceiver_entry(relay: Relay) -> None:
    # txr_addrs (not transceivers) admits tunnel peers: clearing it shuts the return path
    relay.maps["txr_addrs"].clear()
    assert run_tunnel(relay, tunnel_frame(REPLY)).reason == Reason.DROP_TUNNEL_STRANGER


@pytest.mark.parametrize(
    ("src", "sport"),
    [
        ("198.19.128.11", VIP_PORTS[0]),  # not a VIP address
        (VIP, 9999),  # a VIP address, not a VIP port
        (CLIENT, CLIENT_PORT),  # spoofing a client
    ],
)
def test_tunnel_foreign_source(relay: Relay, src: str, sport: int) -> None:
    frame = tunnel_frame(ipv4_udp(src, sport, CLIENT, CLIENT_PORT, b"spoof"))
    out = run_tunnel(relay, frame)
    assert (out.action, out.counts) == (
        XDP_DROP,
        {Reason.DROP_TUNNEL_FOREIGN_SRC: (1, len(frame))},
    )


def _fix_ip_csum(pkt: bytearray) -> bytes:
    pkt[10:12] = b"\x00\x00"
    pkt[10:12] = checksum(bytes(pkt[:20])).to_bytes(2, "big")
    return bytes(pkt)


def _mutations() -> dict[str, bytes]:
    def mutate(fn: Callable[[bytearray], object]) -> bytes:
        pkt = bytearray(REPLY)
        fn(pkt)
        return bytes(pkt)

    tcp = bytearray(REPLY)
    tcp[9] = 6
    options = bytearray(REPLY[:20]) + b"\x01\x01\x01\x01" + REPLY[20:]
    options[0], options[2:4] = 0x46, len(options).to_bytes(2, "big")
    frag = bytearray(REPLY)
    frag[6:8] = b"\x20\x00"
    later = bytearray(REPLY)
    later[6:8] = b"\x00\x10"
    longer_ip = bytearray(REPLY)
    longer_ip[2:4] = (len(REPLY) + 1).to_bytes(2, "big")
    shorter_ip = bytearray(REPLY)
    shorter_ip[2:4] = (len(REPLY) - 1).to_bytes(2, "big")
    bad_udp = bytearray(REPLY)
    bad_udp[24:26] = (len(REPLY) - 20 - 1).to_bytes(2, "big")
    return {
        "empty": b"",
        "short": REPLY[:27],
        "header only": REPLY[:20],
        "ipv6": bytes([0x60]) + REPLY[1:],
        "dtls": bytes([0x16, 0xFE, 0xFD]) + REPLY[3:],
        "tcp": _fix_ip_csum(tcp),
        "ip options": _fix_ip_csum(options),
        "first fragment": _fix_ip_csum(frag),
        "later fragment": _fix_ip_csum(later),
        "ip length > payload": _fix_ip_csum(longer_ip),
        "ip length < payload": _fix_ip_csum(shorter_ip),
        "udp length": bytes(bad_udp),  # UDP length is not under the IP checksum
        "trailing byte": REPLY + b"\x00",
        "bad ip checksum": mutate(lambda p: p.__setitem__(10, p[10] ^ 0xFF)),
    }


@pytest.mark.parametrize("name", list(_mutations()))
def test_tunnel_bad_inner(relay: Relay, name: str) -> None:
    frame = tunnel_frame(_mutations()[name])
    out = run_tunnel(relay, frame)
    assert (out.action, out.counts) == (XDP_DROP, {Reason.DROP_TUNNEL_BAD_INNER: (1, len(frame))})


def test_tunnel_outer_checks_come_first(relay: Relay) -> None:
    frame = bytearray(tunnel_frame(REPLY))
    frame[14 + 6 : 14 + 8] = b"\x20\x00"  # outer first fragment
    out = run_tunnel(relay, bytes(frame))
    assert out.reason == Reason.DROP_FRAGMENT


def test_other_port_on_tunnel_address_is_not_ours(relay: Relay) -> None:
    frame = tunnel_frame(REPLY, dport=TUNNEL_PORT + 1)
    out = run_tunnel(relay, frame)
    assert (out.action, out.reason, out.data) == (XDP_PASS, Reason.PASS_NOT_OURS, frame)


def test_tunnel_port_follows_config(relay: Relay) -> None:
    relay.configure(TUNNEL_ADDR, 7070)
    assert run_tunnel(relay, tunnel_frame(REPLY)).reason == Reason.PASS_NOT_OURS
    assert run_tunnel(relay, tunnel_frame(REPLY, dport=7070)).reason == Reason.FWD_DECAP


def test_decap_back_out_of_the_same_link_is_xdp_tx(relay: Relay) -> None:
    # a client behind the transceiver-side gateway: egress == ingress (txr0)
    inner = ipv4_udp(VIP, VIP_PORTS[0], TXR_LINK.gateway, CLIENT_PORT, b"x")
    out = run_tunnel(relay, tunnel_frame(inner))
    assert (out.action, out.reason) == (XDP_TX, Reason.FWD_DECAP)
    assert out.data == mac(TXR_LINK.gateway_mac) + mac(TXR_LINK.mac) + b"\x08\x00" + inner


def test_decap_to_unresolved_neighbour_goes_to_the_kernel(relay: Relay) -> None:
    inner = ipv4_udp(VIP, VIP_PORTS[0], UNRESOLVED, CLIENT_PORT, b"x")
    frame = tunnel_frame(inner)
    out = run_tunnel(relay, frame)
    assert (out.action, out.reason) == (XDP_PASS, Reason.PASS_FIB_NO_NEIGH)
    assert out.data == frame[:14] + inner  # our MAC kept as destination, outer header gone
