"""Bounds on what HTTP clients can make the transceiver hold or write: connections (and how long
one may take to send its request), POSTs per client, and repeated log lines.

Why (issue 8 item 5): ~1,100 half-sent requests took every descriptor of a 1,024-fd service,
/healthz and POST timed out, and asyncio's accept-retry tracebacks wrote 268 MB of log in 80 s.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import socket
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

# asyncio accepts up to `backlog` connections in one go and closes evicted ones a loop pass
# later, so two batches of descriptors can be in flight above the connection limit.
ACCEPT_BACKLOG = 128
FD_RESERVE = 2 * ACCEPT_BACKLOG + 128  # and the UDP socket, Redis, aiortc, logs, imports
MAX_CONNECTIONS = 4096
HEADER_TIMEOUT = 10.0  # seconds from accept (or the last response) to a complete request head
BODY_TIMEOUT = 10.0  # seconds to read a POST body once its head is in
POST_RATE = 20.0  # POSTs per second per client address, sustained
POST_BURST = 40  # and in a burst


def raise_nofile() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit (systemd's soft default is 1,024);
    returns (soft, hard) as they are afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("cannot raise RLIMIT_NOFILE from %d to %d: %s", soft, hard, exc)
    return soft, hard


def connection_limit(wanted: int | None) -> int:
    """`wanted` (or MAX_CONNECTIONS), but never within FD_RESERVE of the descriptor limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    ceiling = max(16, soft - FD_RESERVE)
    return max(1, min(wanted if wanted is not None else MAX_CONNECTIONS, ceiling))


class _Conn(asyncio.Protocol):
    """Stands between the transport and aiohttp's RequestHandler (which has __slots__) so the
    guard sees every connection open and close."""

    __slots__ = ("busy", "guard", "inner", "since", "transport")

    def __init__(self, inner: Any, guard: ConnectionGuard) -> None:
        self.inner = inner
        self.guard = guard
        self.transport: asyncio.Transport | None = None
        self.since = time.monotonic()
        self.busy = 0  # requests of this connection in a handler now

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.inner.connection_made(transport)
        self.guard._opened(self)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard._closed(self)
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def abort(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()


class ConnectionGuard:
    """At most `limit` HTTP connections. A connection must have a complete request head within
    `header_timeout` of its accept or its last response, or it is closed (slow loris). At the
    limit, a new connection evicts the oldest one that is not inside a handler, so the attack's
    own half-sent connections make room and /healthz still gets in; if all are busy the new one
    is closed. Nothing here logs per connection: `counts` holds what was closed and why."""

    def __init__(
        self,
        limit: int,
        header_timeout: float = HEADER_TIMEOUT,
        on_refuse: Callable[[str], None] | None = None,
    ) -> None:
        self.limit = limit
        self.header_timeout = header_timeout
        self._conns: OrderedDict[_Conn, None] = OrderedDict()
        self._by_handler: dict[Any, _Conn] = {}
        self.on_refuse: Callable[[str], None] = on_refuse or (lambda reason: None)
        self._sweeper: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._conns)

    def factory(self, make_handler: Callable[[], Any]) -> Callable[[], asyncio.Protocol]:
        def make() -> asyncio.Protocol:
            return _Conn(make_handler(), self)

        return make

    def _opened(self, conn: _Conn) -> None:
        if len(self._conns) >= self.limit:
            victim = next((c for c in self._conns if not c.busy), None)
            if victim is None:
                self.on_refuse("connections_full")
                conn.abort()
                return
            self.on_refuse("connection_evicted")
            self._forget(victim)
            victim.abort()
        self._conns[conn] = None
        self._by_handler[conn.inner] = conn
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    def _forget(self, conn: _Conn) -> None:
        self._conns.pop(conn, None)
        self._by_handler.pop(conn.inner, None)

    def _closed(self, conn: _Conn) -> None:
        self._forget(conn)

    def enter(self, handler: object) -> _Conn | None:
        """A request of this connection is in a handler (from the middleware)."""
        conn = self._by_handler.get(handler)
        if conn is not None:
            conn.busy += 1
        return conn

    def leave(self, conn: _Conn | None) -> None:
        if conn is not None:
            conn.busy -= 1
            conn.since = time.monotonic()

    async def _sweep(self) -> None:
        period = max(0.05, min(1.0, self.header_timeout / 4))
        while self._conns:
            await asyncio.sleep(period)
            deadline = time.monotonic() - self.header_timeout
            for conn in [c for c in self._conns if not c.busy and c.since < deadline]:
                self.on_refuse("header_timeout")
                self._forget(conn)
                conn.abort()

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for conn in list(self._conns):
            conn.abort()
        self._conns.clear()
        self._by_handler.clear()


class ListenSocket(socket.socket):
    """The HTTP listening socket. When accept() finds the descriptors used up (EMFILE, ENFILE)
    it counts that and says "nothing to accept now" (BlockingIOError), so asyncio tries again on
    its next pass. Why: asyncio makes an accepted connection's protocol two loop passes after
    the accept and closes an evicted one a pass later, so a flood's batches (up to `backlog`
    accepts a wake-up) can run past FD_RESERVE for a moment. asyncio's own answer to EMFILE is
    an ERROR with a traceback and no accepts for a second (no /healthz either); by the next pass
    the evicted connections' descriptors are free."""

    on_exhausted: Callable[[], None] = staticmethod(lambda: None)

    def accept(self) -> tuple[socket.socket, Any]:
        try:
            return super().accept()
        except OSError as exc:
            if exc.errno not in (errno.EMFILE, errno.ENFILE):
                raise
            self.on_exhausted()
            raise BlockingIOError(errno.EAGAIN, "no descriptor free yet") from None


def listen_socket(host: str, port: int, on_exhausted: Callable[[], None]) -> ListenSocket:
    """A bound ListenSocket for host:port (the first address it resolves to; IPv6 without the
    IPv4-mapped half, as asyncio binds it). asyncio's create_server(sock=) calls listen()."""
    family, kind, proto, _, addr = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = ListenSocket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(addr)
    except OSError:
        sock.close()
        raise
    sock.on_exhausted = on_exhausted
    return sock


class RateLimiter:
    """A token bucket per client key (its address): `rate` a second, `burst` at once.
    Bounded memory: at most `max_clients` buckets, the least recently used forgotten first."""

    def __init__(self, rate: float, burst: int, max_clients: int = 65536) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, key: str, now: float | None = None) -> float:
        """0.0 if allowed (a token is taken), else the seconds until the next token."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return wait


class RepeatFilter(logging.Filter):
    """At most `burst` records per (logger, level, message template) per `window` seconds; the
    first one let through after a quiet spell says how many were suppressed. So no input, and
    no accept-retry loop, can write more than a few lines a second per distinct message."""

    def __init__(
        self,
        window: float = 10.0,
        burst: int = 5,
        max_keys: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.clock = clock
        self.window = window
        self.burst = burst
        self.max_keys = max_keys
        # key -> [window start, records let through in it, suppressed since the last one shown]
        self._seen: OrderedDict[tuple[str, int, str], list[float]] = OrderedDict()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, str(record.msg)[:200])
        now = self.clock()
        state = self._seen.pop(key, None)
        if state is None or now - state[0] >= self.window:
            suppressed = int(state[2]) if state else 0
            state = [now, 0.0, 0.0]
            if suppressed:
                record.msg = f"{record.msg} ({suppressed} more suppressed)"
        self._seen[key] = state
        while len(self._seen) > self.max_keys:
            self._seen.popitem(last=False)
        if state[1] >= self.burst:
            state[2] += 1
            return False
        state[1] += 1
        return True
