"""`relayctl run`: the relay's control loop and slow path, a long-running service.

Every pass (each --interval, or at once on a `{prefix}:events` message):
  1. registry -> maps: read the registry and apply the diff (control/sync.py);
  2. maps -> Redis: write learned flows with a TTL, a bounded slice per pass (control/flowcache.py);
  3. keep the slow path attached: sockets on the pinned VIPs, CONFIG_F_SLOW_PATH set (a
     `relayctl load` in between rewrites config with flags 0).
Redis unreachable: passes skip 1 and 2 with backoff, the maps stay as they are (never emptied),
the data plane keeps forwarding and routing new calls by ufrag. The program and the maps do not
depend on this process: killing it loses no packet of a known flow.
"""

from __future__ import annotations

import ctypes as ct
import logging
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import click

from control.errors import RelayctlError
from wire.addr import parse_addr_port

log = logging.getLogger("relayctl.run")

CONFIG_F_SLOW_PATH = 0x1  # bpf/constants.h
DEFAULT_INTERVAL = 0.5
DEFAULT_EMPTY_GRACE = 15.0  # > registry TTL + refresh: a restarted Redis is refilled by then


@dataclass
class RunOptions:
    name: str
    redis_url: str
    prefix: str = "edge"
    flow_redis_url: str | None = None  # flows in another Redis/db, if the fleet wants them apart
    interval: float = DEFAULT_INTERVAL
    flow_ttl: float = 120.0
    flow_batch: int = 4096
    metrics: tuple[str, int] | None = None
    slow_path: bool = True
    rate: float = 2000.0
    burst: float = 2000.0
    empty_grace: float = DEFAULT_EMPTY_GRACE


def _redis_client(url: str, timeout: float, retries: bool = True) -> Any:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    kwargs: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    if not retries:
        kwargs["retry"] = Retry(NoBackoff(), 0)
    return redis.Redis.from_url(url, **kwargs)


class EmptyGuard:
    """Believe an empty registry table only after it stayed empty for `grace` seconds.

    An empty table is usually a Redis that restarted without persistence (transceivers
    re-register within seconds); emptying the maps then would drop every call at once. A table
    that stays empty longer is real: the last transceiver really died.
    """

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.empty_since: dict[str, float] = {}

    def believe(self, table: str, empty: bool) -> bool:
        if not empty:
            self.empty_since.pop(table, None)
            return True
        since = self.empty_since.setdefault(table, time.monotonic())
        return time.monotonic() - since >= self.grace


class Controller:
    def __init__(self, opts: RunOptions) -> None:
        from control.bpffs import pin_dir
        from control.metrics import Metrics

        self.opts = opts
        self.pin_dir = pin_dir(opts.name)
        self.metrics = Metrics(self.pin_dir)
        self.stop_event = threading.Event()
        self.wake = threading.Event()
        self.guard = EmptyGuard(opts.empty_grace)
        # No client-side retries: the loop has its own backoff and must not block for long.
        self.redis = _redis_client(opts.redis_url, 2.0, retries=False)
        self.flow_redis = (
            _redis_client(opts.flow_redis_url, 2.0, retries=False)
            if opts.flow_redis_url
            else self.redis
        )
        self.maps: Any = None
        self.exporter: Any = None
        self.slow: Any = None
        self.slow_thread: threading.Thread | None = None
        self.redis_ok: bool | None = None
        self.redis_retry_at = 0.0
        self.redis_delay = 0.0
        self.passes = 0
        self._stop_metrics: Any = None
        self._not_loaded_logged = False
        self._rewrite_flows = False
        self._flag_mine = False
        self._last_problems: list[str] = []
        self._redis_run_id: str | None = None
        self._hold_removals_until = 0.0

    # --- lifecycle -----------------------------------------------------------------------------

    def run(self) -> int:
        if self.opts.metrics:
            host, port = self.opts.metrics
            try:
                self._stop_metrics = self.metrics.serve(host, port)
            except OSError as exc:
                raise RelayctlError(f"--metrics {host}:{port}: {exc.strerror or exc}") from None
        events = threading.Thread(target=self._events, name="redis-events", daemon=True)
        events.start()
        try:
            self._open_maps()  # refuse to start on a relay that is not loaded
            if self.opts.slow_path:
                self._start_slow_path()
            self._pass()
            _notify_ready()
            log.info(
                "ready: relay %r, registry %s prefix %r, slow path %s",
                self.opts.name,
                _redact(self.opts.redis_url),
                self.opts.prefix,
                "on" if self.slow else "off",
            )
            while not self.stop_event.is_set():
                self.wake.wait(self._sleep_time())
                self.wake.clear()
                if not self.stop_event.is_set():
                    self._pass()
        finally:
            self._shutdown()
        return 0

    def stop(self) -> None:
        self.stop_event.set()
        self.wake.set()

    def _shutdown(self) -> None:
        if self.slow is not None:
            if self.maps is not None and self._flag_mine:
                self._set_flag(False)  # first: no packet goes up to a socket about to close
            self.slow.stop()
            if self.slow_thread is not None:
                self.slow_thread.join(timeout=5)
            self.slow.close()
            self.slow = None
        if self.maps is not None:
            self.maps.close()
        if self._stop_metrics is not None:
            self._stop_metrics()
        for client in {id(self.redis): self.redis, id(self.flow_redis): self.flow_redis}.values():
            client.close()
        log.info("stopped")

    def _sleep_time(self) -> float:
        if self.redis_ok is False:
            return max(0.05, min(self.opts.interval, self.redis_retry_at - time.monotonic()))
        return self.opts.interval

    # --- maps and slow path --------------------------------------------------------------------

    def _open_maps(self) -> None:
        from control.flowcache import FlowExporter
        from control.maps import RelayMaps

        maps = RelayMaps(self.pin_dir)
        try:
            flows = maps["flows"]
            maps["config"]
        except BaseException:
            maps.close()
            raise
        self.maps = maps
        self.exporter = FlowExporter(
            flows, prefix=self.opts.prefix, ttl=self.opts.flow_ttl, batch=self.opts.flow_batch
        )

    def _config(self) -> tuple[str, int, int]:
        from control.maps import from_be16, from_be32

        cfg = self.maps["config"].lookup(ct.c_uint32(0))
        return from_be32(cfg.tunnel_addr), from_be16(cfg.tunnel_port), cfg.flags

    def _vips(self) -> list[tuple[str, int]]:
        from control.maps import from_be16, from_be32

        return sorted((from_be32(k.addr), from_be16(k.port)) for k in self.maps["vips"].keys())

    def _start_slow_path(self) -> None:
        from control.slowpath import SlowPath

        tunnel_addr, tunnel_port, _ = self._config()
        if not tunnel_port:
            raise RelayctlError(f"relay {self.opts.name!r} has no tunnel configured: load it")
        url = self.opts.flow_redis_url or self.opts.redis_url
        self.slow = SlowPath(
            self.pin_dir,
            lambda: _redis_client(url, 0.5, retries=False),
            prefix=self.opts.prefix,
            tunnel_addr=tunnel_addr,
            rate=self.opts.rate,
            burst=self.opts.burst,
            count=self.metrics.count_slow_path,
            on_redis=self._redis_state,
        )
        self._maintain_slow_path()
        self.slow_thread = threading.Thread(target=self.slow.serve, name="slow-path", daemon=True)
        self.slow_thread.start()

    def _maintain_slow_path(self) -> None:
        """Sockets for exactly the pinned VIPs; the flag on once they are bound (a reload by
        `relayctl load` writes flags 0 and may change the VIPs)."""
        vips = self._vips()
        failed = self.slow.bind(vips)
        tunnel_addr, _, flags = self._config()
        self.slow.tunnel_addr = tunnel_addr
        on = bool(flags & CONFIG_F_SLOW_PATH)
        if vips and not failed:
            if not on:
                self._set_flag(True)
            elif not self._flag_mine:  # left set by a killed controller: ours now, we listen
                self._flag_mine = True
                self.metrics.slow_path_on.set(1)
        elif failed and on and self._flag_mine:
            # Never clear a flag we did not set: it may be another controller's (it holds the
            # VIP sockets we could not bind).
            self._set_flag(False)

    def _set_flag(self, on: bool) -> None:
        from control.maps import RelayConfig

        try:
            cfg = self.maps["config"].lookup(ct.c_uint32(0))
            flags = (cfg.flags | CONFIG_F_SLOW_PATH) if on else (cfg.flags & ~CONFIG_F_SLOW_PATH)
            self.maps["config"].update(
                ct.c_uint32(0), RelayConfig(cfg.tunnel_addr, cfg.tunnel_port, flags)
            )
        except (RelayctlError, OSError) as exc:
            log.error("cannot %s the slow path flag: %s", "set" if on else "clear", exc)
            return
        self._flag_mine = on
        self.metrics.slow_path_on.set(1 if on else 0)
        log.info("slow path flag %s", "set" if on else "cleared")

    # --- one pass ------------------------------------------------------------------------------

    def _pass(self) -> None:
        self.passes += 1
        if self.maps is None:
            try:
                self._open_maps()
                self._not_loaded_logged = False
                log.info("relay %r is loaded again", self.opts.name)
            except RelayctlError as exc:
                if not self._not_loaded_logged:
                    log.error("%s (waiting)", exc)
                    self._not_loaded_logged = True
                return
        if not self._same_maps():
            log.warning("relay %r was unloaded or loaded anew: reopening its maps", self.opts.name)
            self._drop_maps()
            return
        # While Redis is down, only retry it once the backoff has passed.
        redis_due = self.redis_ok is not False or time.monotonic() >= self.redis_retry_at
        for part, fn in (
            ("slow_path", self._maintain_slow_path if self.slow else None),
            ("sync", self._sync if redis_due else None),
            ("flows", self._export_flows if redis_due else None),
        ):
            if fn is None:
                continue
            try:
                fn()
            except RelayctlError as exc:  # the relay was unloaded under us: reopen next pass
                log.error("%s: %s", part, exc)
                self.metrics.errors.labels(part).inc()
                self._drop_maps()
                return
            except Exception as exc:  # a daemon reports and carries on
                if self._redis_failure(exc):
                    return
                log.error("%s: %s: %s", part, type(exc).__name__, exc)
                self.metrics.errors.labels(part).inc()

    def _drop_maps(self) -> None:
        if self.maps is not None:
            self.maps.close()
        self.maps = None
        self._flag_mine = False
        if self.slow is not None:
            self.slow.reopen_maps()

    def _same_maps(self) -> bool:
        """Are our fds still the pinned maps? After `relayctl unload` + `load` the pins name new
        maps, while our fds keep the old ones alive: writing there would change nothing."""
        from control.maps import fd_info, obj_get

        try:
            fd = obj_get(self.pin_dir / "flows")
        except RelayctlError:
            return False
        try:
            return fd_info(fd).get("map_id") == fd_info(self.maps["flows"].fd).get("map_id")
        finally:
            os.close(fd)

    def _redis_failure(self, exc: Exception) -> bool:
        import redis

        if not isinstance(exc, redis.RedisError):
            return False
        self.metrics.sync_passes.labels("error").inc()
        self.redis_delay = min(5.0, self.redis_delay * 2) if self.redis_delay else 0.25
        self.redis_retry_at = time.monotonic() + self.redis_delay
        if self.redis_ok is not False:
            log.warning("redis unreachable: %s (maps kept; retrying with backoff)", exc)
        self._redis_state(False)
        return True

    def _redis_state(self, up: bool) -> None:
        if up and self.redis_ok is False:
            log.info("redis reachable again")
            # It may have restarted empty: write every flow again (still bounded per pass).
            self._rewrite_flows = True
        self.redis_ok = up
        if up:
            self.redis_delay = 0.0
        self.metrics.redis_up.set(1 if up else 0)

    def _sync(self) -> None:
        from control import sync
        from wire.registry import read_registry

        started = time.monotonic()
        reg = read_registry(self.redis, prefix=self.opts.prefix)
        self._redis_state(True)
        current = sync.read_state(self.maps)
        held = []
        if self._redis_restarted():
            # A Redis that restarted without persistence refills as transceivers re-register,
            # one by one within their refresh interval: removing those not back yet would drop
            # their calls. Removals wait; additions and changes go through.
            self._hold_removals_until = time.monotonic() + self.opts.empty_grace
            log.warning(
                "redis restarted: removals wait %.0f s for re-registration", self.opts.empty_grace
            )
        if time.monotonic() < self._hold_removals_until:
            for key, rec in self._records_of(current).items():
                reg.transceivers.setdefault(key, rec)
            for kid, key in current.keys.items():
                reg.keys.setdefault(kid, key)
            held.append("redis restarted: removals wait for re-registration (--empty-grace)")
        if not self.guard.believe("keys", not reg.keys) and current.keys:
            reg.keys = dict(current.keys)
            held.append("no keys: keeping the loaded ones for now (--empty-grace)")
        if not self.guard.believe("transceivers", not reg.transceivers) and current.transceivers:
            reg.transceivers = self._records_of(current)
            held.append("no transceivers: keeping the loaded ones for now (--empty-grace)")
        changes, warnings = sync.apply(self.maps, reg, allow_empty=True)
        self.metrics.sync_seconds.observe(time.monotonic() - started)
        for c in changes:
            log.info("%s", c)
            self.metrics.sync_changes.labels(c.table, c.action).inc()
        problems = reg.problems + warnings + held
        if problems != self._last_problems:  # say it once, not every pass
            for p in problems:
                log.warning("registry: %s", p)
            self._last_problems = problems
        self.metrics.sync_passes.labels("ok").inc()
        self.metrics.transceivers.set(len(reg.transceivers))
        self.metrics.draining.set(sum(1 for t in reg.transceivers.values() if t.draining))
        self.metrics.synced()

    def _redis_restarted(self) -> bool:
        """True once each time the registry's Redis is a new process (its run_id changed)."""
        run_id = str(self.redis.info("server").get("run_id", ""))
        restarted = self._redis_run_id is not None and run_id != self._redis_run_id
        self._redis_run_id = run_id
        return restarted

    @staticmethod
    def _records_of(state: Any) -> dict:
        from wire.registry import TransceiverRecord

        return {
            (c, i): TransceiverRecord(cluster=c, id=i, tunnel=f"{a}:{p}")
            for (c, i), (a, p) in state.transceivers.items()
        }

    def _export_flows(self) -> None:
        if self.redis_ok is False:
            return  # the sync just failed: do not wait on a second timeout
        if self._rewrite_flows:
            self._rewrite_flows = False
            self.exporter.cache.clear()
        result = self.exporter.step(self.flow_redis)
        if result.written:
            self.metrics.flow_writes.inc(result.written)
        if result.cycle_done:
            self.metrics.flows.set(self.exporter.last_count)

    # --- registry events -----------------------------------------------------------------------

    def _events(self) -> None:
        """Wake the loop on every registry event; reconnect with backoff (polling covers gaps)."""
        import redis

        delay = 0.25
        while not self.stop_event.is_set():
            try:
                client = _redis_client(self.opts.redis_url, 2.0)
                with client.pubsub(ignore_subscribe_messages=True) as sub:
                    sub.subscribe(f"{self.opts.prefix}:events")
                    delay = 0.25
                    while not self.stop_event.is_set():
                        if sub.get_message(timeout=1.0):
                            self.wake.set()
                client.close()
            except (redis.RedisError, OSError):
                self.stop_event.wait(delay)
                delay = min(5.0, delay * 2)


def _redact(url: str) -> str:
    # redis://user:password@host: never log the password
    head, at, tail = url.rpartition("@")
    return f"{head.split('//')[0]}//***@{tail}" if at else url


def _notify_ready() -> None:
    """sd_notify(READY=1) for Type=notify units; nothing outside systemd."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    addr = "\0" + path[1:] if path.startswith("@") else path
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        try:
            s.sendto(b"READY=1", addr)
        except OSError as exc:
            log.warning("sd_notify: %s", exc)


class _HostPort(click.ParamType):
    name = "HOST:PORT"

    def convert(self, value: Any, param: Any, ctx: Any) -> tuple[str, int]:
        if isinstance(value, tuple):
            return value
        try:
            return parse_addr_port(value, what="--metrics")
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


@click.command("run")
@click.option(
    "--name",
    envvar="RELAYCTL_NAME",
    default="edge",
    show_default=True,
    help="Relay name: pins live under /sys/fs/bpf/NAME (env RELAYCTL_NAME).",
)
@click.option(
    "--redis",
    "redis_url",
    required=True,
    metavar="URL",
    help="Registry: redis://host:port/db or unix:///path.sock.",
)
@click.option("--prefix", default="edge", show_default=True, help="Redis key prefix.")
@click.option(
    "--flow-redis",
    metavar="URL",
    help="Write/read learned flows here instead of --redis (the same for every relay).",
)
@click.option(
    "--metrics",
    type=_HostPort(),
    metavar="HOST:PORT",
    help="Serve Prometheus metrics on HOST:PORT/metrics.",
)
@click.option(
    "--interval",
    type=click.FloatRange(min=0.05),
    default=DEFAULT_INTERVAL,
    show_default=True,
    help="Seconds between passes (registry events wake it early).",
)
@click.option(
    "--flow-ttl",
    type=click.FloatRange(min=3),
    default=120.0,
    show_default=True,
    help="TTL of the flow keys written to Redis, seconds.",
)
@click.option(
    "--flow-batch",
    type=click.IntRange(min=1),
    default=4096,
    show_default=True,
    help="Flow-map entries read per pass.",
)
@click.option(
    "--slow-path/--no-slow-path",
    default=True,
    show_default=True,
    help="Take over flows learned by other relays (sockets on the VIPs).",
)
@click.option(
    "--slow-path-rate",
    type=click.FloatRange(min=1),
    default=2000.0,
    show_default=True,
    help="Slow-path datagrams per second at most.",
)
@click.option(
    "--slow-path-burst",
    type=click.FloatRange(min=1),
    help="Slow-path datagrams allowed at once (a failover moves many calls at once) "
    "[default: one second of --slow-path-rate].",
)
@click.option(
    "--empty-grace",
    type=click.FloatRange(min=0),
    default=DEFAULT_EMPTY_GRACE,
    show_default=True,
    help="Seconds an empty key or transceiver table must stay empty before the maps "
    "are emptied, and removals wait after Redis restarts (transceivers re-register first).",
)
@click.option("-v", "--verbose", is_flag=True, help="Log debug details.")
def run_command(
    name: str,
    redis_url: str,
    prefix: str,
    flow_redis: str | None,
    metrics: tuple[str, int] | None,
    interval: float,
    flow_ttl: float,
    flow_batch: int,
    slow_path: bool,
    slow_path_rate: float,
    slow_path_burst: float | None,
    empty_grace: float,
    verbose: bool,
) -> None:
    """Keep the relay's maps equal to the Redis registry, publish learned flows, take over
    flows of other relays (slow path) and export metrics. Runs until SIGTERM/SIGINT.

    The relay must be loaded (`relayctl load`); its program and maps keep working without
    this process, which only adds changes, flow hand-over and metrics.
    """
    from control.bpffs import check_name, ensure_bpffs, require_root

    check_name(name)
    require_root("run")
    ensure_bpffs()
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if verbose else logging.INFO,
        format="relayctl run: %(levelname)s %(message)s",
    )
    opts = RunOptions(
        name=name,
        redis_url=redis_url,
        prefix=prefix,
        flow_redis_url=flow_redis,
        interval=interval,
        flow_ttl=flow_ttl,
        flow_batch=flow_batch,
        metrics=metrics,
        slow_path=slow_path,
        rate=slow_path_rate,
        burst=slow_path_burst or slow_path_rate,
        empty_grace=empty_grace,
    )
    try:
        controller = Controller(opts)
    except ValueError as exc:  # a malformed --redis URL
        raise RelayctlError(f"--redis: {exc}") from None

    def on_signal(signum: int, frame: Any) -> None:
        controller.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    controller.run()
