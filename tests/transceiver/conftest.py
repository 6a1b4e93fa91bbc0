"""Fixtures: a real transceiver (in-process or as a subprocess) on 127.0.0.1, HTTP clients."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest

from transceiver.config import Settings
from transceiver.service import TransceiverService

TEST_KEY_ID = 3
TEST_KEY = bytes.fromhex("000102030405060708090a0b0c0d0e0f")


def settings(**overrides: object) -> Settings:
    base = Settings(
        http=("127.0.0.1", 0),
        udp=("127.0.0.1", 0),
        cluster=2,
        txr_id=7,
        key_id=TEST_KEY_ID,
        key=TEST_KEY,
        capacity=20,
        no_auth=True,  # the signaling tests (test_signaling_*.py) give their own keys
    )
    for k, v in overrides.items():
        setattr(base, k, v)
    return base


@pytest.fixture
async def start_txr() -> AsyncIterator[Callable[..., object]]:
    """Start in-process transceivers with Settings overrides; all are stopped afterwards."""
    started: list[TransceiverService] = []

    async def start(app: object = None, **overrides: object) -> TransceiverService:
        txr = TransceiverService(settings(**overrides), app=app)  # type: ignore[arg-type]
        await txr.start()
        started.append(txr)
        return txr

    yield start
    for txr in started:
        await txr.stop()


@pytest.fixture
async def txr(start_txr: Callable[..., object]) -> TransceiverService:
    return await start_txr()  # type: ignore[misc]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        yield session


@pytest.fixture(autouse=True)
async def no_leaked_decoders() -> AsyncIterator[None]:
    """Every call (server or client side) must stop its aiortc decoder thread when it ends."""
    yield
    for _ in range(250):
        alive = [t.name for t in threading.enumerate() if t.name.endswith("-decoder")]
        if not alive:
            return
        await asyncio.sleep(0.02)
    pytest.fail(f"decoder threads left running: {alive}")
