"""Keeps this transceiver's entry in the Redis registry fresh, follows key rotation and the
set of registered relays (transceiver/relays.py)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import redis

from transceiver import defaults
from transceiver.keys import Keyring
from wire import registry as wreg
from wire.redisconn import connect

log = logging.getLogger(__name__)


def read_keys(r: redis.Redis, prefix: str) -> tuple[dict[int, bytes], int | None]:
    """Only the keys part of the registry (no SCAN over every transceiver)."""
    keys: dict[int, bytes] = {}
    for kid, hex_key in r.hgetall(f"{prefix}:keys").items():
        try:
            k, key = wreg.parse_key(kid, hex_key)
        except wreg.RegistryError as exc:
            log.warning("ignoring routing key: %s", exc)
            continue
        keys[k] = key
    raw = r.get(f"{prefix}:keys:current")
    try:
        current = int(raw) if raw is not None else None
    except ValueError:
        log.warning("ignoring %s:keys:current = %r", prefix, raw)
        current = None
    return keys, current


class RegistryAgent:
    """register() every `refresh` s with a `ttl`; deregister() on stop.

    With a keyring, the routing keys are reloaded on the same beat, so a rotation done in Redis
    reaches new calls within `refresh` seconds while running calls keep their ufrags. With
    `on_relays`, so is the set of registered relays' tunnel addresses; a failed read changes
    nothing (the last known set stays, see transceiver/relays.py).
    """

    def __init__(
        self,
        url: str,
        record: Callable[[], wreg.TransceiverRecord],
        *,
        prefix: str = defaults.REDIS_PREFIX,
        ttl: float = defaults.REGISTRY_TTL,
        refresh: float = defaults.REGISTRY_REFRESH,
        keyring: Keyring | None = None,
        on_relays: Callable[[set[str]], None] | None = None,
    ) -> None:
        # The beat loop is its own retry: a failed beat must not block for more than a timeout.
        self._redis = connect(url, timeout=defaults.REDIS_TIMEOUT, retries=False)
        self._record = record
        self._prefix = prefix
        self._ttl = ttl
        self._refresh = refresh
        self._keyring = keyring
        self._on_relays = on_relays
        self._task: asyncio.Task[None] | None = None
        # One beat at a time: a beat in flight when draining starts must not write its older
        # record after the drain's beat has written `draining`.
        self._beating = asyncio.Lock()
        self.beats = 0

    async def start(self) -> None:
        await self.beat()
        self._task = asyncio.ensure_future(self._loop())

    async def beat(self) -> None:
        """One refresh: keys first (so a fresh transceiver can mint), then our entry."""
        async with self._beating:
            await self._beat()

    async def _beat(self) -> None:
        try:
            if self._keyring is not None:
                keys, current = await asyncio.to_thread(read_keys, self._redis, self._prefix)
                if current is not None and current not in keys:
                    log.warning("current key id %s has no key in Redis; keeping old keys", current)
                elif keys != self._keyring.keys or current != self._keyring.current:
                    self._keyring.update(keys, current)
                    log.info("routing keys %s, current %s", sorted(keys), current)
            if self._on_relays is not None:
                relays, problems = await asyncio.to_thread(
                    wreg.read_relays, self._redis, prefix=self._prefix
                )
                for problem in problems:
                    log.warning("ignoring relay entry: %s", problem)
                self._on_relays(set(relays))
            rec = self._record()
            await asyncio.to_thread(wreg.register, self._redis, rec, self._ttl, prefix=self._prefix)
            self.beats += 1
        except (redis.RedisError, OSError) as exc:
            log.warning("registry refresh failed: %s", exc)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._refresh)
            await self.beat()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        try:
            await asyncio.to_thread(
                wreg.deregister, self._redis, self._record(), prefix=self._prefix
            )
        except (redis.RedisError, OSError) as exc:
            log.warning("could not deregister: %s", exc)
        self._redis.close()
