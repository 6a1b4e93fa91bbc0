"""`relayctl run`: the relay's control loop, a long-running service.

Every pass (each --interval, or at once on a registry event, control/events.py):
  1. keep the slow path switched on (datapath/slowpath.py): sockets on the pinned VIPs and the
     config flag set; a `relayctl load` in between rewrites config with flags 0;
  2. registry -> maps (control/sync.py, RegistrySync);
  3. maps -> Redis: learned flows with a TTL, a bounded slice per pass (control/flowexport.py);
  4. this relay's tunnel source in the registry (every RELAY_REFRESH s): transceivers take
     tunnel datagrams only from registered relays (docs/security.md); and in the registry of
     every remote cluster it serves (control/fleet.py), whose transceivers step 2 merges in.
Redis unreachable: passes skip 2 and 3 with backoff, the maps stay as they are (never emptied),
the data plane keeps forwarding and routing new calls by ufrag. The program and the maps do not
depend on this process: killing it loses no packet of a known flow.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, replace
from typing import Any

from control import defaults
from control.bpffs import pin_dir
from control.errors import RelayctlError
from control.events import RegistryEvents
from control.fleet import RemoteClusters
from control.flowexport import FlowExporter
from control.metrics import Metrics
from control.sync import RegistrySync, key_fingerprint
from datapath import DatapathError
from datapath.maps import RelayMaps, fd_info, obj_get, read_config, write_wall_clock
from datapath.slowpath import SlowPath
from wire import registry
from wire.defaults import REACH_REFRESH, REDIS_PREFIX, RELAY_REFRESH, RELAY_TTL
from wire.redisconn import Backoff, connect, redact

log = logging.getLogger("relayctl.run")


@dataclass
class RunOptions:
    name: str
    redis_url: str
    prefix: str = REDIS_PREFIX
    flow_redis_url: str | None = None  # flows in another Redis/db, if the fleet wants them apart
    interval: float = defaults.INTERVAL
    flow_ttl: float = defaults.FLOW_TTL
    flow_batch: int = defaults.FLOW_BATCH
    metrics: tuple[str, int] | None = None
    slow_path: bool = True
    rate: float = defaults.SLOW_PATH_RATE
    burst: float = defaults.SLOW_PATH_RATE
    source_rate: float = defaults.SLOW_PATH_SOURCE_RATE
    net_rate: float = defaults.SLOW_PATH_NET_RATE
    empty_grace: float = defaults.EMPTY_GRACE
    remote_grace: float = defaults.REMOTE_GRACE
    region: registry.ReachReport | None = None  # reported in every registry read (--region)


class Controller:
    def __init__(self, opts: RunOptions) -> None:
        self.opts = opts
        self.pin_dir = pin_dir(opts.name)
        self.metrics = Metrics(self.pin_dir)
        self.stop_event = threading.Event()
        self.wake = threading.Event()
        # No client-side retries: the loop has its own backoff and must not block for long.
        self.redis = connect(opts.redis_url, timeout=defaults.REDIS_TIMEOUT, retries=False)
        self.flow_redis = (
            connect(opts.flow_redis_url, timeout=defaults.REDIS_TIMEOUT, retries=False)
            if opts.flow_redis_url
            else self.redis
        )
        self.fleet = RemoteClusters(opts.prefix, grace=opts.remote_grace, region=opts.region)
        self.registry = RegistrySync(
            self.redis, opts.prefix, hold=opts.empty_grace, fleet=self.fleet
        )
        self.events = RegistryEvents(opts.redis_url, opts.prefix, self.wake.set)
        self.redis_backoff = Backoff()
        self.redis_ok: bool | None = None
        self.maps: RelayMaps | None = None
        self.exporter: FlowExporter | None = None
        self.slow: SlowPath | None = None
        self.slow_thread: threading.Thread | None = None
        self.passes = 0
        self._stop_metrics: Any = None
        self._not_loaded_logged = False
        self._rewrite_flows = False
        self._last_problems: list[str] = []
        self._announced_at: float | None = None
        self._reached_at: float | None = None
        self._loaded_keys: tuple[tuple[int, str], ...] = ()  # announced: keys rotate safely
        self._announced_keys: tuple[tuple[int, str], ...] | None = None

    # --- lifecycle -----------------------------------------------------------------------------

    def run(self) -> int:
        if self.opts.metrics:
            host, port = self.opts.metrics
            try:
                self._stop_metrics = self.metrics.serve(host, port)
            except OSError as exc:
                raise RelayctlError(f"--metrics {host}:{port}: {exc.strerror or exc}") from None
        self.events.start()
        try:
            self._open_maps()  # refuse to start on a relay that is not loaded
            if self.opts.slow_path:
                self._start_slow_path()
            self._pass()
            _notify_ready()
            log.info(
                "ready: relay %r, registry %s prefix %r, slow path %s",
                self.opts.name,
                redact(self.opts.redis_url),
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
        self.events.stop()
        if self.slow is not None:
            if self.maps is not None:
                self.slow.release(self.maps)
                self.metrics.slow_path_on.set(0)
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
        self.fleet.close()
        log.info("stopped")

    def _sleep_time(self) -> float:
        if self.redis_ok is False:
            return max(0.05, min(self.opts.interval, self.redis_backoff.remaining()))
        return self.opts.interval

    # --- maps and slow path --------------------------------------------------------------------

    def _open_maps(self) -> None:
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

    def _start_slow_path(self) -> None:
        assert self.maps is not None
        cfg = read_config(self.maps)
        if not cfg.tunnel_port:
            raise RelayctlError(f"relay {self.opts.name!r} has no tunnel configured: load it")
        url = self.opts.flow_redis_url or self.opts.redis_url
        self.slow = SlowPath(
            self.pin_dir,
            lambda: connect(url, timeout=defaults.SLOW_PATH_REDIS_TIMEOUT, retries=False),
            prefix=self.opts.prefix,
            tunnel_addr=cfg.tunnel_addr,
            rate=self.opts.rate,
            burst=self.opts.burst,
            count=self.metrics.count_slow_path,
            on_redis=self._redis_state,
            source_rate=self.opts.source_rate,
            net_rate=self.opts.net_rate,
        )
        self._maintain_slow_path()
        self.slow_thread = threading.Thread(target=self.slow.serve, name="slow-path", daemon=True)
        self.slow_thread.start()

    def _maintain_slow_path(self) -> None:
        assert self.slow is not None and self.maps is not None
        self.slow.maintain(self.maps)
        self.metrics.slow_path_on.set(1 if self.slow.flag_mine else 0)

    # --- one pass ------------------------------------------------------------------------------

    def _pass(self) -> None:
        self.passes += 1
        if self.maps is None:
            try:
                self._open_maps()
                self._not_loaded_logged = False
                log.info("relay %r is loaded again", self.opts.name)
            except DatapathError as exc:
                if not self._not_loaded_logged:
                    log.error("%s (waiting)", exc)
                    self._not_loaded_logged = True
                return
        if not self._same_maps():
            log.warning("relay %r was unloaded or loaded anew: reopening its maps", self.opts.name)
            self._drop_maps()
            return
        # While Redis is down, only retry it once the backoff has passed.
        redis_due = self.redis_ok is not False or self.redis_backoff.ready()
        for part, fn in (
            ("epoch", self._write_epoch),
            ("slow_path", self._maintain_slow_path if self.slow else None),
            ("sync", self._sync if redis_due else None),
            ("flows", self._export_flows if redis_due else None),
            ("announce", self._announce if redis_due else None),
            ("reach", self._report_reach if redis_due and self.opts.region else None),
        ):
            if fn is None:
                continue
            try:
                fn()
            except (RelayctlError, DatapathError) as exc:  # unloaded under us: reopen
                log.error("%s: %s", part, exc)
                self.metrics.errors.labels(part).inc()
                self._drop_maps()
                return
            except Exception as exc:  # a daemon reports and carries on
                if self._redis_failure(exc):
                    return
                log.error("%s: %s: %s", part, type(exc).__name__, exc)
                self.metrics.errors.labels(part).inc()

    def _write_epoch(self) -> None:
        """Refresh the program's wall clock (the ufrag epoch's, docs/wire-format.md §4), so a
        stepped system clock is followed within a pass."""
        assert self.maps is not None
        write_wall_clock(self.maps)

    def _drop_maps(self) -> None:
        if self.maps is not None:
            self.maps.close()
        self.maps = None
        if self.slow is not None:
            self.slow.forget_flag()
            self.slow.reopen_maps()
            self.metrics.slow_path_on.set(0)

    def _same_maps(self) -> bool:
        """Are our fds still the pinned maps? After `relayctl unload` + `load` the pins name new
        maps, while our fds keep the old ones alive: writing there would change nothing."""
        assert self.maps is not None
        try:
            fd = obj_get(self.pin_dir / "flows")
        except DatapathError:
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
        self.redis_backoff.failed()
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
            self.redis_backoff.succeeded()
        self.metrics.redis_up.set(1 if up else 0)

    def _sync(self) -> None:
        assert self.maps is not None
        result = self.registry.step(self.maps)
        self._redis_state(True)
        self.metrics.sync_seconds.observe(result.seconds)
        for c in result.outcome.changes:
            log.info("%s", c)
            self.metrics.sync_changes.labels(c.table, c.action).inc()
        if result.problems != self._last_problems:  # say it once, not every pass
            for p in result.problems:
                log.warning("registry: %s", p)
            self._last_problems = result.problems
        self.metrics.sync_passes.labels("ok").inc()
        self.metrics.transceivers.set(len(result.outcome.state.transceivers))
        keys = result.outcome.state.keys
        self._loaded_keys = tuple((k, key_fingerprint(keys[k])) for k in sorted(keys))
        self.metrics.draining.set(result.draining)
        self.metrics.remote_clusters(self.fleet.status)
        self.metrics.synced()

    def _export_flows(self) -> None:
        assert self.exporter is not None
        if self.redis_ok is False:
            return  # the sync just failed: do not wait on a second timeout
        if self._rewrite_flows:
            self._rewrite_flows = False
            self.exporter.forget()
        result = self.exporter.step(self.flow_redis)
        if result.written:
            self.metrics.flow_writes.inc(result.written)
        if result.cycle_done:
            self.metrics.flows.set(self.exporter.last_count)

    def _report_reach(self) -> None:
        """This relay's region reaches its own registry (the remote ones: fleet._read)."""
        assert self.opts.region is not None
        now = time.monotonic()
        if self._reached_at is not None and now - self._reached_at < REACH_REFRESH:
            return
        rep = replace(self.opts.region, at=time.time())
        registry.report_reach(self.redis, rep, prefix=self.opts.prefix)
        self._reached_at = now

    def _announce(self) -> None:
        """Register this relay's tunnel source so transceivers accept its datagrams. Not removed
        on stop: the XDP program keeps forwarding without its controller (RELAY_TTL is long)."""
        assert self.maps is not None
        if self.redis_ok is False:
            return
        now = time.monotonic()
        fresh = self._announced_at is not None and now - self._announced_at < RELAY_REFRESH
        if fresh and self._announced_keys == self._loaded_keys:  # a new key: say so at once
            return
        cfg = read_config(self.maps)
        if not cfg.tunnel_port:
            return  # loaded without a tunnel: nothing to announce
        rec = registry.RelayRecord(
            f"{socket.gethostname()}/{self.opts.name}",
            f"{cfg.tunnel_addr}:{cfg.tunnel_port}",
            keys=self._loaded_keys,
        )
        registry.register_relay(self.redis, rec, RELAY_TTL, prefix=self.opts.prefix)
        self.fleet.announce(rec, RELAY_TTL)
        self._announced_at = now
        self._announced_keys = self._loaded_keys


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
