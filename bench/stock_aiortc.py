"""The baseline: stock aiortc, one RTCPeerConnection (and its own UDP ports) per call.

It speaks the same WHIP-style HTTP API as `transceiver serve` (POST /v1/calls with an SDP offer ->
201 + Location + SDP answer, DELETE ends the call, GET /healthz, GET /metrics, GET / serves the demo
page) and echoes the caller's audio the way aiortc's examples do: the received track is relayed
back, so every frame is decoded and re-encoded. Run it as its own process:

    python -m bench.stock_aiortc --listen 127.0.0.1:0

It prints `READY http://HOST:PORT` on stdout once it accepts requests (port 0 picks a free one).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import logging
import signal
import sys
from collections import Counter
from pathlib import Path

from aiohttp import web
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaRelay
from aiortc.mediastreams import MediaStreamTrack

from wire.addr import bind_arg

STATIC_DIR = Path(__file__).resolve().parent.parent / "transceiver" / "static"
MAX_OFFER_BYTES = 64 * 1024


class Calls:
    """The live peer connections and the counters /metrics shows."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.pcs: dict[str, RTCPeerConnection] = {}
        self.started = 0
        self.ended: Counter[str] = Counter()  # by reason
        self._ids = itertools.count(1)
        self.relay = MediaRelay()

    def new_id(self) -> str:
        return f"c{next(self._ids)}"

    async def end(self, call_id: str, reason: str) -> bool:
        pc = self.pcs.pop(call_id, None)
        if pc is None:
            return False
        self.ended[reason] += 1
        await pc.close()
        return True


CALLS = web.AppKey("calls", Calls)


async def create_call(request: web.Request) -> web.Response:
    calls = request.app[CALLS]
    if request.content_type != "application/sdp":
        return web.Response(status=415, text="Content-Type must be application/sdp\n")
    if len(calls.pcs) >= calls.capacity:
        return web.Response(status=503, text="at capacity\n")
    body = await request.content.read(MAX_OFFER_BYTES + 1)
    if len(body) > MAX_OFFER_BYTES:
        return web.Response(status=413, text="offer too large\n")
    try:
        offer = RTCSessionDescription(sdp=body.decode(), type="offer")
    except UnicodeDecodeError:
        return web.Response(status=400, text="offer is not UTF-8\n")

    call_id = calls.new_id()
    # No STUN/TURN servers: aiortc would otherwise try stun.l.google.com and wait for it.
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))

    @pc.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        if track.kind == "audio":
            pc.addTrack(calls.relay.subscribe(track))

    @pc.on("connectionstatechange")
    async def on_state() -> None:
        if pc.connectionState == "failed":
            await calls.end(call_id, "failed")

    try:
        await pc.setRemoteDescription(offer)
        # aiortc parses leniently: text with no media section at all is "valid" to it.
        if not any(t.kind == "audio" for t in pc.getTransceivers()):
            raise ValueError("no audio media section")
        await pc.setLocalDescription(await pc.createAnswer())
    except Exception as exc:  # aiortc raises ValueError and friends on a malformed offer
        await pc.close()
        return web.Response(status=400, text=f"bad offer: {exc}\n")
    calls.pcs[call_id] = pc
    calls.started += 1
    return web.Response(
        status=201,
        content_type="application/sdp",
        text=pc.localDescription.sdp,
        headers={"Location": f"/v1/calls/{call_id}"},
    )


async def delete_call(request: web.Request) -> web.Response:
    calls = request.app[CALLS]
    if await calls.end(request.match_info["call_id"], "deleted"):
        return web.Response(status=204)
    return web.Response(status=404, text="no such call\n")


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def metrics(request: web.Request) -> web.Response:
    # The same names as `transceiver serve` (transceiver/metrics.py), so one check fits both.
    calls = request.app[CALLS]
    lines = [
        "# TYPE txr_calls_active gauge",
        f"txr_calls_active {len(calls.pcs)}",
        "# TYPE txr_calls_started_total counter",
        f"txr_calls_started_total {calls.started}",
        "# TYPE txr_calls_ended_total counter",
    ]
    lines += [f'txr_calls_ended_total{{reason="{r}"}} {n}' for r, n in sorted(calls.ended.items())]
    return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html")


def make_app(capacity: int) -> web.Application:
    app = web.Application()
    app[CALLS] = Calls(capacity)
    app.router.add_get("/", index)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/v1/calls", create_call)
    app.router.add_delete("/v1/calls/{call_id}", delete_call)
    if STATIC_DIR.is_dir():
        app.router.add_static("/static", STATIC_DIR)

    async def close_all(app: web.Application) -> None:
        calls = app[CALLS]
        for call_id in list(calls.pcs):
            await calls.end(call_id, "shutdown")

    app.on_shutdown.append(close_all)
    return app


async def serve(host: str, port: int, capacity: int) -> None:
    runner = web.AppRunner(make_app(capacity))
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0]
    print(f"READY http://{bound[0]}:{bound[1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", type=bind_arg, default=("127.0.0.1", 0))
    parser.add_argument("--capacity", type=int, default=1000)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(*args.listen, args.capacity))
    return 0


if __name__ == "__main__":
    sys.exit(main())
