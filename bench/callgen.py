"""Call generator: N concurrent aiortc clients against a WHIP-style server, bounded in time.

Each client (lab.peer.ClientPeer) sends 20 ms Opus frames of a tone at real-time pace and
counts what comes back; its RTCP goes out every ~5 s, as a browser's does for audio (aiortc's
own 1 s with `--rtcp-interval 1`). Per call it measures set-up time (offer POST -> connectionState
"connected"), packets sent and received; given the server's pid it also reads the SERVER's CPU
time over the steady window and its RSS before the calls and during them (from /proc; this runs
in its own processes, so the clients' CPU is not counted; `--procs K` spreads the calls over K
worker processes when one core cannot drive them all). Prints one JSON object:

    python -m bench.callgen --url http://127.0.0.1:8080 --calls 50 --duration 10 --server-pid PID
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass

import aiohttp
from aiortc.mediastreams import MediaStreamTrack

from lab import procstat
from lab.peer import BROWSER_RTCP_INTERVAL, ClientPeer, read_api_key
from transceiver import aiortc_seam

DRAIN_S = 0.5  # echoes still in flight after the clients stop sending
RAMP_PER_S = 20.0  # new calls per second: a steady arrival rate, not one burst


class CallgenError(Exception):
    """The run cannot go on (no server to call): printed as one line, no traceback."""


# The application server's API key (--api-keys FILE, env TXR_API_KEYS_FILE; workers inherit
# the environment): every call is placed with it, as an application server places its own.
API_KEY: str | None = None


@dataclass
class CallResult:
    setup_ms: float | None = None  # None: never connected
    answer_ms: float | None = None  # of which: until the SDP answer arrived
    ice_ms: float | None = None  # until ICE completed (then DTLS until connected)
    error: str | None = None
    sent: int = 0
    received: int = 0
    gaps: int = 0  # echoed packets missing from the received sequence numbers


class Client:
    """One call: a client peer sending the pre-encoded tone; the echo is counted, not decoded
    (decoding it would make the clients cost as much as the server under test)."""

    def __init__(self) -> None:
        self.peer = ClientPeer(audio="opus", decode=False)
        self.result = CallResult()

    @property
    def tone(self) -> MediaStreamTrack:
        return self.peer.tone

    async def start(self, http: aiohttp.ClientSession, url: str, timeout: float) -> None:
        try:
            await self.peer.start(http, url, token=API_KEY, timeout=timeout)
        finally:
            self.result.answer_ms = self.peer.answer_ms
            self.result.ice_ms = self.peer.ice_ms
            self.result.setup_ms = self.peer.setup_ms

    async def count(self) -> None:
        """RTP packets sent, echoed packets received, and sequence gaps among those."""
        self.result.sent, self.result.received, self.result.gaps = await self.peer.rtp_counts()

    async def hang_up(self, http: aiohttp.ClientSession, url: str) -> None:
        await self.peer.hang_up(http)


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q) - 1]


class LocalGroup:
    """Calls made from this process: ramp them up, then stop, count and hang up."""

    def __init__(self, url: str, calls: int, ramp_per_s: float, setup_timeout: float) -> None:
        self.url, self.ramp_per_s, self.setup_timeout = url, ramp_per_s, setup_timeout
        self.clients = [Client() for _ in range(calls)]
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=setup_timeout))

    async def start(self) -> None:
        async def one(n: int, client: Client) -> None:
            await asyncio.sleep(n / self.ramp_per_s)  # ramp: calls arrive at a steady rate
            try:
                await client.start(self.http, self.url, self.setup_timeout)
            except Exception as exc:  # a failed call is a result, not a crash
                client.result.error = f"{type(exc).__name__}: {exc}"[:300]

        await asyncio.gather(*(one(n, c) for n, c in enumerate(self.clients)))

    async def finish(self) -> tuple[list[CallResult], procstat.UdpState]:
        """Whole-call counts: stop sending, let the last echoes arrive, count; then the state of
        this process's sockets (read before hang-up closes them): drops say who could not keep
        up, bytes still queued say who is behind. (Counting inside the window instead is skewed
        by echo lag that changes over it.)"""
        for c in self.clients:
            c.tone.stop()
        await asyncio.sleep(DRAIN_S)
        for c in self.clients:
            await c.count()
        return [c.result for c in self.clients], procstat.udp_state(os.getpid())

    async def close(self) -> None:
        await asyncio.gather(*(c.hang_up(self.http, self.url) for c in self.clients))
        await self.http.close()


class WorkerGroup:
    """The same, in a child process (`--worker`), so calls can use more than one core."""

    def __init__(self, url: str, calls: int, ramp_per_s: float, setup_timeout: float) -> None:
        self.argv = [sys.executable, "-m", "bench.callgen", "--worker", "--url", url]
        self.argv += ["--calls", str(calls), "--ramp", str(ramp_per_s)]
        self.argv += ["--setup-timeout", str(setup_timeout)]
        self.argv += ["--rtcp-interval", str(aiortc_seam.rtcp_interval())]
        self.deadline = calls / ramp_per_s + 2 * setup_timeout + 30
        self.proc: asyncio.subprocess.Process | None = None

    async def _line(self) -> bytes:
        assert self.proc and self.proc.stdout
        line = await asyncio.wait_for(self.proc.stdout.readline(), self.deadline)
        if not line:
            raise CallgenError(f"client worker exited ({await self.proc.wait()})")
        return line

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
        if (await self._line()).strip() != b"READY":
            raise CallgenError("client worker did not report READY")

    async def finish(self) -> tuple[list[CallResult], procstat.UdpState]:
        assert self.proc and self.proc.stdin
        self.proc.stdin.write(b"STOP\n")
        await self.proc.stdin.drain()
        data = json.loads(await self._line())
        results = [CallResult(**r) for r in data["per_call"]]
        return results, procstat.UdpState(**data["udp"])

    async def close(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        try:
            if self.proc.stdin:
                self.proc.stdin.close()  # EOF: the worker hangs up and exits
            await asyncio.wait_for(self.proc.wait(), 30)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


async def worker(url: str, calls: int, ramp_per_s: float, setup_timeout: float) -> None:
    """`--worker`: ramp up, print READY, wait for STOP on stdin, print the counts as JSON."""
    group = LocalGroup(url, calls, ramp_per_s, setup_timeout)
    loop = asyncio.get_running_loop()
    try:
        await group.start()
        print("READY", flush=True)
        if not await loop.run_in_executor(None, sys.stdin.readline):
            return  # the parent went away (stdin closed): just hang up
        results, udp = await group.finish()
        print(json.dumps({"per_call": [asdict(r) for r in results], "udp": asdict(udp)}))
        sys.stdout.flush()
        await loop.run_in_executor(None, sys.stdin.readline)  # until the parent closes stdin
    finally:
        await group.close()


async def warm_up(url: str, setup_timeout: float) -> None:
    """One call first, not counted: a fresh server (and client) pays one-off costs on its first
    call (lazy imports, first DTLS context) that are not what a busy server costs."""
    timeout = aiohttp.ClientTimeout(total=setup_timeout)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        probe = Client()
        try:
            await probe.start(http, url, setup_timeout)
        except Exception as exc:  # the server is not there or not answering: say so, stop
            msg = f"warm-up call to {url} failed: {type(exc).__name__}: {exc}"
            raise CallgenError(msg) from None
        finally:
            await probe.hang_up(http, url)


async def sequential(
    url: str, count: int, setup_timeout: float, warmup: int = 1
) -> dict[str, object]:
    """`count` calls one after the other (connect, hang up): set-up time with nothing else
    going on, the latency a caller sees from an idle server."""
    for _ in range(warmup):
        await warm_up(url, setup_timeout)
    done: list[CallResult] = []
    errors: set[str] = set()
    timeout = aiohttp.ClientTimeout(total=setup_timeout)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        for _ in range(count):
            client = Client()
            try:
                await client.start(http, url, setup_timeout)
                done.append(client.result)
            except Exception as exc:  # a failed call is a result, not a crash
                errors.add(f"{type(exc).__name__}: {exc}"[:300])
            finally:
                await client.hang_up(http, url)
    setups = sorted(r.setup_ms for r in done if r.setup_ms is not None)
    # Phases, where aiortc reported them: POST -> answer, -> ICE completed, -> DTLS connected.
    phased = [
        (r.setup_ms, r.answer_ms, r.ice_ms)
        for r in done
        if r.setup_ms is not None and r.answer_ms is not None and r.ice_ms is not None
    ]
    return {
        "url": url,
        "calls": count,
        "connected": len(setups),
        "errors": sorted(errors)[:5],
        "setup_ms_min": setups[0] if setups else None,
        "setup_ms_p50": _pct(setups, 50),
        "setup_ms_p99": _pct(setups, 99),
        "answer_ms_p50": _pct(sorted(a for _, a, _ in phased), 50),
        "ice_ms_p50": _pct(sorted(i - a for _, a, i in phased), 50),
        "dtls_ms_p50": _pct(sorted(s - i for s, _, i in phased), 50),
    }


async def run(
    url: str,
    calls: int,
    duration: float,
    server_pid: int | None = None,
    ramp_per_s: float = RAMP_PER_S,
    setup_timeout: float = 10.0,
    settle: float = 1.0,
    warmup: int = 1,
    procs: int = 1,
) -> dict[str, object]:
    url = url.rstrip("/")
    for _ in range(warmup):
        await warm_up(url, setup_timeout)
    rss_before = procstat.rss_kib(server_pid) if server_pid else None
    drops_before = procstat.udp_state(server_pid).drops if server_pid else 0
    # Calls split over `procs` processes (this one when 1), each ramping at its share of the rate.
    shares = [calls // procs + (i < calls % procs) for i in range(procs)]
    groups: list[LocalGroup | WorkerGroup] = (
        [LocalGroup(url, calls, ramp_per_s, setup_timeout)]
        if procs == 1
        else [WorkerGroup(url, n, ramp_per_s / procs, setup_timeout) for n in shares if n]
    )
    try:
        t_ramp = time.monotonic()
        load_1min = os.getloadavg()[0]  # other work on the machine skews latency and loss
        await asyncio.gather(*(g.start() for g in groups))
        ramp_s = time.monotonic() - t_ramp
        await asyncio.sleep(settle)  # let every call's first packets and jitter buffers settle

        # Steady window: every connected call is sending and being echoed.
        cpu0 = procstat.cpu_seconds(server_pid) if server_pid else None
        wait0 = procstat.runqueue_wait_seconds(server_pid) if server_pid else None
        own0 = procstat.cpu_seconds(os.getpid())  # with the worker processes
        w0 = time.monotonic()
        await asyncio.sleep(duration)
        window = time.monotonic() - w0
        cpu1 = procstat.cpu_seconds(server_pid) if server_pid else None
        wait1 = procstat.runqueue_wait_seconds(server_pid) if server_pid else None
        own1 = procstat.cpu_seconds(os.getpid())
        rss_during = procstat.rss_kib(server_pid) if server_pid else None

        finished = await asyncio.gather(*(g.finish() for g in groups))
        server_udp = procstat.udp_state(server_pid) if server_pid else None
    finally:
        await asyncio.gather(*(g.close() for g in groups), return_exceptions=True)

    results = [r for rs, _ in finished for r in rs]
    client_udp = procstat.UdpState(
        drops=sum(u.drops for _, u in finished), queued=sum(u.queued for _, u in finished)
    )
    ok = [r for r in results if r.setup_ms is not None]
    setups = sorted(r.setup_ms for r in ok if r.setup_ms is not None)
    sent = sum(r.sent for r in ok)
    received = sum(r.received for r in ok)
    out: dict[str, object] = {
        "url": url,
        "load_1min": load_1min,
        "client_procs": len(groups),
        "client_cpu_pct_of_core": 100.0 * (own1 - own0) / window,
        "calls": calls,
        "connected": len(ok),
        "errors": sorted({r.error for r in results if r.error})[:5],
        "ramp_s": round(ramp_s, 3),
        "window_s": round(window, 3),
        "setup_ms_p50": _pct(setups, 50),
        "setup_ms_p99": _pct(setups, 99),
        "sent": sent,
        "received": received,
        "loss_pct": 100.0 * (1 - received / sent) if sent else None,
        "seq_gaps": sum(r.gaps for r in ok),
        "client_rcvbuf_drops": client_udp.drops,
        "client_queued_bytes": client_udp.queued,
        "per_call": [asdict(r) for r in results],
    }
    if server_pid:
        out["server"] = {
            "pid": server_pid,
            "cpu_s": (cpu1 or 0) - (cpu0 or 0),
            "cpu_pct_of_core": 100.0 * ((cpu1 or 0) - (cpu0 or 0)) / window,
            "runqueue_wait_pct": 100.0 * ((wait1 or 0) - (wait0 or 0)) / window,
            "rss_before_kib": rss_before,
            "rss_during_kib": rss_during,
            "rcvbuf_drops": server_udp.drops - drops_before if server_udp else None,
            "queued_bytes": server_udp.queued if server_udp else None,
        }
    return out


def client_address_only(addr: str) -> None:
    """Gather client candidates on one address only (the server's side of the bench is untouched):
    fewer candidate pairs means less client work and a set-up time that measures the server."""
    aiortc_seam.gather_only(addr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="server base URL, e.g. http://127.0.0.1:8080")
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--duration", type=float, default=10.0, help="steady window, seconds")
    parser.add_argument("--server-pid", type=int, help="measure this process's CPU and RSS")
    parser.add_argument("--ramp", type=float, default=RAMP_PER_S, help="new calls per second")
    parser.add_argument("--setup-timeout", type=float, default=10.0)
    parser.add_argument("--warmup", type=int, default=1, help="uncounted calls made first")
    parser.add_argument("--client-address", default="127.0.0.1")
    parser.add_argument("--per-call", action="store_true", help="include every call's numbers")
    parser.add_argument("--procs", type=int, default=1, help="client processes to spread calls on")
    parser.add_argument(
        "--rtcp-interval",
        type=float,
        default=BROWSER_RTCP_INTERVAL,
        help="the clients' mean RTCP interval, s (default: a browser's for audio; 1: aiortc's)",
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--api-keys",
        metavar="FILE",
        default=os.environ.get("TXR_API_KEYS_FILE"),
        help="place calls with this API keys file's first key (env TXR_API_KEYS_FILE)",
    )
    parser.add_argument(
        "--sequential", action="store_true", help="only set-up times: --calls calls, one at a time"
    )
    args = parser.parse_args(argv)
    if args.calls < 1 or args.duration <= 0 or args.ramp <= 0 or args.procs < 1:
        parser.error("--calls, --duration, --ramp and --procs must be positive")
    if args.server_pid is not None and not procstat.exists(args.server_pid):
        parser.error(f"no process {args.server_pid}")
    client_address_only(args.client_address)
    try:
        aiortc_seam.set_rtcp_interval(args.rtcp_interval)
    except ValueError as exc:
        parser.error(str(exc))
    global API_KEY
    API_KEY = read_api_key(args.api_keys)
    if args.api_keys:
        os.environ["TXR_API_KEYS_FILE"] = args.api_keys  # for the --worker processes
    url = args.url.rstrip("/")
    if args.worker:
        asyncio.run(worker(url, args.calls, args.ramp, args.setup_timeout))
        return 0
    if args.sequential:
        job = sequential(url, args.calls, args.setup_timeout, args.warmup)
    else:
        job = run(
            url,
            args.calls,
            args.duration,
            args.server_pid,
            args.ramp,
            args.setup_timeout,
            warmup=args.warmup,
            procs=args.procs,
        )
    try:
        result = asyncio.run(job)
    except CallgenError as exc:
        print(f"callgen: {exc}", file=sys.stderr)
        return 2
    if not args.per_call:
        result.pop("per_call", None)
    json.dump(result, sys.stdout, indent=1)
    print()
    return 0 if result["connected"] == args.calls else 1


if __name__ == "__main__":
    sys.exit(main())
