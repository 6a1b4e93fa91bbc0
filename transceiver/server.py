"""WHIP-style signaling (RFC 9725) over aiohttp, plus health, metrics and the demo page.

Who may do what (transceiver/auth.py, docs/security.md): POST /v1/calls needs an API
key or a single-use client token; POST /v1/tokens (mint a client token) needs an API key; a
call's resource URL (`Location`) carries a per-call secret, and only its holder (or an API key)
may PATCH (ICE restart) or DELETE it. Every client address has a POST budget (429 beyond it);
connections are bounded and must send their request in time (transceiver/limits.py). No input
gets a 5xx: 503 is only "full/draining/no routing key", never a reaction to what was sent.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import math
import os
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from aiohttp import web
from prometheus_client import Counter

from transceiver import clientaddr, defaults
from transceiver.auth import Authenticator, Unauthorized, bearer
from transceiver.calls import CallManager, Refused
from transceiver.limits import (
    ACCEPT_BACKLOG,
    BODY_TIMEOUT,
    ConnectionGuard,
    RateLimiter,
    listen_socket,
)
from transceiver.metrics import Metrics
from transceiver.sdp import (
    MAX_OFFER_BYTES,
    MAX_SDPFRAG_BYTES,
    SDPFRAG,
    OfferError,
    parse_ice_fragment,
)
from transceiver.turn import TurnServers

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
CALLS_PATH = "/v1/calls"
TOKENS_PATH = "/v1/tokens"
REALM = 'Bearer realm="webrtc-edge"'
UTF8 = frozenset({"utf-8", "utf8", "us-ascii", "ascii"})
MAX_TOKEN_REQUEST = 1024

_MANAGER = web.AppKey("manager", CallManager)
_METRICS = web.AppKey("metrics", Metrics)
_AUTH = web.AppKey("auth", Authenticator)
_SIGNALING = web.AppKey("signaling", object)
ALLOW = "OPTIONS, POST"


def _text(status: int, reason: str, **headers: str) -> web.Response:
    return web.Response(status=status, text=reason + "\n", headers=headers)


class Signaling:
    """What the handlers share besides the call manager: limits, counters, the resource key."""

    def __init__(
        self,
        metrics_: Metrics,
        *,
        guard: ConnectionGuard | None,
        rate: RateLimiter | None,
        body_timeout: float,
        turn: TurnServers | None = None,
        trusted_proxies: Sequence[clientaddr.Network] = (),
    ) -> None:
        self.guard = guard
        # --trusted-proxy: whose X-Forwarded-For says who the client is (transceiver/clientaddr.py)
        self.trusted_proxies = tuple(trusted_proxies)
        self.turn = turn  # TURN servers announced in Link headers (transceiver/turn.py)
        self.rate = rate
        self.body_timeout = body_timeout
        # Resource secrets are HMAC(process key, call id): nothing to store or clean up.
        self.resource_key = os.urandom(32)
        self.refused = Counter(
            "txr_http_refused",
            "HTTP requests refused or connections closed, by reason",
            ["reason"],
            registry=metrics_.registry,
        )

        self.bad_forwarded = Counter(
            "txr_http_bad_forwarded_for",
            "Requests from a trusted proxy with an unusable X-Forwarded-For (keyed on the proxy)",
            registry=metrics_.registry,
        )

    def count(self, reason: str) -> None:
        self.refused.labels(reason).inc()

    def client(self, request: web.Request) -> str:
        """The client's address, for its POST budget: the TCP peer's, or behind a trusted
        proxy what its X-Forwarded-For says (transceiver/clientaddr.py)."""
        got = clientaddr.client_address(
            request.remote, request.headers.getall(clientaddr.HEADER, []), self.trusted_proxies
        )
        if got.malformed:
            self.bad_forwarded.inc()
            # The proxy's address and the header's size, never its content (client addresses);
            # the RepeatFilter bounds these lines (transceiver/limits.py).
            size = sum(len(v) for v in request.headers.getall(clientaddr.HEADER, []))
            log.warning(
                "unusable X-Forwarded-For (%d chars) from trusted proxy %s: keyed on the proxy",
                size,
                request.remote,
            )
        return got.address

    def secret(self, call_id: str) -> str:
        mac = hmac.new(self.resource_key, call_id.encode(), hashlib.sha256).digest()[:16]
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    def resource(self, call_id: str) -> str:
        return f"{CALLS_PATH}/{call_id}.{self.secret(call_id)}"


def _sig(request: web.Request) -> Signaling:
    return request.app[_SIGNALING]  # type: ignore[return-value]


def _unauthorized(sig: Signaling, exc: Unauthorized) -> web.Response:
    sig.count(f"auth_{exc.label}")
    error = "invalid_request" if exc.label == "missing" else "invalid_token"
    return _text(401, exc.reason, **{"WWW-Authenticate": f'{REALM}, error="{error}"'})


def _rate_limited(request: web.Request) -> web.Response | None:
    sig = _sig(request)
    if sig.rate is None:
        return None
    wait = sig.rate.take(sig.client(request))
    if not wait:
        return None
    sig.count("rate_limited")
    return _text(429, "too many requests", **{"Retry-After": str(max(1, math.ceil(wait)))})


async def _body(request: web.Request) -> bytes | web.Response:
    """The body, or the answer to give when it does not come in time (408)."""
    try:
        return await asyncio.wait_for(request.read(), _sig(request).body_timeout)
    except TimeoutError:
        _sig(request).count("body_timeout")
        return _text(408, "request body too slow", Connection="close")


async def post_call(request: web.Request) -> web.Response:
    manager = request.app[_MANAGER]
    sig = _sig(request)
    if (limited := _rate_limited(request)) is not None:
        return limited
    if request.content_type != "application/sdp":
        sig.count("content_type")
        return _text(415, "Content-Type must be application/sdp")
    if request.charset is not None and request.charset.lower() not in UTF8:
        sig.count("content_type")
        return _text(415, "an SDP offer is UTF-8 text (charset=utf-8 or none)")
    try:
        await request.app[_AUTH].caller(bearer(request.headers))
    except Unauthorized as exc:
        return _unauthorized(sig, exc)
    body = await _body(request)
    if isinstance(body, web.Response):
        return body
    try:
        offer = body.decode("utf-8")
    except UnicodeDecodeError:
        return _text(400, "offer is not UTF-8 text")
    try:
        session, answer = await manager.create(offer)
    except Refused as exc:
        return _text(exc.status, exc.reason, **{"Retry-After": str(defaults.RETRY_AFTER)})
    except OfferError as exc:
        return _text(400, exc.reason)
    resp = web.Response(
        status=201,
        body=answer.encode(),
        content_type="application/sdp",
        headers={"Location": sig.resource(session.id)},
    )
    if sig.turn is not None:  # for a later ICE restart; a client asks OPTIONS before gathering
        for link in sig.turn.link_headers(session.id):
            resp.headers.add("Link", link)
        resp.headers["Cache-Control"] = "no-store"
    return resp


async def options_calls(request: web.Request) -> web.Response:
    """The ICE servers a client should gather with, before its offer (RFC 9725 §4.4): one
    `Link: <turns:...>; rel="ice-server"; username=...; credential=...` per TURN URL, with a
    fresh short-lived credential. Only for a caller who may place a call (an API key or a client
    token, which is checked but not spent: the POST spends it); without a credential (a CORS
    preflight never carries one) the answer has no Link headers; a wrong one is a 401."""
    sig = _sig(request)
    headers = {"Allow": ALLOW}
    # No POST budget taken: nothing here costs more than an HMAC, and a call is OPTIONS + POST.
    cred = bearer(request.headers)
    auth = request.app[_AUTH]
    resp = web.Response(status=204, headers=headers)
    if sig.turn is None or (cred is None and auth.enabled):
        return resp
    try:
        auth.verify(cred)
    except Unauthorized as exc:
        return _unauthorized(sig, exc)
    for link in sig.turn.link_headers():
        resp.headers.add("Link", link)
    resp.headers["Cache-Control"] = "no-store"  # a credential: no cache may keep or share it
    return resp


async def post_token(request: web.Request) -> web.Response:
    """Mint a single-use client token (for a browser) with an API key: `{"value", "expires_at"}`.
    Optional JSON body `{"ttl": seconds}` asks for a shorter life than the configured one."""
    auth = request.app[_AUTH]
    sig = _sig(request)
    if (limited := _rate_limited(request)) is not None:
        return limited
    if not auth.enabled:
        sig.count("tokens_disabled")
        return _text(404, "no client tokens with --no-auth")
    try:
        who = auth.api_key(bearer(request.headers))
    except Unauthorized as exc:
        return _unauthorized(sig, exc)
    if request.content_length is not None and request.content_length > MAX_TOKEN_REQUEST:
        return _text(413, f"a token request is at most {MAX_TOKEN_REQUEST} bytes")
    body = await _body(request)
    if isinstance(body, web.Response):
        return body
    ttl = None
    if body.strip():
        try:
            doc = json.loads(body)
            ttl = doc.get("ttl") if isinstance(doc, dict) else False
        except (ValueError, UnicodeDecodeError):
            ttl = False
        if ttl is not None and (
            isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 1 <= ttl <= 86400
        ):
            return _text(400, 'body must be empty or {"ttl": seconds (1..)}')
    value, expires_at = auth.mint(ttl, kid=who.kid)
    return web.json_response({"value": value, "expires_at": expires_at}, status=201)


def _call_resource(request: web.Request) -> tuple[str | None, web.Response | None]:
    """(call id, None) if the caller holds the call's resource URL or an API key, else
    (None, the answer: 404 unknown call, 401 no or a wrong secret)."""
    sig = _sig(request)
    call_id, _, secret = request.match_info["resource"].partition(".")
    if call_id not in request.app[_MANAGER].sessions:
        return None, _text(404, "no such call")
    if secret and hmac.compare_digest(secret.encode(), sig.secret(call_id).encode()):
        return call_id, None
    cred = bearer(request.headers)
    auth = request.app[_AUTH]
    if cred is not None and auth.enabled:
        try:
            auth.api_key(cred)
            return call_id, None
        except Unauthorized as exc:
            return None, _unauthorized(sig, exc)
    sig.count("auth_bad_resource")
    return None, _text(
        401,
        "use the call's resource URL (Location of the POST) or an API key",
        **{"WWW-Authenticate": f'{REALM}, error="invalid_token"'},
    )


async def delete_call(request: web.Request) -> web.Response:
    call_id, refusal = _call_resource(request)
    if refusal is not None:
        return refusal
    assert call_id is not None
    if await request.app[_MANAGER].delete(call_id):
        return web.Response(status=204)
    return _text(404, "no such call")


async def patch_call(request: web.Request) -> web.Response:
    """Trickle ICE / ICE restart (RFC 9725 §4.3) with an RFC 8840 SDP fragment.

    New client credentials restart ICE on the same call: 200 with our new ufrag (a fresh
    routing hint), password and candidates. A fragment with the credentials in use (or none)
    is trickle: 204, nothing to do (a lite agent learns client addresses from their checks).
    """
    call_id, refusal = _call_resource(request)
    if refusal is not None:
        return refusal
    assert call_id is not None
    sig = _sig(request)
    if request.content_type != SDPFRAG:
        sig.count("content_type")
        return _text(415, f"Content-Type must be {SDPFRAG}")
    if request.content_length is not None and request.content_length > MAX_SDPFRAG_BYTES:
        return _text(413, f"an SDP fragment is at most {MAX_SDPFRAG_BYTES} bytes")
    body = await _body(request)
    if isinstance(body, web.Response):
        return body
    if len(body) > MAX_SDPFRAG_BYTES:  # chunked bodies have no Content-Length
        return _text(413, f"an SDP fragment is at most {MAX_SDPFRAG_BYTES} bytes")
    try:
        frag = parse_ice_fragment(body.decode("utf-8"))
    except UnicodeDecodeError:
        return _text(400, "fragment is not UTF-8 text")
    except OfferError as exc:
        return _text(400, exc.reason)
    manager = request.app[_MANAGER]
    session = manager.sessions.get(call_id)
    if session is None:
        return _text(404, "no such call")
    agent = session.ice
    if frag.ufrag is None or (frag.ufrag, frag.pwd) == (
        agent.remote_username,
        agent.remote_password,
    ):
        etag = _ice_etag(session.ufrag)
        if_match = request.headers.get("If-Match")
        if if_match not in (None, "*", etag):
            return _text(412, "If-Match is not this call's current ICE session (ETag)")
        return web.Response(status=204, headers={"ETag": etag})
    assert frag.pwd is not None
    try:
        answer = manager.restart_ice(call_id, frag.ufrag, frag.pwd)
    except Refused as exc:
        return _text(exc.status, exc.reason, **{"Retry-After": str(defaults.RETRY_AFTER)})
    if answer is None:
        return _text(404, "no such call (it is ending)")
    return web.Response(
        status=200,
        body=answer.encode(),
        headers={"Content-Type": SDPFRAG, "ETag": _ice_etag(session.ufrag)},
    )


def _ice_etag(ufrag: str) -> str:
    """The ETag of a call's ICE session (RFC 9725 §4.3.1): changes with every restart."""
    return f'"{ufrag}"'


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


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _track(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Marks the connection busy while its request is in a handler (ConnectionGuard)."""
    guard = _sig(request).guard
    conn = guard.enter(request.protocol) if guard is not None else None
    try:
        return await handler(request)
    finally:
        if guard is not None:
            guard.leave(conn)


def make_app(
    manager: CallManager,
    metrics_: Metrics,
    *,
    auth: Authenticator | None = None,
    guard: ConnectionGuard | None = None,
    rate: RateLimiter | None = None,
    body_timeout: float = BODY_TIMEOUT,
    turn: TurnServers | None = None,
    trusted_proxies: Sequence[clientaddr.Network] = (),
) -> web.Application:
    """`auth=None` is --no-auth (anyone may place calls): callers must choose it explicitly.
    `trusted_proxies`: peers whose X-Forwarded-For names the client (--trusted-proxy)."""
    app = web.Application(client_max_size=MAX_OFFER_BYTES, middlewares=[_track])
    app[_MANAGER] = manager
    app[_METRICS] = metrics_
    app[_AUTH] = auth if auth is not None else Authenticator(None)
    sig = Signaling(
        metrics_,
        guard=guard,
        rate=rate,
        body_timeout=body_timeout,
        turn=turn,
        trusted_proxies=trusted_proxies,
    )
    app[_SIGNALING] = sig
    if guard is not None:
        guard.on_refuse = sig.count
    app.router.add_post(CALLS_PATH, post_call)
    app.router.add_route("OPTIONS", CALLS_PATH, options_calls)
    app.router.add_post(TOKENS_PATH, post_token)
    app.router.add_delete(CALLS_PATH + "/{resource}", delete_call)
    app.router.add_patch(CALLS_PATH + "/{resource}", patch_call)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/", index)
    if STATIC_DIR.is_dir():
        app.router.add_static("/static/", STATIC_DIR)
    return app


class GuardedSite(web.TCPSite):
    """A TCPSite whose connections go through a ConnectionGuard."""

    __slots__ = ("_guard",)

    def __init__(self, runner: web.AppRunner, host: str, port: int, guard: ConnectionGuard) -> None:
        super().__init__(runner, host, port, backlog=ACCEPT_BACKLOG)
        self._guard = guard

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        sock = listen_socket(
            self._host, self._port, lambda: self._guard.on_refuse("accept_no_descriptor")
        )
        self._server = await loop.create_server(
            self._guard.factory(server), sock=sock, backlog=self._backlog
        )
        self._bound_port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self._guard.close()
        await super().stop()
