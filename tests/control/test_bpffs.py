"""Pins must outlive relayctl: a private bpffs is refused, and a relay program whose pins are gone
can still be detached (the trap of issue 9: `ip netns exec` gives its command a private /sys)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from lab import netns
from tests.control.ctl_lab import BPFFS, RELAYCTL, STANDARD_LOAD, Lab, unique

pytestmark = pytest.mark.lab


def test_a_private_mount_namespace_without_bpffs_is_refused() -> None:
    """relayctl does not mount a bpffs that would die with it; it says why and what to do."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    script = (
        "umount /sys/fs/bpf 2>/dev/null; "
        "grep -q ' /sys/fs/bpf bpf ' /proc/self/mounts && echo still-mounted; "
        f"{RELAYCTL} stats --name {unique('m')}; echo rc=$?; "
        "grep -c ' /sys/fs/bpf bpf ' /proc/self/mounts"
    )
    res = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "still-mounted" not in res.stdout
    assert "rc=1" in res.stdout
    assert "private mount namespace" in res.stderr and "nsenter --net" in res.stderr
    assert "Traceback" not in res.stderr
    assert res.stdout.strip().splitlines()[-1] == "0", "relayctl mounted a private bpffs"


def test_load_under_ip_netns_exec_is_refused_and_attaches_nothing(lab: Lab) -> None:
    res = subprocess.run(
        ["ip", "netns", "exec", lab.relay_ns, RELAYCTL, "load", "--name", lab.name,
         "--iface", "va", *STANDARD_LOAD],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 1, res.stdout + res.stderr
    assert "private mount namespace" in res.stderr and "Traceback" not in res.stderr
    assert lab.xdp("va") is None
    assert not (BPFFS / lab.name).exists()


def test_unload_iface_detaches_a_relay_whose_pins_are_gone(loaded: Lab) -> None:
    lab = loaded
    prog = lab.xdp("va")["prog"]["id"]  # type: ignore[index]
    shutil.rmtree(BPFFS / lab.name)  # the pins are lost; the program still runs on va

    res = lab.relayctl("stats", "--name", lab.name, check=False)
    assert res.returncode == 1 and "nothing loaded" in res.stderr
    res = lab.relayctl("unload", "--name", lab.name, check=False)
    assert res.returncode == 1
    assert f"va (program {prog})" in res.stderr and "unload --iface" in res.stderr

    out = lab.relayctl("unload", "--name", lab.name, "--iface", "va").stdout
    assert out.strip() == "detached a relay program whose pins were gone from va"
    assert lab.xdp("va") is None


def test_unload_iface_leaves_a_foreign_program_alone(lab: Lab) -> None:
    netns.attach_xdp_pass(lab.relay_ns, "va")
    before = lab.xdp("va")
    res = lab.relayctl("unload", "--name", lab.name, "--iface", "va", check=False)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert f"is not attached to va (program {before['prog']['id']}" in res.stderr  # type: ignore[index]
    assert lab.xdp("va") == before
