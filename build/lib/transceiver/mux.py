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
import socket
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from aioice import stun as aiostun

from transceiver.icelite import IceLiteConnection, binding_error
from transceiver.paths import Addr, Path
from transceiver.tunnel import PathHeader, inbound_key, path_key

log = logging.getLogger(__name__)

STUN_COOKIE = 0x2112A442
TUNNEL_FIRST_BYTE = 0x45
DEFAULT_RELAY_TUNNEL_PORT = 6080
DRAIN_MAX = 64  # datagrams read per readiness event beyond the one asyncio hands us
RECV_MAX = 65535  # any UDP datagram

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
# RFC 7983 first bytes that go to a bound call: DTLS (20..63) and SRTP/SRTCP (128..191).
_IS_MEDIA = tuple(20 <= b <= 63 or 128 <= b <= 191 for b in range(256))
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
    header: PathHeader | None = None  # tunneled paths: the reply header, made once


class SocketMux(asyncio.DatagramProtocol):
    def __init__(
        self,
        stats: MuxStats | None = None,
        *,
        vips: Iterable[Addr] = (),
        relay_tunnel_port: int = DEFAULT_RELAY_TUNNEL_PORT,
    ) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        # The transport's own (non-blocking) socket, when the owner hands it over: read
        # directly to drain queued datagrams (see datagram_received).
        self.sock: socket.socket | None = None
        self._stats = stats
        self._vips = set(vips)
        self.relay_tunnel_port = relay_tunnel_port
        self._by_ufrag: dict[str, IceLiteConnection] = {}
        self._routes: dict[Path, _Route] = {}
        # The same routes by what a datagram carries, for the hot path (no Path, no parse):
        # tunneled by the inner header's raw addresses/ports, direct by the source address.
        self._by_key: dict[bytes, _Route] = {}
        self._direct: dict[Addr, _Route] = {}
        self.drops: Counter[str] = Counter()

    # --- registration ------------------------------------------------------------------------

    def add(self, conn: IceLiteConnection) -> None:
        self._by_ufrag[conn.local_username] = conn

    def remove(self, conn: IceLiteConnection) -> None:
        if self._by_ufrag.get(conn.local_username) is conn:
            del self._by_ufrag[conn.local_username]
        for path in [p for p, r in self._routes.items() if r.conn is conn]:
            self._unbind(path)

    def _bind(self, path: Path, conn: IceLiteConnection, relay: str | None) -> _Route:
        if path.vip is None:
            route = self._direct[path.client] = _Route(conn=conn, relay=relay)
        else:
            route = _Route(conn=conn, relay=relay, header=PathHeader(path.vip, path.client))
            self._by_key[path_key(path.client, path.vip)] = route
        self._routes[path] = route
        return route

    def _unbind(self, path: Path) -> None:
        del self._routes[path]
        if path.vip is None:
            self._direct.pop(path.client, None)
        else:
            self._by_key.pop(path_key(path.client, path.vip), None)

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
        self._received(data, addr)
        # asyncio reads one datagram per readiness event; under load many are queued, and
        # reading them here saves an event-loop pass per datagram and lets the app tasks they
        # wake run back to back. Bounded, so timers and HTTP still get their turn.
        sock = self.sock
        if sock is None:
            return
        for _ in range(DRAIN_MAX):
            try:
                data, addr = sock.recvfrom(RECV_MAX)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.error_received(exc)
                return
            self._received(data, addr)

    def _received(self, data: bytes, addr: Addr) -> None:
        if self._stats is not None:
            self._stats.rx(len(data))
        try:
            if not data:
                self._drop(NOT_WEBRTC)
            elif data[0] == TUNNEL_FIRST_BYTE:
                # Hot path: DTLS/SRTP on a bound tunneled path, found by its raw inner header.
                key = inbound_key(data)
                route = self._by_key.get(key) if key is not None else None
                if route is not None and len(data) > 28 and _IS_MEDIA[data[28]]:
                    route.relay = addr[0]
                    self._to_call(route, data[28:])
                else:
                    self._tunnel_received(data, addr)
            else:
                route = self._direct.get(addr)
                if route is not None and _IS_MEDIA[data[0]]:
                    self._to_call(route, data)
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
            self._to_call(route, data)
        else:
            self._drop(NOT_WEBRTC)

    def _to_call(self, route: _Route, data: bytes) -> None:
        """DTLS or SRTP/SRTCP on a bound path: SRTP to the call's fast path if it has one."""
        conn = route.conn
        sink = conn.rtp_sink
        # RFC 5761 §4: a second byte of 192..223 is RTCP, which stays with aiortc.
        if sink is not None and data[0] >= 128 and len(data) > 1 and not 192 <= data[1] <= 223:
            sink(data)
        else:
            conn.handle_data(data)

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
            route = self._bind(path, conn, relay)
        elif relay is not None:
            route.relay = relay
        self._send(path, relay, conn.handle_check(msg, path))

    # --- outbound ----------------------------------------------------------------------------

    def send_on_path(self, path: Path, data: bytes) -> None:
        route = self._routes.get(path)
        if route is None:
            self._send(path, None, data)
        else:
            self._send(path, route.relay, data, route.header)

    def _send(
        self, path: Path, relay: str | None, data: bytes, header: PathHeader | None = None
    ) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        if path.vip is None:
            packet, dest = data, path.client
        else:
            if relay is None:
                return  # tunneled path whose relay we never saw: nowhere to send
            if header is None:  # replies before the path is bound (STUN errors)
                header = PathHeader(path.vip, path.client)
            packet = header.wrap(data)
            dest = (relay, self.relay_tunnel_port)
        self.transport.sendto(packet, dest)
        if self._stats is not None:
            self._stats.tx(len(packet))
