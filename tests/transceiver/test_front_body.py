"""The front forwards an offer whole, however the client's TCP segments cut it (a body that
arrives after its headers, over a long path, was once forwarded as its first segment only), and
refuses a body over its limit with a 413. A real front app, a real redis-server, a stand-in
transceiver (a real aiohttp server) that answers with what it received."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis
from aiohttp import web

from transceiver.front import MAX_BODY, FleetView, FrontMetrics, Locator, make_front_app
from wire import registry
from wire.registry import ClusterRecord, TransceiverRecord


async def _serve(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, runner.addresses[0][1]


@pytest.fixture
async def front(redis_url: str) -> AsyncIterator[int]:
    async def echo(request: web.Request) -> web.Response:  # the stand-in transceiver
        return web.Response(status=400, body=await request.read())

    backend = web.Application()
    backend.router.add_post("/v1/calls", echo)
    b_runner, b_port = await _serve(backend)
    r = redis.Redis.from_url(redis_url)
    registry.put_cluster(r, ClusterRecord(1, "us-east", 40.7, -74.0))
    txr = TransceiverRecord(1, 7, "127.0.0.1:9", capacity=5, http=f"http://127.0.0.1:{b_port}")
    registry.register(r, txr, ttl=60)
    view = FleetView(redis_url)
    view.refresh()
    app = make_front_app(view, Locator(view, "X-Edge-Location", "us-east"), FrontMetrics())
    f_runner, f_port = await _serve(app)
    try:
        yield f_port
    finally:
        await f_runner.cleanup()
        await b_runner.cleanup()
        view.close()
        r.close()


async def _post_in_pieces(port: int, body: bytes, pieces: int, pause: float) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (
        f"POST /v1/calls HTTP/1.1\r\nHost: x\r\nContent-Type: application/sdp\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    writer.write(head)
    await writer.drain()
    step = -(-len(body) // pieces)
    for i in range(0, len(body), step):
        await asyncio.sleep(pause)  # each piece its own segment, as a slow path delivers them
        writer.write(body[i : i + step])
        await writer.drain()
    raw = await reader.read()
    writer.close()
    status_line, _, rest = raw.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


async def test_an_offer_in_several_segments_is_forwarded_whole(front: int) -> None:
    body = b"v=0\r\n" + b"a=x-filler:" + b"y" * 3000 + b"\r\n"
    status, got = await _post_in_pieces(front, body, pieces=4, pause=0.05)
    assert status == 400 and got == body  # the stand-in's echo: every byte reached it


async def test_a_body_over_the_limit_is_413(front: int) -> None:
    status, _ = await _post_in_pieces(front, b"v" * (MAX_BODY + 1), pieces=2, pause=0)
    assert status == 413
