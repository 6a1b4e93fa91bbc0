"""Settings of one transceiver process (filled by the CLI, or directly by tests).

Every default comes from transceiver/defaults.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transceiver import auth, clientaddr, defaults, limits, turn
from transceiver.paths import Addr


@dataclass
class Settings:
    http: Addr = defaults.HTTP_LISTEN
    udp: Addr = defaults.UDP_LISTEN
    cluster: int = defaults.CLUSTER
    txr_id: int = defaults.TXR_ID
    vips: list[Addr] = field(default_factory=list)
    advertise: str | None = None  # direct mode: the address clients reach our UDP socket at
    tunnel: str | None = None  # "ip:port" relays send to; default: advertise/udp address
    # The signaling URL a fleet's front (transceiver/front.py) reaches us at, in the registry.
    advertise_http: str = ""
    redis_url: str | None = None
    redis_prefix: str = defaults.REDIS_PREFIX
    capacity: int = defaults.CAPACITY
    drain_timeout: float = defaults.DRAIN_TIMEOUT
    key_id: int | None = None
    key: bytes | None = None
    relay_tunnel_port: int = defaults.RELAY_TUNNEL_PORT
    consent_timeout: float = defaults.CONSENT_TIMEOUT
    setup_timeout: float = defaults.SETUP_TIMEOUT
    rtcp_interval: float = defaults.RTCP_INTERVAL  # process-wide (aiortc_seam.set_rtcp_interval)
    registry_ttl: float = defaults.REGISTRY_TTL
    registry_refresh: float = defaults.REGISTRY_REFRESH
    app: str = defaults.APP
    # Relays whose tunnel datagrams we take besides those registered in Redis (relays.py).
    relays: list[str] = field(default_factory=list)
    media_path: str = defaults.MEDIA_PATH  # Opus apps: "fast" (transceiver/fastpath.py), "aiortc"
    # signaling (transceiver/auth.py, transceiver/limits.py); neither keys nor no_auth: refused
    api_keys: str | None = None  # the API keys file
    no_auth: bool = False  # local development only: anyone may place calls
    token_ttl: float = auth.DEFAULT_TOKEN_TTL
    max_connections: int | None = None  # None: limits.MAX_CONNECTIONS, below the fd limit
    header_timeout: float = limits.HEADER_TIMEOUT
    body_timeout: float = limits.BODY_TIMEOUT
    post_rate: float = limits.POST_RATE  # per client address; 0 = unlimited
    post_burst: int = limits.POST_BURST
    # --trusted-proxy: peers whose X-Forwarded-For names the client (transceiver/clientaddr.py)
    trusted_proxies: list[clientaddr.Network] = field(default_factory=list)
    # TURN for clients without UDP (transceiver/turn.py): URLs announced in Link headers, the
    # secret shared with the TURN server (from a file or env, never argv), credential lifetime
    turn_urls: list[str] = field(default_factory=list)
    turn_secret: bytes | None = field(default=None, repr=False)
    turn_ttl: float = turn.DEFAULT_TTL
