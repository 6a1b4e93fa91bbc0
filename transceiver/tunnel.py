"""The relay tunnel as a layer under the socket mux (docs/wire-format.md §3).

Only relays this transceiver knows may deliver (`relays`: the registry's relay entries and/or a
configured list, kept in step by transceiver/relays.py); a tunnel datagram (first byte 0x45 or
0x6_) from any other source is the counted drop `tunnel_unknown_relay`, before any of it is
read. A relay delivers a client's datagram as a whole IPv4/UDP or IPv6/UDP packet (client:port
-> VIP:port; the first nibble, 4 or 6, says which) inside a UDP datagram from the relay; replies
go back the same way, VIP:port -> client:port, in the client's family, to the relay's tunnel
port. This layer turns a tunnel datagram into (path key, inner payload) or a counted drop, says
which Path a key names (checking the VIP), and makes the Route that wraps a path's replies. The
header bytes themselves are wire.encap's (one home, shared with the relays): `inbound_key()`
reads a plain inner header without parsing it, `PathHeader` builds a path's reply headers with
everything but lengths and checksums made once.

Hot path: the mux looks the key up among bound paths first; only a key no call has bound goes
through `path_of()`. A bound key's VIP was checked when it was bound, so it is not re-checked.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable

from transceiver import defaults
from transceiver.drops import TUNNEL_BAD_INNER, TUNNEL_FOREIGN_VIP, TUNNEL_UNKNOWN_RELAY
from transceiver.paths import Addr, CallAgent, Path, Route, SendTo
from wire import encap

TUNNEL_FIRST_BYTE = 0x45  # IPv4, IHL 5: RFC 7983 leaves 64..79 to TURN channels, not WebRTC
# First bytes of a tunnel datagram: IPv4 without options, or IPv6 (version 6 and the top nibble
# of the traffic class: 0x60..0x6F, which RFC 7983 leaves unassigned, so no direct STUN, DTLS
# or RTP datagram starts with it).
IS_TUNNEL = tuple(b == TUNNEL_FIRST_BYTE or b >> 4 == 6 for b in range(256))
_KEY6_LEN = 36  # wire.encap.path_key of an IPv6 path (12 for IPv4)


class TunnelRoute(Route):
    """A path through a relay: replies are wrapped and sent to the relay of the latest
    authenticated packet (paths.Route.authenticated)."""

    __slots__ = ("_header", "_port", "_sendto")

    def __init__(
        self,
        path: Path,
        key: bytes,
        agent: CallAgent,
        relay: str,
        sendto: SendTo,
        relay_tunnel_port: int,
    ) -> None:
        super().__init__(path, key, agent, relay)
        assert path.vip is not None
        self._header = encap.PathHeader(path.vip, path.client)
        self._sendto = sendto
        self._port = relay_tunnel_port

    def send(self, data: bytes) -> None:
        self._sendto(self._header.wrap(data), (self.relay, self._port))  # type: ignore[arg-type]


class TunnelLayer:
    def __init__(
        self,
        *,
        vips: Iterable[Addr],
        drop: Callable[[str], None],
        sendto: SendTo,
        relay_tunnel_port: int = defaults.RELAY_TUNNEL_PORT,
        relays: Iterable[str] = (),
    ) -> None:
        # The tunnel source addresses we take datagrams from (replaced whole by set_relays).
        self.relays: frozenset[str] = frozenset(relays)
        # No VIPs (direct mode): clients never reach us through a relay, so nothing tunneled
        # is ours.
        self._vips = frozenset(vips)
        self._drop = drop
        self._sendto = sendto
        self.relay_tunnel_port = relay_tunnel_port

    def set_relays(self, relays: Iterable[str]) -> None:
        self.relays = frozenset(relays)

    def unwrap(self, data: bytes, relay: str) -> tuple[bytes, bytes] | None:
        """(path key, inner payload) of a tunnel datagram from `relay`; None: dropped, counted."""
        if relay not in self.relays:
            self._drop(TUNNEL_UNKNOWN_RELAY)
            return None
        key = encap.inbound_key(data)
        if key is not None:
            head = encap.IP6_HLEN + encap.UDP_HLEN if len(key) == _KEY6_LEN else encap.OUTER_LEN
            return key, data[head:]
        try:
            inner = encap.parse_udp(data)  # IPv4 or IPv6 as strictly; says what is wrong
        except encap.EncapError:
            self._drop(TUNNEL_BAD_INNER)
            return None
        return encap.path_key((inner.src, inner.sport), (inner.dst, inner.dport)), inner.payload

    def path_of(self, key: bytes) -> Path | None:
        """The path a key names if it came to one of our VIPs; None: dropped and counted."""
        n = 16 if len(key) == _KEY6_LEN else 4  # address bytes: client, VIP, then both ports
        client_ip, vip_ip = ipaddress.ip_address(key[:n]), ipaddress.ip_address(key[n : 2 * n])
        ports = key[2 * n :]
        vip = (str(vip_ip), int.from_bytes(ports[2:4], "big"))
        if vip not in self._vips:
            self._drop(TUNNEL_FOREIGN_VIP)
            return None
        return Path(client=(str(client_ip), int.from_bytes(ports[0:2], "big")), vip=vip)

    def route(self, path: Path, key: bytes, agent: CallAgent, relay: str) -> TunnelRoute:
        return TunnelRoute(path, key, agent, relay, self._sendto, self.relay_tunnel_port)
