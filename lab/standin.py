"""A stand-in transceiver: one UDP socket on its tunnel port that echoes tunneled calls.

It receives tunnel datagrams from relays (first byte 0x45: the client's whole IPv4/UDP packet),
and answers each with `prefix + payload` built as VIP:port -> client:port (wire.encap.ipv4_udp),
sent to <relay that delivered it>:<relay tunnel port>, as a real transceiver does. It counts and
keeps what it saw so tests can assert on the exact bytes.

Run in-process (`StandIn.in_ns(...)` + `start()`), or as a process for benchmarks:
    python -m lab.standin --bind ADDR:PORT [--relay-port 6080] [--prefix TEXT] [--no-reply]
which prints `ready` once bound, answers a `counts` line on stdin with a JSON line, and prints the
final counts as JSON when stdin closes or it gets SIGTERM.
"""

from __future__ import annotations

import argparse
import collections
import json
import selectors
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from types import FrameType, TracebackType

from lab import netns
from wire.addr import bind_arg
from wire.defaults import RELAY_TUNNEL_PORT
from wire.encap import Datagram, EncapError, ipv4_udp, parse_ipv4_udp

TUNNEL_FIRST_BYTE = 0x45
# Not exported by Python's socket module (33 on Linux); lets root exceed net.core.rmem_max.
SO_RCVBUFFORCE = 33
RCVBUF = 8 << 20


@dataclass(frozen=True)
class Seen:
    """One tunnel datagram: who delivered it, and the inner packet exactly as received."""

    relay: tuple[str, int]
    inner: bytes
    datagram: Datagram
    at: float


class StandIn:
    def __init__(
        self,
        sock: socket.socket,
        *,
        relay_port: int = RELAY_TUNNEL_PORT,
        prefix: bytes = b"",
        reply: bool = True,
        keep: int = 4096,
    ) -> None:
        self.sock = sock
        self.relay_port = relay_port
        self.prefix = prefix
        self.reply = reply
        self.counts = {"tunnel": 0, "direct": 0, "bad": 0, "replied": 0}
        self.seen: collections.deque[Seen] = collections.deque(maxlen=keep)
        # CLOCK_MONOTONIC is system-wide: a benchmark compares these with other processes' times.
        self.first_at = 0.0
        self.last_at = 0.0
        self._cond = threading.Condition()
        self._stop_r, self._stop_w = socket.socketpair()
        self._thread: threading.Thread | None = None

    @classmethod
    def in_ns(cls, ns: str, addr: str, port: int, **kwargs: object) -> StandIn:
        sock = netns.socket_in(ns)
        # A benchmark blast must not be lost in the stand-in's socket buffer.
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
        sock.bind((addr, port))
        return cls(sock, **kwargs)  # type: ignore[arg-type]

    @property
    def address(self) -> tuple[str, int]:
        return self.sock.getsockname()

    # --- one datagram -------------------------------------------------------------------------

    def handle(self, data: bytes, src: tuple[str, int]) -> None:
        """Count a datagram and answer it if it is a well-formed tunnel datagram.

        Count-only (reply=False) stand-ins skip parsing: they count by the first byte, so that
        a throughput run measures the relay rather than this parser.
        """
        if not data or data[0] != TUNNEL_FIRST_BYTE:
            self._count("direct")
            return
        if not self.reply:
            self._count_fast()
            return
        try:
            inner = parse_ipv4_udp(data)
        except EncapError:
            self._count("bad")
            return
        now = time.monotonic()
        # Count before answering: whoever sees the answer then also sees the count.
        with self._cond:
            self.counts["tunnel"] += 1
            if self.reply:
                self.counts["replied"] += 1
            self.first_at = self.first_at or now
            self.last_at = now
            self.seen.append(Seen(src, data, inner, now))
            self._cond.notify_all()
        if self.reply:
            answer = ipv4_udp(
                inner.dst, inner.dport, inner.src, inner.sport, self.prefix + inner.payload
            )
            self.sock.sendto(answer, (src[0], self.relay_port))

    def _count_fast(self) -> None:
        now = time.monotonic()
        with self._cond:
            self.counts["tunnel"] += 1
            self.first_at = self.first_at or now
            self.last_at = now
            self._cond.notify_all()

    def _count(self, what: str) -> None:
        with self._cond:
            self.counts[what] += 1
            self._cond.notify_all()

    # --- serving ------------------------------------------------------------------------------

    def serve(self) -> None:
        """Serve until stop(); errors on one datagram never end the loop."""
        sel = selectors.DefaultSelector()
        sel.register(self.sock, selectors.EVENT_READ)
        sel.register(self._stop_r, selectors.EVENT_READ)
        self.sock.setblocking(False)
        try:
            while True:
                for key, _ in sel.select():
                    if key.fileobj is self._stop_r:
                        return
                    self._drain()
        finally:
            sel.close()

    def _drain(self) -> None:
        while True:
            try:
                data, src = self.sock.recvfrom(65535)
            except BlockingIOError:
                return
            except OSError:  # e.g. ICMP-reported errors on the socket: keep serving
                continue
            self.handle(data, src)

    def start(self) -> StandIn:
        self._thread = threading.Thread(target=self.serve, name="standin", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket; calling it again does nothing."""
        if self._thread is not None:
            self._stop_w.send(b"x")
            self._thread.join(timeout=5)
            self._thread = None
        for s in (self.sock, self._stop_r, self._stop_w):
            s.close()

    def __enter__(self) -> StandIn:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def wait_for(self, tunnel: int, timeout: float = 5.0) -> bool:
        """Wait until at least `tunnel` tunnel datagrams were seen; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self.counts["tunnel"] >= tunnel, timeout)

    def snapshot(self) -> dict[str, float]:
        """Counts, plus first_at/last_at: monotonic times of the first and last tunnel datagram."""
        with self._cond:
            return {**self.counts, "first_at": self.first_at, "last_at": self.last_at}


# --- as a process -----------------------------------------------------------------------------


class _Stop(Exception):
    """Raised by the SIGTERM/SIGINT handler to leave the stdin loop."""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lab.standin", description=__doc__)
    ap.add_argument("--bind", type=bind_arg, required=True, help="ADDR:PORT to listen on")
    ap.add_argument("--relay-port", type=int, default=RELAY_TUNNEL_PORT)
    ap.add_argument("--prefix", default="", help="text put before each echoed payload")
    ap.add_argument("--no-reply", action="store_true", help="count only (throughput runs)")
    args = ap.parse_args(argv)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
    try:
        sock.bind(args.bind)
    except OSError as exc:
        print(f"standin: cannot bind {args.bind[0]}:{args.bind[1]}: {exc}", file=sys.stderr)
        return 1
    standin = StandIn(
        sock, relay_port=args.relay_port, prefix=args.prefix.encode(), reply=not args.no_reply
    )

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise _Stop

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    standin.start()
    print("ready", flush=True)
    try:
        for line in sys.stdin:
            if line.strip() == "counts":
                print(json.dumps(standin.snapshot()), flush=True)
    except _Stop:
        pass
    counts = standin.snapshot()
    standin.stop()
    print(json.dumps(counts), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
