"""One transceiver process (`TransceiverService`): the UDP mux, the calls, HTTP signaling and
the registry agent. ("Transceiver" alone is ambiguous: the registry record of one is
`wire.registry.TransceiverRecord`, and aiortc's RTCRtpTransceiver is an SDP m-line's sender and
receiver.)"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time

from aiohttp import web

from transceiver import aiortc_seam, auth, defaults, limits, turn
from transceiver.app import CallApp, load_app
from transceiver.calls import CallManager
from transceiver.config import Settings
from transceiver.heap import GcPauses
from transceiver.ice import IceLiteAgent, host_candidates
from transceiver.keys import Keyring
from transceiver.looplag import LoopLag
from transceiver.metrics import Metrics
from transceiver.mux import SocketMux
from transceiver.paths import Addr
from transceiver.registry import RegistryAgent
from transceiver.relays import KnownRelays
from transceiver.server import GuardedSite, make_app
from wire import registry as wreg
from wire.addr import ANY_HOST

log = logging.getLogger(__name__)
VERSION = "0.1.0"


class ConfigError(ValueError):
    """A setting that makes no sense; the CLI prints it without a traceback."""


class TransceiverService:
    def __init__(self, settings: Settings, app: CallApp | None = None) -> None:
        self.settings = settings
        try:
            self.app = app if app is not None else load_app(settings.app)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if settings.media_path not in ("fast", "aiortc"):
            raise ConfigError(f"media path must be fast or aiortc, got {settings.media_path!r}")
        self.metrics = Metrics()
        self.loop_lag = LoopLag(self.metrics.registry)
        self.gc_pauses = GcPauses(self.metrics.registry)
        self._spent = None
        if settings.redis_url and not settings.no_auth:
            # single use of client tokens across the cluster (transceiver/auth.py)
            self._spent = auth.RedisSpent(
                settings.redis_url, settings.redis_prefix, defaults.REDIS_TIMEOUT
            )
        try:
            self.auth = auth.load(
                settings.api_keys,
                no_auth=settings.no_auth,
                spend=self._spent,
                token_ttl=settings.token_ttl,
            )
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        self.turn: turn.TurnServers | None = None
        if settings.turn_urls:
            try:
                secret = settings.turn_secret
                self.turn = turn.TurnServers(
                    settings.turn_urls,
                    secret if secret is not None else turn.read_secret(None),
                    settings.turn_ttl,
                )
            except turn.TurnConfigError as exc:
                raise ConfigError(str(exc)) from None
        self.keyring = Keyring()
        if settings.key is not None:
            kid = 0 if settings.key_id is None else settings.key_id
            self.keyring.update({kid: settings.key}, kid)
        elif settings.redis_url is None:
            # Development (direct mode, no relay): nobody verifies the tag, so an ephemeral
            # key still yields well-formed routing ufrags.
            log.warning("no --key-file or --redis: minting ufrags with an ephemeral random key")
            self.keyring.update({0: os.urandom(16)}, 0)
        self.mux = SocketMux(
            self.metrics, vips=settings.vips, relay_tunnel_port=settings.relay_tunnel_port
        )
        self.relays = KnownRelays(settings.relays, self.mux.tunnel.set_relays)
        if settings.vips and not settings.relays and settings.redis_url is None:
            log.warning("--vip without --relay or --redis: no relay is known, none is listened to")
        self.manager: CallManager | None = None
        self.registry: RegistryAgent | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._runner: web.AppRunner | None = None
        self.http_addr: Addr | None = None

    @property
    def udp_addr(self) -> Addr:
        return self.mux.local_addr

    @property
    def http_url(self) -> str:
        assert self.http_addr is not None
        return f"http://{self.http_addr[0]}:{self.http_addr[1]}"

    def _candidate_addrs(self) -> list[Addr]:
        s = self.settings
        if s.vips:
            return list(s.vips)
        port = self.udp_addr[1]
        if s.advertise:
            return [(s.advertise, port)]
        if s.udp[0] != ANY_HOST:
            return [(s.udp[0], port)]
        raise ConfigError("no address to advertise: give --vip or --advertise")

    def tunnel_address(self) -> str:
        s = self.settings
        if s.tunnel:
            return s.tunnel
        host = s.advertise or s.udp[0]
        return f"{host}:{self.udp_addr[1]}"

    def record(self) -> wreg.TransceiverRecord:
        m = self.manager
        return wreg.TransceiverRecord(
            cluster=self.settings.cluster,
            id=self.settings.txr_id,
            tunnel=self.tunnel_address(),
            capacity=self.settings.capacity,
            active=m.active if m else 0,
            draining=m.draining if m else False,
            updated=time.time(),
            version=VERSION,
            http=self.settings.advertise_http,
        )

    def _registry_agent(self) -> RegistryAgent:
        s = self.settings
        assert s.redis_url is not None
        try:
            return RegistryAgent(
                s.redis_url,
                self.record,
                prefix=s.redis_prefix,
                ttl=s.registry_ttl,
                refresh=s.registry_refresh,
                keyring=self.keyring if s.key is None else None,
                on_relays=self.relays.learn,
            )
        except ValueError as exc:  # redis-py's URL parser
            raise ConfigError(f"bad --redis URL: {exc}") from None

    async def start(self) -> None:
        aiortc_seam.check(ice_agent=IceLiteAgent)  # before any call: refuse a moved aiortc
        s = self.settings
        try:
            aiortc_seam.set_rtcp_interval(s.rtcp_interval)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if s.advertise_http:
            try:
                wreg.TransceiverRecord(cluster=0, id=0, tunnel="0.0.0.0:1", http=s.advertise_http)
            except wreg.RegistryError as exc:
                raise ConfigError(f"--advertise-http: {exc}") from None
        if s.redis_url and s.tunnel is None and not s.advertise and s.udp[0] == ANY_HOST:
            # Relays only accept tunnel datagrams from the registered address (spec §3).
            raise ConfigError("--udp binds 0.0.0.0: give --tunnel or --advertise for the registry")
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, defaults.UDP_RCVBUF)
            sock.bind(s.udp)
        except OSError as exc:
            sock.close()
            raise ConfigError(f"cannot bind UDP {s.udp[0]}:{s.udp[1]}: {exc.strerror}") from None
        self._udp, _ = await loop.create_datagram_endpoint(lambda: self.mux, sock=sock)
        self.mux.sock = sock
        self.loop_lag.start()
        self.gc_pauses.start()
        try:
            self.manager = CallManager(
                mux=self.mux,
                keyring=self.keyring,
                app=self.app,
                metrics=self.metrics,
                candidates=host_candidates(self._candidate_addrs()),
                cluster=s.cluster,
                txr_id=s.txr_id,
                capacity=s.capacity,
                consent_timeout=s.consent_timeout,
                setup_timeout=s.setup_timeout,
                fast_media=s.media_path == "fast",
            )
            if s.redis_url:
                self.registry = self._registry_agent()
                await self.registry.start()
            soft, _ = limits.raise_nofile()
            guard = limits.ConnectionGuard(
                limits.connection_limit(s.max_connections), s.header_timeout
            )
            log.info("HTTP: at most %d connections (RLIMIT_NOFILE %d)", guard.limit, soft)
            http_app = make_app(
                self.manager,
                self.metrics,
                auth=self.auth if self.auth.enabled else None,
                guard=guard,
                rate=limits.RateLimiter(s.post_rate, s.post_burst),
                body_timeout=s.body_timeout,
                turn=self.turn,
                trusted_proxies=s.trusted_proxies,
            )
            self._runner = web.AppRunner(
                http_app, access_log=None, keepalive_timeout=s.header_timeout
            )
            await self._runner.setup()
            site = GuardedSite(self._runner, s.http[0], s.http[1], guard)
            try:
                await site.start()
            except OSError as exc:
                raise ConfigError(f"cannot listen on HTTP {s.http[0]}:{s.http[1]}: {exc}") from None
            self.http_addr = self._runner.addresses[0][:2]
        except BaseException:
            await self.stop()
            raise
        log.info(
            "transceiver %s/%s: http %s, udp %s:%s, candidates %s",
            s.cluster,
            s.txr_id,
            self.http_url,
            *self.udp_addr,
            self._candidate_addrs(),
        )

    async def drain(self) -> None:
        """SIGTERM: 503 new calls, let running ones finish up to drain_timeout, then stop."""
        assert self.manager is not None
        self.manager.draining = True
        if self.registry is not None:
            await self.registry.beat()  # tell the fleet now, not at the next refresh
        log.info(
            "draining %d calls (at most %.0f s)", self.manager.active, self.settings.drain_timeout
        )
        if not await self.manager.drain(self.settings.drain_timeout):
            log.info("drain timeout: ending %d calls", self.manager.active)
            await self.manager.end_all("drain_timeout")

    async def stop(self) -> None:
        await self.loop_lag.stop()
        self.gc_pauses.stop()
        if self.manager is not None:
            self.manager.draining = True
            await self.manager.end_all("shutdown")
        if self.registry is not None:
            await self.registry.stop()
            self.registry = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._spent is not None:
            self._spent.close()
            self._spent = None
        if self._udp is not None:
            self.mux.sock = None
            self._udp.close()
            self._udp = None
