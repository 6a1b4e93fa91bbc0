"""ICE for one call, all of it: a server-side ICE-lite agent (RFC 8445 §2.5).

The socket mux (transceiver/mux.py) only finds the agent a STUN datagram belongs to: by the
server ufrag in USERNAME for a path no call has yet, by the path afterwards. Everything else is
here: parsing, authentication, the answer, path selection, consent freshness, and standing in
for aioice.Connection towards aiortc's RTCIceTransport.

Why not aioice: it is a full agent that owns its sockets and sends checks. One shared socket
carries every call here, and a lite agent never sends a check. aiortc only needs a small part
of aioice.Connection (ufrag/pwd, candidates, gather_candidates, connect, recv, send, close,
get_event; aiortc_seam.ice_surface_missing() checks that at start-up), which is implemented below.

Binding requests (the client is the controlling full agent; we only answer):
- no USERNAME or no MESSAGE-INTEGRITY: 400, counted `no_username`;
- MESSAGE-INTEGRITY that does not verify with this call's password: 401, `bad_integrity`, and no
  state changes at all (no consent refresh, no selection, no binding);
- a client claiming ICE-CONTROLLED: 487, `role_conflict` (we are lite, hence controlled);
- otherwise the success response (XOR-MAPPED-ADDRESS = the client address, MESSAGE-INTEGRITY,
  FINGERPRINT), and the mux binds the path to this agent.
Error responses carry no MESSAGE-INTEGRITY: we cannot sign with a key the peer did not prove.

Selection: the first authenticated check selects its path at once and connect() returns, so
DTLS starts; a check with USE-CANDIDATE then selects its path for good (`nominated`). Browsers
start DTLS as soon as their first check succeeds but nominate tens of milliseconds later
(Chromium: ~55 ms here); waiting for USE-CANDIDATE left their ClientHello queued that long.
ICE-lite servers such as mediasoup do the same.

Consent freshness (RFC 7675): no authenticated check for `consent_timeout` seconds closes the
agent, which ends the call (browsers and aioice send one every ~5 s).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import string
import time
from collections.abc import Callable

from aioice import Candidate, ConnectionClosed
from aioice import stun as aiostun

from transceiver import defaults
from transceiver.drops import BAD_INTEGRITY, BAD_STUN, NO_USERNAME, ROLE_CONFLICT, UNKNOWN_UFRAG
from transceiver.paths import Path, Route
from wire.stun import HEADER_LEN, MAGIC_COOKIE

log = logging.getLogger(__name__)

PWD_ALPHABET = string.ascii_letters + string.digits + "+/"
PWD_LEN = 24  # RFC 8445 §5.3 asks for at least 22 characters (128 bits)
HOST_PRIORITY = (126 << 24) | (65535 << 8) | 255  # RFC 8445 §5.1.2.1, host, component 1
_COOKIE = MAGIC_COOKIE.to_bytes(4, "big")

# What stun_received() did with a datagram, besides the drop reasons (transceiver/drops.py).
AUTHENTICATED = "authenticated"  # answered with success: the mux binds the route
OTHER_CALL = "other_call"  # USERNAME names another call's ufrag: the mux looks that one up
IGNORED = "ignored"  # an indication or a response: a lite agent has nothing to do with it


def random_password() -> str:
    return "".join(secrets.choice(PWD_ALPHABET) for _ in range(PWD_LEN))


def host_candidates(addrs: list[tuple[str, int]]) -> list[Candidate]:
    """The answer's candidates: relay VIPs or the advertised address, never a pod address."""
    return [
        Candidate(
            foundation=str(i + 1),
            component=1,
            transport="udp",
            priority=HOST_PRIORITY - i,
            host=host,
            port=port,
            type="host",
        )
        for i, (host, port) in enumerate(addrs)
    ]


def binding_success(request: aiostun.Message, mapped: tuple[str, int], password: bytes) -> bytes:
    response = aiostun.Message(
        message_method=aiostun.Method.BINDING,
        message_class=aiostun.Class.RESPONSE,
        transaction_id=request.transaction_id,
    )
    response.attributes["XOR-MAPPED-ADDRESS"] = mapped
    response.add_message_integrity(password)
    return bytes(response)


def binding_error(request: aiostun.Message, code: int, reason: str) -> bytes:
    """An unauthenticated error response (see the module doc)."""
    response = aiostun.Message(
        message_method=aiostun.Method.BINDING,
        message_class=aiostun.Class.ERROR,
        transaction_id=request.transaction_id,
    )
    response.attributes["ERROR-CODE"] = (code, reason)
    response.add_fingerprint()
    return bytes(response)


class IceLiteAgent:
    """One call's ICE: fed STUN by the mux, read and written by aiortc as its aioice.Connection."""

    def __init__(
        self,
        *,
        local_username: str,
        candidates: list[Candidate],
        consent_timeout: float = defaults.CONSENT_TIMEOUT,
        setup_timeout: float = defaults.SETUP_TIMEOUT,
        on_close: Callable[[IceLiteAgent], None] | None = None,
    ) -> None:
        self.local_username = local_username
        self.local_password = random_password()
        self._password_key = self.local_password.encode("utf8")
        self._candidates = candidates
        self._gathered = False
        self._consent_timeout = consent_timeout
        self._setup_timeout = setup_timeout
        self._on_close = on_close
        # aiortc writes these; a lite agent is always controlled whatever it is told.
        self.ice_controlling = False
        self.remote_is_lite = False
        self.remote_username: str | None = None
        self.remote_password: str | None = None
        self._remote_candidates: list[Candidate] = []
        self.routes: list[Route] = []  # every route the mux bound to this agent
        self.selected_route: Route | None = None  # where DTLS and media go out
        self.nominated = False  # the client has sent USE-CANDIDATE (selected_route is final)
        self.last_check = time.monotonic()
        self.checks = 0  # authenticated Binding requests
        self.closed = False
        self.close_reason: str | None = None  # why we closed it ourselves, if we did
        # Set by the first authenticated check, nominating or not (see the module doc).
        self._path_selected = asyncio.Event()
        self._closed_event = asyncio.Event()
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        # The Opus fast path's SRTP receiver (transceiver/fastpath.py): RTP on this call's
        # routes goes there directly instead of being queued for aiortc (paths.Route).
        self.rtp_sink: Callable[[bytes], None] | None = None
        self._consent_task: asyncio.Task[None] | None = None

    @property
    def selected(self) -> Path | None:
        return None if self.selected_route is None else self.selected_route.path

    # --- STUN from the mux -------------------------------------------------------------------

    def stun_received(self, data: bytes, route: Route) -> str:
        """A STUN datagram for this call on `route`: answer it through the route.

        Returns AUTHENTICATED, OTHER_CALL, IGNORED or the drop reason to count.
        """
        if self.closed:
            return UNKNOWN_UFRAG  # the call is ending: as if its ufrag were gone already
        if len(data) < HEADER_LEN or data[4:8] != _COOKIE:
            return BAD_STUN
        try:
            msg = aiostun.parse_message(data)
        except Exception:  # aioice's parser raises assorted errors on hostile input
            return BAD_STUN
        if msg.message_method != aiostun.Method.BINDING:
            return BAD_STUN
        if msg.message_class != aiostun.Class.REQUEST:
            return IGNORED
        username = msg.attributes.get("USERNAME")
        if isinstance(username, str) and username.split(":", 1)[0] != self.local_username:
            return OTHER_CALL
        if not isinstance(username, str) or "MESSAGE-INTEGRITY" not in msg.attributes:
            route.send(binding_error(msg, 400, "Bad Request"))
            return NO_USERNAME
        if not msg.check_message_integrity(self._password_key):
            route.send(binding_error(msg, 401, "Unauthenticated"))
            return BAD_INTEGRITY
        if "ICE-CONTROLLED" in msg.attributes:
            route.send(binding_error(msg, 487, "Role Conflict"))
            return ROLE_CONFLICT
        self.checks += 1
        self.last_check = time.monotonic()
        if "USE-CANDIDATE" in msg.attributes:
            if self.selected_route is not route:
                log.debug("%s: nominated %s", self.local_username, route.path)
            self._select(route)
            self.nominated = True
        elif self.selected_route is None:
            self._select(route)
        route.send(binding_success(msg, route.path.client, self._password_key))
        return AUTHENTICATED

    def _select(self, route: Route) -> None:
        self.selected_route = route
        self._path_selected.set()

    def deliver(self, data: bytes) -> None:
        """DTLS or SRTCP (or SRTP off the fast path) on one of this call's routes, for aiortc."""
        if not self.closed:
            self._queue.put_nowait(data)

    def send_now(self, data: bytes) -> None:
        """Synchronous send for the fast path; silently nothing once closed."""
        route = self.selected_route
        if route is not None and not self.closed:
            route.send(data)

    # --- the aioice.Connection surface aiortc uses ---------------------------------------------

    @property
    def local_candidates(self) -> list[Candidate]:
        # Empty until gathered, like aioice: aiortc starts ICE as soon as candidates exist.
        return list(self._candidates) if self._gathered else []

    @property
    def remote_candidates(self) -> list[Candidate]:
        return list(self._remote_candidates)

    async def gather_candidates(self) -> None:
        self._gathered = True

    async def add_remote_candidate(self, candidate: Candidate | None) -> None:
        # A lite agent learns the client's address from its checks (peer-reflexive); the
        # offered candidates are kept only for stats and debugging.
        if candidate is not None:
            self._remote_candidates.append(candidate)

    async def connect(self) -> None:
        """Return once a check selected a path; close after `setup_timeout` without one."""
        if self._consent_task is None:
            self._consent_task = asyncio.ensure_future(self._watch_consent())
        selected = asyncio.ensure_future(self._path_selected.wait())
        closed = asyncio.ensure_future(self._closed_event.wait())
        try:
            await asyncio.wait(
                {selected, closed},
                timeout=self._setup_timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            selected.cancel()
            closed.cancel()
        if self.selected_route is None or self.closed:
            self.close_reason = self.close_reason or "setup_timeout"
            await self.close()
            raise ConnectionError("ICE: no authenticated check before the setup timeout")

    async def recv(self) -> bytes:
        data = await self._queue.get()
        if data is None:
            self._queue.put_nowait(None)  # wake every later reader too
            raise ConnectionError("ICE connection closed")
        return data

    async def send(self, data: bytes) -> None:
        route = self.selected_route
        if self.closed or route is None:
            raise ConnectionError("ICE connection not established")
        route.send(data)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.rtp_sink = None
        self._closed_event.set()
        self._queue.put_nowait(None)
        if self._consent_task is not None and self._consent_task is not asyncio.current_task():
            self._consent_task.cancel()
        if self._on_close is not None:
            self._on_close(self)

    async def get_event(self) -> ConnectionClosed:
        # aioice returns None once closed, which would make RTCIceTransport._monitor spin;
        # always answering ConnectionClosed ends that loop (aiortc_seam checks _monitor).
        await self._closed_event.wait()
        return ConnectionClosed()

    # --- consent -----------------------------------------------------------------------------

    async def _watch_consent(self) -> None:
        while not self.closed:
            idle = time.monotonic() - self.last_check
            if idle >= self._consent_timeout:
                log.info("%s: consent expired after %.1f s", self.local_username, idle)
                self.close_reason = "consent_expired"
                await self.close()
                return
            await asyncio.sleep(min(1.0, self._consent_timeout - idle))
