"""How a call's packets reach the transceiver (a Path) and how its replies leave (a Route).

This module knows the call only through the small `CallAgent` protocol below (what a Route
hands a datagram to), so it does not import transceiver/ice.py, which builds on it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from transceiver import defaults

Addr = tuple[str, int]
SendTo = Callable[[bytes, Addr], None]  # the shared socket's sendto, counted


class CallAgent(Protocol):
    """What a Route needs of its call (transceiver/ice.IceLiteAgent is the one implementation).

    `rtp_sink` is the Opus fast path's SRTP receiver: it answers whether the packet
    authenticated under the call's keys.
    """

    rtp_sink: Callable[[bytes], bool] | None

    def deliver(self, data: bytes, route: Route, relay: str | None) -> None: ...


@dataclass(frozen=True)
class Path:
    """One client transport address as this transceiver sees it.

    `vip` is None for direct datagrams; for tunneled ones it is the relay VIP the client sent to,
    because the same client address:port may talk to two VIPs (two different calls).
    """

    client: Addr
    vip: Addr | None = None

    def __str__(self) -> str:
        c = _text(self.client)
        return c if self.vip is None else f"{c} via {_text(self.vip)}"


def _text(addr: Addr) -> str:
    return f"[{addr[0]}]:{addr[1]}" if ":" in addr[0] else f"{addr[0]}:{addr[1]}"


class Route:
    """One path to one call's ICE agent, with everything a datagram on it needs both ways.

    The mux makes one for a Binding request it hands to an agent (which answers through it)
    and binds it, i.e. finds later datagrams of the path by `key`, once the agent has verified
    the path (ice.py: the client answered our own check sent there). Subclasses know how
    replies leave: directly or through the tunnel.

    Media leaves through `send_media()`, which spends a send credit refilled by what the path
    sent us that authenticated (x SEND_CREDIT_FACTOR), plus a floor of SEND_FLOOR_RATE bytes/s
    while the path was heard within SEND_FLOOR_WINDOW s: a path that went silent stops getting
    media within seconds, and nothing ever gets more than the call's own media.
    """

    __slots__ = ("_floor_at", "agent", "credit", "heard", "key", "path", "relay")

    def __init__(
        self, path: Path, key: Addr | bytes, agent: CallAgent, relay: str | None = None
    ) -> None:
        self.path = path
        self.key = key  # what the mux finds it by: client address, or the tunnel path key
        self.agent = agent
        # Tunneled: the relay replies go through; it changes only on an authenticated packet.
        self.relay = relay
        self.credit = 0  # bytes of media this path may still be sent (see send_media)
        self.heard = 0.0  # monotonic time of the path's latest authenticated packet
        self._floor_at = 0.0

    def received(self, data: bytes, relay: str | None = None) -> None:
        """DTLS, SRTP or SRTCP on this bound path (RFC 7983 first byte 20..63 or 128..191).

        RTP goes to the call's Opus fast path when it has one; RTCP (RFC 5761 §4: second byte
        192..223) and DTLS always to aiortc, through the agent. Only RTP that authenticates
        refills the credit and may move the reply relay (aiortc's SRTP: `authenticated()`).
        """
        agent = self.agent
        sink = agent.rtp_sink
        if sink is not None and data[0] >= 128 and len(data) > 1 and not 192 <= data[1] <= 223:
            if sink(data):
                self.authenticated(len(data), relay)
        else:
            agent.deliver(data, self, relay)

    def grant(self, credit: int) -> None:
        """The path was just verified: its starting credit; the floor accrues from now."""
        self.credit = credit
        self._floor_at = time.monotonic()

    def authenticated(self, nbytes: int, relay: str | None) -> None:
        """A packet of `nbytes` on this path verified under the call's keys (SRTP or STUN)."""
        credit = self.credit + nbytes * defaults.SEND_CREDIT_FACTOR
        self.credit = credit if credit < defaults.SEND_CREDIT_MAX else defaults.SEND_CREDIT_MAX
        self.heard = time.monotonic()
        if relay is not None:
            self.relay = relay  # replies follow the relay of the latest authenticated packet

    def send_media(self, data: bytes) -> bool:
        """Send DTLS/SRTP/SRTCP if the path's credit allows; False: refused (not sent)."""
        credit = self.credit - len(data)
        if credit < 0:
            now = time.monotonic()
            if now - self.heard < defaults.SEND_FLOOR_WINDOW:
                floor = int((now - self._floor_at) * defaults.SEND_FLOOR_RATE)
                credit = min(self.credit + floor, defaults.SEND_CREDIT_MAX) - len(data)
            self._floor_at = now
            if credit < 0:
                return False
        self.credit = credit
        self.send(data)
        return True

    def send(self, data: bytes) -> None:
        raise NotImplementedError


class DirectRoute(Route):
    """A path straight from the client: replies go back to its address."""

    __slots__ = ("_sendto",)

    def __init__(self, client: Addr, agent: CallAgent, sendto: SendTo) -> None:
        super().__init__(Path(client=client), client, agent)
        self._sendto = sendto

    def send(self, data: bytes) -> None:
        self._sendto(data, self.path.client)
