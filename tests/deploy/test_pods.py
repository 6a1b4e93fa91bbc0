"""The pod specs as written, run as real containers: Redis and the transceiver Deployment with
`podman kube play`, the relay DaemonSet's pod template as a Pod on the node's network (its own
namespace, standing for a node), and real WebRTC calls (aiortc) from a client namespace through
the relay pod to a transceiver pod, over routed veth links.

Where this differs from a cluster (all of it in lab/pods.py, which says why):
- one node; pods get their namespaces and IPs from the lab, not from a CNI, on one bridge;
- the kubelet's part podman 4.3 lacks is done by the harness: the downward API's status.podIP
  and status.hostIP, $(VAR) in args, ConfigMap/Secret volumes as files, the old seccomp
  annotations, init containers run once, the preStop hook and the grace period on deletion;
- there is no Service or endpoints controller: the tests read each pod's readiness probe
  (/readyz) and send offers to the ready pods, as the Service would;
- podman names are global on the host, so everything carries the lab's prefix (kustomize
  namePrefix in the test overlay), and the routing key is put in Redis with redis-cli;
- Redis runs without requirepass: the clients cannot send a password yet (podstack.REDIS_AUTH);
- on veth links the relay's XDP_TX/XDP_REDIRECT needs an XDP program on the peer (the lab
  attaches XDP_PASS there); a node's NIC needs nothing of the kind.
"""

from __future__ import annotations

import json

import pytest

from datapath.maps import fd_info, obj_get
from lab import netns
from lab.calldriver import CallDriver
from lab.pods import PodError, PodLab, find, pod_of
from lab.wait import wait_until
from tests.deploy.podstack import VIP_PORT, Stack, assert_clean, drops, txr_id

# The first test of a session may build the images (minutes, cold); later ones take seconds.
pytestmark = [pytest.mark.lab, pytest.mark.timeout(1200)]

RUN_CAPS = ["CAP_BPF", "CAP_NET_BIND_SERVICE", "CAP_NET_RAW"]


def delta(after: dict[str, int], before: dict[str, int], reason: str) -> int:
    return after.get(reason, 0) - before.get(reason, 0)


def test_a_call_through_the_relay_pod_to_the_transceiver_pod(stack: Stack) -> None:
    lab, a = stack.lab, stack.txrs["a"]
    before = stack.stats()
    d = CallDriver(lab, [stack.url(a)])  # type: ignore[arg-type]  (duck-typed: spawn_client)
    try:
        call = d.wait_call()
        assert call["remote"] == [lab.vip, VIP_PORT]  # the client only ever saw the VIP
        d.wait_rtp(0, 100)
        assert stack.flow_txr(call["local"]) == txr_id(a.ip)  # the pod IP is its id
        final = d.hangup()[0]
    finally:
        d.close()
    after = stack.stats()
    assert final["sent"] - final["rtp"] <= 3, final  # the audio came back (a few in flight)
    assert delta(after, before, "fwd_stun_new") >= 1
    assert delta(after, before, "fwd_flow") >= 100 and delta(after, before, "fwd_decap") >= 100
    assert drops(after) == {}

    # The containers run with what the manifest grants, and nothing else.
    relay = lab.inspect(stack.relay, "run")  # type: ignore[arg-type]
    assert sorted(relay["EffectiveCaps"]) == RUN_CAPS
    assert relay["Config"]["User"] in ("0", "0:0")
    txr = lab.inspect(a, "transceiver")
    assert not txr["EffectiveCaps"] and txr["Config"]["User"].startswith("10001")
    assert txr["HostConfig"]["ReadonlyRootfs"] is True
    assert lab.inspect(stack.redis, "redis")["Config"]["User"].startswith("10003")  # type: ignore[arg-type]
    # Both VIP sockets of the slow path are bound, 443 too (NET_BIND_SERVICE): the flag is on.
    status, body = lab.http_get(f"http://{lab.node_ip}:9477/metrics")
    assert status == 200 and b"relayctl_slow_path_enabled 1.0" in body
    # Redis keeps an append-only file on its volume.
    assert "appendonly.aof" in lab.exec(stack.redis, "redis", ["ls", "/data/appendonlydir"])  # type: ignore[arg-type]


def test_rolling_replacement_drains_the_old_pod(stack: Stack) -> None:
    lab, a = stack.lab, stack.txrs["a"]
    d1 = CallDriver(lab, [stack.url(a)])  # type: ignore[arg-type]
    d2: CallDriver | None = None
    try:
        c1 = d1.wait_call()
        d1.wait_rtp(0, 50)
        b = stack.start_txr("b")  # maxSurge 1: the new ReplicaSet's pod is ready first
        stopping = lab.stop(a, "transceiver")  # deleted: preStop, then SIGTERM, grace period
        wait_until(lambda: lab.http_status(stack.url(a) + "/readyz") == 503, 30, "a unready")
        assert lab.http_json(stack.url(a) + "/healthz")["status"] == "draining"  # still live
        wait_until(lambda: stack.registry_entry(a).get("draining") == "1", 10, "a draining")
        d1.wait_rtp(0, 100)  # the running call goes on
        # The Service's endpoints: the ready pods. New offers go to b only.
        assert [h.name for h in (a, b) if lab.ready(h, "transceiver")] == [b.name]
        d2 = CallDriver(lab, [stack.url(b)])  # type: ignore[arg-type]
        c2 = d2.wait_call()
        d2.wait_rtp(0, 50)
        assert stack.flow_txr(c2["local"]) == txr_id(b.ip)
        assert stack.flow_txr(c1["local"]) == txr_id(a.ip)
        refused = d2.try_call(stack.url(a))  # an offer that still reached a: 503, retry
        assert refused["state"] == "failed" and "503" in refused["error"], refused
        # The old call ends: the old pod exits at once, not at the end of its grace period.
        final1 = d1.hangup()[0]
        assert final1["sent"] - final1["rtp"] <= 3, final1
        assert stopping.wait(timeout=60) == 0
        assert lab.state_of(a, "transceiver")["ExitCode"] == 0
        assert "transceiver stopped" in lab.logs(a, "transceiver")
        wait_until(lambda: txr_id(a.ip) not in stack.mapped(), 30, "a out of the relay's map")
        s = d2.wait_rtp(0, 50)  # the new pod's call did not notice
        assert s["state"] == "connected"
        final2 = d2.hangup()[0]
        assert final2["sent"] - final2["rtp"] <= 3, final2
    finally:
        d1.close()
        if d2 is not None:
            d2.close()
    # Nothing dropped, but for what the first client sends between its DELETE and closing its
    # peer connection (RTP every 20 ms, the DTLS close alert): the old pod exits on that DELETE
    # and leaves the relay's map within a pass, so on a slow machine a packet or two of those
    # meet no transceiver. The same bound as the unechoed packets above.
    dropped = drops(stack.stats())
    assert set(dropped) <= {"drop_unknown_txr"} and dropped.get("drop_unknown_txr", 0) <= 3, dropped


def _xdp_prog_id(lab: PodLab, dev: str) -> int:
    link = json.loads(netns.run(lab.node_ns, ["ip", "-j", "-d", "link", "show", dev]).stdout)[0]
    return int(link["xdp"]["prog"]["id"])


def _map_id(lab: PodLab, name: str) -> int:
    fd = obj_get(netns.BPFFS / lab.name / name)
    try:
        return int(fd_info(fd)["map_id"])
    finally:
        import os

        os.close(fd)


def test_relay_pod_restart_mid_call_loses_no_packet(stack: Stack) -> None:
    lab, a = stack.lab, stack.txrs["a"]
    d = CallDriver(lab, [stack.url(a)])  # type: ignore[arg-type]
    try:
        call = d.wait_call()
        d.wait_rtp(0, 50)
        before = stack.stats()
        prog, flows_map = _xdp_prog_id(lab, "rc"), _map_id(lab, "flows")
        assert stack.relay is not None
        assert lab.stop(stack.relay, "run").wait(timeout=60) == 0  # the old pod, deleted
        lab.remove(stack.relay)
        d.wait_rtp(0, 100)  # two seconds without any relay pod: the kernel forwards alone
        stack.start_relay()  # the DaemonSet's new pod: `relayctl load` again, then `run`
        d.wait_rtp(0, 100)
        after = stack.stats()
        assert stack.flow_txr(call["local"]) == txr_id(a.ip)  # the flow never left the map
        final = d.hangup()[0]
    finally:
        d.close()
    assert drops(after) == drops(before) == {}
    assert delta(after, before, "fwd_flow") >= 200 and delta(after, before, "fwd_decap") >= 200
    assert final["sent"] - final["rtp"] <= 3, final  # every packet echoed (a few in flight)
    # A new program replaced the old one in place; the pinned maps are the same maps.
    assert _xdp_prog_id(lab, "rc") != prog and _xdp_prog_id(lab, "rt") == _xdp_prog_id(lab, "rc")
    assert _map_id(lab, "flows") == flows_map


@pytest.mark.parametrize("missing", ["NET_ADMIN", "SYS_ADMIN"])
def test_the_relay_load_needs_each_of_its_capabilities(
    images: dict[str, str], missing: str
) -> None:
    """The list is not longer than needed: without any one of them `relayctl load` fails."""
    with PodLab() as lab:
        stack = Stack(lab, images)
        ds = find(stack.docs, "DaemonSet", "-relay")
        pod = pod_of(ds, ds["metadata"]["name"])
        load = pod["spec"]["initContainers"][0]
        load["securityContext"]["capabilities"]["add"].remove(missing)
        pod["spec"]["restartPolicy"] = "Never"  # a kubelet would retry forever; once is enough
        with pytest.raises(PodError, match=r"init container \S+ exited with code [1-9]"):
            lab.play(pod, stack.docs, ns=lab.node_ns, ip=lab.node_ip)
        assert not (netns.BPFFS / lab.name / "prog").exists()
    assert_clean(lab)
