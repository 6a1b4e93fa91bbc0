"""One QEMU virtual machine of the VM lab: its own kernel (the image's, booted directly), a
copy-on-write disk over the shared image, virtio-net NICs on tap devices in a lab namespace,
9p shares, a serial console log, a QMP socket for power control, and SSH for commands.

QEMU runs inside the lab's network namespace (where its taps are) under TCG: this machine's
/dev/kvm cannot boot a stock kernel. The VM dies with the process that started it
(PR_SET_PDEATHSIG), and deleting the namespace kills it too, so a SIGKILLed test leaves none.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lab import netns
from lab.vmimage import Image
from lab.wait import wait_until

READY_MARK = "edge-vm: ready"  # vagrant/image/rootfs/etc/systemd/system/edge-ready.service
# mitigations=off: page-table isolation flushes the TLB on every system call, which TCG pays
# for in full; these VMs run only the lab's own code.
# systemd.default_timeout_start_sec: on a busy host an emulated boot outlasts systemd's 90 s
# per unit (networkd, logind then fail and restart under our feet).
KERNEL_ARGS = (
    "root=/dev/vda rw console=ttyS0 net.ifnames=0 loglevel=5 panic=-1 "
    "systemd.show_status=error mitigations=off systemd.default_timeout_start_sec=900"
)
_PR_SET_PDEATHSIG = 1


class VmError(RuntimeError):
    """The VM did not do what was asked; the message says what, with its console's tail."""


@dataclass(frozen=True)
class Nic:
    tap: str  # the tap device in the lab namespace (created by the lab, on a bridge)
    mac: str


@dataclass
class VmSpec:
    name: str
    mem_mb: int
    nics: list[Nic]
    ssh_addr: str  # where SSH reaches the VM from the lab namespace
    shares: dict[str, Path] = field(default_factory=dict)  # 9p tag -> host dir (read-only)


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class Vm:
    """A started VM: `boot()`, `wait_up()`, `ssh(...)`, `power_off()`, `close()`."""

    def __init__(
        self,
        spec: VmSpec,
        image: Image,
        ns: str,
        workdir: Path,
        ssh_key: Path,
        *,
        disk: Path | None = None,
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self.image = image
        self.ns = ns
        self.dir = workdir / spec.name
        self.dir.mkdir(parents=True, exist_ok=True)
        # Its own copy-on-write disk over the image, removed by close(); or a given one, kept.
        self.disk = disk or self.dir / "disk.qcow2"
        self._own_disk = disk is None
        self.console = self.dir / "console.log"
        self.qmp_path = self.dir / "qmp.sock"
        self.ssh_key = ssh_key
        self.control = self.dir / "ssh.ctl"
        self.proc: subprocess.Popen[bytes] | None = None
        self.boots = 0  # READY_MARK lines seen so far: wait_up(after=...) waits for the next

    # --- power -----------------------------------------------------------------------------------

    def argv(self) -> list[str]:
        s = self.spec
        argv = ["qemu-system-x86_64", "-name", s.name, "-nodefaults", "-no-user-config"]
        argv += ["-machine", "q35", "-accel", "tcg,thread=multi,tb-size=256", "-smp", "1"]
        argv += ["-cpu", "max,la57=off"]  # 4-level paging: one level less for TCG to walk
        argv += ["-m", str(s.mem_mb), "-display", "none", "-serial", f"file:{self.console}"]
        argv += ["-qmp", f"unix:{self.qmp_path},server=on,wait=off"]
        argv += ["-kernel", str(self.image.kernel), "-initrd", str(self.image.initrd)]
        argv += ["-append", KERNEL_ARGS]
        argv += ["-drive", f"file={self.disk},if=virtio,format=qcow2,cache=unsafe,discard=unmap"]
        argv += ["-device", "virtio-rng-pci"]
        for i, nic in enumerate(s.nics):
            argv += ["-netdev", f"tap,id=n{i},ifname={nic.tap},script=no,downscript=no"]
            argv += ["-device", f"virtio-net-pci,netdev=n{i},mac={nic.mac}"]
        for tag, path in s.shares.items():
            argv += [
                "-virtfs",
                f"local,path={path},mount_tag={tag},security_model=none,readonly=on",
            ]
        return argv

    def boot(self) -> None:
        """Start QEMU on a fresh copy-on-write disk (or the existing one: a power-on)."""
        if self.running():
            raise VmError(f"{self.name} is already running")
        if not self.disk.exists():
            subprocess.run(
                ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                 str(self.image.disk), str(self.disk)],
                check=True, capture_output=True,
            )  # fmt: skip
        self.qmp_path.unlink(missing_ok=True)
        log = (self.dir / "qemu.log").open("ab")
        with log:
            self.proc = netns.popen(
                self.ns, self.argv(), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                preexec_fn=_die_with_parent,
            )  # fmt: skip

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def console_text(self) -> str:
        return self.console.read_text(errors="replace") if self.console.exists() else ""

    def tail(self, n: int = 3000) -> str:
        qemu = self.dir / "qemu.log"
        extra = qemu.read_text(errors="replace")[-1000:] if qemu.exists() else ""
        return f"--- {self.name} console ---\n{self.console_text()[-n:]}\n{extra}"

    def wait_up(self, timeout: float = 600) -> None:
        """Until the console says the system is up (a boot after the ones already seen), and
        SSH answers."""
        want = self.boots + 1

        def up() -> bool:
            if not self.running():
                raise VmError(f"{self.name}: QEMU exited ({self._rc()})\n{self.tail()}")
            return self.console_text().count(READY_MARK) >= want

        try:
            wait_until(up, timeout, f"{self.name} to boot", step=0.5)
            wait_until(self._connect, 120, f"SSH on {self.name}", step=1)
        except AssertionError as exc:
            raise VmError(f"{exc}\n{self.tail()}") from None
        self.boots = want

    def _connect(self) -> bool:
        """Start the SSH master connection every later command shares: a new connection costs
        seconds of emulated key exchange and sshd start-up. It lives in the lab namespace (so
        the namespace's deletion ends it) and dies with the VM's network."""
        self.control.unlink(missing_ok=True)
        argv = [*self._ssh_base(), "-o", "ControlMaster=yes", "-o", "ControlPersist=yes"]
        argv += ["-N", "-f", f"root@{self.spec.ssh_addr}"]
        try:
            proc = subprocess.run(
                netns.nsenter_argv(self.ns, argv), timeout=60, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            return False
        return proc.returncode == 0 and self.control.exists()

    def _rc(self) -> object:
        return None if self.proc is None else self.proc.returncode

    def qmp(self, command: str, **arguments: object) -> dict[str, object]:
        """One QMP command on a fresh connection (capabilities negotiated first)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(str(self.qmp_path))
            f = s.makefile("rwb")
            json.loads(f.readline())  # the greeting
            for cmd in ({"execute": "qmp_capabilities"}, {"execute": command}):
                if cmd["execute"] == command and arguments:
                    cmd["arguments"] = arguments
                f.write(json.dumps(cmd).encode() + b"\n")
                f.flush()
                while True:
                    reply = json.loads(f.readline())
                    if "return" in reply or "error" in reply:
                        break  # (asynchronous events in between are skipped)
                if "error" in reply:
                    raise VmError(f"{self.name}: QMP {cmd['execute']}: {reply['error']}")
            return dict(reply)

    def power_off(self) -> None:
        """Pull the plug: QEMU quits at once, no shutdown inside the guest."""
        if not self.running():
            return
        with contextlib.suppress(OSError, VmError, json.JSONDecodeError):
            self.qmp("quit")
        assert self.proc is not None
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def wait_exit(self, timeout: float) -> None:
        """Until QEMU exits (the guest powered itself off)."""
        assert self.proc is not None
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise VmError(f"{self.name} did not power off in {timeout} s\n{self.tail()}") from None

    def close(self) -> None:
        """Kill QEMU (if running) and drop the VM's own disk; idempotent."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self._own_disk:
            self.disk.unlink(missing_ok=True)

    # --- commands --------------------------------------------------------------------------------

    def _ssh_base(self) -> list[str]:
        opts = ["-F", "/dev/null", "-i", str(self.ssh_key), "-o", "BatchMode=yes"]
        opts += ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
        opts += ["-o", "LogLevel=ERROR", "-o", "ConnectTimeout=30"]
        opts += ["-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=4"]
        return ["ssh", *opts, "-o", f"ControlPath={self.control}"]

    def ssh_argv(self, command: str) -> list[str]:
        # Through the master when there is one, else on a connection of its own.
        opts = ["-o", "ControlMaster=no", "-T"]
        return [*self._ssh_base(), *opts, f"root@{self.spec.ssh_addr}", command]

    def ssh(
        self, command: str, *, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run a shell command in the VM (as root); a failure raises with its output. SSH's own
        failure (exit 255: the connection, not the command) is retried on a new connection."""
        for attempt in range(3):
            try:
                proc = subprocess.run(
                    netns.nsenter_argv(self.ns, self.ssh_argv(command)),
                    capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                )  # fmt: skip
            except subprocess.TimeoutExpired as exc:
                raise VmError(f"{self.name}: `{command}` took over {timeout} s") from exc
            if proc.returncode != 255 or not check or attempt == 2:
                break
            time.sleep(2)
            self._connect()
        if check and proc.returncode != 0:
            out = (proc.stdout + proc.stderr).strip()[-3000:]
            raise VmError(f"{self.name}: `{command}` exited {proc.returncode}:\n{out}")
        return proc

    def sh(self, argv: Sequence[str], **kwargs: object) -> str:
        """Run argv (quoted for the remote shell); its stdout."""
        return self.ssh(shlex.join(argv), **kwargs).stdout  # type: ignore[arg-type]

    def ssh_popen(self, command: str, **kwargs: object) -> subprocess.Popen[bytes]:
        """A long-running command in the VM, its stdin/stdout through SSH (the caller stops it:
        closing the SSH session ends the remote side's stdin)."""
        argv = netns.nsenter_argv(self.ns, self.ssh_argv(command))
        return subprocess.Popen(argv, **kwargs)  # type: ignore[call-overload]

    def boot_id(self) -> str:
        return self.ssh("cat /proc/sys/kernel/random/boot_id").stdout.strip()

    def wait_ssh_gone(self, timeout: float = 60) -> None:
        """Until SSH stops answering (the VM went down for a reboot)."""
        wait_until(lambda: self.ssh("true", check=False, timeout=10).returncode != 0,
                   timeout, f"{self.name} to go down", step=0.5)  # fmt: skip


def write_seed(
    dest: Path, *, hostname: str, mac: str, addr: str, gateway: str, pubkey: str, hosts: str = ""
) -> Path:
    """A seed share for one VM: dest/rootfs/ is copied over / at boot by the image's edge-seed
    (vagrant/image/rootfs/usr/local/sbin/edge-seed): name, address, root's SSH key."""
    files = {
        "etc/hostname": f"{hostname}\n",
        "etc/hosts": f"127.0.0.1 localhost\n{hosts}",
        "etc/systemd/network/10-edge-lab.network": (
            f"[Match]\nMACAddress={mac}\n\n[Network]\nAddress={addr}\nGateway={gateway}\n"
            "LinkLocalAddressing=no\nIPv6AcceptRA=no\n"
        ),
        "root/.ssh/authorized_keys": pubkey,
    }
    for rel, text in files.items():
        p = dest / "rootfs" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return dest


def make_ssh_key(path: Path, comment: str) -> Path:
    """A throwaway ed25519 key pair (path, path.pub) for one run."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], check=True
    )
    return path


@dataclass
class LoneVmNet:
    """The network of a single helper VM (the image bake, the verifier): one tap on a bridge
    that holds the gateway address, in namespace `ns`; a fresh SSH key and a seed for it."""

    tap: str
    key: Path
    seed: Path


def lone_vm_net(
    ns: str, work: Path, *, name: str, bridge: str, mac: str, addr: str, gateway: str
) -> LoneVmNet:
    netns.run(ns, ["ip", "link", "add", bridge, "type", "bridge"])
    netns.run(ns, ["ip", "link", "set", bridge, "up"])
    netns.add_addr(ns, bridge, f"{gateway}/24")
    tap = f"t-{name}"[:15]
    netns.run(ns, ["ip", "tuntap", "add", "dev", tap, "mode", "tap", "vnet_hdr"])
    netns.run(ns, ["ip", "link", "set", tap, "master", bridge, "up"])
    key = make_ssh_key(work / "ssh_key", ns)
    seed = write_seed(
        work / "seed", hostname=name, mac=mac, addr=f"{addr}/24", gateway=gateway,
        pubkey=key.with_suffix(".pub").read_text(),
    )  # fmt: skip
    return LoneVmNet(tap, key, seed)


def in_parallel(fns: Sequence[Callable[[], object]], what: str) -> None:
    """Run the functions on threads, wait for all, raise the first failure (naming `what`)."""
    import threading

    errors: list[BaseException] = []

    def wrap(fn: Callable[[], object]) -> Callable[[], None]:
        def body() -> None:
            try:
                fn()
            except BaseException as exc:
                errors.append(exc)

        return body

    threads = [threading.Thread(target=wrap(fn), name=f"{what}-{i}") for i, fn in enumerate(fns)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise VmError(
            f"{what} failed after {time.monotonic() - t0:.0f} s: {errors[0]}"
        ) from errors[0]
