"""IPv6 clients through the relay (docs/wire-format.md §3): every IPv6 path with the exact bytes
out, and every bad input with the reason it is counted under."""

from __future__ import annotations

from ipaddress import IPv6Address

import pytest

from control.reasons import Reason
from lab.fibsandbox import (
    CLIENT_LINK,
    CLIENT_LINK6,
    NEAR_TXR,
    SMALL_MTU6,
    TXR_LINK,
    UNRESOLVED6,
)
from tests.bpf.bpfharness import (
    CLIENT,
    CLIENT6,
    CLIENT_PORT,
    ETH_P_IPV6,
    NEAR,
    NO_NEIGH,
    ON_CLIENT_LINK,
    RTP,
    TUNNEL_ADDR,
    TUNNEL_PORT,
    UNREACHABLE,
    VIA_TX_TXR,
    VIP,
    VIP6,
    VIP_PORTS,
    XDP_DROP,
    XDP_PASS,
    XDP_REDIRECT,
    XDP_TX,
    Case,
    Relay,
    Setup,
    Txr,
    binding,
    cases,
    check,
    client_frame,
    client_frame6,
    configured,
    eth,
    mac,
    tunnelled,
    with_flow6,
    with_limits,
    without_txr,
)
from wire.encap import forward_hop, ipv4_udp, ipv6_udp

ETH6 = ETH_P_IPV6.to_bytes(2, "big")
# What a decapsulated reply to an IPv6 client leaves with: out of cli0 to the client gateway.
VIA_CLIENT_GATEWAY6 = mac(CLIENT_LINK.gateway_mac) + mac(CLIENT_LINK.mac) + ETH6
OTHER6 = "2001:db8:ed40::6"
SLOW_PATH = 0x1  # CONFIG_F_SLOW_PATH


def with_slow_path(relay: Relay) -> None:
    relay.configure(TUNNEL_ADDR, TUNNEL_PORT, SLOW_PATH)


def next_header(frame: bytes, nh: int) -> bytes:
    """The frame with another IPv6 next header (the bytes after it unchanged)."""
    return frame[:20] + bytes([nh]) + frame[21:]


def set_u16(frame: bytes, offset: int, value: int) -> bytes:
    return frame[:offset] + value.to_bytes(2, "big") + frame[offset + 2 :]


# One ufrag for the module: minted again later (another 300 s epoch), it would be another
# ufrag with a budget of its own.
BINDING6 = binding(NEAR)
STUN6 = client_frame6(BINDING6)
MEDIA6 = client_frame6(RTP)
PLEN, ULEN = 14 + 4, 14 + 44  # offsets of the IPv6 payload length and UDP length in a frame


def client6(
    description: str,
    frame: bytes,
    out: bytes | None,
    action: int,
    reason: Reason,
    *setup: Setup,
    learns: Txr | None = None,
) -> Case:
    return Case(description, frame, out, action, reason, setup=setup, learns=learns)


def dropped6(description: str, frame: bytes, reason: Reason, *setup: Setup) -> Case:
    return Case(description, frame, None, XDP_DROP, reason, setup=setup)


def passed6(description: str, frame: bytes, *setup: Setup) -> Case:
    return Case(description, frame, None, XDP_PASS, Reason.PASS_NOT_OURS, setup=setup)


# -- client -> transceiver --------------------------------------------------------------------


@cases(
    client6(
        "Binding request routed by its ufrag: the IPv6 packet, hop limit - 1, in the IPv4 tunnel",
        STUN6,
        tunnelled(STUN6, NEAR),
        XDP_REDIRECT,
        Reason.FWD_STUN_NEW,
        learns=NEAR,
    ),
    client6(
        "Binding request of a flow that already goes there",
        STUN6,
        tunnelled(STUN6, NEAR),
        XDP_REDIRECT,
        Reason.FWD_STUN_KNOWN,
        with_flow6(NEAR),
    ),
    client6(
        "Binding request moves an idle flow",
        STUN6,
        tunnelled(STUN6, NEAR),
        XDP_REDIRECT,
        Reason.FWD_STUN_NEW,
        with_flow6(ON_CLIENT_LINK),
        learns=NEAR,
    ),
    client6(
        "flow hit", MEDIA6, tunnelled(MEDIA6, NEAR), XDP_REDIRECT, Reason.FWD_FLOW, with_flow6(NEAR)
    ),
    client6(
        "flow hit back out of the ingress port is XDP_TX",
        MEDIA6,
        tunnelled(MEDIA6, ON_CLIENT_LINK, VIA_TX_TXR),
        XDP_TX,
        Reason.FWD_FLOW,
        with_flow6(ON_CLIENT_LINK),
    ),
    client6(
        "the traffic class becomes the outer TOS",
        client_frame6(RTP, tclass=0xB8),
        tunnelled(client_frame6(RTP, tclass=0xB8), NEAR),
        XDP_REDIRECT,
        Reason.FWD_FLOW,
        with_flow6(NEAR),
    ),
    client6(
        "the second VIP6 port",
        client_frame6(RTP, vip_port=VIP_PORTS[1]),
        tunnelled(client_frame6(RTP, vip_port=VIP_PORTS[1]), NEAR),
        XDP_REDIRECT,
        Reason.FWD_FLOW,
        with_flow6(NEAR, vip_port=VIP_PORTS[1]),
    ),
    client6(
        "Ethernet padding is cut off before tunnelling",
        MEDIA6 + bytes(10),
        tunnelled(MEDIA6, NEAR),
        XDP_REDIRECT,
        Reason.FWD_FLOW,
        with_flow6(NEAR),
    ),
    client6(
        "hop limit 2 is forwarded with 1",
        client_frame6(RTP, hop_limit=2),
        tunnelled(client_frame6(RTP, hop_limit=2), NEAR),
        XDP_REDIRECT,
        Reason.FWD_FLOW,
        with_flow6(NEAR),
    ),
    client6(
        "no route to the transceiver: the frame's MACs kept, refused by the FIB",
        MEDIA6,
        tunnelled(MEDIA6, UNREACHABLE, via=None),
        XDP_DROP,
        Reason.DROP_FIB,
        with_flow6(UNREACHABLE),
    ),
    client6(
        "unresolved transceiver neighbour: to the kernel, encapsulated",
        MEDIA6,
        tunnelled(MEDIA6, NO_NEIGH, via=None),
        XDP_PASS,
        Reason.PASS_FIB_NO_NEIGH,
        with_flow6(NO_NEIGH),
    ),
)
def test_ipv6_client_path(relay: Relay, case: Case) -> None:
    check(relay, case)


BAD_CLIENTS = {
    "multicast ff02::1": "ff02::1",
    "multicast ff0e::5": "ff0e::5",
    "unspecified ::": "::",
    "loopback ::1": "::1",
    "link-local fe80::1": "fe80::1",
    "link-local febf::1": "febf::1",
    "IPv4-mapped ::ffff:198.19.64.5": "::ffff:198.19.64.5",
    "the VIP6 itself": VIP6,
}


@cases(
    *(
        dropped6(
            f"Binding request from {name}",
            client_frame6(binding(NEAR), client=addr),
            Reason.DROP_BAD_CLIENT_ADDR,
        )
        for name, addr in BAD_CLIENTS.items()
    ),
    dropped6(
        "hop limit 1", client_frame6(RTP, hop_limit=1), Reason.DROP_TTL_EXPIRED, with_flow6(NEAR)
    ),
    dropped6(
        "hop limit 0", client_frame6(RTP, hop_limit=0), Reason.DROP_TTL_EXPIRED, with_flow6(NEAR)
    ),
    dropped6(
        "Binding request with hop limit 1",
        client_frame6(binding(NEAR), hop_limit=1),
        Reason.DROP_TTL_EXPIRED,
    ),
    dropped6("no flow, not STUN", MEDIA6, Reason.DROP_NO_FLOW),
    dropped6(
        "no flow with the slow-path flag: still a drop (the slow path is IPv4-only)",
        MEDIA6,
        Reason.DROP_NO_FLOW,
        with_slow_path,
    ),
    dropped6(
        "not configured", MEDIA6, Reason.DROP_NO_CONFIG, configured(None, 0), with_flow6(NEAR)
    ),
    dropped6(
        "the flow's transceiver left",
        MEDIA6,
        Reason.DROP_UNKNOWN_TXR,
        with_flow6(NEAR),
        without_txr(NEAR),
    ),
    dropped6(
        "a live flow to another transceiver does not move",
        STUN6,
        Reason.DROP_FLOW_LIVE,
        with_flow6(ON_CLIENT_LINK, live=True),
    ),
    dropped6(
        "the ufrag's flow budget",
        STUN6,
        Reason.DROP_UFRAG_FLOOD,
        with_limits(ufrag_flow_limit=1),
        lambda r: r.run(client_frame6(BINDING6, port=CLIENT_PORT + 1)),
    ),
    dropped6("UDP length 7", set_u16(MEDIA6, ULEN, 7), Reason.DROP_BAD_UDP_LEN),
    dropped6(
        "UDP length one more than the payload length",
        set_u16(MEDIA6, ULEN, 8 + 161),
        Reason.DROP_BAD_UDP_LEN,
        with_flow6(NEAR),
    ),
    dropped6(
        "UDP length one less than the payload length",
        set_u16(MEDIA6, ULEN, 8 + 159),
        Reason.DROP_BAD_UDP_LEN,
        with_flow6(NEAR),
    ),
    dropped6(
        "payload length past the frame",
        set_u16(MEDIA6, PLEN, 8 + 161),
        Reason.DROP_TRUNCATED,
        with_flow6(NEAR),
    ),
    dropped6(
        "payload length short of the UDP length",
        set_u16(MEDIA6, PLEN, 8 + 159),
        Reason.DROP_BAD_UDP_LEN,
        with_flow6(NEAR),
    ),
    *(
        dropped6(
            f"extension header {nh} to the VIP6",
            next_header(MEDIA6, nh),
            Reason.DROP_IPV6_EXT_HEADERS,
            with_flow6(NEAR),
        )
        for nh in (0, 43, 60)
    ),
    dropped6(
        "a fragment header to the VIP6",
        next_header(MEDIA6, 44),
        Reason.DROP_FRAGMENT,
        with_flow6(NEAR),
    ),
    passed6(
        "an extension header to another address", next_header(client_frame6(RTP, vip=OTHER6), 0)
    ),
    passed6("a fragment to another address", next_header(client_frame6(RTP, vip=OTHER6), 44)),
    passed6("ICMPv6 to the VIP6 (neighbour discovery, ping)", next_header(MEDIA6, 58)),
    passed6("TCP to the VIP6", next_header(MEDIA6, 6)),
    passed6("UDP to another port of the VIP6", client_frame6(RTP, vip_port=3479)),
    passed6("UDP port 0 of the VIP6 (the address entry is no VIP)", client_frame6(RTP, vip_port=0)),
    passed6("UDP to another address", client_frame6(binding(NEAR), vip=OTHER6)),
    passed6("IP version 4 in an IPv6 frame", MEDIA6[:14] + b"\x40" + MEDIA6[15:]),
)
def test_ipv6_client_refusals(relay: Relay, case: Case) -> None:
    check(relay, case)


@pytest.mark.parametrize("cut", range(14, len(MEDIA6)))  # a test run needs the Ethernet header
def test_ipv6_truncated_at_every_length(relay: Relay, cut: int) -> None:
    """Each prefix of a flow's packet: the kernel's until the UDP ports can be read, then
    truncated (the payload length says more than the frame holds)."""
    relay.set_flow6(NEAR)
    if cut < 14 + 48:
        reason, action = Reason.PASS_NOT_OURS, XDP_PASS
    else:
        reason, action = Reason.DROP_TRUNCATED, XDP_DROP
    check(relay, Case(f"cut {cut}", MEDIA6[:cut], None, action, reason))


def test_ipv6_and_ipv4_flows_are_apart(relay: Relay) -> None:
    """One client behind both families: two flows, each its own map, each routed by itself."""
    v4 = relay.run(client_frame(binding(NEAR)))
    v6 = relay.run(client_frame6(binding(ON_CLIENT_LINK)))
    assert (v4.reason, v6.reason) == (Reason.FWD_STUN_NEW, Reason.FWD_STUN_NEW)
    assert relay.get_flow(client=CLIENT).id == NEAR.id
    assert relay.get_flow(client=CLIENT6).id == ON_CLIENT_LINK.id
    assert len(relay.maps["flows"].items()) == len(relay.maps["flows6"].items()) == 1
    out = relay.run(client_frame6(RTP))
    assert (out.reason, out.data) == (
        Reason.FWD_FLOW,
        tunnelled(client_frame6(RTP), ON_CLIENT_LINK, VIA_TX_TXR),
    )


def test_ipv6_flow_caches_its_transceiver(relay: Relay) -> None:
    """flows6 keeps the endpoint under txr_gen as flows does; a removal stops it at once."""
    relay.set_flow6(NEAR, live=True)
    assert relay.run(MEDIA6).reason == Reason.FWD_FLOW
    cache = relay.get_flow(client=CLIENT6).txr_cache
    addr = int.from_bytes(bytes(int(b) for b in NEAR.addr.split(".")), "little")
    assert (cache >> 48, cache & 0xFFFFFFFF) == (relay.txr_gen(), addr)
    relay.remove_txr(NEAR)
    out = relay.run(MEDIA6)
    assert (out.action, out.reason) == (XDP_DROP, Reason.DROP_UNKNOWN_TXR)


# -- transceiver -> client --------------------------------------------------------------------

REPLY6 = ipv6_udp(VIP6, VIP_PORTS[0], CLIENT6, CLIENT_PORT, b"\x80\x00reply-media", tclass=0x2E)


def tunnel_frame(inner: bytes, *, src: str = NEAR.addr, sport: int = NEAR.port) -> bytes:
    """A transceiver's tunnel datagram carrying `inner`, as it arrives on txr0."""
    outer = ipv4_udp(src, sport, TUNNEL_ADDR, TUNNEL_PORT, inner)
    return eth(outer, dst=TXR_LINK.mac, src=NEAR_TXR[1])


def decapsulated(frame: bytes, via: bytes | None = VIA_CLIENT_GATEWAY6) -> bytes:
    """The inner IPv6 packet one hop less, after via's header (None: the tunnel frame's own
    MACs with IPv6's ethertype, as left when the FIB refuses)."""
    head = frame[:12] + ETH6 if via is None else via
    return head + forward_hop(frame[14 + 28 :])


def reply6(
    dst: str = CLIENT6,
    *,
    src: str = VIP6,
    sport: int = VIP_PORTS[0],
    dport: int = CLIENT_PORT,
    payload: bytes = b"\x80\x00r",
    hops: int = 64,
) -> bytes:
    return ipv6_udp(src, sport, dst, dport, payload, hop_limit=hops)


def reply_flow6(inner: bytes, txr: Txr = NEAR) -> Setup:
    """The flow an inner reply answers (its destination the client, its source the VIP6)."""
    src, dst = str(IPv6Address(inner[8:24])), str(IPv6Address(inner[24:40]))
    sport, dport = int.from_bytes(inner[40:42], "big"), int.from_bytes(inner[42:44], "big")
    return with_flow6(txr, client=dst, port=dport, vip=src, vip_port=sport)


def decap6(
    description: str,
    inner: bytes,
    out: bytes | str | None,
    action: int,
    reason: Reason,
    *setup: Setup,
    flow: bool = True,
    frame: bytes | None = None,
    ingress: str = TXR_LINK.name,
) -> Case:
    """A tunnel frame (carrying `inner`, or `frame`) in on txr0, with the flow its inner
    packet answers unless not `flow`; out "decap" means decapsulated() through the gateway."""
    frame = frame if frame is not None else tunnel_frame(inner)
    steps = ((reply_flow6(inner),) if flow else ()) + setup
    want = decapsulated(frame) if out == "decap" else out
    return Case(description, frame, want, action, reason, setup=steps, ingress=ingress)  # type: ignore[arg-type]


BAD_DESTINATIONS = {
    "ff02::1": Reason.DROP_DECAP_MULTICAST,
    "ff05::1:3": Reason.DROP_DECAP_MULTICAST,
    "::1": Reason.DROP_DECAP_LOOPBACK,
    "::": Reason.DROP_DECAP_RESERVED,
    "fe80::1": Reason.DROP_DECAP_RESERVED,
    "::ffff:198.19.64.5": Reason.DROP_DECAP_RESERVED,
    VIP6: Reason.DROP_DECAP_SELF,
}


def _bad_inner() -> dict[str, bytes]:
    r = REPLY6
    return {
        **{f"cut to {n} bytes": r[:n] for n in (0, 1, 8, 39, 40, 47, 48)},
        "hop-by-hop header": r[:6] + b"\x00" + r[7:],
        "fragment header": r[:6] + b"\x2c" + r[7:],
        "TCP": r[:6] + b"\x06" + r[7:],
        "payload length + 1": r[:4] + (len(r) - 39).to_bytes(2, "big") + r[6:],
        "payload length - 1": r[:4] + (len(r) - 41).to_bytes(2, "big") + r[6:],
        "UDP length - 1": r[:44] + (len(r) - 41).to_bytes(2, "big") + r[46:],
        "UDP length + 1": r[:44] + (len(r) - 39).to_bytes(2, "big") + r[46:],
        "a trailing byte": r + b"\x00",
        "version 7": b"\x70" + r[1:],
    }


@cases(
    decap6(
        "a reply to an IPv6 client: IPv6 out, hop limit - 1, to the client",
        REPLY6,
        "decap",
        XDP_REDIRECT,
        Reason.FWD_DECAP,
    ),
    decap6(
        "a reply from the second VIP6 port",
        reply6(sport=VIP_PORTS[1]),
        "decap",
        XDP_REDIRECT,
        Reason.FWD_DECAP,
    ),
    decap6("hop limit 2 leaves with 1", reply6(hops=2), "decap", XDP_REDIRECT, Reason.FWD_DECAP),
    decap6(
        "a reply to a client without a route",
        reply6("2001:db8:ed03::9"),
        decapsulated(tunnel_frame(reply6("2001:db8:ed03::9")), via=None),
        XDP_DROP,
        Reason.DROP_FIB,
    ),
    decap6(
        "another local address of the relay: the FIB refuses it",
        reply6(CLIENT_LINK6[0]),
        decapsulated(tunnel_frame(reply6(CLIENT_LINK6[0])), via=None),
        XDP_DROP,
        Reason.DROP_FIB,
    ),
    decap6(
        "a reply to an unresolved neighbour: to the kernel",
        reply6(UNRESOLVED6),
        decapsulated(tunnel_frame(reply6(UNRESOLVED6)), via=None),
        XDP_PASS,
        Reason.PASS_FIB_NO_NEIGH,
    ),
    decap6(
        "a reply larger than the route's MTU",
        reply6("2001:db8:ed04::9", payload=bytes(SMALL_MTU6)),
        decapsulated(tunnel_frame(reply6("2001:db8:ed04::9", payload=bytes(SMALL_MTU6))), via=None),
        XDP_DROP,
        Reason.DROP_TOO_BIG,
    ),
    decap6(
        "no flow for that client", REPLY6, None, XDP_DROP, Reason.DROP_DECAP_NO_FLOW, flow=False
    ),
    decap6(
        "the flow of another client port",
        reply6(dport=CLIENT_PORT + 1),
        None,
        XDP_DROP,
        Reason.DROP_DECAP_NO_FLOW,
        with_flow6(NEAR),
        flow=False,
    ),
    decap6(
        "from a transceiver other than the flow's",
        REPLY6,
        None,
        XDP_DROP,
        Reason.DROP_DECAP_WRONG_TXR,
        reply_flow6(REPLY6, ON_CLIENT_LINK),
        flow=False,
    ),
    decap6(
        "stranger: nobody registered there",
        REPLY6,
        None,
        XDP_DROP,
        Reason.DROP_TUNNEL_STRANGER,
        frame=tunnel_frame(REPLY6, src="198.19.1.99"),
    ),
    decap6(
        "stranger, no flow",
        REPLY6,
        None,
        XDP_DROP,
        Reason.DROP_TUNNEL_STRANGER,
        flow=False,
        frame=tunnel_frame(REPLY6, sport=NEAR.port + 1),
    ),
    decap6(
        "foreign source: the inner source is no VIP6",
        reply6(src=OTHER6),
        None,
        XDP_DROP,
        Reason.DROP_TUNNEL_FOREIGN_SRC,
        flow=False,
    ),
    decap6(
        "foreign source: an IPv4 VIP's port on another address",
        reply6(sport=3479),
        None,
        XDP_DROP,
        Reason.DROP_TUNNEL_FOREIGN_SRC,
        flow=False,
    ),
    decap6(
        "foreign source: port 0 of the VIP6 (its address entry)",
        reply6(sport=0),
        None,
        XDP_DROP,
        Reason.DROP_TUNNEL_FOREIGN_SRC,
        flow=False,
    ),
    decap6("hop limit 1", reply6(hops=1), None, XDP_DROP, Reason.DROP_TTL_EXPIRED),
    decap6("hop limit 0", reply6(hops=0), None, XDP_DROP, Reason.DROP_TTL_EXPIRED),
    decap6(
        "on a link without the tunnel role",
        REPLY6,
        None,
        XDP_DROP,
        Reason.DROP_TUNNEL_WRONG_LINK,
        ingress=CLIENT_LINK.name,
    ),
    *(
        decap6(f"to {addr}", reply6(addr), None, XDP_DROP, reason, flow=False)
        for addr, reason in BAD_DESTINATIONS.items()
    ),
    *(
        decap6(
            f"bad inner: {name}", inner, None, XDP_DROP, Reason.DROP_TUNNEL_BAD_INNER, flow=False
        )
        for name, inner in _bad_inner().items()
    ),
)
def test_ipv6_decap(relay: Relay, case: Case) -> None:
    check(relay, case)


def test_round_trip_through_both_directions(relay: Relay) -> None:
    """A call's first packet creates the IPv6 flow, and the transceiver's answer goes back."""
    assert relay.run(STUN6).reason == Reason.FWD_STUN_NEW
    out = relay.run(tunnel_frame(REPLY6), ingress=TXR_LINK.name)
    assert (out.action, out.reason) == (XDP_REDIRECT, Reason.FWD_DECAP)
    assert out.data == decapsulated(tunnel_frame(REPLY6))
    assert out.data[14 + 7] == 63 and out.data[12:14] == ETH6


def test_ipv4_vip_is_not_an_ipv6_vip(relay: Relay) -> None:
    """The families' VIP maps are apart: an IPv6 packet to the IPv4 VIP's address mapped, or an
    IPv4 one to a VIP6 port, is not ours."""
    assert relay.run(client_frame6(RTP, vip="::ffff:" + VIP)).reason == Reason.PASS_NOT_OURS
    relay.set_flow(NEAR)
    assert relay.run(client_frame(RTP)).reason == Reason.FWD_FLOW  # IPv4 still works
