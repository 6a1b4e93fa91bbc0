"""Every rendered manifest, validated strictly (unknown fields and wrong types rejected) against
the oldest and the newest Kubernetes schemas kubernetes-validate ships, offline; and the
properties the deployment depends on, read from what kustomize renders."""

from __future__ import annotations

import copy
import re
import subprocess
from typing import Any

import kubernetes_validate
import pytest

from lab.pods import KUBERNETES, ROOT, PodError, find, kubectl, render

OVERLAYS = sorted(p.parent for p in (KUBERNETES / "overlays").glob("*/kustomization.yaml"))
VERSIONS = ("1.25.0", "1.31.0", "1.37.0")  # oldest, middle, newest schemas shipped


@pytest.fixture(scope="module", autouse=True)
def _kubectl() -> None:
    """kubectl renders the overlays: `make images-deps` installs one where none is."""
    try:
        kubectl()
    except PodError:
        subprocess.run(["make", "-C", str(ROOT), "images-deps"], check=True)


@pytest.fixture(scope="module", params=OVERLAYS, ids=lambda p: p.name)
def rendered(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return render(request.param)


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc["spec"]["template"]["spec"]
    return list(spec.get("initContainers", [])) + list(spec["containers"])


def test_both_overlays_are_there() -> None:
    assert {p.name for p in OVERLAYS} == {"single-cluster", "region"}


@pytest.mark.parametrize("version", VERSIONS)
def test_every_object_validates_strictly(rendered: list[dict[str, Any]], version: str) -> None:
    assert len(rendered) >= 9
    for doc in rendered:
        # Raises ValidationError (wrong type, unknown field, missing field) or
        # SchemaNotFoundError (a kind that version does not have).
        kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize(
    "breakage",
    ["unknown field", "wrong type"],
)
def test_strict_validation_rejects_a_broken_manifest(
    rendered: list[dict[str, Any]], breakage: str
) -> None:
    """The check above can fail: the same DaemonSet, broken, is refused."""
    ds = copy.deepcopy(find(rendered, "DaemonSet", "relay"))
    if breakage == "unknown field":
        ds["spec"]["template"]["spec"]["hostNetwrk"] = True
    else:
        ds["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "fifteen"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(ds, VERSIONS[-1], strict=True)


def test_relay_runs_on_the_node_with_exactly_its_capabilities(
    rendered: list[dict[str, Any]],
) -> None:
    ds = find(rendered, "DaemonSet", "relay")
    spec = ds["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True
    assert spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    bpffs = next(v for v in spec["volumes"] if v["name"] == "bpffs")
    assert bpffs["hostPath"] == {"path": "/sys/fs/bpf", "type": "Directory"}
    caps = {c["name"]: c["securityContext"]["capabilities"] for c in _containers(ds)}
    assert caps == {
        "load": {"drop": ["ALL"], "add": ["NET_ADMIN", "SYS_ADMIN"]},
        "run": {"drop": ["ALL"], "add": ["BPF", "NET_RAW", "NET_BIND_SERVICE"]},
    }
    for c in _containers(ds):
        ctx = c["securityContext"]
        assert ctx.get("privileged") is not True
        assert ctx["allowPrivilegeEscalation"] is False
        assert ctx["readOnlyRootFilesystem"] is True
        mounts = {m["name"]: m for m in c["volumeMounts"]}
        assert mounts["bpffs"]["mountPath"] == "/sys/fs/bpf"


def _grace_needed(container: dict[str, Any]) -> float:
    drain = next(float(a.split("=", 1)[1]) for a in container["args"] if "--drain-timeout=" in a)
    pre = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre[0] == "sleep"
    return float(pre[1]) + drain


def test_transceivers_drain_within_their_grace_period(rendered: list[dict[str, Any]]) -> None:
    dep = find(rendered, "Deployment", "transceiver")
    spec = dep["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    assert spec["terminationGracePeriodSeconds"] > _grace_needed(c)
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    assert "--tunnel=$(POD_IP):5000" in c["args"] and "--id=$(POD_IP)" in c["args"]
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert {t["topologyKey"] for t in spec["topologySpreadConstraints"]} == {
        "topology.kubernetes.io/zone",
        "kubernetes.io/hostname",
    }
    pdb = find(rendered, "PodDisruptionBudget", "transceiver")
    assert pdb["spec"]["selector"] == dep["spec"]["selector"]
    annotations = dep["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"


def test_network_policies_admit_only_the_tunnel_and_signaling(
    rendered: list[dict[str, Any]],
) -> None:
    deny = find(rendered, "NetworkPolicy", "default-deny")
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    txr = find(rendered, "NetworkPolicy", "transceiver")["spec"]
    udp_in = [r for r in txr["ingress"] if any(p["protocol"] == "UDP" for p in r["ports"])]
    assert [r["ports"] for r in udp_in] == [[{"protocol": "UDP", "port": 5000}]]
    assert all("ipBlock" in f for r in udp_in for f in r["from"])  # the relay nodes only
    udp_out = [r for r in txr["egress"] if {"protocol": "UDP", "port": 6080} in r["ports"]]
    assert len(udp_out) == 1 and all("ipBlock" in t for t in udp_out[0]["to"])
    for rule in txr["egress"]:  # no other UDP leaves a transceiver but DNS
        for p in rule["ports"]:
            assert p["protocol"] == "TCP" or p["port"] in (6080, 53), rule


def test_no_secret_on_a_command_line(rendered: list[dict[str, Any]]) -> None:
    pattern = re.compile(r"pass(word)?|secret|requirepass|token", re.I)
    for doc in rendered:
        if "template" not in doc.get("spec", {}):
            continue
        for c in _containers(doc):
            for arg in c.get("command", []) + c.get("args", []):
                assert not pattern.search(arg), (doc["metadata"]["name"], arg)
            for e in c.get("env", []):
                assert "value" not in e or not pattern.search(e["name"]), e


def test_in_cluster_redis_is_persistent_and_reads_its_auth_from_a_secret() -> None:
    docs = render(KUBERNETES / "overlays" / "single-cluster")
    conf = find(docs, "ConfigMap", "redis-config")["data"]["redis.conf"]
    assert "appendonly yes" in conf
    assert "include /etc/webrtc-edge/redis-auth/auth.conf" in conf
    dep = find(docs, "Deployment", "redis")
    assert dep["spec"]["strategy"]["type"] == "Recreate"
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"]["claimName"].endswith("redis-data")
    assert volumes["auth"]["secret"]["secretName"] == "redis-auth"
    find(docs, "PersistentVolumeClaim", "redis-data")


def test_the_region_overlay_uses_a_managed_redis_and_scales() -> None:
    docs = render(KUBERNETES / "overlays" / "region")
    assert not [d for d in docs if d["metadata"]["name"].startswith("redis")]
    config = find(docs, "ConfigMap", "edge-config")["data"]
    assert config["EDGE_CLUSTER"] != "1" and "redis.eu-west" in config["REDIS_URL"]
    # its relays report their region's reach (relayctl run reads RELAYCTL_REGION/LAT/LON)
    assert config["RELAYCTL_REGION"] == "eu-west"
    float(config["RELAYCTL_LAT"]), float(config["RELAYCTL_LON"])
    run = next(
        c
        for c in find(docs, "DaemonSet", "relay")["spec"]["template"]["spec"]["containers"]
        if c["name"] == "run"
    )
    env = {e["name"]: e for e in run["env"]}
    for name in ("RELAYCTL_REGION", "RELAYCTL_LAT", "RELAYCTL_LON"):
        assert env[name]["valueFrom"]["configMapKeyRef"] == {"name": "edge-config", "key": name}
    assert "REDIS_URL" in env  # the base's entries kept
    hpa = find(docs, "HorizontalPodAutoscaler", "transceiver")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "transceiver"
    dep = find(docs, "Deployment", "transceiver")
    zone = dep["spec"]["template"]["spec"]["topologySpreadConstraints"][0]
    assert zone["whenUnsatisfiable"] == "DoNotSchedule"


def test_images_are_the_ones_make_images_builds(rendered: list[dict[str, Any]]) -> None:
    names = {
        c["image"].rsplit(":", 1)[0].rsplit("/", 1)[-1]
        for d in rendered
        if "template" in d.get("spec", {})
        for c in _containers(d)
    }
    files = (KUBERNETES.parent / "images").glob("Containerfile.*")
    built = {p.name.split(".", 1)[1] for p in files}
    assert names <= built
