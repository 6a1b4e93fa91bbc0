"""The single-cluster overlay running as pods (lab/pods.py): Redis, the relay DaemonSet's pod on
the node, transceiver pods of the Deployment; helpers the pod tests share."""

from __future__ import annotations

import ipaddress
import json
import secrets
from typing import Any

from lab import netns
from lab.peer import lab_key_file
from lab.pods import KUBERNETES, PodHandle, PodLab, find, pod_of, podman_names
from lab.wait import wait_until

OVERLAY = KUBERNETES / "overlays" / "single-cluster"
VIP_PORT = 3478
# In-cluster Redis without a password for now: relayctl and the transceiver cannot send one
# yet (their URL carries none). The manifest's Secret mechanism is exercised as written; its
# auth.conf just sets no requirepass, as docs/kubernetes.md says to do until the clients can.
REDIS_AUTH = {"auth.conf": "# no requirepass until the clients can send one\n", "password": ""}


def txr_id(ip: str) -> int:
    return int(ipaddress.IPv4Address(ip))


class Stack:
    def __init__(self, lab: PodLab, images: dict[str, str]) -> None:
        self.lab = lab
        self.images = images
        self.redis_ns, self.redis_ip = lab.pod_namespace("redis")
        config = {
            "EDGE_VIPS": f"{lab.vip}:{VIP_PORT} {lab.vip}:443",
            "EDGE_CLUSTER": "1",
            "REDIS_URL": f"redis://{self.redis_ip}:6379/0",  # the Service, resolved
            "RELAYCTL_NAME": lab.name,  # pins under /sys/fs/bpf/<lab prefix>: no collisions
            "RELAY_IFACES": "rc rt",  # the node's client-facing and cluster-facing links
        }
        # The API keys Secret an operator creates; the lab's clients use the same key file.
        api_keys = {"api-keys": lab_key_file(lab.tmpdir).read_text().split()[-1]}
        secrets_ = {"redis-auth": REDIS_AUTH, "transceiver-api-keys": api_keys}
        self.docs = lab.overlay(OVERLAY, images, config, secrets_)
        self.redis: PodHandle | None = None
        self.relay: PodHandle | None = None
        self.txrs: dict[str, PodHandle] = {}

    def up(self) -> None:
        self.start_redis()
        self.start_relay()
        self.start_txr("a")

    def start_redis(self) -> PodHandle:
        dep = find(self.docs, "Deployment", "-redis")
        self.redis = self.lab.play(
            pod_of(dep, dep["metadata"]["name"]), self.docs, ns=self.redis_ns, ip=self.redis_ip
        )
        r = self.redis
        wait_until(
            lambda: "PONG" in self.lab.exec(r, "redis", ["redis-cli", "PING"], check=False),
            30,
            "redis-server to answer",
            step=0.2,
        )
        # The routing key, as an operator puts it there (docs/kubernetes.md).
        self.lab.exec(r, "redis", ["redis-cli", "HSET", "edge:keys", "1", secrets.token_hex(16)])
        self.lab.exec(r, "redis", ["redis-cli", "SET", "edge:keys:current", "1"])
        return r

    def start_relay(self) -> PodHandle:
        """The DaemonSet's pod for this node: its init container loads, `run` keeps the maps."""
        ds = find(self.docs, "DaemonSet", "-relay")
        self.relay = self.lab.play(
            pod_of(ds, ds["metadata"]["name"]), self.docs, ns=self.lab.node_ns, ip=self.lab.node_ip
        )
        self.lab.wait_running(self.relay, "run", timeout=120)
        wait_until(lambda: self.map_show()["keys"], 30, "the relay to load the routing key")
        return self.relay

    def start_txr(self, label: str) -> PodHandle:
        """A pod of the transceiver Deployment (a new ReplicaSet's pod has a new name)."""
        ns, ip = self.lab.pod_namespace(f"txr-{label}")
        dep = find(self.docs, "Deployment", "-transceiver")
        pod = pod_of(dep, f"{dep['metadata']['name']}-{label}")
        h = self.lab.play(pod, self.docs, ns=ns, ip=ip)
        self.txrs[label] = h
        wait_until(lambda: self._ready(h), 60, f"transceiver {label} to be ready", step=0.2)
        wait_until(lambda: txr_id(ip) in self.mapped(), 30, f"transceiver {label} in the map")
        return h

    def _ready(self, h: PodHandle) -> bool:
        if self.lab.state_of(h, "transceiver").get("Status") == "exited":
            raise AssertionError(f"transceiver exited:\n{self.lab.logs(h, 'transceiver')}")
        return self.lab.ready(h, "transceiver")

    def url(self, h: PodHandle) -> str:
        return f"http://{h.ip}:8080"

    def map_show(self) -> dict[str, Any]:
        return dict(json.loads(self.lab.relayctl("map", "show", "--json")))

    def mapped(self) -> set[int]:
        return {int(t["id"]) for t in self.map_show()["transceivers"]}

    def stats(self) -> dict[str, int]:
        doc = json.loads(self.lab.relayctl("stats", "--json"))
        counters = doc["counters"] if isinstance(doc, dict) and "counters" in doc else doc
        return {k: int(v["packets"] if isinstance(v, dict) else v) for k, v in counters.items()}

    def flow_txr(self, client: list[Any]) -> int | None:
        """The transceiver id the relay's flow map sends this client's packets to."""
        want = f"{client[0]}:{client[1]}"
        doc = json.loads(self.lab.relayctl("flows", "--json"))
        flows = doc["flows"] if isinstance(doc, dict) else doc
        hits = [int(f["transceiver"]) for f in flows if f["client"] == want]
        return hits[0] if hits else None

    def registry_entry(self, h: PodHandle) -> dict[str, str]:
        assert self.redis is not None
        out = self.lab.exec(
            self.redis, "redis", ["redis-cli", "HGETALL", f"edge:txr:1:{txr_id(h.ip)}"]
        )
        lines = out.splitlines()  # a field and its value a line each; a value may be empty
        return dict(zip(lines[::2], lines[1::2], strict=True))


def assert_clean(lab: PodLab) -> None:
    """Nothing of a closed lab is left: namespaces, pins, pods, volumes, files."""
    prefix = lab.prefix
    assert not netns.list_namespaces(prefix), "lab namespaces left behind"
    assert not [p for p in netns.BPFFS.iterdir() if p.name.startswith(prefix)], "pins left"
    assert not podman_names("pod", prefix), "pods left behind"
    assert not podman_names("volume", prefix), "volumes left behind"
    assert not lab.tmpdir.exists(), "files left behind"


def drops(stats: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in stats.items() if k.startswith("drop_") and v}
