"""The namespace plumbing alone: no relay, no BPF program of ours beyond XDP_PASS."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator

import pytest

from lab import netns
from lab.topology import RelayLab
from tests.lab.labhelp import recv_exact

pytestmark = pytest.mark.lab


@pytest.fixture
def prefix() -> Iterator[str]:
    p = netns.lab_prefix()
    try:
        yield p
    finally:
        netns.sweep(p)
        assert netns.list_namespaces(p) == []


def _pair(prefix: str) -> tuple[str, str]:
    a, b = f"{prefix}-a", f"{prefix}-b"
    netns.create(a)
    netns.create(b)
    netns.veth(a, "va", b, "vb")
    netns.add_addr(a, "va", "198.18.10.1/24")
    netns.add_addr(b, "vb", "198.18.10.2/24")
    return a, b


def test_prefixes_are_unique_and_fixed_width() -> None:
    names = [netns.lab_prefix() for _ in range(5000)]
    assert len(set(names)) == 5000
    assert len({len(n) for n in names}) == 1  # fixed width: none is a prefix of another
    assert all(n.startswith(f"{netns.LAB_BASE}{os.getpid()}x") for n in names)
    # The longest interface name a lab makes is short and lives inside its namespaces; the
    # namespace names themselves have no 15-character limit.


def test_veth_between_namespaces_carries_udp(prefix: str) -> None:
    a, b = _pair(prefix)
    sa, sb = netns.socket_in(a), netns.socket_in(b)
    with sa, sb:
        sa.bind(("198.18.10.1", 4000))
        sb.bind(("198.18.10.2", 0))
        sb.sendto(b"across the veth", ("198.18.10.1", 4000))
        data, src = recv_exact(sa)
        assert data == b"across the veth"
        assert src == ("198.18.10.2", sb.getsockname()[1])
    # The links exist only inside the lab namespaces, never in the host's.
    host_links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert " va@" not in host_links and " vb@" not in host_links


def test_sysctl_is_per_namespace(prefix: str) -> None:
    a, _ = _pair(prefix)
    host_before = open("/proc/sys/net/ipv4/ip_forward").read()
    netns.sysctl(a, "net.ipv4.ip_forward", "1")
    assert netns.read_sysctl(a, "net.ipv4.ip_forward") == "1"
    assert open("/proc/sys/net/ipv4/ip_forward").read() == host_before


def test_xdp_pass_attaches_and_leaves_with_the_namespace(prefix: str) -> None:
    a, b = _pair(prefix)
    assert not netns.xdp_attached(b, "vb")
    netns.attach_xdp_pass(b, "vb")
    assert netns.xdp_attached(b, "vb")
    assert not netns.xdp_attached(a, "va")
    # Traffic still flows through the peer's XDP_PASS.
    sa, sb = netns.socket_in(a), netns.socket_in(b)
    with sa, sb:
        sb.bind(("198.18.10.2", 4001))
        sa.sendto(b"x" * 100, ("198.18.10.2", 4001))
        assert recv_exact(sb)[0] == b"x" * 100
    netns.delete(b)
    assert not netns.exists(b)


def test_run_uses_nsenter_so_bpffs_stays_visible(prefix: str) -> None:
    a, _ = _pair(prefix)
    mounts = netns.run(a, ["cat", "/proc/self/mounts"]).stdout
    assert " /sys/fs/bpf bpf " in mounts
    links = netns.run(a, ["ip", "-o", "link"]).stdout
    assert "va@" in links and "lo:" in links and links.count("\n") == 2


def test_run_reports_failure_with_stderr(prefix: str) -> None:
    a, _ = _pair(prefix)
    with pytest.raises(netns.NetnsError, match="exited 1"):
        netns.run(a, ["sh", "-c", "echo boom >&2; exit 1"])


def test_bad_names_are_clear_errors(prefix: str) -> None:
    a, b = f"{prefix}-a", f"{prefix}-b"
    netns.create(a)
    netns.create(b)
    with pytest.raises(netns.NetnsError, match="longer than 15"):
        netns.veth(a, "x" * 16, b, "y")
    with pytest.raises(netns.NetnsError, match="does not exist"):
        netns.socket_in(f"{prefix}-nope")
    with pytest.raises(netns.NetnsError, match="already exists"):
        netns.create(a)


def test_sweep_kills_processes_and_removes_namespaces(prefix: str) -> None:
    a, _ = _pair(prefix)
    proc = netns.popen(a, ["sleep", "600"])
    try:
        deadline = time.monotonic() + 5  # nsenter joins the namespace just after it starts
        while proc.pid not in netns.pids_in(a):
            assert time.monotonic() < deadline, "nsenter never entered the namespace"
            time.sleep(0.01)
        removed = netns.sweep(prefix)
        assert sorted(removed) == [f"{prefix}-a", f"{prefix}-b"]
        assert proc.wait(timeout=5) != 0
        assert netns.list_namespaces(prefix) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sweep_refuses_names_that_are_not_labs() -> None:
    with pytest.raises(netns.NetnsError, match="refusing"):
        netns.sweep("edge")


def test_sweep_stale_removes_labs_of_dead_processes_only(prefix: str) -> None:
    # A pid above pid_max never runs: unlike a reaped child's, no new process can reuse it.
    dead_pid = int(open("/proc/sys/kernel/pid_max").read()) + 1
    stale = f"{netns.LAB_BASE}{dead_pid}x0bad"
    netns.create(f"{stale}-relay")
    (netns.BPFFS / stale).mkdir()
    mine = f"{prefix}-live"
    netns.create(mine)
    try:
        removed = netns.sweep_stale()
        assert f"{stale}-relay" in removed
        assert str(netns.BPFFS / stale) in removed
        assert netns.exists(mine)
    finally:
        netns.sweep(stale)


def test_lab_is_torn_down_when_the_body_raises() -> None:
    lab = RelayLab(transceivers=2, load_relay=False)
    with pytest.raises(RuntimeError, match="boom"), lab:
        assert len(netns.list_namespaces(lab.prefix)) == 4
        assert netns.xdp_attached(lab.client_ns, "cr")
        raise RuntimeError("boom")
    assert netns.list_namespaces(lab.prefix) == []
    assert not lab.tmpdir.exists()


def test_code_runs_inside_a_namespace_on_a_thread_or_inline(prefix: str) -> None:
    a, _ = _pair(prefix)
    own = os.stat("/proc/thread-self/ns/net").st_ino
    target = os.stat(netns.ns_path(a)).st_ino
    seen: list[int] = []
    t = netns.thread_in(a, lambda: seen.append(os.stat("/proc/thread-self/ns/net").st_ino))
    t.join(timeout=5)
    assert seen == [target]
    assert netns.call_in(a, lambda: os.stat("/proc/thread-self/ns/net").st_ino) == target
    assert os.stat("/proc/thread-self/ns/net").st_ino == own  # and back


def test_link_counters_count_what_crosses_the_link(prefix: str) -> None:
    a, b = _pair(prefix)
    netns.add_neigh(a, "va", "198.18.10.2", netns.mac(b, "vb"))  # no ARP on the link
    counters = netns.LinkCounters(b, "vb")
    sink = netns.socket_in(b)
    try:
        sink.bind(("198.18.10.2", 9))  # a listener: no ICMP (and no ARP) back
        rx0, tx0 = counters.read()
        with netns.socket_in(a) as s:
            for _ in range(5):
                s.sendto(b"x", ("198.18.10.2", 9))
        for _ in range(5):
            recv_exact(sink)
        assert counters.read() == (rx0 + 5, tx0)
    finally:
        sink.close()
        counters.close()
