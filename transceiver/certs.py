"""One DTLS certificate for all the calls of a process, instead of one per call.

aiortc makes a fresh ECDSA key and self-signed certificate in every RTCPeerConnection()
(about 2.5 ms of CPU on the call's set-up path) and this aiortc version has no
RTCConfiguration.certificates to pass one in (aiortc_seam.peer_connection_with_certificate
works around that). Reusing one is what browsers do too (an RTCPeerConnection takes
`certificates`); the answer carries its fingerprint, which is all the client checks. aiortc's
certificates are valid for 30 days, so a process renews its own daily.
"""

from __future__ import annotations

import time

from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.rtcdtlstransport import RTCCertificate

from transceiver import aiortc_seam, defaults


class SharedCertificate:
    def __init__(self, max_age: float = defaults.CERTIFICATE_MAX_AGE) -> None:
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
        return aiortc_seam.peer_connection_with_certificate(configuration, self.get())
