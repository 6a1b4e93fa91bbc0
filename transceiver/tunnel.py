"""The relay tunnel as a layer under the socket mux (docs/wire-format.md §3).

Only relays this transceiver knows may deliver (`relays`: the registry's relay entries and/or a
configured list, kept in step by transceiver/relays.py); a 0x45 datagram from any other source
is the counted drop `tunnel_unknown_relay`, before any of it is read. A relay delivers a
client's datagram as a whole IPv4/UDP packet (client:port -> VIP:port) inside a UDP datagram
from the relay; replies go back the same way, VIP:port -> client:port,
to the relay's tunnel port. This layer turns a tunnel datagram into (path key, inner payload)
or a counted drop, says which Path a key names (checking the VIP), and makes the Route that
wraps a path's replies. The header bytes themselves are wire.encap's (one home, shared with the
relays): `inbound_key()` reads a plain inner header without parsing it, `PathHeader` builds a
path's reply headers with everything but lengths and checksums made once.

Hot path: the mux looks the key up among bound paths first; only a key no call has bound goes
through `path_of()`. A bound key's VIP was checked when it was bound, so it is not re-checked.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable

from transceiver import defaults
from transceiver.drops import TUNNEL_BAD_INNER, TUNNEL_FOREIGN_VIP, TUNNEL_UNKNOWN_RELAY
from transceiver.paths import Addr, CallAgent, Path, Route, SendTo
from wire import encap

TUNNEL_FIRST_BYTE = 0x45  # IPv4, IHL 5: RFC 7983 leaves 64..79 to TURN channels, not WebRTC


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
            return key, data[encap.OUTER_LEN :]
        try:
            inner = encap.parse_ipv4_udp(data)
        except encap.EncapError:
            self._drop(TUNNEL_BAD_INNER)
            return None
        return encap.path_key((inner.src, inner.sport), (inner.dst, inner.dport)), inner.payload

    def path_of(self, key: bytes) -> Path | None:
        """The path a key names if it came to one of our VIPs; None: dropped and counted."""
        vip = (socket.inet_ntoa(key[4:8]), int.from_bytes(key[10:12], "big"))
        if vip not in self._vips:
            self._drop(TUNNEL_FOREIGN_VIP)
            return None
        return Path(client=(socket.inet_ntoa(key[0:4]), int.from_bytes(key[8:10], "big")), vip=vip)

    def route(self, path: Path, key: bytes, agent: CallAgent, relay: str) -> TunnelRoute:
        return TunnelRoute(path, key, agent, relay, self._sendto, self.relay_tunnel_port)
