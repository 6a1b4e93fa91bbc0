"""One DTLS certificate for all the calls of a process, instead of one per call.

aiortc makes a fresh ECDSA key and self-signed certificate in every RTCPeerConnection()
(about 2.5 ms of CPU on the call's set-up path) and this aiortc version has no
RTCConfiguration.certificates to pass one in. Reusing one is what browsers do too (an
RTCPeerConnection takes `certificates`); the answer carries its fingerprint, which is all the
client checks. aiortc's certificates are valid for 30 days, so a process renews its own daily.
"""

from __future__ import annotations

import time

import aiortc.rtcpeerconnection as _aiortc_pc
from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.rtcdtlstransport import RTCCertificate

MAX_AGE = 24 * 3600.0


class _Fixed:
    """Stands in for the RTCCertificate class while one RTCPeerConnection is constructed."""

    def __init__(self, certificate: RTCCertificate) -> None:
        self._certificate = certificate

    def generateCertificate(self) -> RTCCertificate:
        return self._certificate


class SharedCertificate:
    def __init__(self, max_age: float = MAX_AGE) -> None:
        self._max_age = max_age
        self._certificate: RTCCertificate | None = None
        self._made = 0.0

    def get(self) -> RTCCertificate:
        now = time.monotonic()
        if self._certificate is None or now - self._made > self._max_age:
            self._certificate = RTCCertificate.generateCertificate()
            self._made = now
        return self._certificate

    def peer_connection(self, configuration: RTCConfiguration) -> RTCPeerConnection:
        # RTCPeerConnection.__init__ calls the module-global RTCCertificate.generateCertificate;
        # swap the global for the (synchronous) constructor only, so nothing else sees it.
        certificate = self.get()
        original = _aiortc_pc.RTCCertificate
        _aiortc_pc.RTCCertificate = _Fixed(certificate)  # type: ignore[misc,assignment]
        try:
            pc = RTCPeerConnection(configuration)
        finally:
            _aiortc_pc.RTCCertificate = original  # type: ignore[misc]
        return pc


def check_aiortc_certificates() -> None:
    """Fail at start-up if aiortc stopped making its certificate the way we replace."""
    if "RTCCertificate" not in RTCPeerConnection.__init__.__code__.co_names:
        raise RuntimeError("aiortc's RTCPeerConnection changed: certificate sharing needs updating")
    if not hasattr(_aiortc_pc, "RTCCertificate"):
        raise RuntimeError("aiortc.rtcpeerconnection no longer imports RTCCertificate")
