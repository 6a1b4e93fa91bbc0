"""The edge in VMs (lab/vmlab.py): a call from the client VM through a relay VM to the
transceiver VM with its audio echoed; a relay VM rebooted (it comes back, re-syncs from Redis and
carries new calls); a relay VM powered off mid-call (the call moves to the other relay).

One lab for the module (booting and installing four VMs under TCG takes minutes); the tests run
in file order and the power-off comes last, since it leaves one relay.

What differs from a real network: the router in front of the relays is a namespace on the host
whose health checker (lab/vmlab.py HealthChecker) takes a relay out of the VIP's ECMP route when
its metrics endpoint stops answering. A real edge does this by BGP withdrawal or a load
balancer's checks, with their own timers; the relays' side (slow path, Redis flows) is the same.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from lab.vmlab import CLIENT_ADDR, RELAY_ADDRS, TXR_ID, VmCallDriver, VmLab
from lab.wait import wait_until

pytestmark = [pytest.mark.vm, pytest.mark.lab, pytest.mark.timeout(1800)]

# Every VM is emulated (TCG) on a shared 2-core host: the guests' schedulers stall for tens to
# hundreds of ms when the host is busy. A gap longer than this is ~50 lost packets in a row:
# the path broke, not the emulation.
STEADY_GAP_MS = 1000.0
# A powered-off relay is out of the route after PROBE_FAILS missed probes (about 1.5 s); then
# the other relay's slow path takes the flow over from Redis. Room for TCG on top.
FAILOVER_GAP_MS = 8000.0
RTP_TIMEOUT = 60.0


def delta(after: dict[str, int], before: dict[str, int], reason: str) -> int:
    return after.get(reason, 0) - before.get(reason, 0)


def drops(stats: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in stats.items() if k.startswith("drop_") and v}


def report(name: str, **values: object) -> None:
    print(f"\n[vm] {name}: " + ", ".join(f"{k}={v}" for k, v in values.items()))


def only_carrier(lab: VmLab, d: VmCallDriver, call: int, relays: tuple[int, ...] = (0, 1)) -> int:
    found = lab.carrier(tuple(d.calls[call]["local"]), relays)
    assert len(found) == 1, f"call {call} is in {len(found)} relays' flow maps: {found}"
    return found[0]


def test_call_from_the_client_vm_through_a_relay_vm_echoes_audio(
    vmlab: VmLab, place: Callable[..., VmCallDriver]
) -> None:
    for i in (0, 1):
        assert vmlab.xdp_mode(i) == "native", f"relay{i}: XDP is not in driver mode"
        assert vmlab.unit_state(i) == "active"
    before = [vmlab.stats(i) for i in (0, 1)]
    d = place(vmlab.txr_url)
    call = d.calls[0]
    assert call["local"][0] == CLIENT_ADDR and call["remote"] == [vmlab.vip, vmlab.vip_port]
    s = d.wait_rtp(0, 150, timeout=RTP_TIMEOUT)
    relay = only_carrier(vmlab, d, 0)
    after = vmlab.stats(relay)
    # The call's first packet routed by its ufrag, media both ways through the kernel program.
    assert delta(after, before[relay], "fwd_stun_new") >= 1
    assert delta(after, before[relay], "fwd_flow") >= 150
    assert delta(after, before[relay], "fwd_decap") >= 150
    assert drops(after) == drops(before[relay])
    assert [f["transceiver"] for f in vmlab.flows(relay)] == [TXR_ID]
    assert s["max_gap_ms"] < STEADY_GAP_MS, s
    final = d.hangup()[0]
    # Every packet echoed, but those still in flight at hangup (half a second under TCG).
    assert final["rtp"] >= 150 and final["sent"] - final["rtp"] <= 25, final
    report("call", relay=relay, setup_ms=call["setup_ms"], rtp=final["rtp"],
           sent=final["sent"], max_gap_ms=final["max_gap_ms"])  # fmt: skip


def test_relay_vm_rebooted_comes_back_resyncs_and_carries_new_calls(
    vmlab: VmLab, place: Callable[..., VmCallDriver]
) -> None:
    assert vmlab.vip_next_hops() == list(RELAY_ADDRS)
    a = place(vmlab.txr_url)
    a.wait_rtp(0, 50, timeout=RTP_TIMEOUT)
    keep = only_carrier(vmlab, a, 0)
    wait_until(lambda: vmlab.flow_in_redis(tuple(a.calls[0]["local"])), 10, "the flow in Redis")
    r = 1 - keep  # reboot the relay that does not carry the call
    vm = vmlab.relay(r)
    boot_before = vm.boot_id()
    assert vmlab.health is not None
    vm.ssh("systemctl reboot --no-block", check=False, timeout=30)
    vmlab.health.wait(r, healthy=False, timeout=60)
    assert vmlab.vip_next_hops() == [RELAY_ADDRS[keep]]
    vm.wait_up(timeout=300)
    assert vm.boot_id() != boot_before, "the VM did not reboot"
    # systemd started the unit: relayctl load attached the program again (natively), relayctl
    # run synced the fresh maps from Redis; the router put the relay back.
    # (a boot's `relayctl load` compiles the program again: minutes under TCG)
    vmlab.wait_relay_unit(r)
    assert vmlab.xdp_mode(r) == "native"
    vmlab.wait_maps((r,))
    vmlab.health.wait(r, healthy=True, timeout=120)
    assert vmlab.vip_next_hops() == list(RELAY_ADDRS)
    # The call on the other relay never noticed.
    s = a.wait_rtp(0, 50, timeout=RTP_TIMEOUT)
    assert only_carrier(vmlab, a, 0) == keep
    assert s["max_gap_ms"] < STEADY_GAP_MS, s
    # New calls through the rebooted relay: the client's VIP traffic is steered to it.
    before = vmlab.stats(r)
    vmlab.steer_client(r)
    b = place(vmlab.txr_url)
    sb = b.wait_rtp(0, 100, timeout=RTP_TIMEOUT)
    assert r in vmlab.carrier(tuple(b.calls[0]["local"]))
    after = vmlab.stats(r)
    assert delta(after, before, "fwd_stun_new") >= 1
    assert delta(after, before, "fwd_flow") >= 100 and delta(after, before, "fwd_decap") >= 100
    assert sb["max_gap_ms"] < STEADY_GAP_MS, sb
    # The running call followed the steering too: the rebooted relay took it over from the
    # flow Redis holds (slow path once, then XDP).
    sa = a.wait_rtp(0, 50, timeout=RTP_TIMEOUT)
    assert r in vmlab.carrier(tuple(a.calls[0]["local"]))
    assert delta(vmlab.stats(r), before, "pass_slow_path") >= 1
    report("reboot", relay=r, kept_call_on=keep, new_call_max_gap_ms=sb["max_gap_ms"],
           moved_call_max_gap_ms=sa["max_gap_ms"])  # fmt: skip


def test_relay_vm_powered_off_mid_call_moves_the_call_to_the_other_relay(
    vmlab: VmLab, place: Callable[..., VmCallDriver]
) -> None:
    d = place(vmlab.txr_url)
    d.wait_rtp(0, 50, timeout=RTP_TIMEOUT)
    dead = only_carrier(vmlab, d, 0)
    other = 1 - dead
    # The carrying relay's controller wrote the flow to Redis: the other relay can take it over.
    wait_until(lambda: vmlab.flow_in_redis(tuple(d.calls[0]["local"])), 10, "the flow in Redis")
    before = vmlab.stats(other)
    gap_before = d.stats()[0]["max_gap_ms"]
    assert vmlab.health is not None
    off_at = time.monotonic()
    vmlab.relay(dead).power_off()
    out_at = vmlab.health.wait(dead, healthy=False, timeout=30)
    assert vmlab.vip_next_hops() == [RELAY_ADDRS[other]]
    s = d.wait_rtp(0, 150, timeout=RTP_TIMEOUT)
    after = vmlab.stats(other)
    assert other in vmlab.carrier(tuple(d.calls[0]["local"]), (other,))
    assert delta(after, before, "pass_slow_path") >= 1  # taken over from Redis
    assert delta(after, before, "fwd_flow") >= 150 and delta(after, before, "fwd_decap") >= 150
    assert s["max_gap_ms"] < FAILOVER_GAP_MS, s
    assert drops(vmlab.stats(other)) == drops(before)
    report("power off", relay=dead, other=other, gap_before_ms=gap_before,
           failover_gap_ms=s["max_gap_ms"], out_of_route_s=round(out_at - off_at, 2))  # fmt: skip
