"""The one shared UDP socket: finds each datagram's call, and nothing more.

Like pion's UDP mux, it only demultiplexes; the call's ICE agent (transceiver/ice.py) parses,
authenticates and answers. A datagram arrives either from a relay (first byte 0x45, or 0x60..0x6F
for an IPv6 client's packet: the tunnel layer, transceiver/tunnel.py, takes it only from a known
relay and unwraps it) or straight from a client, and then:

1. a path some call has bound (tables by client address, and by tunnel path key) takes it:
   DTLS/SRTP/SRTCP go to the route (paths.Route: the call's fast path or aiortc), STUN to the
   route's agent;
2. otherwise STUN is routed by the server ufrag in USERNAME (`wire.stun.routing_ufrag`, the
   same cheap parse the relay does: RFC 7983 first byte, cookie, USERNAME prefix) to that call's
   agent, through a new Route for the path; a response (no USERNAME) by its transaction id to
   the agent whose return-routability check it answers (`probes`). The mux binds the route once
   the agent has verified the path (ice.py), never on a datagram that merely looks right;
3. anything else is a counted drop (transceiver/drops.py). A drop never raises and never
   touches another call.

Replies never come back through here: a call's agent sends on its selected Route, which holds
what that needs (the client address, or the reply header and relay of a tunneled path). The
relay of a tunneled route changes only on a packet of the call that authenticated (STUN
integrity, SRTP/SRTCP under the call's keys): paths.Route.authenticated().
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from transceiver import defaults
from transceiver.drops import BAD_STUN, NO_ROUTE, NO_USERNAME, NOT_WEBRTC, UNKNOWN_UFRAG
from transceiver.ice import AUTHENTICATED, IGNORED, OTHER_CALL, PROBING, IceLiteAgent
from transceiver.paths import Addr, DirectRoute, Path, Route
from transceiver.tunnel import IS_TUNNEL, TunnelLayer
from wire import stun as wstun

log = logging.getLogger(__name__)

RECV_MAX = 65535  # any UDP datagram
# RFC 7983 first bytes that go to a bound call: DTLS (20..63) and SRTP/SRTCP (128..191).
_IS_MEDIA = tuple(20 <= b <= 63 or 128 <= b <= 191 for b in range(256))
# Why wire.stun.routing_ufrag() found no ufrag, as our drop reasons.
_NO_UFRAG_DROPS = {
    wstun.NO_USERNAME: NO_USERNAME,
    wstun.BAD_UFRAG: UNKNOWN_UFRAG,  # not '<24 chars>:...': no ufrag we ever minted
}


class MuxStats(Protocol):
    def rx(self, nbytes: int) -> None: ...
    def tx(self, nbytes: int) -> None: ...
    def drop(self, reason: str) -> None: ...


class SocketMux(asyncio.DatagramProtocol):
    def __init__(
        self,
        stats: MuxStats | None = None,
        *,
        vips: Iterable[Addr] = (),
        relay_tunnel_port: int = defaults.RELAY_TUNNEL_PORT,
        relays: Iterable[str] = (),
    ) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        # The transport's own (non-blocking) socket, when the owner hands it over: read
        # directly to drain queued datagrams (see datagram_received).
        self.sock: socket.socket | None = None
        self._stats = stats
        self.drops: Counter[str] = Counter()
        self.tunnel = TunnelLayer(
            vips=vips,
            drop=self.drop,
            sendto=self.sendto,
            relay_tunnel_port=relay_tunnel_port,
            relays=relays,
        )
        # Transaction ids of the agents' return-routability checks (ice.py), for their answers.
        self.probes: dict[bytes, IceLiteAgent] = {}
        # One table per key kind: calls by server ufrag, bound direct paths by client address,
        # bound tunneled paths by their raw inner addresses and ports (wire.encap.path_key).
        self._agents: dict[str, IceLiteAgent] = {}
        self._direct: dict[Addr, Route] = {}
        self._tunneled: dict[bytes, Route] = {}

    # --- calls and their routes --------------------------------------------------------------

    def register(self, agent: IceLiteAgent) -> None:
        self._agents[agent.local_username] = agent

    def rekey(self, agent: IceLiteAgent) -> None:
        """After an ICE restart: first packets under the agent's new ufrag find it, and those
        under the old one still do until the agent retires it (retire()). Bound paths stay
        bound."""
        self._agents[agent.local_username] = agent

    def retire(self, agent: IceLiteAgent, ufrag: str) -> None:
        """The agent's session before a restart is over: `ufrag` finds nothing from now on
        (counted `unknown_ufrag`). The agent's on_retire."""
        if self._agents.get(ufrag) is agent:
            del self._agents[ufrag]

    def unregister(self, agent: IceLiteAgent) -> None:
        for ufrag in agent.ufrags:
            self.retire(agent, ufrag)
        for route in agent.routes:
            table = self._table(route)
            if table.get(route.key) is route:  # not rebound to another call since
                del table[route.key]

    def _table(self, route: Route) -> dict[Any, Route]:
        return self._direct if route.path.vip is None else self._tunneled

    def _bind(self, route: Route) -> None:
        table = self._table(route)
        if table.get(route.key) is not route:
            table[route.key] = route
            if route not in route.agent.routes:
                route.agent.routes.append(route)

    def bound_routes(self) -> list[Route]:
        return [*self._direct.values(), *self._tunneled.values()]

    def agent_for(self, ufrag: str) -> IceLiteAgent | None:
        """The call a first packet under `ufrag` would go to."""
        return self._agents.get(ufrag)

    def registered(self) -> list[IceLiteAgent]:
        """Every call, once (a call just restarted has two ufrags)."""
        return list(dict.fromkeys(self._agents.values()))

    def paths_of(self, agent: IceLiteAgent) -> list[Path]:
        """The paths currently bound to `agent`."""
        return [r.path for r in agent.routes if self._table(r).get(r.key) is r]

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
        for _ in range(defaults.DRAIN_MAX):
            try:
                data, addr = sock.recvfrom(RECV_MAX)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.error_received(exc)
                return
            self._received(data, addr)

    # --- inbound -----------------------------------------------------------------------------

    def drop(self, reason: str) -> None:
        self.drops[reason] += 1
        if self._stats is not None:
            self._stats.drop(reason)

    def _received(self, data: bytes, addr: Addr) -> None:
        if self._stats is not None:
            self._stats.rx(len(data))
        try:
            if not data:
                self.drop(NOT_WEBRTC)
            elif IS_TUNNEL[data[0]]:
                self._tunnel_received(data, addr[0])
            else:
                route = self._direct.get(addr)
                if route is not None and _IS_MEDIA[data[0]]:
                    route.received(data)  # the hot path
                elif data[0] < 4:
                    self._stun_received(
                        data, route, lambda agent: DirectRoute(addr, agent, self.sendto), None
                    )
                else:
                    self.drop(NO_ROUTE if _IS_MEDIA[data[0]] else NOT_WEBRTC)
        except Exception:  # a bug must cost one datagram, never the socket
            log.exception("datagram from %s dropped", addr)
            self.drop(NOT_WEBRTC)

    def _tunnel_received(self, data: bytes, relay: str) -> None:
        opened = self.tunnel.unwrap(data, relay)
        if opened is None:
            return
        key, payload = opened
        route = self._tunneled.get(key)
        if route is not None:
            if payload and _IS_MEDIA[payload[0]]:
                route.received(payload, relay)  # the hot path
                return
            path = route.path
        else:
            path = self.tunnel.path_of(key)
            if path is None:  # not to one of our VIPs (counted)
                return
        if not payload:
            self.drop(NOT_WEBRTC)
        elif payload[0] < 4:
            self._stun_received(
                payload, route, lambda agent: self.tunnel.route(path, key, agent, relay), relay
            )
        else:
            self.drop(NO_ROUTE if _IS_MEDIA[payload[0]] else NOT_WEBRTC)

    def _stun_received(
        self,
        data: bytes,
        route: Route | None,
        new_route: Callable[[IceLiteAgent], Route],
        relay: str | None,
    ) -> None:
        """STUN on a bound path goes to its agent; else, or if it is another call's, by ufrag
        (a request) or by transaction id (a response to an agent's check)."""
        if route is not None:
            result = route.agent.stun_received(data, route, relay)
            if result != OTHER_CALL:
                self._settle(result, route)
                return
        agent = self.probes.get(data[8:20]) if data[0] == 1 else None  # a response: 0x01..
        if agent is None:
            try:
                ufrag = wstun.routing_ufrag(data)
            except wstun.StunError as exc:
                self.drop(_NO_UFRAG_DROPS.get(exc.reason, BAD_STUN))
                return
            agent = self._agents.get(ufrag)
            if agent is None:
                self.drop(UNKNOWN_UFRAG)
                return
        fresh = new_route(agent)
        self._settle(agent.stun_received(data, fresh, relay), fresh)

    def _settle(self, result: str, route: Route) -> None:
        if result == AUTHENTICATED:
            self._bind(route)
        elif result not in (PROBING, IGNORED, OTHER_CALL):
            self.drop(result)

    # --- outbound: every Route sends through here --------------------------------------------

    def sendto(self, packet: bytes, dest: Addr) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.sendto(packet, dest)
        if self._stats is not None:
            self._stats.tx(len(packet))
