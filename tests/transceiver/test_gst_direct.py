"""Direct mode as docs/transceiver.md documents it, called by GStreamer's webrtcbin (libnice).

libnice ignores loopback candidates, so the transceiver gets a host of its own (a namespace
with a non-loopback address) and the client calls it from another host over a veth link.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import netns
from lab.wait import wait_until

# no `browser` mark: that one means Chromium; a real client's call gets the browser tests' timeout
pytestmark = [pytest.mark.lab, pytest.mark.timeout(150)]

TXR_ADDR, CLIENT_ADDR = "10.203.0.1", "10.203.0.2"  # private to this test's two namespaces
TRANSCEIVER = str(Path(sys.executable).parent / "transceiver")
GST_PYTHON = "/usr/bin/python3"  # Debian's Python holds the GStreamer bindings
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def hosts() -> Iterator[tuple[str, str]]:
    """(transceiver ns, client ns): two hosts on one link, each with its own address."""
    prefix = netns.lab_prefix()
    txr_ns, client_ns = f"{prefix}t", f"{prefix}c"
    try:
        for name in (txr_ns, client_ns):
            netns.create(name)
        netns.veth(txr_ns, "eth0", client_ns, "eth0")
        netns.add_addr(txr_ns, "eth0", f"{TXR_ADDR}/24")
        netns.add_addr(client_ns, "eth0", f"{CLIENT_ADDR}/24")
        yield txr_ns, client_ns
    finally:
        for name in (client_ns, txr_ns):
            netns.delete(name)
        assert not netns.list_namespaces(prefix), "namespaces left behind"


def healthy(client_ns: str, url: str) -> bool:
    def get() -> bool:
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=1) as resp:
                return resp.status == 200
        except OSError:
            return False

    return netns.call_in(client_ns, get)


def test_libnice_calls_a_direct_mode_transceiver(hosts: tuple[str, str], tmp_path: Path) -> None:
    txr_ns, client_ns = hosts
    log = (tmp_path / "transceiver.log").open("wb")  # a file: a full pipe would stall it
    # the documented direct-mode command, advertising the host's address instead of 127.0.0.1
    server = netns.popen(
        txr_ns,
        [TRANSCEIVER, "serve", "--listen", f"{TXR_ADDR}:8080", "--udp", f"{TXR_ADDR}:5000",
         "--advertise", TXR_ADDR, "--no-auth"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://{TXR_ADDR}:8080"
    try:
        wait_until(lambda: server.poll() is None and healthy(client_ns, url), 20, "transceiver up")
        client = netns.popen(
            client_ns,
            [GST_PYTHON, "-m", "lab.gstclient", url],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        out, err = client.communicate(timeout=90)
        lines = out.decode().strip().splitlines()
        assert lines, (client.returncode, err.decode()[-2000:])
        result = json.loads(lines[-1])
        assert client.returncode == 0 and result["state"] == "connected", (result, err[-2000:])
        assert result["packets"] >= 50 and result["error"] is None, result
        assert result["setup_ms"] > 0
    finally:
        server.terminate()
        server.wait(timeout=20)
        log.close()
