"""A server-side ICE-lite agent (RFC 8445 §2.5) shaped like aioice.Connection.

aiortc's RTCIceTransport only needs a handful of things from aioice.Connection (ufrag/pwd,
candidates, gather_candidates, connect, recv, send, close, get_event). aioice itself is a full
agent that owns its sockets and sends checks, which is wrong for us: one shared socket carries
every call and a lite agent never sends checks. So this class implements that small surface and
is fed by the socket mux (transceiver/mux.py), which has already authenticated each Binding
request with this connection's password.

Rules implemented here:
- The client is the controlling full agent; we only answer its checks.
- The first authenticated check makes its path the selected one at once, and connect()
  returns, so DTLS can start; a check carrying USE-CANDIDATE then makes its path the selected
  one for good. Browsers start DTLS as soon as their first check succeeds but nominate tens of
  milliseconds later (Chromium: ~55 ms here); waiting for USE-CANDIDATE left their ClientHello
  queued that long. ICE-lite servers such as mediasoup do the same.
- Consent freshness (RFC 7675): if no authenticated check arrives for `consent_timeout`
  seconds the connection closes, which ends the call.
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

from transceiver.paths import Path, PathSender

log = logging.getLogger(__name__)

PWD_ALPHABET = string.ascii_letters + string.digits + "+/"
PWD_LEN = 24  # RFC 8445 §5.3 asks for at least 22 characters (128 bits)
CONSENT_TIMEOUT = 30.0  # RFC 7675 §5.1
SETUP_TIMEOUT = 30.0  # give up when no check is nominated this long after the answer
HOST_PRIORITY = (126 << 24) | (65535 << 8) | 255  # RFC 8445 §5.1.2.1, host, component 1


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


def binding_success(request: aiostun.Message, mapped: tuple[str, int], password: str) -> bytes:
    response = aiostun.Message(
        message_method=aiostun.Method.BINDING,
        message_class=aiostun.Class.RESPONSE,
        transaction_id=request.transaction_id,
    )
    response.attributes["XOR-MAPPED-ADDRESS"] = mapped
    response.add_message_integrity(password.encode("utf8"))
    return bytes(response)


def binding_error(request: aiostun.Message, code: int, reason: str) -> bytes:
    """An unauthenticated error response (we cannot sign with a key the peer did not prove)."""
    response = aiostun.Message(
        message_method=aiostun.Method.BINDING,
        message_class=aiostun.Class.ERROR,
        transaction_id=request.transaction_id,
    )
    response.attributes["ERROR-CODE"] = (code, reason)
    response.add_fingerprint()
    return bytes(response)


class IceLiteConnection:
    """Duck-types the part of aioice.Connection that aiortc's RTCIceTransport uses."""

    def __init__(
        self,
        *,
        local_username: str,
        candidates: list[Candidate],
        sender: PathSender,
        consent_timeout: float = CONSENT_TIMEOUT,
        setup_timeout: float = SETUP_TIMEOUT,
        on_close: Callable[[IceLiteConnection], None] | None = None,
    ) -> None:
        self.local_username = local_username
        self.local_password = random_password()
        self._candidates = candidates
        self._gathered = False
        self._sender = sender
        self._consent_timeout = consent_timeout
        self._setup_timeout = setup_timeout
        self._on_close = on_close
        # aiortc writes these; a lite agent is always controlled whatever it is told.
        self.ice_controlling = False
        self.remote_is_lite = False
        self.remote_username: str | None = None
        self.remote_password: str | None = None
        self._remote_candidates: list[Candidate] = []
        self.selected: Path | None = None
        self.nominated = False  # the client has sent USE-CANDIDATE (selected is final)
        self.last_check = time.monotonic()
        self.checks = 0
        self.closed = False
        self.close_reason: str | None = None  # why we closed it ourselves, if we did
        self._nominated = asyncio.Event()
        self._closed_event = asyncio.Event()
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        # The Opus fast path's SRTP receiver (transceiver/fastpath.py); the mux hands it RTP
        # (not RTCP) directly instead of queueing it for aiortc.
        self.rtp_sink: Callable[[bytes], None] | None = None
        self._consent_task: asyncio.Task[None] | None = None

    # --- the aioice.Connection surface -------------------------------------------------------

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
        if self._consent_task is None:
            self._consent_task = asyncio.ensure_future(self._watch_consent())
        nominated = asyncio.ensure_future(self._nominated.wait())
        closed = asyncio.ensure_future(self._closed_event.wait())
        try:
            await asyncio.wait(
                {nominated, closed},
                timeout=self._setup_timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            nominated.cancel()
            closed.cancel()
        if self.selected is None or self.closed:
            self.close_reason = self.close_reason or "setup_timeout"
            await self.close()
            raise ConnectionError("ICE: no nominated pair")

    async def recv(self) -> bytes:
        data = await self._queue.get()
        if data is None:
            self._queue.put_nowait(None)  # wake every later reader too
            raise ConnectionError("ICE connection closed")
        return data

    async def send(self, data: bytes) -> None:
        if self.closed or self.selected is None:
            raise ConnectionError("ICE connection not established")
        self._sender.send_on_path(self.selected, data)

    def send_now(self, data: bytes) -> None:
        """Synchronous send for the fast path; silently nothing once closed."""
        if not self.closed and self.selected is not None:
            self._sender.send_on_path(self.selected, data)

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
        # always answering ConnectionClosed ends that loop.
        await self._closed_event.wait()
        return ConnectionClosed()

    # --- fed by the mux ----------------------------------------------------------------------

    def handle_check(self, request: aiostun.Message, path: Path) -> bytes:
        """An authenticated Binding request arrived on `path`; returns the response bytes."""
        self.checks += 1
        self.last_check = time.monotonic()
        if self.closed:
            pass
        elif "USE-CANDIDATE" in request.attributes:
            if self.selected != path:
                log.debug("%s: nominated %s", self.local_username, path)
            self.selected = path
            self.nominated = True
            self._nominated.set()
        elif self.selected is None:  # usable until the client nominates (see module doc)
            self.selected = path
            self._nominated.set()
        return binding_success(request, path.client, self.local_password)

    def handle_data(self, data: bytes) -> None:
        if not self.closed:
            self._queue.put_nowait(data)

    async def _watch_consent(self) -> None:
        while not self.closed:
            idle = time.monotonic() - self.last_check
            if idle >= self._consent_timeout:
                log.info("%s: consent expired after %.1f s", self.local_username, idle)
                self.close_reason = "consent_expired"
                await self.close()
                return
            await asyncio.sleep(min(1.0, self._consent_timeout - idle))
