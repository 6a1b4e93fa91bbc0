"""Which relays may send this transceiver tunnel datagrams: a configured list and the registry.

Relays register their tunnel source in Redis (`wire.registry.register_relay`, refreshed by
`relayctl run`); the registry agent (transceiver/registry.py) reads them on its beat and hands
them here. The set the tunnel layer checks is the union of the static list (`--relay`) and the
relays read from Redis. While Redis is unreachable the last known set stays: relays keep
forwarding without their controller for RELAY_TTL, and a transceiver that forgot them would
drop every running call. A relay missing from a successful read is kept for RELAY_GRACE more
seconds (three of its controller's refreshes): a Redis that restarted empty is refilled by
every live relay's next refresh, and its calls never notice; a relay that is really gone
leaves the set RELAY_GRACE after its entry did.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable, Iterable

from transceiver import defaults

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

    def __init__(
        self,
        static: Iterable[str],
        apply: Callable[[frozenset[str]], None],
        *,
        grace: float | None = None,
    ) -> None:
        self.static = frozenset(static)
        self._seen: dict[str, float] = {}  # registry relay -> when a read last listed it
        self._grace = defaults.RELAY_GRACE if grace is None else grace
        self._apply = apply
        self._applied = self.static
        apply(self.static)

    @property
    def learned(self) -> frozenset[str]:
        return frozenset(self._seen)

    @property
    def all(self) -> frozenset[str]:
        return self.static | self.learned

    def learn(self, ips: Iterable[str], now: float | None = None) -> None:
        """The registry's complete current set (a successful read)."""
        now = time.monotonic() if now is None else now
        for ip in ips:
            self._seen[ip] = now
        for ip, seen in list(self._seen.items()):
            if now - seen > self._grace:
                del self._seen[ip]
        current = self.all
        if current != self._applied:
            log.info("known relays: %s", ", ".join(sorted(current)) or "none")
            self._applied = current
            self._apply(current)
