"""The one seam into aiortc, aioice and pylibsrtp internals: every private touch lives here.

aiortc gives no public way to do what the transceiver needs (bring its own ICE agent, answer
as DTLS server, share one certificate, reach the SRTP sessions, skip decoding, feed the RTCP
sender's counters), so those few places reach inside. Each is a small named function below,
and each has a `Touch`: where upstream must still have it, with the shape we use. `check()`
runs at start-up (transceiver/service.py) and refuses to start when an upgrade moved any of
them, instead of failing mid-call or, worse for attribute writes, silently doing nothing.
tests/transceiver/test_aiortc_seam.py checks every touch against the installed versions, and
pyproject.toml bounds them to the versions this was checked with.

The last section is for clients (lab, bench, tests): aioice's nominated pair and consent task,
and an ICE restart onto a new local address (aiortc has no restartIce()).
"""

from __future__ import annotations

import dis
import random as _random
import types
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import aioice
import aiortc.rtcpeerconnection as aiortc_pc
import aiortc.rtcrtpreceiver as aiortc_receiver
import aiortc.rtcrtpsender as aiortc_sender
import aiortc.rtcsctptransport as aiortc_sctp
import pylibsrtp
import pylibsrtp._binding as srtp_binding
from aiortc import (
    RTCConfiguration,
    RTCDataChannel,
    RTCDtlsTransport,
    RTCIceGatherer,
    RTCIceTransport,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCRtpSender,
    RTCSctpTransport,
)
from aiortc.rtcdtlstransport import RTCCertificate
from aiortc.rtp import HeaderExtensionsMap, RtpPacket

_SENDER = "_RTCRtpSender__"  # name-mangled private fields of RTCRtpSender
_RECEIVER = "_RTCRtpReceiver__"  # ... and of RTCRtpReceiver
_DECODER_QUEUE = f"{_RECEIVER}decoder_queue"
_REMOTE_STREAMS = f"{_RECEIVER}remote_streams"
_SENDER_COUNTERS = ("ntp_timestamp", "rtp_timestamp", "packet_count", "octet_count")


class SeamError(RuntimeError):
    """An aiortc/aioice/pylibsrtp upgrade moved something the transceiver reaches into."""


# --- the touches, and the check over them -------------------------------------------------------


def _code_names(func: object) -> set[str]:
    """Every global and attribute name the code of `func` (and its nested code) mentions."""
    func = getattr(func, "fget", func)  # a property's getter
    func = getattr(func, "__func__", func)  # a classmethod's function
    code = getattr(func, "__code__", None)
    names: set[str] = set()
    stack = [code] if isinstance(code, types.CodeType) else []
    while stack:
        c = stack.pop()
        names.update(c.co_names)
        stack.extend(k for k in c.co_consts if isinstance(k, types.CodeType))
    return names


@dataclass(frozen=True)
class Touch:
    """One thing we use inside upstream: `owner.attr` exists and its code mentions `names`.

    For an attribute we write or read on instances, `attr` is the method that sets or reads
    it upstream (usually `__init__`), so a renamed field fails here rather than our write
    landing on a dead attribute.
    """

    what: str  # what we do there, for the error message
    owner: object  # a class or module
    attr: str
    names: tuple[str, ...] = ()

    def moved(self) -> str | None:
        """None if it is still there; else what is missing."""
        label = f"{getattr(self.owner, '__name__', self.owner)}.{self.attr}"
        if not hasattr(self.owner, self.attr):
            return f"{label} is gone"
        missing = [n for n in self.names if n not in _code_names(getattr(self.owner, self.attr))]
        if missing:
            return f"{label} no longer mentions {', '.join(missing)}"
        return None


TOUCHES: tuple[Touch, ...] = (
    Touch("ICE agent swap: fields written", RTCIceTransport, "__init__", ("_connection",)),
    Touch("ICE agent swap: fields written", RTCIceTransport, "__init__", ("_recv", "_send")),
    Touch("ICE agent swap: gatherer field", RTCIceGatherer, "__init__", ("_connection",)),
    Touch("ICE agent swap: DTLS reads it", RTCDtlsTransport, "_recv_next", ("_recv",)),
    Touch("ICE agent swap: DTLS writes it", RTCDtlsTransport, "_send_rtp", ("_send",)),
    Touch(
        "ICE close ends _monitor", RTCIceTransport, "_monitor", ("get_event", "ConnectionClosed")
    ),
    Touch("DTLS role", RTCDtlsTransport, "_set_role"),
    Touch("SRTP sessions", RTCDtlsTransport, "_setup_srtp", ("_rx_srtp", "_tx_srtp")),
    Touch("SRTP keyed before connected", RTCDtlsTransport, "start", ("_setup_srtp",)),
    Touch(
        "SRTP receive session watched",
        RTCDtlsTransport,
        "_recv_next",
        ("_rx_srtp", "unprotect", "unprotect_rtcp"),
    ),
    Touch(
        "RTP header extensions map",
        RTCDtlsTransport,
        "__init__",
        ("_rtp_header_extensions_map",),
    ),
    Touch("sender SSRC", RTCRtpSender, "__init__", ("_ssrc",)),
    Touch("sender mid", RTCRtpSender, "send", (f"{_SENDER}mid",)),
    Touch(
        "sender counters written",
        RTCRtpSender,
        "__init__",
        tuple(_SENDER + c for c in _SENDER_COUNTERS),
    ),
    Touch(
        "sender counters read by its RTCP",
        RTCRtpSender,
        "_run_rtcp",
        tuple(_SENDER + c for c in _SENDER_COUNTERS),
    ),
    Touch("RTCP interval: sender draws it", RTCRtpSender, "_run_rtcp", ("random", "sleep")),
    Touch("RTCP interval: receiver draws it", RTCRtpReceiver, "_run_rtcp", ("random", "sleep")),
    Touch("RTCP interval: swapped global", aiortc_sender, "random"),
    Touch("RTCP interval: swapped global", aiortc_receiver, "random"),
    Touch("decoder queue replaced", RTCRtpReceiver, "__init__", (_DECODER_QUEUE,)),
    Touch("decoder queue read at start", RTCRtpReceiver, "receive", (_DECODER_QUEUE,)),
    Touch("receiver's RTP streams (tests)", RTCRtpReceiver, "__init__", (_REMOTE_STREAMS,)),
    Touch("RTP tap wraps the instance's", RTCRtpReceiver, "_handle_rtp_packet"),
    Touch("RTP tap: DTLS calls it", RTCDtlsTransport, "_handle_rtp_data", ("_handle_rtp_packet",)),
    Touch(
        "SCTP window: DATA handler called",
        RTCSctpTransport,
        "_receive_chunk",
        ("_receive_data_chunk",),
    ),
    Touch(
        "SCTP window: what DATA takes",
        RTCSctpTransport,
        "_receive_data_chunk",
        ("_advertised_rwnd", "_sack_needed"),
    ),
    Touch("SCTP window: advertised", RTCSctpTransport, "_send_sack", ("_advertised_rwnd",)),
    Touch("SCTP credit: wraps the instance's", RTCSctpTransport, "_handle_data"),
    Touch(
        "SCTP credit: DTLS hands decrypted data to it",
        RTCDtlsTransport,
        "_recv_next",
        ("_data_receiver", "_handle_data"),
    ),
    Touch(
        "shared certificate: swapped global",
        RTCPeerConnection,
        "__init__",
        ("RTCCertificate", "generateCertificate"),
    ),
    Touch("shared certificate: swapped global", aiortc_pc, "RTCCertificate"),
    Touch("fast SRTP: session fields", pylibsrtp.Session, "__init__", ("_srtp", "_cdata")),
    Touch("fast SRTP: session buffer", pylibsrtp.Session, "__init__", ("_buffer",)),
    Touch("fast SRTP: libsrtp call", pylibsrtp.Session, "protect", ("srtp_protect",)),
    Touch("fast SRTP: libsrtp call", pylibsrtp.Session, "unprotect", ("srtp_unprotect",)),
    Touch("fast SRTP: cffi library", srtp_binding, "lib"),
    Touch("fast SRTP: cffi library", srtp_binding, "ffi"),
    Touch(
        "client: nominated pair, consent task",
        aioice.Connection,
        "__init__",
        ("_nominated", "_query_consent_task"),
    ),
    Touch("client: host addresses gathered", aioice.ice, "get_host_addresses"),
    Touch("client: SCTP send below the size check", RTCSctpTransport, "_send"),
    Touch("client: binary PPID", aiortc_sctp, "WEBRTC_BINARY"),
    Touch(
        "client: gathering asks for host addresses",
        aioice.Connection,
        "gather_candidates",
        ("get_host_addresses",),
    ),
    Touch(
        "client ICE restart: agent fields moved",
        aioice.Connection,
        "__init__",
        ("_queue", "_event_waiter", "_protocols", "_local_candidates", "_local_candidates_end"),
    ),
    Touch(
        "client ICE restart: gathered on one address",
        aioice.Connection,
        "connect",
        ("_local_candidates_end",),
    ),
    Touch("client ICE restart: socket's owner", aioice.ice.StunProtocol, "__init__", ("receiver",)),
    Touch("client ICE restart: reads the queue", aioice.Connection, "recvfrom", ("_queue",)),
)


_ATTR_OPS = {"LOAD_ATTR", "LOAD_METHOD", "STORE_ATTR"}  # LOAD_METHOD: Python < 3.12


def _attrs_used_on(cls: type, field: str) -> set[str]:
    """Attribute names aiortc's `cls` reads, calls or writes on `self.<field>` (its bytecode)."""
    used: set[str] = set()
    for value in vars(cls).values():
        func = getattr(value, "fget", value)
        func = getattr(func, "__func__", func)
        if not isinstance(func, types.FunctionType):
            continue
        previous = None
        for ins in dis.get_instructions(func):
            if previous is not None and previous.argval == field and ins.opname in _ATTR_OPS:
                used.add(str(ins.argval))
            previous = ins if ins.opname in _ATTR_OPS else None
    return used


def ice_surface_missing(agent_class: type) -> list[str]:
    """What aiortc uses on its aioice.Connection that `agent_class` does not provide."""
    used = _attrs_used_on(RTCIceTransport, "_connection") | _attrs_used_on(
        RTCIceGatherer, "_connection"
    )
    provided = set(dir(agent_class)) | _code_names(agent_class.__init__)
    return sorted(used - provided)


def problems(ice_agent: type | None = None) -> list[str]:
    """Every touch that moved, and what the ICE stand-in lacks; empty when all is in place."""
    found = [f"{t.what}: {m}" for t in TOUCHES if (m := t.moved()) is not None]
    if ice_agent is not None:
        found += [
            f"RTCIceTransport uses aioice.Connection.{name}, {ice_agent.__name__} lacks it"
            for name in ice_surface_missing(ice_agent)
        ]
    return found


def check(ice_agent: type | None = None) -> None:
    """Raise SeamError naming everything that moved (start-up, before any call)."""
    found = problems(ice_agent)
    if found:
        versions = ", ".join(f"{n} {v}" for n, v in installed_versions().items())
        raise SeamError(
            f"the installed {versions} moved what the transceiver relies on "
            f"(transceiver/aiortc_seam.py): " + "; ".join(found)
        )


def installed_versions() -> dict[str, str]:
    from importlib.metadata import version

    return {name: version(name) for name in ("aiortc", "aioice", "pylibsrtp")}


# --- server side: ICE and DTLS ------------------------------------------------------------------


def use_ice_agent(ice_transport: RTCIceTransport, agent: object) -> None:
    """Make `agent` the transport's aioice.Connection, before any negotiation.

    RTCIceTransport copied recv/send from the connection its gatherer made; point all of them,
    and the gatherer's (it reports the local ufrag, password and candidates), at ours.
    """
    ice_transport._connection = agent  # type: ignore[assignment]
    ice_transport._recv = agent.recv  # type: ignore[attr-defined]
    ice_transport._send = agent.send  # type: ignore[attr-defined]
    ice_transport.iceGatherer._connection = agent  # type: ignore[assignment]


def set_dtls_role(dtls: RTCDtlsTransport, role: Literal["client", "server"]) -> None:
    """aiortc answers `a=setup:active`; browsers expect the answerer to be the DTLS server."""
    dtls._set_role(role)


def srtp_sessions(dtls: RTCDtlsTransport) -> tuple[pylibsrtp.Session, pylibsrtp.Session]:
    """(receive, transmit) sessions, keyed by aiortc in `_setup_srtp()`; None before that."""
    rx = dtls._rx_srtp
    return (rx.session if isinstance(rx, WatchedSrtp) else rx), dtls._tx_srtp


class WatchedSrtp:
    """aiortc's receive session, telling `authenticated(nbytes)` of every SRTP/SRTCP packet
    that unprotects: aiortc's path's proof that a datagram is the call's (paths.Route)."""

    __slots__ = ("authenticated", "session")

    def __init__(self, session: pylibsrtp.Session, authenticated: Callable[[int], None]) -> None:
        self.session = session
        self.authenticated = authenticated

    def unprotect(self, data: bytes) -> bytes:
        plain = self.session.unprotect(data)  # raises pylibsrtp.Error: nothing is told
        self.authenticated(len(data))
        return plain

    def unprotect_rtcp(self, data: bytes) -> bytes:
        plain = self.session.unprotect_rtcp(data)
        self.authenticated(len(data))
        return plain


def watch_srtp(dtls: RTCDtlsTransport, authenticated: Callable[[int], None]) -> None:
    """Wrap the receive session aiortc keyed in `_setup_srtp()` (call once it is connected)."""
    if dtls._rx_srtp is not None and not isinstance(dtls._rx_srtp, WatchedSrtp):
        dtls._rx_srtp = WatchedSrtp(dtls._rx_srtp, authenticated)


def header_extensions_map(dtls: RTCDtlsTransport) -> HeaderExtensionsMap:
    """The negotiated RTP header extension ids (what aiortc's serializer writes)."""
    return dtls._rtp_header_extensions_map


# --- server side: sender and receiver -----------------------------------------------------------


def sender_ssrc(sender: RTCRtpSender) -> int:
    return sender._ssrc


def sender_mid(sender: RTCRtpSender) -> str | None:
    return getattr(sender, f"{_SENDER}mid")


@dataclass(frozen=True)
class SenderCounters:
    ntp_timestamp: int
    rtp_timestamp: int
    packet_count: int
    octet_count: int


def publish_sender_stats(sender: RTCRtpSender, counters: SenderCounters) -> None:
    """Set what the sender's RTCP SR reports, for RTP that did not go through its own loop."""
    for name in _SENDER_COUNTERS:
        setattr(sender, _SENDER + name, getattr(counters, name))


def sender_counters(sender: RTCRtpSender) -> SenderCounters:
    return SenderCounters(*(getattr(sender, _SENDER + name) for name in _SENDER_COUNTERS))


class RtcpInterval:
    """Stands in for the `random` module in aiortc's sender and receiver modules, whose only
    use of it is their RTCP loops' `await asyncio.sleep(0.5 + random.random())`: 0.5-1.5 s.

    Its random() makes that sleep `seconds` x [0.5, 1.5] (RFC 3550 §6.3.1's randomisation);
    anything else is the real module's.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def random(self) -> float:
        return self.seconds * (0.5 + _random.random()) - 0.5

    def __getattr__(self, name: str) -> Any:
        return getattr(_random, name)


def set_rtcp_interval(seconds: float) -> None:
    """Mean interval of every RTCP report aiortc's senders and receivers send, process-wide.

    aiortc sends one per sender and one per receiver every 0.5-1.5 s; libwebrtc's default for
    audio is 5 s and RFC 3550 §6.2 recommends a 5 s minimum, so a call costs a fifth of the
    RTCP wake-ups (see docs/transceiver.md). 1.0 is aiortc's own.
    """
    if not 0.5 <= seconds <= 60:
        raise ValueError(f"RTCP interval {seconds!r} s: must be within 0.5-60")
    shim = RtcpInterval(seconds)
    aiortc_sender.random = shim  # type: ignore[assignment]
    aiortc_receiver.random = shim  # type: ignore[assignment]


def rtcp_interval() -> float:
    """The mean interval set_rtcp_interval() set (1.0: aiortc's own)."""
    shim = aiortc_sender.random
    return shim.seconds if isinstance(shim, RtcpInterval) else 1.0


class DecoderQueue(Protocol):
    """What RTCRtpReceiver's decoder thread reads: `put` from the receiver, `get` in the thread."""

    def put(self, item: Any) -> None: ...
    def get(self) -> Any: ...


def replace_decoder_queue(receiver: RTCRtpReceiver, queue: DecoderQueue) -> None:
    """Before the receiver starts (its decoder thread takes the queue then)."""
    setattr(receiver, _DECODER_QUEUE, queue)


def has_decoder_queue(receiver: RTCRtpReceiver) -> bool:
    return hasattr(receiver, _DECODER_QUEUE)


def tap_rtp(receiver: RTCRtpReceiver, callback: Callable[[RtpPacket], None]) -> None:
    """Call `callback(packet)` for every RTP packet the receiver handles, after aiortc has."""
    handle: Callable[..., Awaitable[None]] = receiver._handle_rtp_packet

    async def handle_and_tap(packet: RtpPacket, arrival_time_ms: int) -> None:
        await handle(packet, arrival_time_ms=arrival_time_ms)
        callback(packet)

    receiver._handle_rtp_packet = handle_and_tap  # type: ignore[method-assign]


def remote_stream_count(receiver: RTCRtpReceiver) -> int:
    """How many remote SSRCs the receiver has seen RTP from (0: all RTP went elsewhere)."""
    return len(getattr(receiver, _REMOTE_STREAMS))


# --- server side: data channels -----------------------------------------------------------------


def enforce_sctp_receive_window(sctp: RTCSctpTransport, dropped: Callable[[], None]) -> None:
    """Drop DATA chunks that do not fit the receive window aiortc advertises (1 MiB).

    aiortc advertises an a_rwnd but buffers whatever arrives (a message's fragments wait for
    its last one): a peer that ignores the window, or never sends the last fragment, makes it
    buffer without bound. RFC 9260 §6.2 lets a receiver drop DATA beyond its window; the chunk
    is not acknowledged (a SACK of what we have still goes out), so a sender that respects the
    window loses nothing.
    """
    handle: Callable[[Any], Awaitable[None]] = sctp._receive_data_chunk

    async def within_window(chunk: Any) -> None:
        if len(chunk.user_data) > sctp._advertised_rwnd:
            sctp._sack_needed = True
            dropped()
            return
        await handle(chunk)

    sctp._receive_data_chunk = within_window  # type: ignore[method-assign]


def watch_sctp(sctp: RTCSctpTransport, authenticated: Callable[[int], None]) -> None:
    """Tell `authenticated(nbytes)` of every SCTP packet aiortc's DTLS transport decrypted and
    hands the data channels: DTLS application data proves its path as SRTP does (paths.Route),
    so a client's data channel messages earn the send credit their echo spends (without it, a
    64 KB message's echo outran the credit that audio alone had built and waited for SCTP's
    1 s retransmission timer)."""
    handle: Callable[[bytes], Awaitable[None]] = sctp._handle_data

    async def credited(data: bytes) -> None:
        authenticated(len(data))
        await handle(data)

    sctp._handle_data = credited  # type: ignore[method-assign]


def sctp_receive_window(sctp: RTCSctpTransport) -> int:
    """Bytes the receive window still has (aiortc's a_rwnd; negative: buffered beyond it)."""
    return sctp._advertised_rwnd


# --- server side: one certificate for every call ------------------------------------------------


class _FixedCertificate:
    """Stands in for the RTCCertificate class while one RTCPeerConnection is constructed."""

    def __init__(self, certificate: RTCCertificate) -> None:
        self._certificate = certificate

    def generateCertificate(self) -> RTCCertificate:
        return self._certificate


def peer_connection_with_certificate(
    configuration: RTCConfiguration, certificate: RTCCertificate
) -> RTCPeerConnection:
    """RTCPeerConnection(configuration) that uses `certificate` instead of making its own.

    This aiortc has no RTCConfiguration.certificates; its __init__ calls the module-global
    RTCCertificate.generateCertificate(), so that global is swapped for the (synchronous)
    constructor only and nothing else ever sees it.
    """
    original = aiortc_pc.RTCCertificate
    aiortc_pc.RTCCertificate = _FixedCertificate(certificate)  # type: ignore[misc,assignment]
    try:
        return RTCPeerConnection(configuration)
    finally:
        aiortc_pc.RTCCertificate = original  # type: ignore[misc]


# --- server side: SRTP without pylibsrtp's per-call wrapper -------------------------------------


class FastSrtp:
    """protect()/unprotect() of one pylibsrtp.Session without its per-packet wrapper cost.

    pylibsrtp's Session.__process allocates an `int *` with cffi and re-checks its arguments
    on every packet (about 40 % of a protect() for an Opus packet); here the length cell is
    allocated once and libsrtp is called on the session's own buffer, exactly as
    Session.__process does. Falls back to the public methods if the session has no such
    internals (check() refuses to start when pylibsrtp moved them).
    """

    def __init__(self, session: pylibsrtp.Session) -> None:
        # Held so libsrtp's context lives as long as we do: `_srtp` frees it when collected.
        self._session = session
        try:
            self._srtp = session._srtp[0]
            self._cdata = session._cdata
            self._buffer = session._buffer
            self._size = len(self._buffer)
        except (AttributeError, TypeError):
            self.protect = session.protect  # type: ignore[method-assign]
            self.unprotect = session.unprotect  # type: ignore[method-assign]
            return
        self._len = srtp_binding.ffi.new("int *")
        self._protect = srtp_binding.lib.srtp_protect
        self._unprotect = srtp_binding.lib.srtp_unprotect

    def _process(self, data: bytes, func: Callable[..., int], room: int) -> bytes:
        n = len(data)
        if n > room:
            raise ValueError("packet is too long")
        self._buffer[0:n] = data
        self._len[0] = n
        rc = func(self._srtp, self._cdata, self._len)
        if rc:
            raise pylibsrtp.Error(f"libsrtp error {rc}")
        return self._buffer[0 : self._len[0]]

    def protect(self, data: bytes) -> bytes:  # room for the auth tag, like pylibsrtp
        return self._process(data, self._protect, self._size - pylibsrtp.SRTP_MAX_TRAILER_LEN)

    def unprotect(self, data: bytes) -> bytes:
        return self._process(data, self._unprotect, self._size)


# --- client side (lab, bench, tests): aiortc peers driven from outside --------------------------


def ice_connection(pc: RTCPeerConnection) -> aioice.Connection:
    """The aioice.Connection under a peer connection's (first, bundled) transport."""
    return pc.getTransceivers()[0].receiver.transport.transport._connection


def nominated_pair(connection: aioice.Connection) -> aioice.ice.CandidatePair | None:
    """The candidate pair a (client) aioice agent nominated for component 1, if any."""
    return connection._nominated.get(1)


def stop_consent_checks(connection: aioice.Connection) -> None:
    """Stop a client's RFC 7675 consent checks while media keeps flowing (tests of expiry)."""
    task = connection._query_consent_task
    if task is not None:
        task.cancel()


async def send_ignoring_limits(channel: RTCDataChannel, data: bytes) -> None:
    """Send one binary message past aiortc's max-message-size check (tests of a rogue client:
    aiortc's sender also ignores the peer's receive window)."""
    await channel.transport._send(channel.id, aiortc_sctp.WEBRTC_BINARY, data)


def gather_only(addr: str) -> None:
    """Make every aioice agent of this process gather host candidates on `addr` only (a load
    generator: fewer candidate pairs, less client work, set-up times that measure the server)."""
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: [addr]  # type: ignore[assignment]


async def client_ice_agent(host: str) -> aioice.Connection:
    """A fresh controlling aioice agent (new ufrag and password) with one host candidate on
    `host`: the client's side of an ICE restart after its network changed."""
    agent = aioice.Connection(ice_controlling=True, use_ipv6=False)
    agent._local_candidates += await agent.get_component_candidates(component=1, addresses=[host])
    agent._local_candidates_end = True  # gathered (what gather_candidates() would have done)
    return agent


async def _dropped(data: bytes) -> None:
    """Sending into a network that is gone: nothing leaves (and nothing raises)."""


async def restart_client_ice(
    pc: RTCPeerConnection,
    agent: aioice.Connection,
    remote_username: str,
    remote_password: str,
    remote_candidates: list[aioice.Candidate],
) -> None:
    """Move a client peer's ICE onto `agent` (see client_ice_agent) with the server's new
    credentials, as an ICE restart after a network change: the old agent's sockets close at
    once (its address went silent) and DTLS, SRTP and SCTP carry on over `agent` once it has
    connected, with the same keys. Raises ConnectionError if the new checks fail.

    aiortc has a read pending on the old agent (RTCDtlsTransport._recv_next) and its
    RTCIceTransport._monitor waits on the old agent's events: the new agent takes over the
    old one's receive queue and event waiter so neither notices the swap.
    """
    transport = pc.getTransceivers()[0].receiver.transport.transport
    old = transport._connection
    # Nothing is sent on the old network from here until the new path is up: aiortc stops a
    # sender that raises, and a send on an old socket closed below raises (asyncio's transport
    # has dropped its socket once closed), so the sender must not get there while we await.
    transport._send = _dropped
    try:
        agent.remote_is_lite = old.remote_is_lite
        agent.remote_username = remote_username
        agent.remote_password = remote_password
        for candidate in remote_candidates:
            await agent.add_remote_candidate(candidate)
        await agent.add_remote_candidate(None)
        # The old network is gone: no more consent checks, its sockets close. Their loss is
        # reported to the new agent, so the pending read on the shared queue is not ended.
        stop_consent_checks(old)
        old._query_consent_task = None
        for protocol in old._protocols:
            protocol.receiver = agent
            await protocol.close()
        old._protocols.clear()
        agent._queue = old._queue
        agent._event_waiter, old._event_waiter = old._event_waiter, None
        transport._connection = agent  # closing the peer now closes the new agent
        transport.iceGatherer._connection = agent
        await agent.connect()
    finally:
        transport._send = transport._connection.send  # the new agent's, once swapped in
    transport._recv = agent.recv
