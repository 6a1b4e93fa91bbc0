"""A wire with delay, jitter and loss between two interfaces: the lab's netem.

This machine's kernel has no netem (CONFIG_NET_SCH_NETEM is not set, nor sch_fq for BPF
earliest-departure-time pacing), so a link that needs a round trip time is cut in two and a
process in the middle namespace carries every frame across, later:

    client eth0 <-veth-> [wa  delay line  wb] <-veth-> cr router

Frames are read with AF_PACKET on one side and written unchanged on the other after `delay_ms`
(+ a uniform jitter in [0, jitter_ms), kept in order as a real link does) unless dropped with
probability `loss`; both directions the same. It is layer 2 and transparent: no addresses in the
middle, the MACs of the two ends as they were. Offloads are turned off on all four ends, because
a frame read by AF_PACKET and sent again is a new frame: a checksum left to the NIC (CHECKSUM_
PARTIAL) or a GSO super-frame would not survive the trip.

One thread, one timer heap: good to well under a millisecond at the packet rates of calls and
signaling (hundreds to a few thousand per second), not for throughput.

    python -m lab.delayline A B --delay-ms 10 [--jitter-ms 2] [--loss 0.01] [--seed N]
    (run inside the middle namespace; prints "ready" once both sockets are bound)
"""

from __future__ import annotations

import argparse
import heapq
import random
import select
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lab import netns
from lab.netns import NetnsError

if TYPE_CHECKING:
    from lab.base import Lab

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_IGNORE_OUTGOING = 23  # linux/if_packet.h: do not read back what this socket sends
RCVBUF = 4 << 20
OFFLOADS = ("tx", "rx", "tso", "gso", "gro")  # ethtool -K names
START_TIMEOUT = 10.0
REPO = Path(__file__).resolve().parent.parent  # `python -m lab.delayline` runs from here


@dataclass(frozen=True)
class Impairment:
    delay_ms: float
    jitter_ms: float = 0.0
    loss: float = 0.0
    seed: int | None = None  # of the loss and jitter draws: the same seed, the same pattern

    def __post_init__(self) -> None:
        if self.delay_ms < 0 or self.jitter_ms < 0:
            raise ValueError("delay and jitter are >= 0 ms")
        if not 0.0 <= self.loss < 1.0:
            raise ValueError("loss is a probability in [0, 1)")


def offloads_off(ns: str, ifname: str) -> None:
    """`ethtool -K ifname tx off rx off tso off gso off gro off` in ns (see the module doc)."""
    argv = ["ethtool", "-K", ifname]
    for name in OFFLOADS:
        argv += [name, "off"]
    netns.run(ns, argv)


def _packet_socket(ifname: str) -> socket.socket:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
    sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
    sock.bind((ifname, 0))
    sock.setblocking(False)
    return sock


def carry(a: str, b: str, imp: Impairment) -> None:
    """Carry frames between interfaces a and b until killed."""
    rng = random.Random(imp.seed)
    socks = {a: _packet_socket(a), b: _packet_socket(b)}
    other = {socks[a].fileno(): socks[b], socks[b].fileno(): socks[a]}
    last_due = {id(socks[a]): 0.0, id(socks[b]): 0.0}  # per direction: in order, as a wire
    queue: list[tuple[float, int, socket.socket, bytes]] = []
    seq = 0
    poller = select.poll()
    for s in socks.values():
        poller.register(s.fileno(), select.POLLIN)
    print("ready", flush=True)
    while True:
        now = time.monotonic()
        while queue and queue[0][0] <= now:
            _, _, out, frame = heapq.heappop(queue)
            try:
                out.send(frame)
            except OSError:  # a full or downed link drops the frame, as a wire would
                pass
        timeout = None if not queue else max(0.0, (queue[0][0] - time.monotonic()) * 1000)
        for fd, _ in poller.poll(timeout):
            out = other[fd]
            src = socks[a] if out is socks[b] else socks[b]
            while True:
                try:
                    frame = src.recv(65536)
                except BlockingIOError:
                    break
                if imp.loss and rng.random() < imp.loss:
                    continue
                jitter = rng.uniform(0.0, imp.jitter_ms) if imp.jitter_ms else 0.0
                due = max(time.monotonic() + (imp.delay_ms + jitter) / 1000, last_due[id(out)])
                last_due[id(out)] = due
                seq += 1
                heapq.heappush(queue, (due, seq, out, frame))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m lab.delayline",
        description="Carry frames between two interfaces with delay, jitter and loss "
        "(the lab's netem; run inside the namespace holding both).",
    )
    ap.add_argument("a", help="one interface")
    ap.add_argument("b", help="the other interface")
    ap.add_argument("--delay-ms", type=float, required=True, help="one-way delay, each way")
    ap.add_argument("--jitter-ms", type=float, default=0.0, help="extra delay, uniform [0, J)")
    ap.add_argument("--loss", type=float, default=0.0, help="drop probability per frame")
    ap.add_argument("--seed", type=int, default=None, help="for a repeatable loss pattern")
    args = ap.parse_args(argv)
    try:
        carry(args.a, args.b, Impairment(args.delay_ms, args.jitter_ms, args.loss, args.seed))
    except ValueError as exc:
        print(f"delayline: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"delayline: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())


def delayed_link(
    lab: Lab, ns_a: str, if_a: str, ns_b: str, if_b: str, imp: Impairment, suffix: str
) -> None:
    """ns_a/if_a and ns_b/if_b joined through a delay line in a new namespace
    `<prefix>-<suffix>` of `lab`, where one veth pair would have joined them; the process and the
    namespace go at the lab's teardown. Returns once frames are being carried."""
    mid = lab.namespace(suffix)
    netns.veth(ns_a, if_a, mid, "wa")
    netns.veth(mid, "wb", ns_b, if_b)
    for ns, ifname in ((ns_a, if_a), (mid, "wa"), (mid, "wb"), (ns_b, if_b)):
        offloads_off(ns, ifname)
    for ifname in ("wa", "wb"):  # frames for the two ends' MACs, not ours
        netns.run(mid, ["ip", "link", "set", ifname, "promisc", "on"])
    argv = [sys.executable, "-m", "lab.delayline", "wa", "wb", f"--delay-ms={imp.delay_ms}"]
    argv += [f"--jitter-ms={imp.jitter_ms}", f"--loss={imp.loss}"]
    if imp.seed is not None:
        argv.append(f"--seed={imp.seed}")
    proc = lab.spawn(mid, argv, stdout=subprocess.PIPE, cwd=str(REPO))
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], START_TIMEOUT)
    line = proc.stdout.readline() if ready else b""
    if line.strip() != b"ready":
        raise NetnsError(f"the delay line in {mid} did not start (exit {proc.poll()})")
