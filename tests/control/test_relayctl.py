"""relayctl as an operator uses it, in a throwaway netns: load, stats, flows, unload."""

from __future__ import annotations

import ctypes as ct
import subprocess

import pytest

from control.reasons import Reason
from datapath.maps import SPECS, FlowKey, FlowVal, PinnedMap, be16, be32, next_txr_gen
from tests.control.ctl_lab import BPFFS, RELAY_ADDR, Lab, ip

pytestmark = pytest.mark.lab

PINS = {
    "config",
    "vips",
    "keys",
    "transceivers",
    "txr_addrs",
    "flows",
    "counters",
    "txr_gen",
    "clusters",
    "vips6",
    "flows6",
    "prog",
}


def _prog_id(load_output: str) -> int:
    return int(load_output.split("program ")[1].split(",")[0].split(";")[0])


def test_load_native_shows_state_and_unload_cleans_up(loaded: Lab) -> None:
    lab = loaded
    xdp = lab.xdp()
    assert xdp is not None and xdp["mode"] == 1  # XDP_ATTACHED_DRV
    assert {p.name for p in (BPFFS / lab.name).iterdir()} == PINS
    shown = lab.json("map", "show")
    assert shown["config"] == {"tunnel": f"{RELAY_ADDR}:6080"}
    assert shown["vips"] == [f"{RELAY_ADDR}:3478"]
    assert shown["keys"] == {} and shown["transceivers"] == [] and shown["txr_addrs"] == {}
    stats = lab.json("stats")
    assert set(stats) == {r.label for r in Reason}
    assert all(stats[r.label]["packets"] == 0 for r in Reason if r.label.startswith("fwd_"))
    assert lab.json("flows") == []
    human = lab.relayctl("stats", "--name", lab.name, "--all").stdout
    assert human.splitlines()[0].split() == ["REASON", "PACKETS", "BYTES", "VERDICT"]
    assert len(human.splitlines()) == 1 + len(Reason)

    out = lab.relayctl("unload", "--name", lab.name).stdout
    assert "detached from va" in out and f"removed {len(PINS)} pins" in out
    assert not (BPFFS / lab.name).exists()
    assert lab.xdp() is None
    res = lab.relayctl("stats", "--name", lab.name, check=False)
    assert res.returncode == 1 and "nothing loaded" in res.stderr


def test_reload_in_generic_mode_keeps_flows_and_replaces_vips(loaded: Lab) -> None:
    lab = loaded
    first = lab.xdp()["prog"]["id"]
    key = FlowKey(be32("198.18.0.2"), be32(RELAY_ADDR), be16(40000), be16(3478))
    with PinnedMap(BPFFS / lab.name / "flows", SPECS["flows"]) as flows:
        flows.update(key, FlowVal(3, 0, 77, 0))
    vips = ["--vip", f"{RELAY_ADDR}:3478", "--vip", f"{RELAY_ADDR}:443"]
    out = lab.relayctl(
        "load",
        "--name",
        lab.name,
        "--iface",
        "va",
        *vips,
        "--tunnel",
        f"{RELAY_ADDR}:6080",
        "--mode",
        "generic",
    ).stdout
    xdp = lab.xdp()
    assert xdp["mode"] == 2  # XDP_ATTACHED_SKB: the native program was replaced
    assert xdp["prog"]["id"] == _prog_id(out) != first
    assert f"replaced program {first}" in out
    got = lab.json("flows")
    assert len(got) == 1
    assert got[0]["client"] == "198.18.0.2:40000" and got[0]["vip"] == f"{RELAY_ADDR}:3478"
    assert (got[0]["cluster"], got[0]["transceiver"], got[0]["tunnel"]) == (3, 77, None)
    assert lab.json("map", "show")["vips"] == [f"{RELAY_ADDR}:3478", f"{RELAY_ADDR}:443"]

    # Back to native with one VIP: the VIP set is replaced exactly; the flows of the VIP that
    # left go with it (the return path trusts a flow's VIP), the others stay.
    kept = FlowKey(be32("198.18.0.3"), be32(RELAY_ADDR), be16(40001), be16(443))
    with PinnedMap(BPFFS / lab.name / "flows", SPECS["flows"]) as flows:
        flows.update(kept, FlowVal(3, 0, 78, 0))
    gen = _txr_gen(lab)
    lab.relayctl(
        "load",
        "--name",
        lab.name,
        "--iface",
        "va",
        "--vip",
        f"{RELAY_ADDR}:443",
        "--tunnel",
        f"{RELAY_ADDR}:6081",
    )
    assert lab.xdp()["mode"] == 1
    shown = lab.json("map", "show")
    assert shown["vips"] == [f"{RELAY_ADDR}:443"] and shown["config"]["tunnel"].endswith(":6081")
    assert [f["transceiver"] for f in lab.json("flows")] == [78]
    # after the deletes, txr_gen moved on: the program that runs until the new one is attached
    # uses no copy of a deleted flow (bpf/flowcopy.h)
    assert _txr_gen(lab) == next_txr_gen(gen)
    with PinnedMap(BPFFS / lab.name / "vips", SPECS["vips"]) as vmap:
        assert [(k.addr, k.port, v.value) for k, v in vmap.items()] == [
            (be32(RELAY_ADDR), be16(443), 0)
        ]
    with PinnedMap(BPFFS / lab.name / "config", SPECS["config"]) as cfg:
        c = cfg.lookup(ct.c_uint32(0))
        assert (c.tunnel_addr, c.tunnel_port) == (be32(RELAY_ADDR), be16(6081))


def _txr_gen(lab: Lab) -> int:
    with PinnedMap(BPFFS / lab.name / "txr_gen", SPECS["txr_gen"]) as gen:
        return int(gen.lookup(ct.c_uint32(0)).value)


def test_reload_moves_every_attachment_and_unload_detaches_all(loaded: Lab) -> None:
    lab = loaded
    ip("-n", lab.relay_ns, "link", "add", "vc", "type", "veth", "peer", "name", "vd")
    ip("-n", lab.relay_ns, "link", "set", "vc", "up")
    pin = str(BPFFS / lab.name / "prog")
    # nsenter, not `ip -n`: that remounts /sys and hides the pins
    subprocess.run(
        [
            "nsenter",
            f"--net=/run/netns/{lab.relay_ns}",
            "ip",
            "link",
            "set",
            "dev",
            "vc",
            "xdpgeneric",
            "pinned",
            pin,
        ],
        check=True,
    )
    first = lab.xdp("va")["prog"]["id"]
    assert lab.xdp("vc")["prog"]["id"] == first
    out = lab.load().stdout
    new = _prog_id(out)
    assert "(also on vc)" in out and new != first
    assert lab.xdp("va")["prog"]["id"] == new and lab.xdp("va")["mode"] == 1
    assert lab.xdp("vc")["prog"]["id"] == new and lab.xdp("vc")["mode"] == 2  # mode kept
    out = lab.relayctl("unload", "--name", lab.name).stdout
    assert "detached from va, vc" in out
    assert lab.xdp("va") is None and lab.xdp("vc") is None
