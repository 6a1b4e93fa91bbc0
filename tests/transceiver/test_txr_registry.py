"""Registry in a real redis-server: entries appear, refresh, vanish; keys rotate mid-call."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
import redis

from lab.peer import call
from wire import registry as wreg
from wire import ufrag

pytestmark = pytest.mark.timeout(60)

KEY1 = bytes(range(16))
KEY2 = bytes(range(16, 32))


async def until(cond, timeout: float = 5.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await asyncio.to_thread(cond)
        if value:
            return value
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def answer_ufrag(sdp: str) -> str:
    return next(ln.split(":", 1)[1] for ln in sdp.splitlines() if ln.startswith("a=ice-ufrag:"))


async def test_entry_appears_refreshes_and_vanishes(start_txr, redis_url, http) -> None:
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    txr = await start_txr(redis_url=redis_url, registry_ttl=2, registry_refresh=0.2, capacity=5)
    name = wreg.txr_key("edge", 2, 7)
    fields = r.hgetall(name)
    assert fields["tunnel"] == f"127.0.0.1:{txr.udp_addr[1]}"
    assert (fields["cluster"], fields["id"], fields["capacity"]) == ("2", "7", "5")
    assert (fields["active"], fields["draining"]) == ("0", "0")
    assert 0 < r.pttl(name) <= 2000
    first = float(fields["updated"])

    client = await call(http, txr.http_url)
    try:
        await client.wait_state("connected")
        await until(lambda: r.hget(name, "active") == "1")
        # Refreshed well past the first TTL: updated moves, the entry never expires.
        await asyncio.sleep(2.5)
        assert r.exists(name) and float(r.hget(name, "updated")) > first + 2
        txr.manager.draining = True
        await until(lambda: r.hget(name, "draining") == "1")
    finally:
        await client.close()
    await txr.stop()
    assert not r.exists(name)
    r.close()


async def test_entry_expires_when_the_process_stops_refreshing(start_txr, redis_url) -> None:
    r = redis.Redis.from_url(redis_url)
    txr = await start_txr(redis_url=redis_url, registry_ttl=1, registry_refresh=0.2)
    name = wreg.txr_key("edge", 2, 7)
    assert r.exists(name)
    txr.registry._task.cancel()  # a crashed process: no more refreshes, no deregister
    started = time.monotonic()
    await until(lambda: not r.exists(name), timeout=3)
    assert time.monotonic() - started < 1.5
    r.close()


async def test_keys_come_from_redis_and_rotate_while_calls_run(
    start_txr, redis_url, http: aiohttp.ClientSession
) -> None:
    r = redis.Redis.from_url(redis_url)
    wreg.set_key(r, 1, KEY1)
    wreg.set_current_key(r, 1)
    txr = await start_txr(redis_url=redis_url, key=None, key_id=None, registry_refresh=0.2)
    first = await call(http, txr.http_url, want_frames=20)
    try:
        hint = ufrag.verify(answer_ufrag(first.answer_sdp), {1: KEY1})
        assert hint.key_id == 1
        await first.wait_state("connected")

        wreg.set_key(r, 2, KEY2)
        wreg.set_current_key(r, 2)
        await until(lambda: txr.keyring.current == 2)
        second = await call(http, txr.http_url, want_frames=20)
        try:
            assert ufrag.verify(answer_ufrag(second.answer_sdp), {2: KEY2}).key_id == 2
            await second.wait_state("connected")
            # The call minted under key 1 is unaffected by the rotation.
            await asyncio.wait_for(
                asyncio.gather(first.got_frames.wait(), second.got_frames.wait()), 15
            )
            assert txr.manager.active == 2
        finally:
            await second.close()
    finally:
        await first.close()
        r.close()
