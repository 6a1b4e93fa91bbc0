"""The relayctl tests' lab: a relay netns and a client netns joined by a veth pair.

relay ns:  va 198.18.0.1/24 (the VIP and the tunnel address live here)
client ns: vb 198.18.0.2/24
A lab.base.Lab: names carry the pid and a random suffix; teardown unloads, removes pins and
deletes both namespaces even when the test failed.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lab import base, netns
from wire.defaults import RELAY_TUNNEL_PORT

VENV_BIN = Path(sys.executable).parent
RELAYCTL = str(VENV_BIN / "relayctl")
BPFFS = Path("/sys/fs/bpf")
RELAY_ADDR = "198.18.0.1"
CLIENT_ADDR = "198.18.0.2"
STANDARD_LOAD = ("--vip", f"{RELAY_ADDR}:3478", "--tunnel", f"{RELAY_ADDR}:{RELAY_TUNNEL_PORT}")


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


class Lab(base.Lab):
    """The two namespaces; `name` is the relay's --name (pins under /sys/fs/bpf/<name>)."""

    def __init__(self) -> None:
        super().__init__()
        self.name = self.prefix

    def build(self) -> None:
        self.relay_ns = self.namespace("relay")
        self.client_ns = self.namespace("client")
        netns.veth(self.relay_ns, "va", self.client_ns, "vb")
        netns.add_addr(self.relay_ns, "va", f"{RELAY_ADDR}/24")
        netns.add_addr(self.client_ns, "vb", f"{CLIENT_ADDR}/24")
        # Whatever a test loaded under the lab's name is unloaded first (base: then the pins).
        self.on_close(lambda: self.relayctl("unload", "--name", self.name, check=False))

    def relayctl(
        self,
        *args: str,
        check: bool = True,
        env: dict[str, str] | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        """Run relayctl inside the relay netns as an operator would (never a traceback)."""
        cmd = netns.nsenter_argv(self.relay_ns, [RELAYCTL, *args])
        res = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
        )
        assert "Traceback" not in res.stderr + res.stdout, res.stderr
        if check:
            assert res.returncode == 0, f"{cmd}: rc={res.returncode}\n{res.stdout}\n{res.stderr}"
        return res

    def load(self, *extra: str) -> subprocess.CompletedProcess[str]:
        """`relayctl load` on va with the lab's standard VIP (:3478) and tunnel (:6080)."""
        return self.relayctl("load", "--name", self.name, "--iface", "va", *STANDARD_LOAD, *extra)

    def json(self, *args: str) -> Any:
        return json.loads(self.relayctl(*args, "--name", self.name, "--json").stdout)

    def xdp(self, iface: str = "va") -> dict[str, Any] | None:
        out = subprocess.run(
            ["ip", "-n", self.relay_ns, "-d", "-j", "link", "show", iface],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        return json.loads(out)[0].get("xdp")

    def send_udp(
        self, payloads: list[bytes], dport: int, sport: int = 40000, dst: str = RELAY_ADDR
    ) -> None:
        """Send UDP datagrams from the client netns (a real socket, through the veth)."""
        code = (
            "import socket,sys\n"
            "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
            f"s.bind(('{CLIENT_ADDR}',{sport}))\n"
            "for h in sys.argv[1:]: s.sendto(bytes.fromhex(h),"
            f"('{dst}',{dport}))\n"
        )
        subprocess.run(
            netns.nsenter_argv(
                self.client_ns, [sys.executable, "-c", code, *(p.hex() for p in payloads)]
            ),
            check=True,
            timeout=30,
        )

    def wait_stats(self, pred: Callable[[dict], bool], timeout: float = 10) -> dict:
        """Poll `relayctl stats --json` until pred holds (returns the last stats either way)."""
        deadline = time.monotonic() + timeout
        while True:
            stats = self.json("stats")
            if pred(stats) or time.monotonic() > deadline:
                return stats
            time.sleep(0.05)


def unique(prefix: str) -> str:
    return f"{prefix}{os.getpid() % 100000}{secrets.token_hex(2)}"
