"""Exit reasons of the XDP relay: one counter slot each (docs/wire-format.md §5).

The Python mirror of the list in bpf/reasons.h; tests/bpf/test_bpf_reasons.py checks that the
numbers, names and kinds agree with the C list, the compiled program and the spec's table.
"""

from __future__ import annotations

import enum


class Kind(enum.Enum):
    """What the program does with a packet counted under a reason (bpf/reasons.h)."""

    FWD = "fwd"  # forwarded: XDP_TX or XDP_REDIRECT
    PASS = "pass"  # to the kernel: XDP_PASS
    DROP = "drop"  # XDP_DROP


class Reason(enum.IntEnum):
    PASS_NOT_IPV4 = 0
    PASS_NOT_OURS = 1
    FWD_FLOW = 2
    FWD_STUN_NEW = 3
    FWD_STUN_KNOWN = 4
    FWD_DECAP = 5
    DROP_TRUNCATED = 6
    DROP_IP_OPTIONS = 7
    DROP_FRAGMENT = 8
    DROP_BAD_UDP_LEN = 9
    DROP_NO_FLOW = 10
    DROP_BAD_COOKIE = 11
    DROP_NO_USERNAME = 12
    DROP_BAD_UFRAG = 13
    DROP_UNKNOWN_KEY = 14
    DROP_BAD_TAG = 15
    DROP_UNKNOWN_TXR = 16
    DROP_TUNNEL_STRANGER = 17
    DROP_TUNNEL_BAD_INNER = 18
    DROP_TUNNEL_FOREIGN_SRC = 19
    DROP_FIB = 20
    PASS_FIB_NO_NEIGH = 21
    DROP_TOO_BIG = 22
    DROP_ENCAP = 23
    DROP_NO_CONFIG = 24
    DROP_REDIRECT = 25
    PASS_SLOW_PATH = 26
    DROP_TUNNEL_WRONG_LINK = 27
    DROP_DECAP_NO_FLOW = 28
    DROP_DECAP_WRONG_TXR = 29
    DROP_DECAP_MULTICAST = 30
    DROP_DECAP_BROADCAST = 31
    DROP_DECAP_LOOPBACK = 32
    DROP_DECAP_RESERVED = 33
    DROP_DECAP_SELF = 34
    DROP_TTL_EXPIRED = 35
    DROP_BAD_IP_CSUM = 36
    DROP_FLOW_LIVE = 37
    DROP_UFRAG_FLOOD = 38
    DROP_UFRAG_EXPIRED = 39
    DROP_BAD_CLIENT_ADDR = 40
    DROP_IPV6_EXT_HEADERS = 41
    DROP_UNKNOWN_CLUSTER = 42

    @property
    def label(self) -> str:
        """The spec's spelling, e.g. "drop_bad_tag"."""
        return self.name.lower()

    @property
    def kind(self) -> Kind:
        """The kind its name starts with (the C list declares it; the tests check they agree)."""
        return Kind(self.label.split("_", 1)[0])


# What the program does with a packet counted under each reason (the spec's "verdict" column).
VERDICT: dict[Reason, str] = {
    Reason.PASS_NOT_IPV4: "PASS",
    Reason.PASS_NOT_OURS: "PASS (IPv4 not for a VIP nor the tunnel port)",
    Reason.FWD_FLOW: "encapsulated, flow-map hit",
    Reason.FWD_STUN_NEW: "encapsulated, STUN routed by ufrag, flow created or moved",
    Reason.FWD_STUN_KNOWN: "encapsulated, STUN routed by ufrag, flow already pointed there",
    Reason.FWD_DECAP: "decapsulated toward a client",
    Reason.DROP_TRUNCATED: "DROP",
    Reason.DROP_IP_OPTIONS: "DROP",
    Reason.DROP_FRAGMENT: "DROP",
    Reason.DROP_BAD_UDP_LEN: "DROP",
    Reason.DROP_NO_FLOW: "DROP: not a STUN Binding request, no flow",
    Reason.DROP_BAD_COOKIE: "DROP",
    Reason.DROP_NO_USERNAME: "DROP",
    Reason.DROP_BAD_UFRAG: "DROP",
    Reason.DROP_UNKNOWN_KEY: "DROP",
    Reason.DROP_BAD_TAG: "DROP",
    Reason.DROP_UNKNOWN_TXR: "DROP",
    Reason.DROP_TUNNEL_STRANGER: "DROP",
    Reason.DROP_TUNNEL_BAD_INNER: "DROP",
    Reason.DROP_TUNNEL_FOREIGN_SRC: "DROP",
    Reason.DROP_FIB: "DROP: no route",
    Reason.PASS_FIB_NO_NEIGH: "PASS: next hop not resolved yet, the kernel resolves it",
    Reason.DROP_TOO_BIG: "DROP",
    Reason.DROP_ENCAP: "DROP: adjust_head/adjust_tail failed",
    Reason.DROP_NO_CONFIG: "DROP: program attached but not configured",
    Reason.DROP_REDIRECT: "DROP",
    Reason.PASS_SLOW_PATH: "PASS: no flow, to the controller's slow path (config flag set)",
    Reason.DROP_TUNNEL_WRONG_LINK: "DROP: a tunnel datagram on a link without the tunnel role",
    Reason.DROP_DECAP_NO_FLOW: "DROP: a reply to a client without a flow for that VIP",
    Reason.DROP_DECAP_WRONG_TXR: "DROP: a reply from another transceiver than the flow's",
    Reason.DROP_DECAP_MULTICAST: "DROP: a reply to 224.0.0.0/4",
    Reason.DROP_DECAP_BROADCAST: "DROP: a reply to 255.255.255.255",
    Reason.DROP_DECAP_LOOPBACK: "DROP: a reply to 127.0.0.0/8",
    Reason.DROP_DECAP_RESERVED: "DROP: a reply to 0/8, 240/4 or 169.254/16",
    Reason.DROP_DECAP_SELF: "DROP: a reply to the tunnel address or its own VIP",
    Reason.DROP_TTL_EXPIRED: "DROP: TTL 0 or 1, either direction",
    Reason.DROP_BAD_IP_CSUM: "DROP: a client packet's IPv4 header checksum is wrong",
    Reason.DROP_FLOW_LIVE: "DROP: a Binding request would move a live flow",
    Reason.DROP_UFRAG_FLOOD: "DROP: the ufrag created its limit of flows in the window",
    Reason.DROP_UFRAG_EXPIRED: "DROP: the ufrag's epoch is older than its lifetime",
    Reason.DROP_BAD_CLIENT_ADDR: "DROP: a Binding request from an address no client has",
    Reason.DROP_IPV6_EXT_HEADERS: "DROP: an IPv6 packet of ours with an extension header",
    Reason.DROP_UNKNOWN_CLUSTER: "DROP: a Binding request whose ufrag names a cluster not served",
}
