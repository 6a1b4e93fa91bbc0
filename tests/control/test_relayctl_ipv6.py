"""relayctl with IPv6 VIPs (dual stack): load takes [v6]:port beside a.b.c.d:port, `map show`
and `flows` list both families, and a reload that drops a VIP6 deletes its flows."""

from __future__ import annotations

import pytest

from datapath.maps import SPECS, Flow6Key, FlowVal, PinnedMap, be16, from_be16, from_in6, in6
from tests.control.ctl_lab import BPFFS, RELAY_ADDR, Lab

pytestmark = pytest.mark.lab

VIP6, VIP6B = "2001:db8:ed::1", "2001:db8:ed::2"
TUNNEL = ("--tunnel", f"{RELAY_ADDR}:6080")


def _load(lab: Lab, *vips: str) -> str:
    args = [a for v in vips for a in ("--vip", v)]
    return lab.relayctl("load", "--name", lab.name, "--iface", "va", *args, *TUNNEL).stdout


def _vips6(lab: Lab) -> list[tuple[str, int, int]]:
    with PinnedMap(BPFFS / lab.name / "vips6", SPECS["vips6"]) as vmap:
        return sorted((from_in6(k.addr), from_be16(k.port), v.value) for k, v in vmap.items())


def _flow6(lab: Lab, client: str, cport: int, vip: str, vport: int, txr_id: int) -> None:
    key = Flow6Key(in6(client), in6(vip), be16(cport), be16(vport))
    with PinnedMap(BPFFS / lab.name / "flows6", SPECS["flows6"]) as flows6:
        flows6.update(key, FlowVal(3, 0, txr_id, 0))


def test_dual_stack_load_show_flows_and_reload(lab: Lab) -> None:
    out = _load(lab, f"{RELAY_ADDR}:3478", f"[{VIP6}]:3478", f"[{VIP6.upper()}]:443")
    assert f"VIPs {RELAY_ADDR}:3478, [{VIP6}]:3478, [{VIP6}]:443;" in out
    assert lab.json("map", "show")["vips"] == [
        f"{RELAY_ADDR}:3478",
        f"[{VIP6}]:3478",
        f"[{VIP6}]:443",
    ]
    # each VIP6 by index, and its address once with port 0 (the first index using it)
    assert _vips6(lab) == [(VIP6, 0, 1), (VIP6, 443, 2), (VIP6, 3478, 1)]

    _flow6(lab, "2001:db8:40::5", 50000, VIP6, 3478, 77)
    _flow6(lab, "2001:db8:40::6", 50001, VIP6, 443, 78)
    got = sorted((f["client"], f["vip"], f["transceiver"]) for f in lab.json("flows"))
    assert got == [
        ("[2001:db8:40::5]:50000", f"[{VIP6}]:3478", 77),
        ("[2001:db8:40::6]:50001", f"[{VIP6}]:443", 78),
    ]
    assert len(lab.json("flows", "--limit", "1")) == 1
    human = lab.relayctl("flows", "--name", lab.name).stdout
    assert "[2001:db8:40::5]:50000" in human and human.rstrip().endswith("2 flows")

    # reload: VIP6:443 leaves (its flow with it), another VIP6 address comes
    _load(lab, f"[{VIP6}]:3478", f"[{VIP6B}]:3478", f"{RELAY_ADDR}:3478")
    assert _vips6(lab) == [(VIP6, 0, 0), (VIP6, 3478, 0), (VIP6B, 0, 1), (VIP6B, 3478, 1)]
    assert [f["transceiver"] for f in lab.json("flows")] == [77]

    # IPv4 only again: every VIP6 and its address entries go, and their flows
    _load(lab, f"{RELAY_ADDR}:3478")
    assert _vips6(lab) == [] and lab.json("flows") == []


@pytest.mark.parametrize(
    ("vip", "message"),
    [
        ("2001:db8::1:3478", "is not an IPv4 address (IPv6: [ADDR]:PORT)"),
        ("[2001:db8::zz]:3478", "is not an IPv6 address"),
        ("[1.2.3.4]:3478", "is not an IPv6 address"),
        ("[2001:db8::1]:0", "is not 1..65535"),
        ("[2001:db8::1]", "expected IPV4:PORT or [IPV6]:PORT"),
        ("[fe80::1%va]:3478", "scoped"),
    ],
)
def test_bad_ipv6_vip_is_a_clear_error(lab: Lab, vip: str, message: str) -> None:
    res = lab.relayctl(
        "load", "--name", lab.name, "--iface", "va", "--vip", vip, *TUNNEL, check=False
    )
    assert res.returncode == 2 and message in res.stderr, res.stderr
    assert not (BPFFS / lab.name).exists()


def test_tunnel_stays_ipv4(lab: Lab) -> None:
    res = lab.relayctl(
        "load",
        "--name",
        lab.name,
        "--iface",
        "va",
        "--vip",
        f"[{VIP6}]:3478",
        "--tunnel",
        "[2001:db8::9]:6080",
        check=False,
    )
    assert res.returncode == 2 and "is not an IPv4 address" in res.stderr
