"""Which relays the transceiver takes tunnel datagrams from: the --relay list plus the relays
registered in a real redis-server, kept in step on the registry beat, and the last known set
kept while Redis is down (transceiver/relays.py)."""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path

import pytest

from lab.redis_server import RedisServer
from transceiver import defaults
from wire import encap
from wire import registry as wreg

pytestmark = pytest.mark.timeout(60)
VIP = ("198.18.0.10", 3478)


async def until(cond, timeout: float = 5.0, what: str = "condition") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def _refresh_failures(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().startswith("registry refresh failed")]


async def test_known_relays_follow_the_registry_and_survive_its_outage(
    start_txr, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="transceiver.registry")
    monkeypatch.setattr(defaults, "RELAY_GRACE", 1.0)
    server = RedisServer(tmp_path).start()
    try:
        r = server.client()
        wreg.register_relay(r, wreg.RelayRecord("lab/r1", "127.0.0.5:6080"), 60)
        txr = await start_txr(
            vips=[VIP], relays=["127.0.0.9"], redis_url=server.url, registry_refresh=0.1
        )
        assert txr.mux.tunnel.relays == {"127.0.0.5", "127.0.0.9"}  # read before serving
        wreg.register_relay(r, wreg.RelayRecord("lab/r2", "127.0.0.6:6080"), 60)
        await until(lambda: "127.0.0.6" in txr.mux.tunnel.relays, what="the new relay")
        # Redis restarted empty: the relays are kept while their controllers re-register.
        r.flushall()
        beats = txr.registry.beats
        await until(lambda: txr.registry.beats >= beats + 3, what="three beats")
        assert txr.mux.tunnel.relays == {"127.0.0.5", "127.0.0.6", "127.0.0.9"}
        wreg.register_relay(r, wreg.RelayRecord("lab/r2", "127.0.0.6:6080"), 60)
        # 127.0.0.5 does not come back (it is gone): it leaves the set after the grace.
        await until(lambda: "127.0.0.5" not in txr.mux.tunnel.relays, what="the gone relay")
        assert txr.mux.tunnel.relays == {"127.0.0.6", "127.0.0.9"}
        r.close()
        server.stop()  # Redis unreachable: the last known set stays
        # A beat already past its Redis calls may still count: start from the first failure.
        failed = len(_refresh_failures(caplog))
        await until(lambda: len(_refresh_failures(caplog)) > failed, what="a failed beat")
        beats = txr.registry.beats
        await asyncio.sleep(0.5)
        assert txr.registry.beats == beats  # every beat failed
        assert txr.mux.tunnel.relays == {"127.0.0.6", "127.0.0.9"}
    finally:
        server.close()


async def test_without_a_relay_list_or_registry_nothing_tunneled_is_taken(start_txr) -> None:
    txr = await start_txr(vips=[VIP])
    packet = encap.ipv4_udp("198.18.1.1", 5555, *VIP, b"\x00\x01" + bytes(18))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(packet, txr.udp_addr)
    await until(lambda: txr.mux.drops, what="the drop")
    assert txr.mux.drops == {"tunnel_unknown_relay": 1}
