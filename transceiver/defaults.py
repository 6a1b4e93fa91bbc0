"""Every default of the transceiver, once: the CLI, Settings and the modules read them here.

Fleet-wide values that relays and the controller must agree on (relay tunnel port, registry TTL
and refresh, Redis prefix) are in wire/defaults.py and re-exported below, so this one table
shows everything a transceiver starts with.
"""

from __future__ import annotations

from wire.defaults import (
    REDIS_PREFIX,
    REGISTRY_REFRESH,
    REGISTRY_TTL,
    RELAY_REFRESH,
    RELAY_TUNNEL_PORT,
)

__all__ = [
    "APP",
    "CAPACITY",
    "CERTIFICATE_MAX_AGE",
    "CLUSTER",
    "CONSENT_TIMEOUT",
    "DRAIN_MAX",
    "DRAIN_TIMEOUT",
    "HTTP_LISTEN",
    "MEDIA_PATH",
    "PATH_SILENCE",
    "PROBE_BURST",
    "PROBE_PATHS",
    "PROBE_RATE",
    "PROBE_TXIDS",
    "REDIS_PREFIX",
    "REDIS_TIMEOUT",
    "REGISTRY_REFRESH",
    "REGISTRY_TTL",
    "RELAY_GRACE",
    "RELAY_REFRESH",
    "RELAY_TUNNEL_PORT",
    "RETRY_AFTER",
    "RTCP_INTERVAL",
    "SEND_CREDIT_FACTOR",
    "SEND_CREDIT_MAX",
    "SEND_CREDIT_VERIFIED",
    "SEND_FLOOR_RATE",
    "SEND_FLOOR_WINDOW",
    "SETUP_TIMEOUT",
    "TXR_ID",
    "UDP_LISTEN",
    "UDP_RCVBUF",
]

# --- where it listens, who it is --------------------------------------------------------------
HTTP_LISTEN = ("127.0.0.1", 8080)  # signaling, /healthz, /metrics
UDP_LISTEN = ("0.0.0.0", 5000)  # the one UDP socket of every call
CLUSTER = 1
TXR_ID = 1

# --- calls ------------------------------------------------------------------------------------
CAPACITY = 100  # calls at once; beyond it POST answers 503
APP = "echo"
MEDIA_PATH = "fast"  # Opus apps: "fast" (transceiver/fastpath.py) or "aiortc"
RETRY_AFTER = 5  # seconds, in the Retry-After of a 503

# --- timeouts (seconds) -----------------------------------------------------------------------
CONSENT_TIMEOUT = 30.0  # RFC 7675 §5.1: no authenticated check for this long ends the call
SETUP_TIMEOUT = 30.0  # no authenticated check this long after the answer ends the call
DRAIN_TIMEOUT = 30.0  # after SIGTERM, how long running calls may go on
REDIS_TIMEOUT = 2.0  # connect and socket timeout of every registry request
CERTIFICATE_MAX_AGE = 24 * 3600.0  # the shared DTLS certificate is renewed daily (valid 30 d)
# Mean of each call's RTCP report intervals (x 0.5-1.5): libwebrtc's for audio, RFC 3550 §6.2's
# minimum. aiortc's own 1 s is five times the wake-ups per call for nothing an echo needs.
RTCP_INTERVAL = 5.0

# --- the socket -------------------------------------------------------------------------------
UDP_RCVBUF = 4 << 20  # SO_RCVBUF: bursts of many calls wait in the kernel, not on the wire
DRAIN_MAX = 64  # datagrams read per readiness event beyond the one asyncio hands over

# --- paths (transceiver/paths.py, ice.py): what a path may be sent ------------------------------
# A voice call sends about what it receives (Opus both ways, ~5-10 KB/s with SRTP), so media to a
# path is credited 4x the authenticated bytes it sent, capped; a client that is silent (DTX,
# muted: RTCP and consent checks only) still gets SEND_FLOOR_RATE while heard recently.
SEND_CREDIT_FACTOR = 4
# bytes: a path's credit never grows beyond this; above one data channel message of the largest
# size a client may send (64 KiB, RFC 8841) echoed with its DTLS and SCTP overhead, so an echo
# is never held back for SCTP's retransmission timer
SEND_CREDIT_MAX = 256 * 1024
SEND_CREDIT_VERIFIED = 16 * 1024  # bytes granted when a path is verified (the DTLS handshake)
SEND_FLOOR_RATE = 16 * 1024  # bytes/s (128 kbit/s) for a path heard within the window below
SEND_FLOOR_WINDOW = 10.0  # seconds: two consent intervals (RFC 7675 asks for one every ~5 s)
PATH_SILENCE = 1.0  # seconds without an authenticated packet after which a verified path takes over
PROBE_PATHS = 8  # unverified paths a call keeps a return-routability check pending for
PROBE_TXIDS = 4  # transaction ids kept per pending path (one per check it answered)
# Authenticated requests from unverified paths one call answers and checks back, per second and
# at once: a client moving network needs one or two; beyond, neither answer nor check is sent
# (each would be a datagram to an address that has not shown it wants one).
PROBE_RATE = 4.0
PROBE_BURST = 8
# A relay missing from the registry stays known this long (three of its controller's refreshes:
# a Redis that restarted empty is refilled meanwhile), see transceiver/relays.py.
RELAY_GRACE = 3 * RELAY_REFRESH
