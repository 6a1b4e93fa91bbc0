"""Fixtures for the relayctl tests (helpers in ctl_lab.py); teardown always cleans up."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator

import pytest
from ctl_lab import BPFFS, CLIENT_ADDR, RELAY_ADDR, RELAYCTL, Lab, ip, unique


@pytest.fixture
def lab() -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    lab = Lab(unique("rcr"), unique("rcc"), unique("t"))
    try:
        ip("netns", "add", lab.relay_ns)
        ip("netns", "add", lab.client_ns)
        ip(
            "-n",
            lab.relay_ns,
            "link",
            "add",
            "va",
            "type",
            "veth",
            "peer",
            "name",
            "vb",
            "netns",
            lab.client_ns,
        )
        ip("-n", lab.relay_ns, "addr", "add", f"{RELAY_ADDR}/24", "dev", "va")
        ip("-n", lab.client_ns, "addr", "add", f"{CLIENT_ADDR}/24", "dev", "vb")
        for ns, dev in (
            (lab.relay_ns, "va"),
            (lab.client_ns, "vb"),
            (lab.relay_ns, "lo"),
            (lab.client_ns, "lo"),
        ):
            ip("-n", ns, "link", "set", dev, "up")
        yield lab
    finally:
        if (BPFFS / lab.name).exists():
            subprocess.run(
                [
                    "nsenter",
                    f"--net=/run/netns/{lab.relay_ns}",
                    RELAYCTL,
                    "unload",
                    "--name",
                    lab.name,
                ],
                capture_output=True,
                timeout=60,
            )
            shutil.rmtree(BPFFS / lab.name, ignore_errors=True)
        for ns in (lab.relay_ns, lab.client_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.fixture
def loaded(lab: Lab) -> Lab:
    """The lab with the relay loaded natively on va, VIP 198.18.0.1:3478, tunnel :6080."""
    lab.load("--mode", "native")
    return lab
