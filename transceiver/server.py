"""WHIP-style signaling (RFC 9725) over aiohttp, plus health, metrics and the demo page."""

from __future__ import annotations

import json
from pathlib import Path

from aiohttp import web

from transceiver import defaults
from transceiver.calls import CallManager, Refused
from transceiver.metrics import Metrics
from transceiver.sdp import MAX_OFFER_BYTES, OfferError

STATIC_DIR = Path(__file__).parent / "static"
CALLS_PATH = "/v1/calls"

_MANAGER = web.AppKey("manager", CallManager)
_METRICS = web.AppKey("metrics", Metrics)


def _text(status: int, reason: str, **headers: str) -> web.Response:
    return web.Response(status=status, text=reason + "\n", headers=headers)


async def post_call(request: web.Request) -> web.Response:
    manager = request.app[_MANAGER]
    if request.content_type != "application/sdp":
        return _text(415, "Content-Type must be application/sdp")
    try:
        offer = await request.text()
    except UnicodeDecodeError:
        return _text(400, "offer is not UTF-8 text")
    try:
        session, answer = await manager.create(offer)
    except Refused as exc:
        return _text(exc.status, exc.reason, **{"Retry-After": str(defaults.RETRY_AFTER)})
    except OfferError as exc:
        return _text(400, exc.reason)
    return web.Response(
        status=201,
        body=answer.encode(),
        content_type="application/sdp",
        headers={"Location": f"{CALLS_PATH}/{session.id}"},
    )


async def delete_call(request: web.Request) -> web.Response:
    if await request.app[_MANAGER].delete(request.match_info["call_id"]):
        return web.Response(status=204)
    return _text(404, "no such call")


async def patch_call(request: web.Request) -> web.Response:
    # Trickle ICE / ICE restarts (RFC 9725 §4.3) are not supported: the answer is complete.
    if request.match_info["call_id"] not in request.app[_MANAGER].sessions:
        return _text(404, "no such call")
    return _text(405, "trickle ICE and ICE restarts are not supported", Allow="DELETE")


async def healthz(request: web.Request) -> web.Response:
    m = request.app[_MANAGER]
    body = {"status": "draining" if m.draining else "ok", "active": m.active}
    body["capacity"] = m.capacity
    return web.Response(text=json.dumps(body), content_type="application/json")


async def readyz(request: web.Request) -> web.Response:
    """Readiness (a Kubernetes probe): 200 while new offers are taken, 503 while draining or
    full, so a Service stops sending offers here; /healthz stays 200 (liveness)."""
    m = request.app[_MANAGER]
    status = "draining" if m.draining else "full" if m.active >= m.capacity else "ok"
    body = {"status": status, "active": m.active, "capacity": m.capacity}
    return web.json_response(body, status=200 if status == "ok" else 503)


async def metrics(request: web.Request) -> web.Response:
    return web.Response(
        body=request.app[_METRICS].render(),
        headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
    )


async def index(request: web.Request) -> web.StreamResponse:
    page = STATIC_DIR / "index.html"
    if not page.is_file():
        return _text(404, "no demo page installed (transceiver/static/index.html)")
    return web.FileResponse(page)


def make_app(manager: CallManager, metrics_: Metrics) -> web.Application:
    app = web.Application(client_max_size=MAX_OFFER_BYTES)
    app[_MANAGER] = manager
    app[_METRICS] = metrics_
    app.router.add_post(CALLS_PATH, post_call)
    app.router.add_delete(CALLS_PATH + "/{call_id}", delete_call)
    app.router.add_patch(CALLS_PATH + "/{call_id}", patch_call)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/", index)
    if STATIC_DIR.is_dir():
        app.router.add_static("/static/", STATIC_DIR)
    return app
