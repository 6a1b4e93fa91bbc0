"""Every way an operator can get relayctl wrong ends in a clear line on stderr, not a traceback."""

from __future__ import annotations

import select
import shutil
import subprocess
import time

import pytest

from tests.control.ctl_lab import BPFFS, RELAYCTL, STANDARD_LOAD, Lab

pytestmark = pytest.mark.lab

LOAD = STANDARD_LOAD


def _fails(lab: Lab, *args: str, rc: int = 1, says: str) -> str:
    res = lab.relayctl(*args, check=False)
    assert res.returncode == rc, (res.stdout, res.stderr)
    assert says in res.stderr, res.stderr
    if rc == 1:  # our own errors: exactly one line
        assert res.stderr.count("\n") == 1 and res.stderr.startswith("relayctl: error: ")
    return res.stderr


def test_usage_errors(lab: Lab) -> None:
    _fails(
        lab,
        "load",
        "--name",
        lab.name,
        "--iface",
        "va",
        "--vip",
        "1.2.3.4:x",
        "--tunnel",
        "1.2.3.4:5",
        rc=2,
        says="port 'x' is not 1..65535",
    )
    _fails(
        lab,
        "load",
        "--name",
        lab.name,
        "--iface",
        "va",
        "--vip",
        "1.2.3:80",
        "--tunnel",
        "1.2.3.4:5",
        rc=2,
        says="not an IPv4 address",
    )
    _fails(
        lab,
        "load",
        "--name",
        lab.name,
        "--iface",
        "va",
        "--vip",
        "1.2.3.4:1",
        rc=2,
        says="Missing option '--tunnel'",
    )
    _fails(lab, "map", "sync", "--name", lab.name, rc=2, says="exactly one of --file")
    _fails(lab, "load", "--name", "../etc", "--iface", "va", *LOAD, says="bad --name")
    _fails(lab, "ufrag", "decode", "not-a-ufrag", says="bad_ufrag")
    run = ("run", "--name", lab.name, "--redis", "redis://127.0.0.1:1")
    _fails(lab, *run, "--region", "ap-south", says="--region needs --lat and --lon")
    _fails(lab, *run, "--lat", "1", "--lon", "2", says="--lat/--lon without --region")
    _fails(lab, *run, "--region", "AP South", "--lat", "1", "--lon", "2", says="--region: region")
    _fails(
        lab,
        "ufrag",
        "mint",
        "--key-id",
        "1",
        "--key",
        "00" * 16,
        "--cluster",
        "1",
        "--transceiver",
        "1",
        rc=2,
        says="No such option '--key'",
    )


def test_nothing_loaded(lab: Lab) -> None:
    for cmd in (("stats",), ("flows",), ("map", "show"), ("unload",)):
        _fails(lab, *cmd, "--name", lab.name, says="nothing loaded")


def test_no_such_interface_and_bad_mode(lab: Lab) -> None:
    _fails(lab, "load", "--name", lab.name, "--iface", "nope0", *LOAD, says="no such interface")
    assert not (BPFFS / lab.name).exists()
    # loopback has no driver-level XDP
    _fails(
        lab,
        "load",
        "--name",
        lab.name,
        "--iface",
        "lo",
        *LOAD,
        "--mode",
        "native",
        says="use --mode generic",
    )
    assert not (BPFFS / lab.name).exists()  # a failed first load leaves no pins


def test_bad_registry_sources(loaded: Lab, tmp_path: object) -> None:
    lab = loaded
    _fails(
        lab, "map", "sync", "--name", lab.name, "--file", "/nonexistent.json", says="No such file"
    )
    bad = f"{tmp_path}/bad.json"
    with open(bad, "w") as f:
        f.write('{"transceivers": [{"cluster": 1, "id": 2, "tunnel": "10.0.0.1"}]}')
    _fails(lab, "map", "sync", "--name", lab.name, "--file", bad, says="expected IPV4:PORT")
    _fails(
        lab,
        "map",
        "sync",
        "--name",
        lab.name,
        "--redis",
        f"unix://{tmp_path}/no.sock",
        says="cannot read the registry",
    )
    _fails(lab, "unload", "--name", lab.name, "--iface", "lo", says="not attached to lo")
    assert lab.xdp() is not None  # still attached after the refused unload


def test_not_root(lab: Lab) -> None:
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) not installed")
    res = subprocess.run(
        [
            "nsenter",
            f"--net=/run/netns/{lab.relay_ns}",
            setpriv,
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            RELAYCTL,
            "stats",
            "--name",
            lab.name,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert res.stderr.startswith("relayctl: error: `relayctl stats` needs root")


def test_pinned_maps_of_another_layout_are_refused(lab: Lab) -> None:
    from bcc import BPF

    pins = BPFFS / lab.name
    pins.mkdir()
    old = BPF(text=f'BPF_TABLE_PINNED("hash", u32, u32, flows, 16, "{pins}/flows");'.encode())
    old.cleanup()
    _fails(
        lab,
        "load",
        "--name",
        lab.name,
        "--iface",
        "va",
        *LOAD,
        says="pinned by another version of the relay; `relayctl unload`",
    )
    assert (pins / "flows").exists() and lab.xdp() is None  # nothing attached, nothing lost
    out = lab.relayctl("unload", "--name", lab.name).stdout
    assert "no interface" in out and not pins.exists()


def test_watch_outlives_a_registry_outage(loaded: Lab, tmp_path: object) -> None:
    lab = loaded
    cmd = [
        "nsenter",
        f"--net=/run/netns/{lab.relay_ns}",
        RELAYCTL,
        "map",
        "sync",
        "--name",
        lab.name,
        "--redis",
        f"unix://{tmp_path}/down.sock",
        "--watch",
        "--interval",
        "0.2",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        lines = []
        deadline = time.monotonic() + 20
        while len(lines) < 2 and time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stderr], [], [], 1)
            if ready:
                lines.append(proc.stderr.readline())
        assert len(lines) == 2 and all("(retrying)" in line for line in lines), lines
        assert proc.poll() is None  # still running
    finally:
        proc.terminate()
        _, rest = proc.communicate(timeout=20)
    assert proc.returncode == 0 and "Traceback" not in rest
