"""The one shared UDP socket: demultiplexes every call's datagrams and sends their replies.

Inbound datagrams are either tunnel datagrams from a relay (first byte 0x45: a whole IPv4/UDP
packet inside, docs/wire-format.md §3) or direct STUN/DTLS/RTP from a client (RFC 7983 first
byte ranges). The first packet of a call is a STUN Binding request routed by the server ufrag in
its USERNAME; once it authenticates, its path (client address, plus the VIP when tunneled) is
bound to the call and DTLS/SRTP on that path follows the binding. Anything else is a counted
drop: it never raises, and never touches another call.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from aioice import stun as aiostun

from transceiver.icelite import IceLiteConnection, binding_error
from transceiver.paths import Addr, Path

log = logging.getLogger(__name__)

STUN_COOKIE = 0x2112A442
TUNNEL_FIRST_BYTE = 0x45
DEFAULT_RELAY_TUNNEL_PORT = 6080

# Drop reasons (also the `reason` label of the drops metric).
NOT_WEBRTC = "not_webrtc"  # first byte in no RFC 7983 range we serve
BAD_STUN = "bad_stun"  # unparseable STUN, wrong cookie, not a Binding method
NO_USERNAME = "no_username"  # Binding request without USERNAME or MESSAGE-INTEGRITY
UNKNOWN_UFRAG = "unknown_ufrag"  # no live call has this server ufrag
BAD_INTEGRITY = "bad_integrity"  # MESSAGE-INTEGRITY does not verify: 401, no state change
ROLE_CONFLICT = "role_conflict"  # the client claims to be controlled: we are lite, 487
NO_ROUTE = "no_route"  # DTLS/RTP from a path no authenticated check bound
TUNNEL_BAD_INNER = "tunnel_bad_inner"  # tunnel payload is not a sane IPv4/UDP packet
TUNNEL_FOREIGN_VIP = "tunnel_foreign_vip"  # tunneled to a VIP we are not configured with
DROP_REASONS = (
    NOT_WEBRTC,
    BAD_STUN,
    NO_USERNAME,
    UNKNOWN_UFRAG,
    BAD_INTEGRITY,
    ROLE_CONFLICT,
    NO_ROUTE,
    TUNNEL_BAD_INNER,
    TUNNEL_FOREIGN_VIP,
)


class MuxStats(Protocol):
    def rx(self, nbytes: int) -> None: ...
    def tx(self, nbytes: int) -> None: ...
    def drop(self, reason: str) -> None: ...


@dataclass
class _Route:
    conn: IceLiteConnection
    relay: str | None  # outer source address of the latest tunnel datagram on this path


class SocketMux(asyncio.DatagramProtocol):
    def __init__(
        self,
        stats: MuxStats | None = None,
        *,
        vips: Iterable[Addr] = (),
        relay_tunnel_port: int = DEFAULT_RELAY_TUNNEL_PORT,
    ) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self._stats = stats
        self._vips = set(vips)
        self.relay_tunnel_port = relay_tunnel_port
        self._by_ufrag: dict[str, IceLiteConnection] = {}
        self._routes: dict[Path, _Route] = {}
        self.drops: Counter[str] = Counter()

    # --- registration ------------------------------------------------------------------------

    def add(self, conn: IceLiteConnection) -> None:
        self._by_ufrag[conn.local_username] = conn

    def remove(self, conn: IceLiteConnection) -> None:
        if self._by_ufrag.get(conn.local_username) is conn:
            del self._by_ufrag[conn.local_username]
        for path in [p for p, r in self._routes.items() if r.conn is conn]:
            del self._routes[path]

    def paths_of(self, conn: IceLiteConnection) -> list[Path]:
        return [p for p, r in self._routes.items() if r.conn is conn]

    @property
    def local_addr(self) -> Addr:
        assert self.transport is not None
        return self.transport.get_extra_info("sockname")[:2]

    # --- asyncio.DatagramProtocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def error_received(self, exc: Exception) -> None:
        # ICMP errors (e.g. port unreachable from a vanished client) are not fatal to anyone.
        log.debug("socket error: %s", exc)

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        if self._stats is not None:
            self._stats.rx(len(data))
        try:
            if data[:1] == bytes([TUNNEL_FIRST_BYTE]):
                self._tunnel_received(data, addr)
            else:
                self._payload_received(data, Path(client=(addr[0], addr[1])), relay=None)
        except Exception:  # a bug must cost one datagram, never the socket
            log.exception("datagram from %s dropped", addr)
            self._drop(NOT_WEBRTC)

    # --- inbound -----------------------------------------------------------------------------

    def _drop(self, reason: str) -> None:
        self.drops[reason] += 1
        if self._stats is not None:
            self._stats.drop(reason)

    def _tunnel_received(self, data: bytes, addr: Addr) -> None:
        from wire import encap  # the wire package is written in parallel; only tunnels need it

        try:
            inner = encap.parse_ipv4_udp(data)
        except Exception:
            self._drop(TUNNEL_BAD_INNER)
            return
        vip = (inner.dst, inner.dport)
        if self._vips and vip not in self._vips:
            self._drop(TUNNEL_FOREIGN_VIP)
            return
        path = Path(client=(inner.src, inner.sport), vip=vip)
        self._payload_received(inner.payload, path, relay=addr[0])

    def _payload_received(self, data: bytes, path: Path, relay: str | None) -> None:
        if not data:
            self._drop(NOT_WEBRTC)
            return
        first = data[0]
        if first < 4:
            self._stun_received(data, path, relay)
        elif 20 <= first <= 63 or 128 <= first <= 191:
            route = self._routes.get(path)
            if route is None:
                self._drop(NO_ROUTE)
                return
            if relay is not None:
                route.relay = relay
            route.conn.handle_data(data)
        else:
            self._drop(NOT_WEBRTC)

    def _stun_received(self, data: bytes, path: Path, relay: str | None) -> None:
        try:
            if len(data) < 20 or int.from_bytes(data[4:8], "big") != STUN_COOKIE:
                raise ValueError("not STUN")
            msg = aiostun.parse_message(data)
        except Exception:
            self._drop(BAD_STUN)
            return
        if msg.message_method != aiostun.Method.BINDING:
            self._drop(BAD_STUN)
            return
        if msg.message_class != aiostun.Class.REQUEST:
            return  # indications (keepalives) and stray responses: a lite agent sends no checks
        username = msg.attributes.get("USERNAME")
        if not isinstance(username, str) or "MESSAGE-INTEGRITY" not in msg.attributes:
            self._drop(NO_USERNAME)
            self._send(path, relay, binding_error(msg, 400, "Bad Request"))
            return
        conn = self._by_ufrag.get(username.split(":", 1)[0])
        if conn is None or conn.closed:
            self._drop(UNKNOWN_UFRAG)
            return
        if not msg.check_message_integrity(conn.local_password.encode("utf8")):
            self._drop(BAD_INTEGRITY)
            self._send(path, relay, binding_error(msg, 401, "Unauthenticated"))
            return
        if "ICE-CONTROLLED" in msg.attributes:
            self._drop(ROLE_CONFLICT)
            self._send(path, relay, binding_error(msg, 487, "Role Conflict"))
            return
        route = self._routes.get(path)
        if route is None or route.conn is not conn:
            route = self._routes[path] = _Route(conn=conn, relay=relay)
        elif relay is not None:
            route.relay = relay
        self._send(path, relay, conn.handle_check(msg, path))

    # --- outbound ----------------------------------------------------------------------------

    def send_on_path(self, path: Path, data: bytes) -> None:
        route = self._routes.get(path)
        self._send(path, route.relay if route is not None else None, data)

    def _send(self, path: Path, relay: str | None, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        if path.vip is None:
            packet, dest = data, path.client
        else:
            if relay is None:
                return  # tunneled path whose relay we never saw: nowhere to send
            from wire import encap

            packet = encap.ipv4_udp(path.vip[0], path.vip[1], path.client[0], path.client[1], data)
            dest = (relay, self.relay_tunnel_port)
        self.transport.sendto(packet, dest)
        if self._stats is not None:
            self._stats.tx(len(packet))
