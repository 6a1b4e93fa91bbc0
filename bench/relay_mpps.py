"""The relay at its real limit: packets offered from the kernel, faster than the relay can take.

A generator program runs by BPF_PROG_TEST_RUN in live-frames mode (as the kernel's
xdp-trafficgen does): each run rewrites a page from a template (recycled pages keep what the
last hop wrote) and XDP_REDIRECTs it out of one end of a veth pair. The relay, attached in
native mode to the other end, handles it as a received frame and forwards it out of another
veth, whose peer runs a counting sink (XDP_DROP). Everything is in one throwaway namespace
(lab.fibsandbox, permanent neighbours) and, since the redirects run in the softirq of the CPU
that called the test run, on one core.

Paths: flow hit (client -> encap -> transceiver link) and decap (tunnel -> client link).
Beside the relay, on the same links with the same generator and sink: a bare XDP_REDIRECT
reflector (the frame out of the other link, untouched), a bare XDP_TX reflector (back out of
the link it came in on), and the userspace Python relay (lab/pyrelay.py) on the same VIP and
tunnel, the links running XDP_PASS so that the kernel's stack takes the frames.
"forwarded" = frames the sink counted while the generator ran / its wall time; "generator
alone" = its frames sent straight into a sink (one veth hop, nothing in between), which is
more than any program in between forwards.

    .venv/bin/python -m bench.relay_mpps [--packets N]
"""

from __future__ import annotations

import argparse
import ctypes as ct
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from bcc import BPF

from bench.bpf_paths import (
    BASELINE_SRC,
    CLUSTER,
    KEY,
    KEY_ID,
    REPLY,
    RTP,
    TUNNEL,
    TUNNEL_PORT,
    TXR_ADDR,
    TXR_ID,
    TXR_PORT,
    VIP,
    VIP_PORT,
    Bench,
    binding,
    client,
)
from bench.table import Table
from control.program import compile_relay
from control.reasons import Reason
from datapath import xdp
from datapath.bpfsys import prog_test_run_live
from lab.fibsandbox import CLIENT_LINK, TXR_LINK, NetnsWorker, Sandbox, fib_sandbox

PACKETS = 2_000_000
TRIALS = 3
BATCH = 64

# The generator: rewrite the frame from its template (one map entry), send it out of OUT_IF.
GENERATOR_SRC = r"""
struct tmpl { unsigned char bytes[FRAME_LEN]; };
BPF_ARRAY(template, struct tmpl, 1);
int xdp_gen(struct xdp_md *ctx) {
    void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
    int zero = 0;
    struct tmpl *t = template.lookup(&zero);
    if (!t || data + FRAME_LEN > end)
        return XDP_ABORTED;
    __builtin_memcpy(data, t->bytes, FRAME_LEN);
    return bpf_redirect(OUT_IF, 0);
}
"""

SINK_SRC = r"""
BPF_PERCPU_ARRAY(seen, u64, 1);
int xdp_sink(struct xdp_md *ctx) {
    void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
    unsigned char *eth = data;
    int zero = 0;
    if (data + 14 > end || eth[12] != 0x08 || eth[13] != 0x00)
        return XDP_DROP;  /* count IPv4 only: not the kernel's own IPv6 chatter on the links */
    u64 *n = seen.lookup(&zero);
    if (n)
        *n += 1;
    return XDP_DROP;
}
"""

# A bare reflector: XDP_REDIRECT to OUT_IF, or XDP_TX when OUT_IF is 0.
REFLECTOR_SRC = r"""
int xdp_reflect(struct xdp_md *ctx) {
    return OUT_IF ? bpf_redirect(OUT_IF, 0) : XDP_TX;
}
"""


@dataclass(frozen=True)
class Path:
    name: str
    frame: bytes
    into: str  # the link whose far end the generator sends out of (the relay's ingress)
    out: str  # the link the relay forwards to (its peer runs the sink)
    reasons: tuple[Reason, ...]


def _paths() -> list[Path]:
    return [
        Path(
            "flow hit: client -> encap",
            client(RTP),
            CLIENT_LINK.name,
            TXR_LINK.name,
            (Reason.FWD_FLOW,),
        ),
        Path(
            "decap: tunnel -> client", REPLY, TXR_LINK.name, CLIENT_LINK.name, (Reason.FWD_DECAP,)
        ),
    ]


def _peer(link: str) -> str:
    return {CLIENT_LINK.name: CLIENT_LINK.peer, TXR_LINK.name: TXR_LINK.peer}[link]


class Rig:
    """The sandbox with sinks on both peers and one generator per (frame, link)."""

    def __init__(self, sandbox: Sandbox, worker: NetnsWorker) -> None:
        self.sandbox, self.worker = sandbox, worker
        self.sink = BPF(text=SINK_SRC)
        sink_fd = self.sink.load_func(b"xdp_sink", BPF.XDP).fd
        for link in (CLIENT_LINK, TXR_LINK):
            worker.call(xdp.attach, link.peer, sink_fd, "native")
        self._gens: dict[tuple[bytes, str], tuple[BPF, int]] = {}

    def ifindex(self, name: str) -> int:
        return self.sandbox.ifindex[name]

    def sunk(self) -> int:
        return sum(self.sink[b"seen"].getvalue(ct.c_int(0)))

    def generator(self, frame: bytes, out: str) -> int:
        key = (frame, out)
        if key not in self._gens:
            cflags = [f"-DFRAME_LEN={len(frame)}", f"-DOUT_IF={self.ifindex(out)}"]
            gen = BPF(text=GENERATOR_SRC, cflags=cflags)
            tmpl = gen[b"template"]
            tmpl[ct.c_int(0)] = tmpl.Leaf.from_buffer_copy(frame)
            self._gens[key] = (gen, gen.load_func(b"xdp_gen", BPF.XDP).fd)
        return self._gens[key][1]

    def blast(self, frame: bytes, sent_out_of: str, packets: int) -> tuple[float, int]:
        """Offer `packets` copies of `frame` out of `sent_out_of`: (seconds, frames sunk)."""
        fd = self.generator(frame, sent_out_of)
        before = self.sunk()
        # The ingress device only names the generator's rxq: the verdict picks where it goes.
        start = time.perf_counter()
        self.worker.call(
            prog_test_run_live,
            fd,
            frame,
            ingress_ifindex=self.ifindex(sent_out_of),
            repeat=packets,
            batch_size=BATCH,
        )
        return time.perf_counter() - start, self.sunk() - before

    def best_mpps(self, frame: bytes, sent_out_of: str, packets: int) -> tuple[float, int]:
        """The best of TRIALS (shared cores: noise only ever slows), and the frames it sunk."""
        runs = [self.blast(frame, sent_out_of, packets) for _ in range(TRIALS)]
        secs, sunk = min(runs, key=lambda r: r[0] / max(r[1], 1))
        return sunk / secs / 1e6, sunk

    def close(self) -> None:
        for link in (CLIENT_LINK, TXR_LINK):
            self.worker.call(xdp.detach, link.peer)


@contextmanager
def _pyrelay(sandbox: Sandbox) -> Iterator[subprocess.Popen[str]]:
    """lab/pyrelay.py in the sandbox on the bench's VIP (a local address there) and tunnel."""
    subprocess.run(
        ["ip", "-n", sandbox.name, "addr", "replace", f"{VIP}/32", "dev", "lo"], check=True
    )
    registry = {
        "keys": {str(KEY_ID): KEY.hex()},
        "current_key": KEY_ID,
        "transceivers": [{"cluster": CLUSTER, "id": TXR_ID, "tunnel": f"{TXR_ADDR}:{TXR_PORT}"}],
    }
    with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
        json.dump(registry, f)
        f.flush()
        cmd = ["ip", "netns", "exec", sandbox.name, sys.executable, "-m", "lab.pyrelay"]
        cmd += ["--vip", f"{VIP}:{VIP_PORT}", "--tunnel", f"{TUNNEL}:{TUNNEL_PORT}"]
        proc = subprocess.Popen([*cmd, "--registry", f.name], stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError(f"lab.pyrelay did not start (exit {proc.poll()})")
            yield proc
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def _settle(rig: Rig, quiet: float = 0.3, limit: float = 30.0) -> None:
    """Wait until the sink stops counting: a userspace relay drains its socket after a blast."""
    deadline = time.monotonic() + limit
    last, since = rig.sunk(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = rig.sunk()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
    raise RuntimeError("the sink kept counting: the userspace relay never drained")


@contextmanager
def _attached(worker: NetnsWorker, fd: int, *links: str) -> Iterator[None]:
    for link in links:
        worker.call(xdp.attach, link, fd, "native")
    try:
        yield
    finally:
        for link in links:
            worker.call(xdp.detach, link)


def _userspace(
    rig: Rig, sandbox: Sandbox, worker: NetnsWorker, pass_fd: int, path: Path, packets: int
) -> tuple[float, int]:
    """The same frames through lab/pyrelay.py: what it forwarded while the generator ran."""
    with _attached(worker, pass_fd, CLIENT_LINK.name, TXR_LINK.name), _pyrelay(sandbox):
        rig.blast(binding(), CLIENT_LINK.peer, 1)  # the flow, learned by ufrag
        _settle(rig)
        best = (0.0, 0)
        for _ in range(TRIALS):
            secs, sunk = rig.blast(path.frame, _peer(path.into), packets)
            _settle(rig)
            if sunk / secs > best[0]:
                best = (sunk / secs, sunk)
        return best[0] / 1e6, best[1]


def measure(packets: int = PACKETS) -> Table:
    rows: list[list[object]] = []
    with fib_sandbox("edgempps") as sandbox, NetnsWorker(sandbox.path) as worker:
        rig = Rig(sandbox, worker)
        relay = compile_relay()
        trivial = BPF(text=BASELINE_SRC)  # kept alive: the userspace row attaches its XDP_PASS
        bench = Bench(sandbox, worker, relay, trivial.load_func(b"xdp_pass", BPF.XDP).fd)
        try:
            # The generator alone: out of the relay's ingress link, straight into its peer's sink.
            for path in _paths():
                offered, _ = rig.best_mpps(path.frame, path.into, packets)
                reflect_fd = {}
                results: dict[str, tuple[float, int]] = {}
                for label, out_if in (("XDP_REDIRECT", rig.ifindex(path.out)), ("XDP_TX", 0)):
                    prog = BPF(text=REFLECTOR_SRC, cflags=[f"-DOUT_IF={out_if}"])
                    reflect_fd[label] = prog
                    with _attached(worker, prog.load_func(b"xdp_reflect", BPF.XDP).fd, path.into):
                        results[label] = rig.best_mpps(path.frame, _peer(path.into), packets)
                bench.learn()
                counted = {r: bench.count(r) for r in path.reasons}
                with _attached(worker, bench.fd, CLIENT_LINK.name, TXR_LINK.name):
                    results["relay"] = rig.best_mpps(path.frame, _peer(path.into), packets)
                done = sum(bench.count(r) - counted[r] for r in path.reasons)
                if done < results["relay"][1]:
                    raise RuntimeError(
                        f"{path.name}: the relay counted {done} forwards, "
                        f"the sink saw {results['relay'][1]}"
                    )
                results["python"] = _userspace(rig, sandbox, worker, bench.base_fd, path, packets)
                redirect = results["XDP_REDIRECT"][0]
                for label, (mpps, sunk) in (
                    ("bare XDP_REDIRECT reflector", results["XDP_REDIRECT"]),
                    ("bare XDP_TX reflector", results["XDP_TX"]),
                    ("XDP relay", results["relay"]),
                    ("Python userspace relay (lab/pyrelay.py)", results["python"]),
                ):
                    rows.append(
                        [
                            path.name,
                            label,
                            f"{offered:.3f}",
                            f"{mpps:.3f}",
                            f"{mpps / redirect:.2f}",
                            f"{sunk:,}",
                        ]
                    )
        finally:
            rig.close()
    return Table(
        "Relay forwarding limit (live frames from the kernel, one core, Mpps)",
        [
            "path",
            "program on the ingress link",
            "generator alone",
            "forwarded",
            "x redirect reflector",
            "frames sunk",
        ],
        rows,
        notes=[
            f"{packets:,} frames per trial, best of {TRIALS}; batch {BATCH}; one namespace, "
            "veth links, native XDP; sink XDP_DROP on the far peer"
        ],
    )


def run() -> Table:
    return measure()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=PACKETS, help="frames per trial")
    args = ap.parse_args()
    print(measure(args.packets).render_text())


if __name__ == "__main__":
    main()
