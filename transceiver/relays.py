"""Which relays may send this transceiver tunnel datagrams: a configured list and the registry.

Relays register their tunnel source in Redis (`wire.registry.register_relay`, refreshed by
`relayctl run`); the registry agent (transceiver/registry.py) reads them on its beat and hands
them here. The set the tunnel layer checks is the union of the static list (`--relay`) and the
last set read from Redis. While Redis is unreachable the last known set stays: relays keep
forwarding without their controller for RELAY_TTL, and a transceiver that forgot them would
drop every running call. A relay that expired from the registry drops out at the next beat
that reads it.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Iterable

log = logging.getLogger(__name__)


def parse_relays(text: str) -> list[str]:
    """'IP[,IP...]' (commas and/or spaces) -> IPv4 addresses; ValueError says which is bad."""
    out: list[str] = []
    for part in text.replace(",", " ").split():
        try:
            out.append(str(ipaddress.IPv4Address(part)))
        except ValueError:
            raise ValueError(f"{part!r} is not an IPv4 address") from None
    return out


class KnownRelays:
    """The static list plus the registry's latest; `apply` gets the union whenever it changes."""

    def __init__(self, static: Iterable[str], apply: Callable[[frozenset[str]], None]) -> None:
        self.static = frozenset(static)
        self.learned: frozenset[str] = frozenset()
        self._apply = apply
        apply(self.static)

    @property
    def all(self) -> frozenset[str]:
        return self.static | self.learned

    def learn(self, ips: Iterable[str]) -> None:
        """The registry's complete current set (a successful read)."""
        learned = frozenset(ips)
        if learned != self.learned:
            log.info("relays from the registry: %s", ", ".join(sorted(learned)) or "none")
            self.learned = learned
            self._apply(self.all)
