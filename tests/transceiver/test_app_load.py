"""`--app module:attr` (issue 8 item 7): a class is instantiated (it used to be passed as the app
itself, so every call ended `app_error`), a factory is called, an instance is used as it is."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from lab.peer import call
from transceiver.app import Call, EchoApp, load_app
from transceiver.service import TransceiverService

from .conftest import settings

pytestmark = pytest.mark.timeout(60)


class CountingEcho(EchoApp):
    made = 0

    def __init__(self) -> None:
        CountingEcho.made += 1
        self.ended: list[str] = []

    async def call_ended(self, call: Call, reason: str) -> None:
        self.ended.append(reason)


def factory() -> CountingEcho:
    return CountingEcho()


INSTANCE = CountingEcho()


@pytest.mark.parametrize(
    ("spec", "kind"),
    [
        ("transceiver.app:EchoApp", EchoApp),
        (f"{__name__}:CountingEcho", CountingEcho),
        (f"{__name__}:factory", CountingEcho),
        (f"{__name__}:INSTANCE", CountingEcho),
    ],
)
def test_load_app_gives_an_instance(spec: str, kind: type) -> None:
    app = load_app(spec)
    assert isinstance(app, kind) and not isinstance(app, type)
    if spec.endswith("INSTANCE"):
        assert app is INSTANCE


async def test_a_class_named_by_app_echoes_a_real_call(http: aiohttp.ClientSession) -> None:
    txr = TransceiverService(settings(app=f"{__name__}:CountingEcho"))
    await txr.start()
    try:
        app = txr.app
        assert isinstance(app, CountingEcho)
        client = await call(http, txr.http_url, want_frames=30)
        try:
            await client.wait_state("connected")
            await asyncio.wait_for(client.got_frames.wait(), 15)  # the echo came back
            (session,) = txr.manager.sessions.values()
            assert session.call.frames_out >= 30
            assert await client.hang_up(http) == 204
        finally:
            await client.close()
        for _ in range(100):
            if app.ended:
                break
            await asyncio.sleep(0.02)
        assert app.ended == ["deleted"]  # not app_error
    finally:
        await txr.stop()
