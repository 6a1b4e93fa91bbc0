"""How a call's packets reach the transceiver: directly, or tunneled through a relay VIP."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

Addr = tuple[str, int]


@dataclass(frozen=True)
class Path:
    """One client transport address as this transceiver sees it.

    `vip` is None for direct datagrams; for tunneled ones it is the relay VIP the client sent to,
    because the same client address:port may talk to two VIPs (two different calls).
    """

    client: Addr
    vip: Addr | None = None

    @property
    def tunneled(self) -> bool:
        return self.vip is not None

    def __str__(self) -> str:
        c = f"{self.client[0]}:{self.client[1]}"
        return c if self.vip is None else f"{c} via {self.vip[0]}:{self.vip[1]}"


class PathSender(Protocol):
    """What an ICE-lite connection needs from the socket mux to send a datagram on a path."""

    def send_on_path(self, path: Path, data: bytes) -> None: ...
