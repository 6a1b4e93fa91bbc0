"""How a call's packets reach the transceiver (a Path) and how its replies leave (a Route)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transceiver.ice import IceLiteAgent

Addr = tuple[str, int]
SendTo = Callable[[bytes, Addr], None]  # the shared socket's sendto, counted


@dataclass(frozen=True)
class Path:
    """One client transport address as this transceiver sees it.

    `vip` is None for direct datagrams; for tunneled ones it is the relay VIP the client sent to,
    because the same client address:port may talk to two VIPs (two different calls).
    """

    client: Addr
    vip: Addr | None = None

    def __str__(self) -> str:
        c = f"{self.client[0]}:{self.client[1]}"
        return c if self.vip is None else f"{c} via {self.vip[0]}:{self.vip[1]}"


class Route:
    """One path to one call's ICE agent, with everything a datagram on it needs both ways.

    The mux makes one for a Binding request it hands to an agent (which answers through it)
    and binds it, i.e. finds later datagrams of the path by `key`, once a check on it
    authenticates. Subclasses know how replies leave: directly or through the tunnel.
    """

    __slots__ = ("agent", "key", "path", "relay")

    def __init__(
        self, path: Path, key: Addr | bytes, agent: IceLiteAgent, relay: str | None = None
    ) -> None:
        self.path = path
        self.key = key  # what the mux finds it by: client address, or the tunnel path key
        self.agent = agent
        self.relay = relay  # tunneled: the relay that delivered the path's latest datagram

    def received(self, data: bytes) -> None:
        """DTLS, SRTP or SRTCP on this bound path (RFC 7983 first byte 20..63 or 128..191).

        RTP goes to the call's Opus fast path when it has one; RTCP (RFC 5761 §4: second byte
        192..223) and DTLS always to aiortc, through the agent.
        """
        agent = self.agent
        sink = agent.rtp_sink
        if sink is not None and data[0] >= 128 and len(data) > 1 and not 192 <= data[1] <= 223:
            sink(data)
        else:
            agent.deliver(data)

    def send(self, data: bytes) -> None:
        raise NotImplementedError


class DirectRoute(Route):
    """A path straight from the client: replies go back to its address."""

    __slots__ = ("_sendto",)

    def __init__(self, client: Addr, agent: IceLiteAgent, sendto: SendTo) -> None:
        super().__init__(Path(client=client), client, agent)
        self._sendto = sendto

    def send(self, data: bytes) -> None:
        self._sendto(data, self.path.client)
