"""`make demo`: a lab in network namespaces, calls through the XDP relay, a report, teardown.

Builds client / relay / two transceiver namespaces (lab/topology.py), loads the relay with
`relayctl load` and `relayctl map sync`, starts two stand-in transceivers, then runs a few calls:
each sends a STUN Binding request carrying a routing ufrag minted for its transceiver to the VIP,
then DTLS- and RTP-like packets on the flow the relay learned; the stand-ins echo every packet
back through the tunnel and the relay. Prints per call which transceiver answered, packets each
way and RTTs, then `relayctl flows` and `relayctl stats`. Everything is removed at the end, also
on Ctrl-C or SIGTERM. Exits 1 if a call did not get all its replies.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import time
from dataclasses import dataclass, field
from types import FrameType

from lab.topology import RelayLab, sweep_stale_labs
from wire import stun

PREFIX = (b"txr-7|", b"txr-8|")


@dataclass
class Call:
    number: int
    client: tuple[str, int]
    txr: int
    sent: int = 0
    received: int = 0
    wrong: int = 0  # echoes from the wrong transceiver or with the wrong bytes
    rtts_ms: list[float] = field(default_factory=list)


MAIN_PID = os.getpid()


class Interrupted(Exception):
    """Ctrl-C or SIGTERM: leave through the lab's teardown."""


def _on_signal(signum: int, frame: FrameType | None) -> None:
    if os.getpid() != MAIN_PID:  # a helper child forked by a library: just go
        os._exit(128 + signum)
    raise Interrupted


def run_call(lab: RelayLab, number: int, txr: int, packets: int) -> Call:
    with lab.client_socket(lab.client_addrs[number % 2]) as sock:
        sock.settimeout(1.0)
        call = Call(number, sock.getsockname(), txr)
        payloads = [stun.build_binding_request(f"{lab.mint(txr)}:demo{number}")]
        payloads.append(b"\x16\xfe\xfd" + b"\x00" * 80)  # DTLS-like (first byte 22)
        payloads += [b"\x80\x6f" + i.to_bytes(2, "big") + b"\x00" * 156 for i in range(packets)]
        for payload in payloads:
            t0 = time.perf_counter()
            sock.sendto(payload, (lab.vip, lab.vip_port))
            call.sent += 1
            try:
                data, src = sock.recvfrom(2048)
            except TimeoutError:
                continue
            call.received += 1
            if src != (lab.vip, lab.vip_port) or data != PREFIX[txr] + payload:
                call.wrong += 1
            call.rtts_ms.append((time.perf_counter() - t0) * 1000)
    return call


def report(lab: RelayLab, calls: list[Call]) -> None:
    print("\ncalls (client -> VIP -> relay -> transceiver, echoed back the same way)")
    print(
        f"{'call':>4}  {'client':<20} {'transceiver':<24} {'sent':>5} {'back':>5} "
        f"{'wrong':>5} {'RTT p50 ms':>10} {'RTT max ms':>10}"
    )
    for c in calls:
        t = lab.txrs[c.txr]
        where = f"{t.cluster}/{t.id} @ {t.tunnel}"
        p50 = statistics.median(c.rtts_ms) if c.rtts_ms else float("nan")
        top = max(c.rtts_ms) if c.rtts_ms else float("nan")
        client = f"{c.client[0]}:{c.client[1]}"
        print(
            f"{c.number:>4}  {client:<20} {where:<24} {c.sent:>5} "
            f"{c.received:>5} {c.wrong:>5} {p50:>10.3f} {top:>10.3f}"
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=4)
    ap.add_argument("--packets", type=int, default=20, help="RTP-like packets per call")
    ap.add_argument("--mode", choices=("native", "generic"), default="native")
    ap.add_argument("--keep", action="store_true", help="keep the lab up until Ctrl-C")
    args = ap.parse_args(argv)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _on_signal)
    for leftover in sweep_stale_labs():  # labs of earlier runs that were killed outright
        print(f"removed leftover {leftover}")
    lab = RelayLab(transceivers=2, mode=args.mode)
    try:
        print(f"building lab {lab.prefix} and loading the relay with relayctl ...", flush=True)
        with lab:
            print(
                f"relay loaded: VIP {lab.vip}:{lab.vip_port}, tunnel "
                f"{lab.tunnel_addr}:{lab.tunnel_port}, namespaces {lab.prefix}-*",
                flush=True,
            )
            standins = [lab.standin(i, prefix=PREFIX[i]).start() for i in range(2)]
            try:
                calls = [run_call(lab, n, n % 2, args.packets) for n in range(args.calls)]
            finally:
                for s in standins:
                    s.stop()
            report(lab, calls)
            print("\n$ relayctl flows")
            print(lab.relayctl("flows").rstrip())
            print("\n$ relayctl stats")
            print(lab.relayctl("stats").rstrip())
            if args.keep:
                print(
                    f"\nlab kept: try `nsenter --net=/run/netns/{lab.relay_ns} "
                    f".venv/bin/relayctl stats --name {lab.name}`; Ctrl-C removes it",
                    flush=True,
                )
                signal.pause()
    except (KeyboardInterrupt, Interrupted):
        print("\ninterrupted: lab removed", file=sys.stderr)
        return 130
    except Exception as exc:  # a clear message, no traceback, the lab already removed
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    bad = [c for c in calls if c.received != c.sent or c.wrong]
    print("\nlab removed")
    if bad:
        print(f"FAILED: calls {[c.number for c in bad]} missed or garbled replies", file=sys.stderr)
        return 1
    print(f"OK: {len(calls)} calls, every packet answered by the right transceiver")
    return 0


if __name__ == "__main__":
    sys.exit(main())
