"""The one seam into aiortc, aioice and pylibsrtp (transceiver/aiortc_seam.py), against the
installed versions: every touch is where we use it, check() refuses when one moved, pyproject
bounds the versions, and each seam function does to real aiortc objects what we rely on."""

from __future__ import annotations

import re
import struct
import tomllib
import types
from importlib.metadata import version
from pathlib import Path

import aiohttp
import pylibsrtp
import pytest
from aiortc import RTCBundlePolicy, RTCConfiguration, RTCPeerConnection
from aiortc.rtcdtlstransport import RTCCertificate
from aiortc.rtp import HeaderExtensionsMap
from packaging.requirements import Requirement

from lab.peer import call
from transceiver import aiortc_seam as seam
from transceiver.ice import IceLiteAgent, host_candidates
from transceiver.service import ConfigError, TransceiverService

pytestmark = pytest.mark.timeout(60)
PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"
SEAMED = ("aiortc", "aioice", "pylibsrtp")


def _id(touch: seam.Touch) -> str:
    return f"{getattr(touch.owner, '__name__', touch.owner)}.{touch.attr}:{','.join(touch.names)}"


# --- the touches and check() ---------------------------------------------------------------------


@pytest.mark.parametrize("touch", seam.TOUCHES, ids=_id)
def test_touch_is_where_we_use_it(touch: seam.Touch) -> None:
    assert touch.moved() is None


def test_check_passes_on_the_installed_versions() -> None:
    seam.check(ice_agent=IceLiteAgent)
    assert seam.problems(IceLiteAgent) == []


def _without(names: tuple[str, ...]) -> types.FunctionType:
    def moved(*args: object, **kwargs: object) -> None:  # mentions none of `names`
        return None

    assert not set(names) & set(moved.__code__.co_names)
    return moved  # type: ignore[return-value]


@pytest.mark.parametrize("touch", seam.TOUCHES, ids=_id)
def test_check_refuses_when_upstream_moved_it(
    touch: seam.Touch, monkeypatch: pytest.MonkeyPatch
) -> None:
    if touch.names:  # the method still exists but no longer sets or reads the field
        monkeypatch.setattr(touch.owner, touch.attr, _without(touch.names))
    else:  # the attribute itself is gone
        monkeypatch.delattr(touch.owner, touch.attr)
    assert touch.moved() is not None
    with pytest.raises(seam.SeamError, match=re.escape(touch.what)) as refused:
        seam.check()
    assert f"aiortc {version('aiortc')}" in str(refused.value)


async def test_the_service_refuses_to_start_when_a_touch_moved(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from aiortc import RTCDtlsTransport

    from transceiver.config import Settings

    monkeypatch.delattr(RTCDtlsTransport, "_set_role")
    service = TransceiverService(
        Settings(http=("127.0.0.1", 0), udp=("127.0.0.1", 0), no_auth=True)
    )
    with pytest.raises(seam.SeamError, match="DTLS role"):
        await service.start()
    assert service.mux.transport is None  # refused before binding anything


def test_check_refuses_an_ice_stand_in_that_lacks_what_aiortc_uses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lacking = type("Lacking", (), {k: v for k, v in vars(IceLiteAgent).items() if k != "get_event"})
    assert seam.ice_surface_missing(lacking) == ["get_event"]
    with pytest.raises(seam.SeamError, match="get_event"):
        seam.check(ice_agent=lacking)
    # aiortc starting to use a new aioice.Connection field is caught the same way.
    from aiortc import RTCIceTransport

    def uses_more(self) -> object:  # type: ignore[no-untyped-def]
        return self._connection.new_field

    monkeypatch.setattr(RTCIceTransport, "new_property", property(uses_more), raising=False)
    assert seam.ice_surface_missing(IceLiteAgent) == ["new_field"]


def test_installed_versions_satisfy_pyproject() -> None:
    """An upgrade past the bound fails here (CI: make test) before it fails in a call."""
    deps = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    reqs = {r.name: r for r in map(Requirement, deps)}
    for name in SEAMED:
        assert name in reqs, f"pyproject.toml must bound {name}: the seam reaches into it"
        spec = reqs[name].specifier
        assert any(s.operator in ("<", "<=", "==", "~=") for s in spec), f"{name}: no upper bound"
        installed = version(name)
        assert spec.contains(installed, prereleases=True), f"{name} {installed} is not {spec}"
    assert seam.installed_versions() == {name: version(name) for name in SEAMED}


# --- what each seam function does to real aiortc objects ----------------------------------------


async def test_ice_agent_swap_and_dtls_role_shape_the_answer() -> None:
    client = RTCPeerConnection()
    server = RTCPeerConnection(
        RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
    )
    agent = IceLiteAgent(
        local_username="U" * 24, candidates=host_candidates([("203.0.113.10", 3478)])
    )
    try:
        client.addTransceiver("audio")
        await client.setLocalDescription(await client.createOffer())
        rtp = server.addTransceiver("audio", direction="sendrecv")
        dtls = rtp.receiver.transport
        seam.use_ice_agent(dtls.transport, agent)
        await server.setRemoteDescription(client.localDescription)
        seam.set_dtls_role(dtls, "server")
        await server.setLocalDescription(await server.createAnswer())
        answer = server.localDescription.sdp
        # The gatherer reports our ufrag, password and candidates; aiortc reads our role.
        assert f"a=ice-ufrag:{agent.local_username}" in answer
        assert f"a=ice-pwd:{agent.local_password}" in answer
        assert "203.0.113.10 3478 typ host" in answer
        assert "a=setup:passive" in answer
        assert dtls.transport.role == "controlled"
        assert dtls.transport.iceGatherer.getLocalParameters().usernameFragment == "U" * 24
        # Before DTLS is up there are no SRTP sessions yet; the extension map exists.
        assert seam.srtp_sessions(dtls) == (None, None)
        assert isinstance(seam.header_extensions_map(dtls), HeaderExtensionsMap)
    finally:
        await agent.close()
        await server.close()
        await client.close()


async def test_shared_certificate_is_the_one_in_the_offer() -> None:
    import aiortc.rtcpeerconnection as aiortc_pc

    certificate = RTCCertificate.generateCertificate()
    pc = seam.peer_connection_with_certificate(RTCConfiguration(iceServers=[]), certificate)
    try:
        pc.addTransceiver("audio")
        offer = await pc.createOffer()
        fingerprint = certificate.getFingerprints()[0].value
        assert f"a=fingerprint:sha-256 {fingerprint}" in offer.sdp
        assert aiortc_pc.RTCCertificate is RTCCertificate  # the global is back
    finally:
        await pc.close()


async def test_sender_counters_are_what_the_sender_reports() -> None:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        sender = pc.addTransceiver("audio").sender
        counters = seam.SenderCounters(
            ntp_timestamp=1 << 40, rtp_timestamp=4321, packet_count=17, octet_count=1700
        )
        seam.publish_sender_stats(sender, counters)
        assert seam.sender_counters(sender) == counters
        (out,) = [s for s in (await sender.getStats()).values() if s.type == "outbound-rtp"]
        assert (out.packetsSent, out.bytesSent) == (17, 1700)
        assert out.ssrc == seam.sender_ssrc(sender)
        assert seam.sender_mid(sender) is None  # set when negotiation starts the sender
    finally:
        await pc.close()


async def test_receiver_hooks_land_on_the_receiver() -> None:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        receiver = pc.addTransceiver("audio").receiver
        assert seam.has_decoder_queue(receiver) and seam.remote_stream_count(receiver) == 0

        class Sink:
            def put(self, item: object) -> None: ...
            def get(self) -> None: ...

        sink = Sink()
        seam.replace_decoder_queue(receiver, sink)
        assert receiver._RTCRtpReceiver__decoder_queue is sink
        handler = receiver._handle_rtp_packet
        seam.tap_rtp(receiver, lambda packet: None)
        assert receiver._handle_rtp_packet is not handler  # the instance's, wrapped
    finally:
        await pc.close()


async def test_client_side_helpers_on_a_real_call(
    txr: TransceiverService, http: aiohttp.ClientSession
) -> None:
    client = await call(http, txr.http_url)
    try:
        await client.wait_state("connected")
        connection = seam.ice_connection(client.pc)
        pair = seam.nominated_pair(connection)
        assert pair is not None and tuple(pair.remote_addr) == txr.udp_addr
        (session,) = txr.manager.sessions.values()
        assert session.ice.selected is not None
        assert session.ice.selected.client == (pair.local_candidate.host, pair.local_candidate.port)
        rx, tx = seam.srtp_sessions(session.pc.getTransceivers()[0].receiver.transport)
        assert isinstance(rx, pylibsrtp.Session) and isinstance(tx, pylibsrtp.Session)
        seam.stop_consent_checks(connection)
        seam.stop_consent_checks(connection)  # twice is harmless
    finally:
        await client.close()


# --- SRTP without pylibsrtp's wrapper -------------------------------------------------------------


def _rtp(seq: int, payload: bytes) -> bytes:
    return struct.pack("!BBHII", 0x80, 0x6F, seq, 960 * seq, 0x1234) + payload


def test_fast_srtp_matches_pylibsrtp() -> None:
    def session(ssrc_type: int) -> pylibsrtp.Session:
        policy = pylibsrtp.Policy(
            key=bytes(range(30)),
            ssrc_type=ssrc_type,
            srtp_profile=pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
        )
        return pylibsrtp.Session(policy)

    ours = seam.FastSrtp(session(pylibsrtp.Policy.SSRC_ANY_OUTBOUND))
    theirs = session(pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
    rx = seam.FastSrtp(session(pylibsrtp.Policy.SSRC_ANY_INBOUND))
    for seq in range(5):
        plain = _rtp(seq, bytes([seq]) * 60)
        protected = ours.protect(plain)
        assert protected == theirs.protect(plain)  # same keys, same bytes
        assert rx.unprotect(protected) == plain
    with pytest.raises(pylibsrtp.Error):
        rx.unprotect(protected)  # replayed
    with pytest.raises(ValueError):
        ours.protect(bytes(1500))

    class Bare:  # a session without pylibsrtp's internals: the public methods are used
        def protect(self, data: bytes) -> bytes:
            return b"p" + data

        def unprotect(self, data: bytes) -> bytes:
            return data[1:]

    bare = seam.FastSrtp(Bare())  # type: ignore[arg-type]
    assert bare.unprotect(bare.protect(b"rtp")) == b"rtp"


# --- RTCP interval -------------------------------------------------------------------------------


def test_rtcp_interval_scales_aiortc_s_report_sleeps() -> None:
    import aiortc.rtcrtpreceiver
    import aiortc.rtcrtpsender

    before = seam.rtcp_interval()
    try:
        seam.set_rtcp_interval(5.0)
        assert seam.rtcp_interval() == 5.0
        for module in (aiortc.rtcrtpsender, aiortc.rtcrtpreceiver):
            # what their _run_rtcp sleeps: 0.5 + random.random()
            sleeps = [0.5 + module.random.random() for _ in range(2000)]
            assert 2.5 <= min(sleeps) < 2.7 and 7.3 < max(sleeps) <= 7.5
            assert 4.7 < sum(sleeps) / len(sleeps) < 5.3
            assert 1 <= module.random.randint(1, 3) <= 3  # the rest is the real module's
        seam.set_rtcp_interval(1.0)  # aiortc's own: 0.5-1.5 s
        sleeps = [0.5 + aiortc.rtcrtpsender.random.random() for _ in range(2000)]
        assert 0.5 <= min(sleeps) < 0.6 and 1.4 < max(sleeps) <= 1.5
        for bad in (0.0, 0.4, 61.0, float("nan")):
            with pytest.raises(ValueError, match="RTCP interval"):
                seam.set_rtcp_interval(bad)
        assert seam.rtcp_interval() == 1.0  # a refused value changes nothing
    finally:
        seam.set_rtcp_interval(before)


async def test_the_service_sets_its_rtcp_interval(start_txr) -> None:
    await start_txr(rtcp_interval=2.0)
    assert seam.rtcp_interval() == 2.0
    with pytest.raises(ConfigError, match="RTCP interval"):
        await start_txr(rtcp_interval=0.1)
