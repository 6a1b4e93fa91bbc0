"""The userspace baseline relay (lab/pyrelay.py) and the stand-in transceiver, in a bare lab."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from lab import netns
from lab.topology import RelayLab
from tests.lab.labhelp import recv_exact
from wire import stun, ufrag
from wire.encap import flow_entropy, ipv4_udp, parse_ipv4_udp

pytestmark = pytest.mark.lab


def _call(lab: RelayLab, sock: socket.socket, txr: int) -> bytes:
    req = stun.build_binding_request(f"{lab.mint(txr)}:cl{txr}")
    sock.sendto(req, (lab.vip, lab.vip_port))
    return req


def test_pyrelay_routes_two_calls_to_two_transceivers_and_back(bare_lab: RelayLab) -> None:
    lab = bare_lab
    relay = lab.start_pyrelay()
    with lab.standin(0, prefix=b"T0|") as s0, lab.standin(1, prefix=b"T1|") as s1:
        for txr, standin, addr in ((0, s0, lab.client_addrs[0]), (1, s1, lab.client_addrs[1])):
            with lab.client_socket(addr) as c:
                req = _call(lab, c, txr)
                data, src = recv_exact(c)
                assert (data, src) == (b"T%d|" % txr + req, (lab.vip, lab.vip_port))
                seen = standin.seen[-1]
                assert seen.relay == (lab.tunnel_addr, flow_entropy(addr, c.getsockname()[1], 3478))
                assert seen.datagram.src == addr and seen.datagram.dst == lab.vip
                assert seen.datagram.payload == req
                for payload in (b"\x16\xfe\xfd" + b"d" * 40, b"\x80\x00" + b"r" * 100):
                    c.sendto(payload, (lab.vip, lab.vip_port))
                    assert recv_exact(c) == (b"T%d|" % txr + payload, (lab.vip, lab.vip_port))
        assert s0.snapshot()["tunnel"] == 3 and s1.snapshot()["tunnel"] == 3
    counters = relay.finish()
    assert counters == {"fwd_stun_new": 2, "fwd_flow": 4, "fwd_decap": 6}


def test_pyrelay_counts_drops_and_keeps_serving(bare_lab: RelayLab) -> None:
    lab = bare_lab
    relay = lab.start_pyrelay()
    with (
        lab.standin(0, prefix=b"ok|") as s0,
        lab.client_socket() as c,
        lab.client_socket() as other,
    ):
        forged = ufrag.mint(lab.key_id, b"\x00" * 16, 1, 7)
        c.sendto(stun.build_binding_request(f"{forged}:x"), (lab.vip, lab.vip_port))
        other.sendto(b"\x80no flow here", (lab.vip, lab.vip_port))
        c.sendto(stun.build_binding_request(f"{lab.mint(0)[:23]}:x"), (lab.vip, lab.vip_port))
        unknown = ufrag.mint(lab.key_id, lab.key, 1, 99)
        c.sendto(stun.build_binding_request(f"{unknown}:x"), (lab.vip, lab.vip_port))
        # The relay handles one socket's packets in order: once this echo is back, the four
        # bad ones before it were handled, and none of them reached the transceiver.
        req = _call(lab, c, 0)
        assert recv_exact(c)[0] == b"ok|" + req
        assert [s.datagram.payload for s in s0.seen] == [req]
        # Tunnel port: a stranger (the client), and a registered transceiver whose inner
        # packet does not come from the VIP.
        stranger = ipv4_udp(lab.vip, lab.vip_port, lab.client_addrs[0], 9, b"spoof")
        c.sendto(stranger, (lab.tunnel_addr, lab.tunnel_port))
        foreign = ipv4_udp("198.18.9.9", 53, lab.client_addrs[0], c.getsockname()[1], b"x")
        s0.sock.sendto(foreign, (lab.tunnel_addr, lab.tunnel_port))
        s0.sock.sendto(foreign[:25], (lab.tunnel_addr, lab.tunnel_port))
        # A good reply after them on the same socket: once it is through, they were handled.
        good = ipv4_udp(lab.vip, lab.vip_port, lab.client_addrs[0], c.getsockname()[1], b"late")
        s0.sock.sendto(good, (lab.tunnel_addr, lab.tunnel_port))
        assert recv_exact(c) == (b"late", (lab.vip, lab.vip_port))
    counters = relay.finish()
    assert counters == {
        "drop_bad_tag": 1,
        "drop_no_flow": 1,
        "drop_bad_ufrag": 1,
        "drop_unknown_txr": 1,
        "drop_tunnel_stranger": 1,
        "drop_tunnel_foreign_src": 1,
        "drop_tunnel_bad_inner": 1,
        "fwd_stun_new": 1,
        "fwd_decap": 2,
    }


def test_standin_answers_tunnel_datagrams_and_counts_the_rest(bare_lab: RelayLab) -> None:
    lab = bare_lab
    relay_side = netns.socket_in(lab.relay_ns)
    relay_side.bind((lab.tunnel_addr, lab.tunnel_port))
    with relay_side, lab.standin(0, prefix=b"E:") as s0:
        inner = ipv4_udp(lab.client_addrs[0], 40000, lab.vip, lab.vip_port, b"\x80media")
        txr = (lab.txrs[0].addr, lab.txrs[0].port)
        relay_side.sendto(inner, txr)
        reply, src = recv_exact(relay_side)
        assert src == txr
        assert reply == ipv4_udp(lab.vip, lab.vip_port, lab.client_addrs[0], 40000, b"E:\x80media")
        assert parse_ipv4_udp(reply, verify_checksums=True).payload == b"E:\x80media"
        relay_side.sendto(b"\x00\x01direct stun", txr)
        relay_side.sendto(b"\x45" + b"\x00" * 10, txr)
        relay_side.sendto(inner, txr)
        recv_exact(relay_side)  # the second good one is answered: the two bad ones were handled
        assert s0.snapshot() == {
            "tunnel": 2,
            "direct": 1,
            "bad": 1,
            "replied": 2,
            "first_at": s0.seen[0].at,
            "last_at": s0.seen[-1].at,
        }
        assert s0.seen[0].inner == inner


def test_standin_process_reports_counts(bare_lab: RelayLab) -> None:
    lab = bare_lab
    svc = lab.start_standin_process(0, reply=False)
    sender = netns.socket_in(lab.relay_ns)
    with sender:
        sender.bind((lab.tunnel_addr, 0))
        inner = ipv4_udp(lab.client_addrs[0], 40000, lab.vip, lab.vip_port, b"\x80")
        for _ in range(3):
            sender.sendto(inner, (lab.txrs[0].addr, lab.txrs[0].port))
        counts = svc.query()
        while counts["tunnel"] < 3:  # bounded by query()'s own timeout if the process hangs
            counts = svc.query()
    final = svc.finish()
    assert final["tunnel"] == 3 and final["replied"] == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--vip", "198.18.100.1:x"], "port 'x' is not 1..65535"),
        (["--registry-json", '{"keys": 5}'], '"keys" must be an object'),
        (["--registry-json", "not json"], "not JSON"),
    ],
)
def test_pyrelay_bad_input_is_a_clear_error(tmp_path: Path, args: list[str], message: str) -> None:
    registry = tmp_path / "registry.json"
    argv = ["--vip", "127.0.0.1:3478", "--tunnel", "127.0.0.1:6080", "--registry", str(registry)]
    if args[0] == "--registry-json":
        registry.write_text(args[1])
    else:
        registry.write_text('{"keys": {}, "transceivers": []}')
        argv += args
    proc = subprocess.run(
        [sys.executable, "-m", "lab.pyrelay", *argv], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode in (1, 2)
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_standin_cannot_bind_is_a_clear_error() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "lab.standin", "--bind", "198.18.255.1:5000"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 1
    assert "cannot bind 198.18.255.1:5000" in proc.stderr and "Traceback" not in proc.stderr
