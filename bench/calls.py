"""Calls per core: `transceiver serve` (Opus pass-through echo) against stock aiortc, same run.

Each server runs as a subprocess on 127.0.0.1; `bench/callgen.py` runs in another process: N
concurrent aiortc clients, each sending a 440 Hz tone as 20 ms Opus packets at real-time pace
(encoded once by aiortc's encoder: ~300-byte packets, 96 kbit/s, more than a browser's voice),
arriving at a steady rate after one uncounted warm-up call. Over a fixed steady window it reads
the SERVER process's CPU time (utime+stime) and RSS from /proc, so the clients' own cost is not
counted; each client counts its packets sent and echoed (getStats) and its set-up time.

- **stock aiortc** (`bench/stock_aiortc.py`): one RTCPeerConnection and its own UDP ports per
  call, echo as in aiortc's examples (the received track relayed back: decode, re-encode). Most
  of its CPU goes to aiortc's per-frame audio-level computation in pure Python (about 3 ms per
  20 ms frame here), so it saturates a core at a handful of calls.
- **transceiver (pcm-echo)**: one UDP socket, echo through aiortc's decoder and encoder: the
  same codec work as stock, to separate what the single socket saves from what skipping the
  codec saves.
- **transceiver (Opus pass-through)**: the default `echo` app, RTP payloads straight back.

Loopback caveat: on 127.0.0.1 the kernel delivers each datagram in the sender's context, so
every server's CPU includes delivering its replies to the clients' sockets, which a NIC would
not charge it. Both servers pay this the same way. `python -m bench.calls --help` picks the call
counts and window.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.callgen import RAMP_PER_S
from bench.table import Table
from transceiver.auth import write_key_file

REPO = Path(__file__).resolve().parent.parent
# 100 calls need more than 2 cores for server and clients together: skip them where there are not
# (the run stays under ~4 minutes on 2 cores).
TXR_CALLS = (10, 25, 50, 100) if (os.cpu_count() or 1) >= 4 else (10, 25, 50)
STOCK_CALLS = (2, 5)  # stock aiortc needs ~15 % of a core per echo call: more only adds loss
PCM_CALLS = (5,)
DURATION = 10.0
SETUP_CALLS = 20
SATURATED_LOSS_PCT = 5.0
START_TIMEOUT = 30.0
QUEUED_BEHIND_BYTES = 64 * 1024  # unread at the end: about 200 echoes still waiting


@dataclass(frozen=True)
class Server:
    label: str
    argv: list[str]
    ready_prefix: str  # the stdout line that carries the HTTP URL
    api_keys: bool = False  # started with a fresh --api-keys file; callers send its key

    def url(self, line: str) -> str | None:
        if not line.startswith(self.ready_prefix):
            return None
        for word in line.split():
            if word.startswith("http://"):
                return word
            if word.startswith("http=http://"):
                return word.removeprefix("http=")
        return None


def stock_server(capacity: int = 1000) -> Server:
    argv = [sys.executable, "-m", "bench.stock_aiortc", "--listen", "127.0.0.1:0"]
    argv += ["--capacity", str(capacity)]
    return Server("stock aiortc (decode+encode echo)", argv, "READY ")


def transceiver_server(app: str, capacity: int) -> Server:
    exe = Path(sys.executable).parent / "transceiver"
    cmd = str(exe) if exe.exists() else shutil.which("transceiver") or "transceiver"
    argv = [
        cmd,
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--udp",
        "127.0.0.1:0",
        "--advertise",
        "127.0.0.1",
        "--capacity",
        str(capacity),
        "--app",
        app,
        "--log-level",
        "warning",
        "--post-rate",  # the load generator places every call from one address
        "0",
    ]
    label = "transceiver (Opus pass-through)" if app == "echo" else f"transceiver ({app})"
    return Server(label, argv, "transceiver ready", api_keys=True)


class Running:
    """A server subprocess whose stdout goes to a temp file; stopped on exit, even on error."""

    def __init__(self, server: Server, nice: int = 0) -> None:
        self.server = server
        self.nice = nice
        self.dir = tempfile.TemporaryDirectory(prefix="bench-calls-")
        self.log = Path(self.dir.name) / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        # The server's API keys file, as its operator would write it; clients use its key.
        self.keys_file: Path | None = None
        self.api_key: str | None = None

    def __enter__(self) -> tuple[int, str]:
        argv = list(self.server.argv)
        if self.server.api_keys:
            self.keys_file = Path(self.dir.name) / "api-keys"
            self.api_key = write_key_file(self.keys_file)
            argv += ["--api-keys", str(self.keys_file)]
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                _niced(argv, self.nice),
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            for line in self.log.read_text(errors="replace").splitlines():
                if url := self.server.url(line):
                    return self.proc.pid, url
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        tail = self.log.read_text(errors="replace")[-2000:]
        self.__exit__()
        raise RuntimeError(f"{self.server.label} did not start:\n{tail}")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.dir.cleanup()


def _niced(argv: list[str], nice: int) -> list[str]:
    """argv run at another scheduling priority (nice -n N), or as is for 0."""
    return ["nice", "-n", str(nice), *argv] if nice else argv


def client_procs(calls: int, cpus: int | None = None) -> int:
    """Load-generator processes: a quarter of the CPUs, at most one per 25 calls, at least 1."""
    cpus = cpus or os.cpu_count() or 1
    return max(1, min(cpus // 4, -(-calls // 25)))


def _callgen(server: Server, args: list[str], timeout: float, nice: int) -> dict[str, Any]:
    """Start the server, run bench.callgen against it with `args` (+ --url, --server-pid),
    return callgen's JSON result (it exits 1 when some calls failed, 2 when it could not run)."""
    running = Running(server, nice)
    with running as (pid, url):
        cmd = [sys.executable, "-m", "bench.callgen", "--url", url, "--server-pid", str(pid)]
        if running.keys_file is not None:
            cmd += ["--api-keys", str(running.keys_file)]
        done = subprocess.run(
            _niced(cmd + args, nice), cwd=REPO, capture_output=True, text=True, timeout=timeout
        )
    if done.returncode not in (0, 1) or not done.stdout.strip():
        raise RuntimeError(f"callgen failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout)


def measure(server: Server, calls: int, duration: float, nice: int = 0) -> dict[str, Any]:
    """One server, one call count, a steady window of `duration` seconds."""
    args = ["--calls", str(calls), "--duration", str(duration)]
    args += ["--procs", str(client_procs(calls))]
    return _callgen(server, args, duration + calls + 60, nice)


def measure_setup(server: Server, calls: int, nice: int = 0) -> dict[str, Any]:
    """Set-up times of `calls` calls made one at a time."""
    return _callgen(server, ["--sequential", "--calls", str(calls)], calls + 60, nice)


def setup_table(results: list[tuple[str, dict[str, Any]]]) -> Table:
    table = Table(
        "Transceiver: call set-up, one call at a time (ms, client side)",
        ["server", "calls", "up", "min", "p50", "p99", "answer p50", "ICE p50", "DTLS p50"],
    )
    for label, r in results:
        table.add(
            label,
            r["calls"],
            r["connected"],
            _ms(r["setup_ms_min"]),
            _ms(r["setup_ms_p50"]),
            _ms(r["setup_ms_p99"]),
            _ms(r["answer_ms_p50"]),
            _ms(r["ice_ms_p50"]),
            _ms(r["dtls_ms_p50"]),
        )
    table.notes.append(
        "Offer POST -> connectionState 'connected' (ICE + DTLS) for an aiortc client, each call "
        "hung up before the next: the latency of an idle server, without the queueing a busy "
        "one adds (see the set-up columns above). Phases: POST -> SDP answer received, -> ICE "
        "completed, -> DTLS connected. The ICE phase is mostly the client's: aioice paces a "
        "controlling agent's checks with a fixed 20 ms sleep (a browser does not)."
    )
    return table


@dataclass
class Row:
    label: str
    calls: int
    connected: int
    cpu_pct_per_call: float
    kib_per_call: float
    loss_pct: float
    setup_p50: float | None
    setup_p99: float | None
    client_cpu_pct: float
    behind: str  # which side's sockets dropped or still held echoes: the one that lagged
    server_wait_pct: float  # server runnable but not running: starved by other processes
    load: float

    @property
    def kept_up(self) -> bool:
        return self.connected == self.calls and self.loss_pct <= SATURATED_LOSS_PCT

    @property
    def calls_per_core(self) -> float | None:
        if not self.kept_up or self.cpu_pct_per_call <= 0:
            return None
        return 100.0 / self.cpu_pct_per_call


def _behind(result: dict[str, Any]) -> str:
    server, sides = result["server"], []
    if server["rcvbuf_drops"] or server["queued_bytes"] > QUEUED_BEHIND_BYTES:
        sides.append("server")
    if result["client_rcvbuf_drops"] or result["client_queued_bytes"] > QUEUED_BEHIND_BYTES:
        sides.append("clients")
    return "+".join(sides) or "-"


def to_row(label: str, result: dict[str, Any]) -> Row:
    server = result["server"]
    per = max(result["connected"], 1)
    loss = result["loss_pct"]
    return Row(
        label=label,
        calls=result["calls"],
        connected=result["connected"],
        cpu_pct_per_call=server["cpu_pct_of_core"] / per,
        kib_per_call=(server["rss_during_kib"] - server["rss_before_kib"]) / per,
        loss_pct=100.0 if loss is None else loss,
        setup_p50=result["setup_ms_p50"],
        setup_p99=result["setup_ms_p99"],
        client_cpu_pct=result["client_cpu_pct_of_core"],
        behind=_behind(result),
        server_wait_pct=server["runqueue_wait_pct"],
        load=result["load_1min"],
    )


def _ms(value: float | None) -> object:
    return "-" if value is None else value


def build_table(rows: list[Row], duration: float) -> Table:
    table = Table(
        "Transceiver: echo calls per core (server process CPU, 20 ms Opus, 127.0.0.1)",
        [
            "server",
            "calls",
            "up",
            "CPU/call (% core)",
            "RSS/call (KiB)",
            "loss %",
            "set-up p50 (ms)",
            "set-up p99 (ms)",
            "calls/core",
            "vs stock",
            "lagging",
            "server CPU wait %",
            "clients CPU %",
            "load",
        ],
    )
    # Stock's fewest-calls run is its least starved one: when saturated, CPU per call only
    # looks lower because the process cannot get more CPU.
    stock = [r for r in rows if r.label.startswith("stock") and r.cpu_pct_per_call > 0]
    reference = min(stock, key=lambda r: r.calls) if stock else None
    for r in rows:
        cpc = r.calls_per_core
        ratio = "-"
        if reference and cpc and not r.label.startswith("stock"):
            ratio = f"x{reference.cpu_pct_per_call / r.cpu_pct_per_call:.1f}"
        table.add(
            r.label,
            r.calls,
            r.connected,
            r.cpu_pct_per_call,
            round(r.kib_per_call),
            r.loss_pct,
            _ms(r.setup_p50),
            _ms(r.setup_p99),
            "did not keep up" if cpc is None else round(cpc),
            ratio,
            r.behind,
            r.server_wait_pct,
            r.client_cpu_pct,
            r.load,
        )
    table.notes += [
        f"CPU: utime+stime of the server process over a {duration:g} s steady window, per "
        "connected call. calls/core = 100 / CPU per call, only for runs that kept up (all "
        f"calls up, loss <= {SATURATED_LOSS_PCT:g} %). vs stock: stock aiortc's CPU per call "
        "(its run with the fewest calls) over this row's, for rows that kept up.",
        "RSS/call: server VmRSS during the calls minus before them (after one warm-up call).",
        "Loss: 1 - echoed RTP packets received / sent, whole calls, after a 0.5 s drain.",
        "Set-up: client side, offer POST -> connectionState 'connected' (ICE + DTLS); calls "
        f"arrive at {RAMP_PER_S:g}/s.",
        "lagging: whose UDP sockets dropped datagrams or still held echoes at the end: loss "
        "with only 'clients' there is the load generator's, not the server's. server CPU "
        "wait %: share of the window the server's threads were runnable but waiting for a CPU "
        "(/proc schedstat): high means the machine, not the server, was the limit.",
        "clients CPU %: the load generator (bench/callgen.py: aiortc without decoding, in its "
        "own processes, one per 25 calls up to a quarter of the CPUs); load: 1-min load "
        "average when the run started.",
    ]
    return table


def run(
    txr_calls: Sequence[int] = TXR_CALLS,
    stock_calls: Sequence[int] = STOCK_CALLS,
    pcm_calls: Sequence[int] = PCM_CALLS,
    duration: float = DURATION,
    nice: int = 0,
    setup_calls: int = SETUP_CALLS,
) -> list[Table]:
    plan: list[tuple[Server, int]] = [(stock_server(), n) for n in stock_calls]
    plan += [(transceiver_server("pcm-echo", n + 10), n) for n in pcm_calls]
    plan += [(transceiver_server("echo", n + 10), n) for n in txr_calls]
    rows = []
    for server, n in plan:
        print(f"  {server.label}: {n} calls ...", file=sys.stderr, flush=True)
        rows.append(to_row(server.label, measure(server, n, duration, nice)))
    tables = [build_table(rows, duration)] if rows else []
    if setup_calls:
        setups = []
        for server in (stock_server(), transceiver_server("echo", 10)):
            print(f"  {server.label}: set-up x{setup_calls} ...", file=sys.stderr, flush=True)
            setups.append((server.label, measure_setup(server, setup_calls, nice)))
        tables.append(setup_table(setups))
    if nice:
        for table in tables:
            table.notes.append(f"Server and clients ran at nice {nice}.")
    return tables


def _counts(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated counts, got {text!r}") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("call counts must be positive")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=_counts, default=list(TXR_CALLS))
    parser.add_argument("--stock-calls", type=_counts, default=list(STOCK_CALLS))
    parser.add_argument("--pcm-calls", type=_counts, default=list(PCM_CALLS))
    parser.add_argument("--duration", type=float, default=DURATION)
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="run server and clients at this priority (root: e.g. -5 on a busy shared machine)",
    )
    parser.add_argument("--setup-calls", type=int, default=SETUP_CALLS, help="0: skip")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    try:
        tables = run(
            args.calls,
            args.stock_calls,
            args.pcm_calls,
            args.duration,
            args.nice,
            args.setup_calls,
        )
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        print(f"bench.calls: {exc}", file=sys.stderr)
        return 1
    for table in tables:
        print(table.render_markdown() if args.markdown else table.render_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
