"""Client -> transceiver: flow hits, STUN routing, flow-map writes, and every FIB outcome."""

from __future__ import annotations

import struct
from dataclasses import replace

from control.reasons import Reason
from datapath.maps import CONFIG_F_SLOW_PATH
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
    VIA_NEAR,
    VIA_TX_TXR,
    VIA_TXR_GATEWAY,
    VIP,
    VIP_PORTS,
    XDP_DROP,
    XDP_PASS,
    XDP_REDIRECT,
    XDP_TX,
    Case,
    Relay,
    Txr,
    binding,
    cases,
    check,
    client_frame,
    configured,
    eth,
    tunnelled,
    with_flow,
    with_txr,
    without_txr,
)
from wire.encap import checksum, flow_entropy, ipv4_udp
from wire.stun import build_message

INNER = ipv4_udp(CLIENT, CLIENT_PORT, VIP, VIP_PORTS[0], RTP, tos=0xB8, ttl=57)
FLOW_HIT = Case(
    "flow hit: the whole packet, TOS and TTL included, tunnelled to the transceiver",
    eth(INNER),
    tunnelled(eth(INNER), NEAR),
    XDP_REDIRECT,  # in on cli0, out on txr0
    Reason.FWD_FLOW,
    setup=(with_flow(NEAR),),
)

STUN = client_frame(binding(NEAR))
STUN_NEW = Case(
    "STUN Binding request creates the flow",
    STUN,
    tunnelled(STUN, NEAR),
    XDP_REDIRECT,
    Reason.FWD_STUN_NEW,
    learns=NEAR,
)
STUN_AGAIN = client_frame(binding(NEAR, nonce=b"\x0azzz"))  # another session, same transceiver
STUN_KNOWN = Case(
    "STUN Binding request to the flow's transceiver leaves the flow alone",
    STUN_AGAIN,
    tunnelled(STUN_AGAIN, NEAR),
    XDP_REDIRECT,
    Reason.FWD_STUN_KNOWN,
    setup=(with_flow(NEAR, created_ns=5),),
)
STUN_ELSEWHERE = client_frame(binding(ON_CLIENT_LINK))
STUN_MOVE = Case(
    "STUN Binding request moves the flow to another transceiver",
    STUN_ELSEWHERE,
    tunnelled(STUN_ELSEWHERE, ON_CLIENT_LINK, VIA_TX_TXR),
    XDP_TX,
    Reason.FWD_STUN_NEW,
    setup=(with_flow(NEAR, created_ns=5),),
    learns=ON_CLIENT_LINK,
)

SUCCESS = build_message(0x0101, [(0x0020, b"\x00\x01\x02\x03")])  # Binding success response
INDICATION = build_message(0x0011, [])
ODD_LEN = bytearray(binding(NEAR))
ODD_LEN[3] |= 2  # header length not a multiple of 4: not STUN (RFC 8489)
OTHER_STUN = {
    "a Binding success response": SUCCESS,
    "a Binding indication": INDICATION,
    "a header length not a multiple of 4": bytes(ODD_LEN),
}

MOVED = Txr(NEAR.cluster, NEAR.id, ON_CLIENT_LINK.addr, 7000)  # NEAR's ids at a new address


def mtu_frame(size: int) -> bytes:
    """A client frame whose tunnelled packet is exactly size bytes (the frame - 14 + 28)."""
    frame = client_frame(bytes([0x80]) + bytes(size - 28 - 28 - 1))
    assert len(frame) - 14 + 28 == size
    return frame


SHORT = client_frame(b"\x80\x01")  # a 46-byte frame: a NIC pads it to 60
PADDED = SHORT + b"\xee" * (60 - len(SHORT))
OTHER_PORT = eth(ipv4_udp(CLIENT, CLIENT_PORT, VIP, 9999, RTP))


@cases(
    FLOW_HIT,
    Case(
        "flow hit: a transceiver on the ingress link is XDP_TX",
        client_frame(RTP),
        tunnelled(client_frame(RTP), ON_CLIENT_LINK, VIA_TX_TXR),
        XDP_TX,
        Reason.FWD_FLOW,
        setup=(with_flow(ON_CLIENT_LINK),),
    ),
    Case(
        "flow miss: a flow from another client port is not this one",
        client_frame(RTP),
        None,
        XDP_DROP,
        Reason.DROP_NO_FLOW,
        setup=(with_flow(NEAR, port=CLIENT_PORT + 1),),
    ),
    Case(
        "flow per VIP port: no flow on the first port",
        client_frame(RTP, vip_port=VIP_PORTS[0]),
        None,
        XDP_DROP,
        Reason.DROP_NO_FLOW,
        setup=(with_flow(NEAR, vip_port=VIP_PORTS[1]),),
    ),
    Case(
        "flow per VIP port: the flow on the second port",
        client_frame(RTP, vip_port=VIP_PORTS[1]),
        tunnelled(client_frame(RTP, vip_port=VIP_PORTS[1]), NEAR),
        XDP_REDIRECT,
        Reason.FWD_FLOW,
        setup=(with_flow(NEAR, vip_port=VIP_PORTS[1]),),
    ),
    Case(
        "empty payload without a flow",
        client_frame(b""),
        None,
        XDP_DROP,
        Reason.DROP_NO_FLOW,
    ),
    Case(
        "empty payload follows the flow",
        client_frame(b""),
        tunnelled(client_frame(b""), NEAR),
        XDP_REDIRECT,
        Reason.FWD_FLOW,
        setup=(with_flow(NEAR),),
    ),
    STUN_NEW,
    STUN_KNOWN,
    STUN_MOVE,
    *(
        Case(
            f"{name} without a flow",
            client_frame(payload),
            None,
            XDP_DROP,
            Reason.DROP_NO_FLOW,
        )
        for name, payload in OTHER_STUN.items()
    ),
    *(
        Case(
            f"{name} follows the flow",
            client_frame(payload),
            tunnelled(client_frame(payload), NEAR),
            XDP_REDIRECT,
            Reason.FWD_FLOW,
            setup=(with_flow(NEAR),),
        )
        for name, payload in OTHER_STUN.items()
    ),
    Case(
        "STUN to an unknown transceiver id learns nothing",
        client_frame(binding(Txr(NEAR.cluster, 999, NEAR.addr, NEAR.port))),
        None,
        XDP_DROP,
        Reason.DROP_UNKNOWN_TXR,
    ),
    Case(
        "STUN to a known id in a cluster this relay does not serve learns nothing",
        client_frame(binding(Txr(NEAR.cluster + 1, NEAR.id, NEAR.addr, NEAR.port))),
        None,
        XDP_DROP,
        Reason.DROP_UNKNOWN_CLUSTER,
    ),
    Case(
        "flow to a transceiver that left the map",
        client_frame(RTP),
        None,
        XDP_DROP,
        Reason.DROP_UNKNOWN_TXR,
        setup=(with_flow(NEAR), without_txr(NEAR)),
    ),
    Case(
        "a transceiver that moved keeps its flows",
        client_frame(RTP),
        tunnelled(client_frame(RTP), MOVED, VIA_TX_TXR),
        XDP_TX,
        Reason.FWD_FLOW,
        setup=(with_flow(NEAR), with_txr(MOVED)),
    ),
    Case(
        "unresolved neighbour: to the kernel encapsulated, our MAC kept",
        client_frame(RTP),
        tunnelled(client_frame(RTP), NO_NEIGH, via=None),
        XDP_PASS,
        Reason.PASS_FIB_NO_NEIGH,
        setup=(with_flow(NO_NEIGH),),
    ),
    Case(
        "no route to the transceiver",
        client_frame(RTP),
        tunnelled(client_frame(RTP), UNREACHABLE, via=None),  # refused after the tunnel header
        XDP_DROP,
        Reason.DROP_FIB,
        setup=(with_flow(UNREACHABLE),),
    ),
    Case(
        "outer packet of exactly the route MTU (600)",
        mtu_frame(600),
        tunnelled(mtu_frame(600), SMALL_MTU, VIA_TXR_GATEWAY),
        XDP_REDIRECT,
        Reason.FWD_FLOW,
        setup=(with_flow(SMALL_MTU),),
    ),
    Case(
        "outer packet one byte over the route MTU",
        mtu_frame(601),
        tunnelled(mtu_frame(601), SMALL_MTU, via=None),
        XDP_DROP,
        Reason.DROP_TOO_BIG,
        setup=(with_flow(SMALL_MTU),),
    ),
    Case(
        "Ethernet padding is cut, not tunnelled (bytes counted as received)",
        PADDED,
        tunnelled(SHORT, NEAR),
        XDP_REDIRECT,
        Reason.FWD_FLOW,
        setup=(with_flow(NEAR),),
    ),
    Case(
        "unconfigured relay drops VIP traffic",
        client_frame(RTP),
        None,
        XDP_DROP,
        Reason.DROP_NO_CONFIG,
        setup=(configured(None, 0), with_flow(NEAR)),
    ),
    Case(
        "unconfigured relay passes other traffic untouched",
        OTHER_PORT,
        None,
        XDP_PASS,
        Reason.PASS_NOT_OURS,
        setup=(configured(None, 0), with_flow(NEAR)),
    ),
    Case(
        "no flow with a controller listening: to its VIP socket",
        client_frame(RTP),
        None,
        XDP_PASS,
        Reason.PASS_SLOW_PATH,
        setup=(configured(TUNNEL_ADDR, TUNNEL_PORT, CONFIG_F_SLOW_PATH),),
    ),
    Case(
        "a flow with a controller listening is still forwarded",
        client_frame(RTP),
        tunnelled(client_frame(RTP), NEAR),
        XDP_REDIRECT,
        Reason.FWD_FLOW,
        setup=(configured(TUNNEL_ADDR, TUNNEL_PORT, CONFIG_F_SLOW_PATH), with_flow(NEAR)),
    ),
)
def test_client_packet(relay: Relay, case: Case) -> None:
    check(relay, case)


def test_encapsulation_field_by_field(relay: Relay) -> None:
    """The flow hit's bytes out, read against the spec (§3) rather than wire.encap."""
    data = check(relay, FLOW_HIT).data
    assert len(data) == len(FLOW_HIT.packet) + 28
    assert data[:14] == VIA_NEAR  # from txr0 to the transceiver's (permanent) neighbour entry
    outer_ip, outer_udp, rest = data[14:34], data[34:42], data[42:]
    ver, tos, total, ident, frag, ttl, proto, _csum = struct.unpack(">BBHHHBBH", outer_ip[:12])
    assert (ver, tos, total, ident, frag, ttl, proto) == (
        0x45,
        0xB8,
        28 + len(INNER),
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
    assert (dport, ulen, ucsum) == (NEAR.port, 8 + len(INNER), 0)
    assert rest[8] == INNER[8] - 1  # one hop: TTL one less...
    assert checksum(rest[:20]) == 0  # ...and the header checksum updated with it
    assert rest[:8] + rest[9:10] + rest[12:] == INNER[:8] + INNER[9:10] + INNER[12:]  # all else


def test_stun_new_then_known(relay: Relay) -> None:
    """The flow a Binding request created is the one the next request finds: not rewritten."""
    check(relay, STUN_NEW)
    check(relay, replace(STUN_KNOWN, setup=()))  # the flow is the one the program wrote


def test_media_follows_a_moved_flow(relay: Relay) -> None:
    check(relay, STUN_MOVE)
    media = client_frame(RTP)
    moved = tunnelled(media, ON_CLIENT_LINK, VIA_TX_TXR)
    check(relay, Case("media", media, moved, XDP_TX, Reason.FWD_FLOW))
