"""Every default of the transceiver, once: the CLI, Settings and the modules read them here.

Fleet-wide values that relays and the controller must agree on (relay tunnel port, registry TTL
and refresh, Redis prefix) are in wire/defaults.py and re-exported below, so this one table
shows everything a transceiver starts with.
"""

from __future__ import annotations

from wire.defaults import REDIS_PREFIX, REGISTRY_REFRESH, REGISTRY_TTL, RELAY_TUNNEL_PORT

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
    "REDIS_PREFIX",
    "REDIS_TIMEOUT",
    "REGISTRY_REFRESH",
    "REGISTRY_TTL",
    "RELAY_TUNNEL_PORT",
    "RETRY_AFTER",
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

# --- the socket -------------------------------------------------------------------------------
UDP_RCVBUF = 4 << 20  # SO_RCVBUF: bursts of many calls wait in the kernel, not on the wire
DRAIN_MAX = 64  # datagrams read per readiness event beyond the one asyncio hands over
