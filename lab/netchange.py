"""A client whose network changes mid-call, in an EdgeLab, and what tells the tests about it.

    move_client(lab, "198.18.1.2", "198.18.1.20")   # new address on the client's link, old gone
    with DtlsRecords(lab) as dtls: ... dtls.handshake()  # DTLS handshake records, both ways
    txr_metrics(lab, 0)["txr_ice_restarts_total"]      # a transceiver's /metrics, parsed

A network change is what a phone does going from Wi-Fi to cellular: a new address appears and
the old one is gone, so datagrams to the old address die at the client (silently: the address
is no longer local) and sockets bound to it send nothing that can be answered. The new address
is on the same link and subnet as the old one, so routers and relays need no new routes.

DtlsRecords counts, with nftables counters in the client namespace, the DTLS handshake records
(content type 22, RFC 7983's first byte) the client sends to and receives from the VIP: an ICE
restart that keeps the DTLS association adds none, a new handshake adds several.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
from types import TracebackType
from typing import Self

from lab import netns
from lab.edge import EdgeLab

DTLS_HANDSHAKE = 22  # the first byte of a DTLS handshake record
# A lab client's new addresses: on the client's link (198.18.1.0/24), away from CLIENT_ADDRS.
MOVED_BASE = 20


def moved_addr(n: int) -> str:
    """The client's address after its n-th network change (n >= 0)."""
    if not 0 <= n < 200:
        raise ValueError(f"network change {n}: the lab has addresses for 0..199")
    return f"198.18.1.{MOVED_BASE + n}"


def client_addrs(lab: EdgeLab) -> list[str]:
    """The IPv4 addresses on the client's link now."""
    out = lab.ip(lab.client_ns, "-4", "-o", "addr", "show", "dev", "eth0")
    return re.findall(r"inet (\d+\.\d+\.\d+\.\d+)/", out)


def move_client(lab: EdgeLab, old: list[str] | str, new: str) -> float:
    """The client's network changes: `new` appears on its link, then `old` (one address or
    several) is removed; returns time.monotonic() just before the removal (the old path's
    end). The new address comes first so the subnet's route and the default route never go
    away; promote_secondaries keeps the other addresses when the primary goes (without it the
    kernel deletes every secondary address with the primary)."""
    olds = [old] if isinstance(old, str) else list(old)
    netns.sysctl(lab.client_ns, "net.ipv4.conf.eth0.promote_secondaries", "1")
    netns.add_addr(lab.client_ns, "eth0", f"{new}/24")
    # As for the lab's own client addresses: no packet of the call waits on ARP at the router.
    netns.add_neigh(lab.router_ns, "cr", new, netns.mac(lab.client_ns, "eth0"))
    gone = time.monotonic()
    for a in olds:
        lab.ip(lab.client_ns, "addr", "del", f"{a}/24", "dev", "eth0")
    left = client_addrs(lab)
    if new not in left or any(a in left for a in olds):
        raise netns.NetnsError(f"client addresses after the move: {left}, not {new} alone")
    return gone


class DtlsRecords:
    """nftables counters of DTLS handshake records between the client and the VIP, in the
    client namespace (the table goes with the namespace; `close` removes it earlier)."""

    def __init__(self, lab: EdgeLab) -> None:
        self.lab = lab
        # nftables tables live in the namespace: every lab's client has its own, no collision.
        self.table = "edgelab_dtls"

    def __enter__(self) -> Self:
        vip, port = self.lab.vip, self.lab.vip_port
        # @th,64,8: the first byte after the 8-byte UDP header (the record's content type).
        rules = f"""
table inet {self.table} {{
  counter hs_out {{ }}
  counter hs_in {{ }}
  chain out {{
    type filter hook output priority 0; policy accept;
    ip daddr {vip} udp dport {port} @th,64,8 {DTLS_HANDSHAKE} counter name hs_out
  }}
  chain in {{
    type filter hook input priority 0; policy accept;
    ip saddr {vip} udp sport {port} @th,64,8 {DTLS_HANDSHAKE} counter name hs_in
  }}
}}
"""
        path = self.lab.tmpdir / f"{self.table}.nft"
        path.write_text(rules)
        netns.run(self.lab.client_ns, ["nft", "-f", str(path)])
        return self

    def handshake(self) -> tuple[int, int]:
        """(records sent to the VIP, records received from it) so far."""
        out = netns.run(self.lab.client_ns, ["nft", "-j", "list", "counters", "table", "inet",
                                             self.table]).stdout  # fmt: skip
        found: dict[str, int] = {}
        for item in json.loads(out)["nftables"]:
            c = item.get("counter")
            if c and "name" in c:
                found[c["name"]] = int(c["packets"])
        return found["hs_out"], found["hs_in"]

    def close(self) -> None:
        netns.run(self.lab.client_ns, ["nft", "delete", "table", "inet", self.table], check=False)

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


_SAMPLE = re.compile(r"^([a-z_]+)(\{[^}]*\})? (\S+)$", re.M)


def txr_metrics(lab: EdgeLab, index: int) -> dict[str, float]:
    """A transceiver's /metrics (unlabelled samples, and labelled ones as name{labels}), read
    from inside the client namespace as any client would."""
    url = f"{lab.txrs[index].url}/metrics"

    def fetch() -> str:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return str(resp.read().decode())

    text = netns.call_in(lab.client_ns, fetch)
    return {m[1] + (m[2] or ""): float(m[3]) for m in _SAMPLE.finditer(text)}
