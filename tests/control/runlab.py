"""Helpers for the `relayctl run` tests: a private redis-server that can be stopped and
restarted, the controller as a subprocess in the relay netns, its metrics, and waits on
conditions with deadlines (never a bare sleep as the assertion)."""

from __future__ import annotations

import ctypes as ct
import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from control.sync import MapState, read_state
from datapath.maps import RelayMaps
from lab import netns
from lab.wait import wait_until

RELAYCTL = str(Path(sys.executable).parent / "relayctl")
BPFFS = Path("/sys/fs/bpf")
METRICS_PORT = 9477  # inside the relay's private netns: cannot collide


class RunProc:
    """`relayctl run` started in the relay netns as an operator would (nsenter, not ip netns
    exec); its log goes to a file the test reads."""

    def __init__(self, ns: str, name: str, redis_url: str, *extra: str) -> None:
        self.ns = ns
        self.name = name
        self.log = Path(tempfile.mkstemp(prefix=f"edge-run-{os.getpid()}-", suffix=".log")[1])
        argv = [RELAYCTL, "run", "--name", name, "--redis", redis_url]  # default interval
        argv += ["--metrics", f"127.0.0.1:{METRICS_PORT}", *extra]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                netns.nsenter_argv(ns, argv), stdout=out, stderr=subprocess.STDOUT
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = 30) -> None:
        def ready() -> bool:
            assert self.proc.poll() is None, f"relayctl run exited:\n{self.text()}"
            return "ready:" in self.text()

        wait_until(ready, timeout, "relayctl run to be ready")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def metrics(self) -> dict[str, float]:
        """{"name{label=value,...}": value} from GET /metrics inside the netns."""
        sock = netns.socket_in(self.ns, socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.settimeout(5)
            sock.connect(("127.0.0.1", METRICS_PORT))
            sock.sendall(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        finally:
            sock.close()
        body = b"".join(chunks).split(b"\r\n\r\n", 1)[1].decode()
        out = {}
        for family in text_string_to_metric_families(body):
            for s in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
                out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
        return out

    def stop(self, timeout: float = 10) -> int:
        """SIGTERM and wait; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"relayctl run ignored SIGTERM:\n{self.text()}") from None
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def close(self) -> None:
        self.kill()
        self.log.unlink(missing_ok=True)


def map_state(name: str) -> MapState:
    """The relay's maps read straight from bpffs (pins are visible from any netns)."""
    with RelayMaps(BPFFS / name) as maps:
        return read_state(maps)


def config_flags(name: str) -> int:
    with RelayMaps(BPFFS / name) as maps:
        return int(maps["config"].lookup(ct.c_uint32(0)).flags)


def flow_in_map(name: str, client: str, cport: int, vip: str, vport: int) -> tuple[int, int] | None:
    from datapath.maps import FlowKey, be16, be32

    with RelayMaps(BPFFS / name) as maps:
        val = maps["flows"].lookup(FlowKey(be32(client), be32(vip), be16(cport), be16(vport)))
    return None if val is None else (val.cluster, val.id)


def flows_in_map(name: str) -> int:
    with RelayMaps(BPFFS / name) as maps:
        return sum(1 for _ in maps["flows"].keys())


def packets(name: str, reason: str) -> int:
    from control import views

    with RelayMaps(BPFFS / name) as maps:
        return views.stats(maps)[reason]["packets"]
