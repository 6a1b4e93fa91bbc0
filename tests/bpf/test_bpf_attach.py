"""The program on a real link: native (driver) mode XDP on a veth in a throwaway namespace, real
frames through it; and pinned maps that survive a recompile."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from bcc import BPF

from control.program import MAP_NAMES, PROG_FUNC, ProgramError, compile_relay, load_xdp_fn
from control.reasons import Reason
from lab.fibsandbox import CLIENT_LINK, NEAR_TXR, TXR_LINK, NetnsWorker, Sandbox, fib_sandbox
from tests.bpf.bpfharness import NEAR, RTP, Relay, binding, client_frame, mac
from wire.encap import encapsulate, forward_hop

XDP_ATTACHED_DRV = 1  # IFLA_XDP_ATTACHED mode as `ip -j -d link` reports it
TUNNEL_ADDR = TXR_LINK.addr


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def _link(sandbox: Sandbox, dev: str) -> dict:
    out = subprocess.run(
        ["ip", "-n", sandbox.name, "-j", "-d", "link", "show", "dev", dev],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out)[0]


@pytest.fixture
def attached(relay: Relay) -> Iterator[tuple[Relay, Sandbox, NetnsWorker]]:
    """The session's program attached in native mode to cli0 of a fresh sandbox."""
    with fib_sandbox(prefix="edgeatt") as sandbox, NetnsWorker(sandbox.path) as worker:
        fn = relay.bpf.load_func(PROG_FUNC.encode(), BPF.XDP)
        # veth delivers XDP_REDIRECTed frames to its peer only if the peer runs NAPI (GRO on)
        subprocess.run(
            ["ip", "netns", "exec", sandbox.name, "ethtool", "-K", TXR_LINK.peer, "gro", "on"],
            check=True,
            capture_output=True,
        )
        worker.call(BPF.attach_xdp, CLIENT_LINK.name.encode(), fn, BPF.XDP_FLAGS_DRV_MODE)
        try:
            yield relay, sandbox, worker
        finally:
            worker.call(BPF.remove_xdp, CLIENT_LINK.name.encode(), BPF.XDP_FLAGS_DRV_MODE)
            assert "xdp" not in _link(sandbox, CLIENT_LINK.name)


def _packet_socket(dev: str) -> socket.socket:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    s.bind((dev, 0))
    s.settimeout(5)
    return s


def test_native_mode_on_veth_handles_real_frames(
    attached: tuple[Relay, Sandbox, NetnsWorker],
) -> None:
    relay, sandbox, worker = attached
    link = _link(sandbox, CLIENT_LINK.name)
    assert link["xdp"]["mode"] == XDP_ATTACHED_DRV, link["xdp"]

    tx = worker.call(_packet_socket, CLIENT_LINK.peer)  # the client side of the wire
    rx = worker.call(_packet_socket, TXR_LINK.peer)  # the transceiver side of the wire
    try:
        before = relay.counters()
        tx.send(client_frame(RTP))  # no flow yet
        assert wait_for(
            lambda: relay.counters()[Reason.DROP_NO_FLOW][0] == before[Reason.DROP_NO_FLOW][0] + 1
        )

        stun = client_frame(binding(NEAR))
        tx.send(stun)
        expected = mac(NEAR_TXR[1]) + mac(TXR_LINK.mac) + b"\x08\x00"
        expected += encapsulate(forward_hop(stun[14:]), TUNNEL_ADDR, NEAR.addr, NEAR.port)
        deadline = time.monotonic() + 5
        got = b""
        while got != expected and time.monotonic() < deadline:
            got = rx.recv(4096)  # skips IPv6 noise from the links coming up
        assert got == expected
        assert relay.counters()[Reason.FWD_STUN_NEW][0] == before[Reason.FWD_STUN_NEW][0] + 1
        assert relay.get_flow().id == NEAR.id
    finally:
        tx.close()
        rx.close()


def test_pinned_maps_survive_a_recompile() -> None:
    pin = f"/sys/fs/bpf/edgetest-{os.getpid()}-{secrets.token_hex(3)}"
    try:
        first = compile_relay(pin_dir=pin)
        try:
            load_xdp_fn(first)
            assert sorted(os.listdir(pin)) == sorted(MAP_NAMES)
            flows = first[b"flows"]
            key, val = flows.Key(), flows.Leaf()
            key.client_addr, key.client_port, val.id, val.created_ns = 0x0A0B0C0D, 4321, 77, 99
            flows[key] = val
        finally:
            first.cleanup()
        second = compile_relay(pin_dir=pin)
        try:
            load_xdp_fn(second)
            ((k, v),) = second[b"flows"].items()
            assert (k.client_addr, k.client_port, v.id, v.created_ns) == (0x0A0B0C0D, 4321, 77, 99)
        finally:
            second.cleanup()
    finally:
        shutil.rmtree(pin, ignore_errors=True)
    assert not os.path.exists(pin)


@pytest.mark.parametrize("pin", ["relative/dir", "/sys/fs/bpf/has space", '/sys/fs/bpf/"q'])
def test_bad_pin_dir_is_a_clear_error(pin: str) -> None:
    with pytest.raises(ProgramError, match="pin directory"):
        compile_relay(pin_dir=pin)


def test_missing_source_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("control.program.BPF_DIR", tmp_path)
    with pytest.raises(ProgramError, match="cannot read"):
        compile_relay()
