"""One call: an aiortc RTCPeerConnection whose ICE transport is our ICE-lite agent.

RTCPeerConnection is kept for what it does well (SDP negotiation of codecs/mids/extensions,
DTLS, SRTP, RTP/RTCP). Two things are changed from outside, through transceiver/aiortc_seam.py:
- its single ICE transport gets an IceLiteAgent (transceiver/ice.py) instead of an
  aioice.Connection (swapped right after addTransceiver, before any negotiation), since aioice
  is a full agent owning its own sockets;
- the DTLS role is set explicitly so the answer says `a=setup:passive` (browsers expect the
  answerer to be the DTLS server; aiortc would answer `active`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Protocol

from aioice import Candidate
from aiortc import (
    RTCBundlePolicy,
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.sdp import SessionDescription

from transceiver import aiortc_seam, media
from transceiver.app import Call, CallApp
from transceiver.certs import SharedCertificate
from transceiver.fastpath import OpusFastPath
from transceiver.ice import IceLiteAgent
from transceiver.mux import SocketMux
from transceiver.sdp import OfferError, add_ice_lite, validate_offer

log = logging.getLogger(__name__)


class FastPathStats(Protocol):
    def fastpath_started(self, fast: OpusFastPath) -> None: ...
    def fastpath_ended(self, fast: OpusFastPath) -> None: ...


class CallSession:
    def __init__(
        self,
        *,
        call_id: str,
        ufrag: str,
        candidates: list[Candidate],
        mux: SocketMux,
        app: CallApp,
        consent_timeout: float,
        setup_timeout: float,
        fast_media: bool = True,
        fast_stats: FastPathStats | None = None,
        certificate: SharedCertificate | None = None,
        on_connected: Callable[[CallSession], None] | None = None,
        on_end: Callable[[CallSession, str], None] | None = None,
    ) -> None:
        self.id = call_id
        self.created = time.monotonic()
        self.connected_at: float | None = None
        self.end_reason: str | None = None
        self.ice_restarts = 0
        self.call = Call(call_id, app.media)
        self._app = app
        self._mux = mux
        self._fast_media = fast_media
        self._fast_stats = fast_stats
        self._opus_pts: set[int] = set()
        self.fastpath: OpusFastPath | None = None
        self._on_connected = on_connected
        self._on_end = on_end
        self._tasks: list[asyncio.Task[None]] = []
        self._ending: asyncio.Task[None] | None = None
        self.ended = asyncio.Event()
        self.ice = IceLiteAgent(
            local_username=ufrag,
            candidates=candidates,
            consent_timeout=consent_timeout,
            setup_timeout=setup_timeout,
            on_close=self._ice_closed,
            on_retire=mux.retire,
            probes=mux.probes,
            drop=mux.drop,
        )
        config = RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
        if certificate is None:
            self.pc = RTCPeerConnection(config)
        else:
            self.pc = certificate.peer_connection(config)
        # SCTP rides the call's DTLS (aiortc's, on the fast path too): channels the client opens.
        self.pc.on("datachannel", self.call.channels.attach)

    @property
    def ufrag(self) -> str:
        return self.ice.local_username

    async def answer(self, offer: str) -> str:
        """Negotiate; returns the SDP answer. Raises OfferError for offers we cannot take."""
        offered = validate_offer(offer)
        self._mux.register(self.ice)
        pc = self.pc
        # The SDP transceiver (aiortc's RTCRtpTransceiver), not to be confused with this process.
        rtp = pc.addTransceiver(media.OutboundTrack(self.call), direction="sendrecv")
        dtls = rtp.receiver.transport
        # MAX_BUNDLE makes every other m-line reuse this transport, so no other
        # aioice.Connection ever gathers or connects.
        aiortc_seam.use_ice_agent(dtls.transport, self.ice)
        if self.call.media == "opus":
            opus = {
                c.payloadType
                for m in offered.media
                if m.kind == "audio"
                for c in m.rtp.codecs
                if c.mimeType.lower() == "audio/opus"
            }
            media.tap_opus(rtp.receiver, self.call, opus)
            self._opus_pts = opus
        dtls.on("statechange", lambda: self._dtls_state(dtls.state))
        pc.on("connectionstatechange", self._pc_state)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        except Exception as exc:  # aiortc rejects e.g. no common codec with assorted errors
            raise OfferError(f"offer rejected: {exc}") from None
        if pc.sctp is not None:  # the offer has a data channel m-line
            aiortc_seam.enforce_sctp_receive_window(pc.sctp, self.call.channels.window_drop)
            aiortc_seam.watch_sctp(pc.sctp, self.ice.media_authenticated)
        offered_role = next((m.dtls.role for m in offered.media if m.dtls is not None), "auto")
        # Answer passive (we are the DTLS server) unless the offer insisted on being passive.
        aiortc_seam.set_dtls_role(dtls, "client" if offered_role == "server" else "server")
        answer = await pc.createAnswer()
        await pc.setLocalDescription(answer)
        return add_ice_lite(pc.localDescription.sdp)

    def restart_ice(self, ufrag: str, remote_username: str, remote_password: str) -> str:
        """ICE restart: the agent takes new credentials, the mux routes `ufrag` to it too (the
        old ufrag until the agent retires it); aiortc (DTLS, SRTP, SCTP) and the app's Call do
        not notice. Returns the new server password."""
        old = self.ice.local_username
        password = self.ice.restart(ufrag, remote_username, remote_password)
        self._mux.rekey(self.ice)
        self.ice_restarts += 1
        log.info("call %s: ICE restart, ufrag %s -> %s", self.id, old, ufrag)
        return password

    def _dtls_state(self, state: str) -> None:
        if state == "connected" and self.connected_at is None:
            self.connected_at = time.monotonic()
            if self.call.media == "opus" and self._fast_media:
                self._start_fastpath()
            # What aiortc unprotects (SRTCP, and SRTP off the fast path) proves its path too.
            rtp = self.pc.getTransceivers()[0]
            aiortc_seam.watch_srtp(rtp.receiver.transport, self.ice.media_authenticated)
            self._tasks.append(asyncio.ensure_future(self._run_app()))
            if self.call.media == "pcm":
                track = self.pc.getTransceivers()[0].receiver.track
                self._tasks.append(asyncio.ensure_future(media.pump_pcm(track, self.call)))
            if self._on_connected is not None:
                self._on_connected(self)

    def _start_fastpath(self) -> None:
        # Runs inside RTCDtlsTransport.start() right after _setup_srtp(), before any SRTP can
        # be received, so every RTP packet of the call goes through the fast path.
        rtp = self.pc.getTransceivers()[0]
        answer = SessionDescription.parse(self.pc.localDescription.sdp)
        codecs = [c for m in answer.media if m.kind == "audio" for c in m.rtp.codecs]
        if not codecs or codecs[0].mimeType.lower() != "audio/opus":
            log.info("call %s: answer does not send Opus first, media stays on aiortc", self.id)
            return
        fast = OpusFastPath(
            dtls=rtp.receiver.transport,
            sender=rtp.sender,
            call=self.call,
            payload_types=self._opus_pts,
            send_payload_type=codecs[0].payloadType,
            write=self.ice.send_now,
        )
        self.fastpath = fast
        if self._fast_stats is not None:
            self._fast_stats.fastpath_started(fast)
        self.ice.rtp_sink = fast.rtp_received
        self.call._sink = fast.send

    async def _run_app(self) -> None:
        # The app returning is its way to hang up; an app that fails hangs up too.
        try:
            await self._app.handle_call(self.call)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("call %s: app failed", self.id)
            self.end_soon("app_error")
        else:
            self.end_soon("app_done")

    def _pc_state(self) -> None:
        if self.pc.connectionState in ("failed", "closed"):
            self.end_soon(self.ice.close_reason or "peer_closed")

    def _ice_closed(self, agent: IceLiteAgent) -> None:
        self._mux.unregister(agent)
        if agent.close_reason is not None:
            self.end_soon(agent.close_reason)

    def end_soon(self, reason: str) -> None:
        if self._ending is None:
            self._ending = asyncio.ensure_future(self.end(reason))

    async def end(self, reason: str) -> None:
        """Idempotent: tear the call down and tell the app and the owner why."""
        if self.end_reason is not None:
            await self.ended.wait()
            return
        self.end_reason = reason
        self.call._end()
        for task in self._tasks:
            task.cancel()
        try:
            await self.pc.close()
        except Exception:
            log.exception("call %s: close failed", self.id)
        await self.ice.close()
        self._mux.unregister(self.ice)
        if self.fastpath is not None and self._fast_stats is not None:
            self._fast_stats.fastpath_ended(self.fastpath)
        if self.connected_at is not None:
            try:
                await self._app.call_ended(self.call, reason)
            except Exception:
                log.exception("call %s: app call_ended failed", self.id)
        if self._on_end is not None:
            self._on_end(self, reason)
        self.ended.set()
