"""A stand-in for the XDP relay in the transceiver tests: plain UDP sockets doing the tunnel of
wire-format §3 (no ufrag routing: one VIP, one transceiver, several relay addresses).

Client -> VIP socket: wrap as IPv4/UDP (src client, dst VIP; IPv6/UDP for an IPv6 VIP) and send
from the relay's tunnel socket (always IPv4) to the transceiver. Transceiver -> tunnel socket:
check the inner packet (checksums, source is our VIP) and emit its payload from the VIP socket to
the inner destination.
"""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from dataclasses import dataclass, field

from wire import encap

Addr = tuple[str, int]


class _Proto(asyncio.DatagramProtocol):
    def __init__(self, handler) -> None:  # type: ignore[no-untyped-def]
        self.handler = handler
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:  # type: ignore[no-untyped-def]
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        self.handler(data, addr)


@dataclass
class TunnelRelay:
    """One VIP and one or more tunnel sockets (one per relay address); `via` picks the uplink."""

    vip: Addr
    txr: Addr
    tunnels: dict[str, _Proto] = field(default_factory=dict)
    vip_proto: _Proto | None = None
    via: str = ""
    counts: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    # A NAT in front of the relay that rebound: client address -> the address it now appears
    # as (tests of a client changing network: `rebind()`).
    nat: dict[Addr, Addr] = field(default_factory=dict)
    paused: bool = False  # client -> transceiver datagrams are dropped (a silent uplink)

    @classmethod
    async def start(cls, relay_addrs: list[str], vip_host: str = "127.0.0.1"):
        """Bind the sockets; set `txr` to the transceiver's UDP address before traffic flows."""
        loop = asyncio.get_running_loop()
        relay = cls(vip=(vip_host, 0), txr=("0.0.0.0", 0))
        family = socket.AF_INET6 if ":" in vip_host else socket.AF_INET
        _, relay.vip_proto = await loop.create_datagram_endpoint(
            lambda: _Proto(relay._from_client), local_addr=(vip_host, 0), family=family
        )
        relay.vip = relay.vip_proto.transport.get_extra_info("sockname")[:2]
        # Every relay address shares one tunnel port, as the fleet-wide setting requires.
        port = 0
        for addr in relay_addrs:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((addr, port))
            port = sock.getsockname()[1]
            _, proto = await loop.create_datagram_endpoint(
                lambda a=addr: _Proto(lambda d, s, a=a: relay._from_txr(a, d, s)), sock=sock
            )
            relay.tunnels[addr] = proto
        relay.tunnel_port = port
        relay.via = relay_addrs[0]
        return relay

    @property
    def relays(self) -> list[str]:
        """Its relay addresses: what the transceiver must be told to take tunnel datagrams from."""
        return list(self.tunnels)

    def rebind(self, client: Addr, port: int) -> None:
        """From now on `client` appears as client-ip:`port` (as after a NAT rebinding)."""
        self.nat[client] = (client[0], port)

    def _from_client(self, data: bytes, addr: Addr) -> None:
        """What the relay does with a datagram to the VIP from `addr` (also a spoofed one)."""
        if self.paused:
            self.counts["held"] += 1
            return
        addr = self.nat.get(addr[:2], addr[:2])  # an IPv6 socket's address has 4 fields
        inner = encap.udp_packet(addr, self.vip, data)
        self.counts[f"up:{self.via}"] += 1
        self.tunnels[self.via].transport.sendto(inner, self.txr)

    def _from_txr(self, relay_addr: str, data: bytes, src: Addr) -> None:
        self.counts[f"down:{relay_addr}"] += 1
        try:
            if src != self.txr:
                raise ValueError(f"tunnel datagram from stranger {src}")
            d = encap.parse_udp(data, verify_checksums=True)
            if (d.src, d.sport) != self.vip:
                raise ValueError(f"inner source {d.src}:{d.sport} is not our VIP")
            head = 48 if encap.ip_version(data) == 6 else 28
            if len(data) != head + len(d.payload):
                raise ValueError("inner lengths disagree")
        except ValueError as exc:
            self.errors.append(str(exc))
            return
        dest = (d.dst, d.dport)
        for real, seen in self.nat.items():
            if seen == dest:
                dest = real
        self.vip_proto.transport.sendto(d.payload, dest)

    def close(self) -> None:
        if self.vip_proto is not None and self.vip_proto.transport is not None:
            self.vip_proto.transport.close()
        for proto in self.tunnels.values():
            if proto.transport is not None:
                proto.transport.close()
