"""The set of live calls: admission (capacity, draining), creation, deletion, draining."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time

from aioice import Candidate

from transceiver import defaults
from transceiver.app import CallApp
from transceiver.certs import SharedCertificate
from transceiver.keys import Keyring, NoRoutingKey
from transceiver.metrics import Metrics
from transceiver.mux import SocketMux
from transceiver.sdp import OfferError, ice_fragment
from transceiver.session import CallSession

log = logging.getLogger(__name__)


class Refused(Exception):
    """The transceiver will not take a call now; `status` is the HTTP status to answer."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class CallManager:
    def __init__(
        self,
        *,
        mux: SocketMux,
        keyring: Keyring,
        app: CallApp,
        metrics: Metrics,
        candidates: list[Candidate],
        cluster: int,
        txr_id: int,
        capacity: int = defaults.CAPACITY,
        consent_timeout: float = defaults.CONSENT_TIMEOUT,
        setup_timeout: float = defaults.SETUP_TIMEOUT,
        fast_media: bool = True,
    ) -> None:
        self.mux = mux
        self.keyring = keyring
        self.app = app
        self.metrics = metrics
        self.candidates = candidates
        self.cluster = cluster
        self.txr_id = txr_id
        self.capacity = capacity
        self.consent_timeout = consent_timeout
        self.setup_timeout = setup_timeout
        self.fast_media = fast_media
        self.certificate = SharedCertificate()  # one DTLS certificate for every call
        self.draining = False
        self.sessions: dict[str, CallSession] = {}
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def active(self) -> int:
        return len(self.sessions)

    def _refuse(self, status: int, reason: str, label: str) -> Refused:
        self.metrics.calls_rejected.labels(label).inc()
        return Refused(status, reason)

    async def create(self, offer: str) -> tuple[CallSession, str]:
        """Answer an offer; raises Refused (503) or OfferError (400)."""
        received = time.monotonic()
        if self.draining:
            raise self._refuse(503, "draining: this transceiver takes no new calls", "draining")
        if self.active >= self.capacity:
            raise self._refuse(503, f"full: {self.capacity} calls in progress", "full")
        try:
            ufrag = self.keyring.mint(self.cluster, self.txr_id)
        except NoRoutingKey as exc:
            raise self._refuse(503, str(exc), "no_key") from None
        call_id = secrets.token_urlsafe(12)
        session = CallSession(
            call_id=call_id,
            ufrag=ufrag,
            candidates=self.candidates,
            mux=self.mux,
            app=self.app,
            consent_timeout=self.consent_timeout,
            setup_timeout=self.setup_timeout,
            fast_media=self.fast_media,
            fast_stats=self.metrics,
            certificate=self.certificate,
            on_connected=lambda s: self.metrics.setup_seconds.observe(time.monotonic() - received),
            on_end=self._ended,
        )
        self.sessions[call_id] = session
        self._idle.clear()
        self.metrics.calls_active.set(self.active)
        try:
            answer = await session.answer(offer)
        except asyncio.CancelledError:  # the HTTP client went away mid-answer
            session.end_soon("cancelled")
            raise
        except OfferError:
            self.metrics.calls_rejected.labels("bad_offer").inc()
            await session.end("bad_offer")
            raise
        except Exception as exc:
            log.exception("call %s: could not answer", call_id)
            await session.end("error")
            raise OfferError(f"could not answer: {type(exc).__name__}") from None
        self.metrics.calls_started.inc()
        log.info("call %s: answered, ufrag %s", call_id, ufrag)
        return session, answer

    def restart_ice(self, call_id: str, remote_username: str, remote_password: str) -> str | None:
        """ICE restart of a running call: a fresh routing ufrag from the keyring (the current
        key, so relays route the new checks by it) and password; returns the answer fragment,
        None if the call is gone or ending. Raises Refused (503) without a routing key."""
        session = self.sessions.get(call_id)
        if session is None or session.end_reason is not None or session.ice.closed:
            return None
        try:
            ufrag = self.keyring.mint(self.cluster, self.txr_id)
        except NoRoutingKey as exc:
            raise self._refuse(503, str(exc), "no_key") from None
        password = session.restart_ice(ufrag, remote_username, remote_password)
        self.metrics.ice_restarts.inc()
        return ice_fragment(ufrag, password, self.candidates, lite=True)

    def _ended(self, session: CallSession, reason: str) -> None:
        if self.sessions.pop(session.id, None) is None:
            return
        if reason != "bad_offer":
            self.metrics.calls_ended.labels(reason).inc()
        self.metrics.calls_active.set(self.active)
        log.info("call %s: ended (%s)", session.id, reason)
        if not self.sessions:
            self._idle.set()

    async def delete(self, call_id: str) -> bool:
        session = self.sessions.get(call_id)
        if session is None:
            return False
        await session.end("deleted")
        return True

    async def end_all(self, reason: str) -> None:
        await asyncio.gather(*(s.end(reason) for s in list(self.sessions.values())))

    async def drain(self, timeout: float) -> bool:
        """Stop taking calls; wait for running ones to end. True if they all ended in time."""
        self.draining = True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False
