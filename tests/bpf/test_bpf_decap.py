"""Transceiver -> client: the tunnel return path (spec §3), and everything it must refuse."""

from __future__ import annotations

import struct
from collections.abc import Callable

from control.reasons import Reason
from lab.fibsandbox import CLIENT_LINK, NEAR_TXR, TXR_LINK, UNRESOLVED
from tests.bpf.bpfharness import (
    CLIENT,
    CLIENT_PORT,
    NEAR,
    ON_CLIENT_LINK,
    TUNNEL_ADDR,
    TUNNEL_PORT,
    VIA_CLIENT_GATEWAY,
    VIP,
    VIP_PORTS,
    XDP_DROP,
    XDP_PASS,
    XDP_REDIRECT,
    XDP_TX,
    Case,
    Relay,
    Setup,
    Txr,
    cases,
    check,
    cleared,
    configured,
    eth,
    eth_header,
    with_flow,
    with_tunnel_links,
    without_txr,
)
from wire.encap import EncapError, checksum, forward_hop, ipv4_udp, parse_ipv4_udp

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


def decapsulated(frame: bytes, via: bytes | None = VIA_CLIENT_GATEWAY) -> bytes:
    """What the relay emits for a tunnel frame: via's Ethernet header (None: the frame's own, kept
    when the FIB refuses), then the inner packet as the transceiver sent it, one hop (TTL)
    less."""
    return (frame[:14] if via is None else via) + forward_hop(frame[14 + 28 :])


def reply_flow(frame: bytes, txr: Txr = NEAR, *, live: bool = False) -> Setup:
    """The flow a tunnel frame's inner packet answers: its destination is the client, its
    source the VIP; to txr."""

    d = parse_ipv4_udp(frame[14 + 28 :])  # EncapError for a malformed one

    def setup(relay: Relay) -> None:
        relay.set_flow(txr, live=live, client=d.dst, port=d.dport, vip=d.src, vip_port=d.sport)

    return setup


def tunnel_case(
    description: str,
    frame: bytes,
    out: bytes | None,
    action: int,
    reason: Reason,
    *setup: Setup,
    flow: bool = True,
    ingress: str = TXR_LINK.name,
) -> Case:
    """A tunnel frame in on txr0; with `flow`, the flow its inner packet answers exists (to NEAR)
    when the inner packet can be parsed."""
    steps: tuple[Setup, ...] = setup
    if flow:
        try:
            steps = (reply_flow(frame), *setup)
        except (EncapError, IndexError, struct.error):
            pass
    return Case(description, frame, out, action, reason, setup=steps, ingress=ingress)


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


OUTER_FRAGMENT = bytearray(tunnel_frame(REPLY))
OUTER_FRAGMENT[14 + 6 : 14 + 8] = b"\x20\x00"  # the outer header says: first fragment
SECOND_PORT = tunnel_frame(ipv4_udp(VIP, VIP_PORTS[1], CLIENT, CLIENT_PORT, b"x"))
UNROUTABLE = tunnel_frame(ipv4_udp(VIP, VIP_PORTS[0], "198.19.3.9", CLIENT_PORT, b"x"))
# a client behind the transceiver-side gateway: egress == ingress (txr0)
BEHIND_TXR = tunnel_frame(ipv4_udp(VIP, VIP_PORTS[0], TXR_LINK.gateway, CLIENT_PORT, b"x"))
TO_UNRESOLVED = tunnel_frame(ipv4_udp(VIP, VIP_PORTS[0], UNRESOLVED, CLIENT_PORT, b"x"))


@cases(
    tunnel_case(
        "a transceiver's reply: the inner packet exactly, to the client, no state kept",
        tunnel_frame(REPLY),
        decapsulated(tunnel_frame(REPLY)),
        XDP_REDIRECT,  # in on txr0, out on cli0
        Reason.FWD_DECAP,
    ),
    tunnel_case(
        "a reply from the second VIP port",
        SECOND_PORT,
        decapsulated(SECOND_PORT),
        XDP_REDIRECT,
        Reason.FWD_DECAP,
    ),
    tunnel_case(
        "a reply to a client without a route",
        UNROUTABLE,
        decapsulated(UNROUTABLE, via=None),
        XDP_DROP,
        Reason.DROP_FIB,
    ),
    tunnel_case(
        "a reply back out of the tunnel link is XDP_TX",
        BEHIND_TXR,
        decapsulated(BEHIND_TXR, eth_header(TXR_LINK.gateway_mac, TXR_LINK.mac)),
        XDP_TX,
        Reason.FWD_DECAP,
    ),
    tunnel_case(
        "a reply to an unresolved neighbour: to the kernel, our MAC kept, outer header gone",
        TO_UNRESOLVED,
        decapsulated(TO_UNRESOLVED, via=None),
        XDP_PASS,
        Reason.PASS_FIB_NO_NEIGH,
    ),
    tunnel_case(
        "stranger: nobody registered at that address",
        tunnel_frame(REPLY, src="198.19.1.99"),
        None,
        XDP_DROP,
        Reason.DROP_TUNNEL_STRANGER,
    ),
    tunnel_case(
        "stranger: a registered address, another port",
        tunnel_frame(REPLY, sport=NEAR.port + 1),
        None,
        XDP_DROP,
        Reason.DROP_TUNNEL_STRANGER,
    ),
    tunnel_case(
        "stranger: a client talking to the tunnel port",
        tunnel_frame(REPLY, src=CLIENT, sport=CLIENT_PORT),
        None,
        XDP_DROP,
        Reason.DROP_TUNNEL_STRANGER,
    ),
    tunnel_case(
        "stranger: without a flow of the sender, txr_addrs names the refusal",
        tunnel_frame(REPLY),
        None,
        XDP_DROP,
        Reason.DROP_TUNNEL_STRANGER,
        cleared("txr_addrs"),
        flow=False,
    ),
    tunnel_case(
        "foreign source: not a VIP address",
        tunnel_frame(ipv4_udp("198.19.128.11", VIP_PORTS[0], CLIENT, CLIENT_PORT, b"spoof")),
        None,
        XDP_DROP,
        Reason.DROP_TUNNEL_FOREIGN_SRC,
        flow=False,  # no flow is ever made for a source that is no VIP
    ),
    tunnel_case(
        "foreign source: a VIP address, not a VIP port",
        tunnel_frame(ipv4_udp(VIP, 9999, CLIENT, CLIENT_PORT, b"spoof")),
        None,
        XDP_DROP,
        Reason.DROP_TUNNEL_FOREIGN_SRC,
        flow=False,  # no flow is ever made for a source that is no VIP
    ),
    tunnel_case(
        "foreign source: spoofing a client",
        tunnel_frame(ipv4_udp(CLIENT, CLIENT_PORT, "198.19.64.6", CLIENT_PORT, b"spoof")),
        None,
        XDP_DROP,
        Reason.DROP_TUNNEL_FOREIGN_SRC,
        flow=False,  # no flow is ever made for a source that is no VIP
    ),
    *(
        tunnel_case(
            f"bad inner packet: {name}",
            tunnel_frame(inner),
            None,
            XDP_DROP,
            Reason.DROP_TUNNEL_BAD_INNER,
        )
        for name, inner in _mutations().items()
    ),
    tunnel_case(
        "the outer header's checks come first (an outer fragment)",
        bytes(OUTER_FRAGMENT),
        None,
        XDP_DROP,
        Reason.DROP_FRAGMENT,
    ),
    tunnel_case(
        "another port on the tunnel address is not ours",
        tunnel_frame(REPLY, dport=TUNNEL_PORT + 1),
        None,
        XDP_PASS,
        Reason.PASS_NOT_OURS,
    ),
    tunnel_case(
        "the tunnel port follows the config: the old port is not ours",
        tunnel_frame(REPLY),
        None,
        XDP_PASS,
        Reason.PASS_NOT_OURS,
        configured(TUNNEL_ADDR, 7070),
    ),
    tunnel_case(
        "the tunnel port follows the config: the new port is",
        tunnel_frame(REPLY, dport=7070),
        decapsulated(tunnel_frame(REPLY, dport=7070)),
        XDP_REDIRECT,
        Reason.FWD_DECAP,
        configured(TUNNEL_ADDR, 7070),
    ),
)
def test_tunnel_packet(relay: Relay, case: Case) -> None:
    check(relay, case)


# -- issue 8: the relay forwards replies only to clients it forwards for ---------------------


def reply_to(dst: str, dport: int = CLIENT_PORT, *, ttl: int = 64, src: str = VIP) -> bytes:
    """NEAR's tunnel frame carrying a reply from src:3478 to dst:dport."""
    return tunnel_frame(ipv4_udp(src, VIP_PORTS[0], dst, dport, b"\x80\x00reply", ttl=ttl))


def _to_class(description: str, dst: str, reason: Reason) -> Case:
    # the flow exists (tunnel_case adds it): the destination's class alone refuses it
    return tunnel_case(f"refused destination: {description}", reply_to(dst), None, XDP_DROP, reason)


LOCAL = reply_to(CLIENT_LINK.addr)  # the relay's address on cli0: not the tunnel address
TTL2 = reply_to(CLIENT, ttl=2)
BOTH_ROLES = tunnel_frame(REPLY)


@cases(
    tunnel_case(
        "spoofed transceiver from the client link: the link has no tunnel role",
        tunnel_frame(REPLY),
        None,
        XDP_DROP,
        Reason.DROP_TUNNEL_WRONG_LINK,
        ingress=CLIENT_LINK.name,
    ),
    tunnel_case(
        "one link with both roles (single NIC): accepted there, back out of it",
        BOTH_ROLES,
        decapsulated(BOTH_ROLES),
        XDP_TX,
        Reason.FWD_DECAP,
        with_tunnel_links(CLIENT_LINK.name, TXR_LINK.name),
        ingress=CLIENT_LINK.name,
    ),
    tunnel_case(
        "no tunnel link configured: refused everywhere",
        tunnel_frame(REPLY),
        None,
        XDP_DROP,
        Reason.DROP_TUNNEL_WRONG_LINK,
        with_tunnel_links(),
    ),
    tunnel_case(
        "a reply to an address without a flow",
        reply_to("198.19.64.99"),
        None,
        XDP_DROP,
        Reason.DROP_DECAP_NO_FLOW,
        flow=False,
    ),
    tunnel_case(
        "a reply to another port of a client that has a flow",
        reply_to(CLIENT, CLIENT_PORT + 1),
        None,
        XDP_DROP,
        Reason.DROP_DECAP_NO_FLOW,
        with_flow(NEAR),
        flow=False,
    ),
    tunnel_case(
        "a reply from the other VIP port than the flow's",
        SECOND_PORT,
        None,
        XDP_DROP,
        Reason.DROP_DECAP_NO_FLOW,
        with_flow(NEAR),  # CLIENT:CLIENT_PORT <-> VIP:3478 only
        flow=False,
    ),
    tunnel_case(
        "a reply to another transceiver's flow",
        tunnel_frame(REPLY),
        None,
        XDP_DROP,
        Reason.DROP_DECAP_WRONG_TXR,
        with_flow(ON_CLIENT_LINK),
        flow=False,
    ),
    tunnel_case(
        "a reply for a flow whose transceiver left the map",
        tunnel_frame(REPLY),
        None,
        XDP_DROP,
        Reason.DROP_DECAP_WRONG_TXR,
        without_txr(NEAR),  # txr_addrs still lists its address: no stranger
    ),
    tunnel_case(
        "a stranger naming a live flow is still a stranger",
        tunnel_frame(REPLY, src="198.19.1.99"),
        None,
        XDP_DROP,
        Reason.DROP_TUNNEL_STRANGER,
    ),
    _to_class("multicast 224.0.0.1", "224.0.0.1", Reason.DROP_DECAP_MULTICAST),
    _to_class("multicast 239.255.255.250", "239.255.255.250", Reason.DROP_DECAP_MULTICAST),
    _to_class("broadcast", "255.255.255.255", Reason.DROP_DECAP_BROADCAST),
    _to_class("loopback", "127.0.0.1", Reason.DROP_DECAP_LOOPBACK),
    _to_class("loopback 127.255.0.9", "127.255.0.9", Reason.DROP_DECAP_LOOPBACK),
    _to_class("0.0.0.0", "0.0.0.0", Reason.DROP_DECAP_RESERVED),
    _to_class("0/8", "0.1.2.3", Reason.DROP_DECAP_RESERVED),
    _to_class("class E", "240.0.0.1", Reason.DROP_DECAP_RESERVED),
    _to_class("class E 255.255.255.254", "255.255.255.254", Reason.DROP_DECAP_RESERVED),
    _to_class("link-local", "169.254.1.1", Reason.DROP_DECAP_RESERVED),
    _to_class("the tunnel address", TUNNEL_ADDR, Reason.DROP_DECAP_SELF),
    tunnel_case(
        "the VIP itself",
        reply_to(VIP),
        None,
        XDP_DROP,
        Reason.DROP_DECAP_SELF,
    ),
    tunnel_case(
        "another local address of the relay: the FIB refuses it",
        LOCAL,
        decapsulated(LOCAL, via=None),
        XDP_DROP,
        Reason.DROP_FIB,
    ),
    tunnel_case("TTL 1", reply_to(CLIENT, ttl=1), None, XDP_DROP, Reason.DROP_TTL_EXPIRED),
    tunnel_case("TTL 0", reply_to(CLIENT, ttl=0), None, XDP_DROP, Reason.DROP_TTL_EXPIRED),
    tunnel_case("TTL 2: out with TTL 1", TTL2, decapsulated(TTL2), XDP_REDIRECT, Reason.FWD_DECAP),
)
def test_return_path_is_checked(relay: Relay, case: Case) -> None:
    check(relay, case)


def test_reply_to_the_transceivers_tunnel_port_needs_a_flow(relay: Relay) -> None:
    """The reflector of issue 8 item 3: a VIP datagram aimed at a transceiver's tunnel port."""
    out = relay.run(reply_to(NEAR.addr, NEAR.port), ingress=TXR_LINK.name)
    assert (out.action, out.reason) == (XDP_DROP, Reason.DROP_DECAP_NO_FLOW)


def test_decap_leaves_the_flow_map_alone(relay: Relay) -> None:
    """Replies do not refresh a flow's liveness: only the client's own packets do."""
    relay.set_flow(NEAR)
    seen = relay.get_flow().seen
    out = relay.run(tunnel_frame(REPLY), ingress=TXR_LINK.name)
    assert out.reason == Reason.FWD_DECAP
    assert relay.get_flow().seen == seen
