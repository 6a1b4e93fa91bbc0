"""ICE for one call, all of it: a server-side ICE-lite agent (RFC 8445 §2.5).

The socket mux (transceiver/mux.py) only finds the agent a STUN datagram belongs to: by the
server ufrag in USERNAME for a path no call has yet, by the path afterwards. Everything else is
here: parsing, authentication, the answer, path selection, consent freshness, and standing in
for aioice.Connection towards aiortc's RTCIceTransport.

Why not aioice: it is a full agent that owns its sockets and sends checks. One shared socket
carries every call here, and a lite agent never sends a check. aiortc only needs a small part
of aioice.Connection (ufrag/pwd, candidates, gather_candidates, connect, recv, send, close,
get_event; aiortc_seam.ice_surface_missing() checks that at start-up), which is implemented below.

Binding requests (the client is the controlling full agent; we only answer). USERNAME is
`server ufrag:client ufrag`; the server part picks the password (see ICE restart below):
- no USERNAME or no MESSAGE-INTEGRITY: 400, counted `no_username`;
- MESSAGE-INTEGRITY that does not verify with this call's password: 401, `bad_integrity`, and no
  state changes at all (no consent refresh, no selection, no binding);
- a client claiming ICE-CONTROLLED: 487, `role_conflict` (we are lite, hence controlled);
- a client ufrag we have no password for (a client that restarted ICE, its PATCH not here yet):
  no answer, `unknown_client_ufrag`; the path is remembered and checked as soon as the PATCH
  brings that password (restart()). An answer now would tell the client the path works, and it
  would move its media there before we could verify it;
- otherwise the success response (XOR-MAPPED-ADDRESS = the client address, MESSAGE-INTEGRITY,
  FINGERPRINT); on a verified path (below) that is all, on a new one a check of our own first.
Error responses carry no MESSAGE-INTEGRITY: we cannot sign with a key the peer did not prove.

Paths are verified before anything but a STUN answer goes to them (return routability): an
authenticated request proves only that the sender knows the call's password, and a user knows
the password of their own call, so a request spoofed from a victim's address must not aim the
call's media at the victim. On a path not yet verified the agent answers the request and sends
its own Binding request there (before the answer, so it reaches the client first), with a
random 96-bit transaction id, USERNAME `client ufrag:server ufrag` as the request named them and
the client's password for that ufrag. Only a host that receives at that address sees the id;
its success response, signed with that password,
verifies the path, and only then does the mux bind it (route datagrams on it to this call) and
may it be selected. So a spoofed request costs its sender one answer and one check to the
victim, both about its own size, and moves nothing.

Selection (among verified paths): the first verified path is selected at once and connect()
returns, so DTLS starts; a check with USE-CANDIDATE selects its path (`nominated`), at once if
verified, else when it is; and a verified path takes over when the selected one has been silent
(no authenticated packet) for PATH_SILENCE s: a client whose NAT rebinds or who changes network
sends its next consent check from the new address, and that check's path wins once verified.
Browsers start DTLS as soon as their first check succeeds but nominate tens of milliseconds
later (Chromium: ~55 ms here); waiting for USE-CANDIDATE left their ClientHello queued that long.
ICE-lite servers such as mediasoup do the same.

ICE restart (RFC 8445 §9): restart() takes new credentials on both sides, and the previous ones
stay valid until the client nominates a verified path under our new ufrag (then the mux forgets
the old ufrag: `on_retire`), or the next restart; the session before it goes on meanwhile, as
the RFC asks (and for as long as a client keeps using the old ufrag on a connection). This is
what libwebrtc needs: its new sockets check at once, before the PATCH answer has reached it,
with our old ufrag and password and its own new ufrag, and it keeps those connections (and
those credentials) after the answer. Each half of a USERNAME is matched on its own, so a check
`old server ufrag:new client ufrag` is answered with the old password and checked back as
`new client ufrag:old server ufrag` with the client's new password.

Consent freshness (RFC 7675): no authenticated check on a verified path for `consent_timeout`
seconds closes the agent, which ends the call (browsers and aioice send one every ~5 s).
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
from transceiver.drops import (
    BAD_INTEGRITY,
    BAD_STUN,
    NO_USERNAME,
    PROBE_LIMITED,
    ROLE_CONFLICT,
    SEND_NO_CREDIT,
    UNKNOWN_CLIENT_UFRAG,
    UNKNOWN_UFRAG,
)
from transceiver.paths import Path, Route
from wire.stun import HEADER_LEN, MAGIC_COOKIE

log = logging.getLogger(__name__)

PWD_ALPHABET = string.ascii_letters + string.digits + "+/"
PWD_LEN = 24  # RFC 8445 §5.3 asks for at least 22 characters (128 bits)
HOST_PRIORITY = (126 << 24) | (65535 << 8) | 255  # RFC 8445 §5.1.2.1, host, component 1
_COOKIE = MAGIC_COOKIE.to_bytes(4, "big")

# What stun_received() did with a datagram, besides the drop reasons (transceiver/drops.py).
AUTHENTICATED = "authenticated"  # on a verified path (now or before): the mux binds the route
PROBING = "probing"  # authenticated on a path not verified yet: answered and checked, not bound
OTHER_CALL = "other_call"  # another call's ufrag, or a response to no check of ours
IGNORED = "ignored"  # an indication, or a response to a check that is no longer pending


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


def binding_check(username: str, password: bytes, tie_breaker: int) -> tuple[bytes, bytes]:
    """(datagram, transaction id) of our return-routability check (RFC 8445 §7.2.4 fields)."""
    request = aiostun.Message(
        message_method=aiostun.Method.BINDING,
        message_class=aiostun.Class.REQUEST,
        transaction_id=secrets.token_bytes(12),  # unguessable: only the path's host sees it
    )
    request.attributes["USERNAME"] = username
    request.attributes["PRIORITY"] = HOST_PRIORITY
    request.attributes["ICE-CONTROLLED"] = tie_breaker
    request.add_message_integrity(password)
    request.add_fingerprint()
    return bytes(request), request.transaction_id


class _Pending:
    """A path that authenticated a check but has not answered ours yet."""

    __slots__ = ("client", "nominated", "nominated_under", "password", "route", "server", "txids")

    def __init__(self, route: Route) -> None:
        self.route = route  # the latest datagram's: where a check of ours goes
        self.server = ""  # the ufrags the path's latest check named, which ours echoes swapped
        self.client = ""
        self.password = b""  # the client's password our checks in `txids` are signed with
        self.txids: list[bytes] = []
        self.nominated = False
        self.nominated_under = ""  # the server ufrag of the check that sent USE-CANDIDATE


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
        on_retire: Callable[[IceLiteAgent, str], None] | None = None,
        probes: dict[bytes, IceLiteAgent] | None = None,
        drop: Callable[[str], None] | None = None,
    ) -> None:
        self.local_username = local_username
        self.local_password = random_password()
        self._password_key = self.local_password.encode("utf8")
        # The server ufrag and password before the last restart, valid until retired (see the
        # module doc), and the client's credentials of that time; on_retire(agent, ufrag) tells
        # the mux when the old ufrag stops finding this call.
        self._previous_local: tuple[str, bytes] | None = None
        self._previous_remote: tuple[str, str] | None = None
        self._on_retire = on_retire
        self._candidates = candidates
        self._gathered = False
        self._consent_timeout = consent_timeout
        self._setup_timeout = setup_timeout
        self._on_close = on_close
        # The mux's table of our checks' transaction ids (a response carries no USERNAME), and
        # its drop counter; both private to this agent when it is used alone.
        self._probes: dict[bytes, IceLiteAgent] = {} if probes is None else probes
        self._drop = drop
        self._pending: dict[object, _Pending] = {}  # by route key, oldest first
        self._probe_tokens = float(defaults.PROBE_BURST)  # PROBE_RATE budget, refilled lazily
        self._probe_refill = time.monotonic()
        self._tie_breaker = secrets.randbits(64)
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
        self.probes_sent = 0  # our return-routability checks
        self.verified = 0  # paths that answered one
        self.refused = 0  # media datagrams a path's send credit did not cover
        self.closed = False
        self.close_reason: str | None = None  # why we closed it ourselves, if we did
        # Set by the first verified path, nominating or not (see the module doc).
        self._path_selected = asyncio.Event()
        self._closed_event = asyncio.Event()
        self._queue: asyncio.Queue[tuple[bytes, Route | None, str | None] | None] = asyncio.Queue()
        self._delivered: tuple[Route | None, str | None] = (None, None)
        # The Opus fast path's SRTP receiver (transceiver/fastpath.py): RTP on this call's
        # routes goes there directly instead of being queued for aiortc (paths.Route).
        self.rtp_sink: Callable[[bytes], bool] | None = None
        self._consent_task: asyncio.Task[None] | None = None

    @property
    def selected(self) -> Path | None:
        return None if self.selected_route is None else self.selected_route.path

    @property
    def ufrags(self) -> list[str]:
        """The server ufrags that find this call: the current one, and the previous one until
        it is retired."""
        previous = self._previous_local
        return [self.local_username] if previous is None else [self.local_username, previous[0]]

    def _local_key(self, ufrag: str) -> bytes | None:
        if ufrag == self.local_username:
            return self._password_key
        previous = self._previous_local
        return previous[1] if previous is not None and ufrag == previous[0] else None

    def _client_password(self, ufrag: str) -> bytes | None:
        if ufrag == self.remote_username and self.remote_password is not None:
            return self.remote_password.encode("utf8")
        previous = self._previous_remote
        return previous[1].encode("utf8") if previous is not None and ufrag == previous[0] else None

    def is_verified(self, route: Route) -> bool:
        """Whether the path answered one of our checks (so the mux bound it to us)."""
        return route in self.routes

    # --- STUN from the mux -------------------------------------------------------------------

    def stun_received(self, data: bytes, route: Route, relay: str | None = None) -> str:
        """A STUN datagram for this call on `route` (via `relay`, if tunneled): handle it.

        Returns AUTHENTICATED (the mux binds `route`), PROBING, OTHER_CALL, IGNORED or the drop
        reason to count.
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
        if msg.message_class == aiostun.Class.RESPONSE:
            return self._probe_answered(msg, route, len(data))
        if msg.message_class != aiostun.Class.REQUEST:
            return IGNORED  # an indication, or an error response: nothing to do for a lite agent
        username = msg.attributes.get("USERNAME")
        server, _, client = username.partition(":") if isinstance(username, str) else ("", "", "")
        key = self._local_key(server)
        if isinstance(username, str) and key is None:
            return OTHER_CALL
        if key is None or "MESSAGE-INTEGRITY" not in msg.attributes:
            route.send(binding_error(msg, 400, "Bad Request"))
            return NO_USERNAME
        if not msg.check_message_integrity(key):
            route.send(binding_error(msg, 401, "Unauthenticated"))
            return BAD_INTEGRITY
        if "ICE-CONTROLLED" in msg.attributes:
            route.send(binding_error(msg, 487, "Role Conflict"))
            return ROLE_CONFLICT
        nominate = "USE-CANDIDATE" in msg.attributes
        if not self.is_verified(route) or self._client_password(client) is None:
            pending = self._track(route, server, client, nominate)
            if not pending.password:
                return UNKNOWN_CLIENT_UFRAG  # unanswered: restart() checks the path back
            if not self._probe_budget():
                return PROBE_LIMITED
            self.checks += 1
            self._probe(pending)  # first, so the client sees it before our answer
            route.send(binding_success(msg, route.path.client, key))
            return PROBING
        self.checks += 1
        answer = binding_success(msg, route.path.client, key)
        self.last_check = time.monotonic()
        route.authenticated(len(data), relay)
        self._consider(route, nominate, server)
        route.send(answer)
        return AUTHENTICATED

    def _probe_budget(self) -> bool:
        """One token of the call's PROBE_RATE budget for answering an unverified path."""
        now = time.monotonic()
        self._probe_tokens = min(
            float(defaults.PROBE_BURST),
            self._probe_tokens + (now - self._probe_refill) * defaults.PROBE_RATE,
        )
        self._probe_refill = now
        if self._probe_tokens < 1:
            return False
        self._probe_tokens -= 1
        return True

    def _track(self, route: Route, server: str, client: str, nominate: bool) -> _Pending:
        """Remember an authenticated check from a path not verified yet (bounded: PROBE_PATHS)
        with the credentials it named; `password` is b"" while we have none for its client."""
        pending = self._pending.pop(route.key, None)
        if pending is None:
            pending = _Pending(route)
            if len(self._pending) >= defaults.PROBE_PATHS:  # forget the oldest
                oldest = self._pending.pop(next(iter(self._pending)))
                self._forget(oldest.txids)
        self._pending[route.key] = pending  # newest last
        password = self._client_password(client) or b""
        if password != pending.password:  # checks of ours signed otherwise prove nothing now
            self._forget(pending.txids)
            pending.txids.clear()
        pending.route, pending.server, pending.client, pending.password = (
            route,
            server,
            client,
            password,
        )
        if nominate:
            pending.nominated, pending.nominated_under = True, server
        return pending

    def _probe(self, pending: _Pending) -> None:
        """Send our check to a pending path (bounded: PROBE_TXIDS checks in flight per path)."""
        check, txid = binding_check(
            f"{pending.client}:{pending.server}", pending.password, self._tie_breaker
        )
        pending.txids.append(txid)
        self._probes[txid] = self
        if len(pending.txids) > defaults.PROBE_TXIDS:
            self._forget([pending.txids.pop(0)])
        self.probes_sent += 1
        pending.route.send(check)

    def _forget(self, txids: list[bytes]) -> None:
        for txid in txids:
            if self._probes.get(txid) is self:
                del self._probes[txid]

    def _probe_answered(self, msg: aiostun.Message, route: Route, nbytes: int) -> str:
        """A response on `route`: it verifies the path if it answers our check sent there."""
        txid = msg.transaction_id
        if self._probes.get(txid) is not self:
            return OTHER_CALL
        pending = self._pending.get(route.key)
        if pending is None or txid not in pending.txids:
            return IGNORED  # ours, but sent to another path: not proof for this one
        if not msg.check_message_integrity(pending.password):
            return BAD_INTEGRITY
        del self._pending[route.key]
        self._forget(pending.txids)
        self.verified += 1
        self.last_check = time.monotonic()
        route.grant(defaults.SEND_CREDIT_VERIFIED)
        route.authenticated(nbytes, route.relay)
        if route not in self.routes:
            self.routes.append(route)
        log.debug("%s: verified %s", self.local_username, route.path)
        self._consider(route, pending.nominated, pending.nominated_under)
        return AUTHENTICATED

    def _consider(self, route: Route, nominate: bool, under: str = "") -> None:
        """Selection among verified paths (see the module doc); `under`: the server ufrag of
        the nominating check (a nomination under the current one ends the previous session)."""
        current = self.selected_route
        if nominate:
            if current is not route:
                log.debug("%s: nominated %s", self.local_username, route.path)
            self.nominated = True
            self._select(route)
            if under == self.local_username:
                self._retire_previous()
        elif current is None:
            self._select(route)
        elif current is not route and time.monotonic() - current.heard > defaults.PATH_SILENCE:
            log.info("%s: %s went silent, now %s", self.local_username, current.path, route.path)
            self._select(route)

    def _select(self, route: Route) -> None:
        self.selected_route = route
        self._path_selected.set()

    def deliver(self, data: bytes, route: Route | None = None, relay: str | None = None) -> None:
        """DTLS or SRTCP (or SRTP off the fast path) on one of this call's routes, for aiortc."""
        if not self.closed:
            self._queue.put_nowait((data, route, relay))

    def media_authenticated(self, nbytes: int) -> None:
        """aiortc's SRTP/SRTCP unprotect of the datagram recv() handed it last succeeded."""
        route, relay = self._delivered
        if route is not None:
            route.authenticated(nbytes, relay)

    def send_now(self, data: bytes) -> None:
        """Synchronous send for the fast path; silently nothing once closed."""
        route = self.selected_route
        if route is not None and not self.closed and not route.send_media(data):
            self._refuse()

    def _refuse(self) -> None:
        self.refused += 1
        if self._drop is not None:
            self._drop(SEND_NO_CREDIT)

    # --- ICE restart (RFC 8445 §9, WHIP PATCH) -------------------------------------------------

    def restart(self, ufrag: str, remote_username: str, remote_password: str) -> str:
        """New credentials on both sides; returns our new password.

        The previous ones stay valid until the client nominates a verified path under `ufrag`
        (see the module doc; one before them, after two quick restarts, is retired now). The
        selected path and its bound routes stay, so DTLS and media go on where they were until
        a nomination selects another path. Checks of ours in flight are forgotten; paths whose
        checks named the client's new ufrag before we knew its password are checked now.
        """
        self._retire_previous()
        self._previous_local = (self.local_username, self._password_key)
        if self.remote_username is not None and self.remote_password is not None:
            self._previous_remote = (self.remote_username, self.remote_password)
        self.local_username = ufrag
        self.local_password = random_password()
        self._password_key = self.local_password.encode("utf8")
        self.remote_username = remote_username
        self.remote_password = remote_password
        waiting = [p for p in self._pending.values() if p.client == remote_username]
        for pending in self._pending.values():
            self._forget(pending.txids)
        self._pending.clear()
        self.nominated = False  # the client nominates again under the new credentials
        for pending in waiting:
            if self._probe_budget():
                self._track(pending.route, pending.server, pending.client, pending.nominated)
                self._probe(self._pending[pending.route.key])
        return self.local_password

    def _retire_previous(self) -> None:
        """The session before the last restart is over: its server ufrag and password stop."""
        previous, self._previous_local, self._previous_remote = self._previous_local, None, None
        if previous is not None:
            log.debug("%s: retired the previous ufrag %s", self.local_username, previous[0])
            if self._on_retire is not None:
                self._on_retire(self, previous[0])

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
        item = await self._queue.get()
        if item is None:
            self._queue.put_nowait(None)  # wake every later reader too
            raise ConnectionError("ICE connection closed")
        data, route, relay = item
        self._delivered = (route, relay)  # aiortc unprotects it before it reads another
        return data

    async def send(self, data: bytes) -> None:
        route = self.selected_route
        if self.closed or route is None:
            raise ConnectionError("ICE connection not established")
        if not route.send_media(data):
            self._refuse()

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.rtp_sink = None
        for pending in self._pending.values():
            self._forget(pending.txids)
        self._pending.clear()
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
            # Sleep until the earliest moment consent could have expired: one wake-up per
            # timeout per call, not one a second (close() cancels this task).
            await asyncio.sleep(self._consent_timeout - idle)
