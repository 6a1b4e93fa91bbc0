"""Does the relay program pass the verifier of the VM image's kernel (Debian 12's 6.1)?

    python -m lab.vmverify --bpf-dir PATH [--cflag -DX=1 ...] [--log FILE]

Boots one VM from the VM lab's image (built or reused from the cache, lab/vmimage.py), copies
PATH (a bpf/ directory: relay.c and its headers) and the control/ and datapath/ beside it (or,
when there are none, this checkout's) into it, compiles and loads xdp_relay there with the
guest's own bcc (control.program, as relayctl load does), attaches it in native mode to the VM's
virtio-net NIC and detaches it, prints the verdict and the verifier log's tail, and powers the VM
off. Exit status: 0 verified, 1 refused (compile error or verifier), 2 the tool itself failed
(no image, VM did not boot). About 2 minutes with the image cached.

The host's kernel is newer than the image's, and the verifiers differ (6.1 does not track the
bounds of a byte swap, for one): what loads here may not load on a Debian 12 edge host.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

from lab import netns
from lab.vm import Nic, Vm, VmError, VmSpec, lone_vm_net
from lab.vmimage import DEFAULT_CACHE, REPO, VmImageError, ensure_image

ADDR, GATEWAY, MAC = "198.18.2.2", "198.18.2.1", "52:54:00:ed:00:f1"
SEED_TAG, SHARE_TAG = "edgeseed", "edgeshare"
VERDICT = "vmverify-verdict:"  # the guest script's last line

# Runs in the guest under Debian's python3 (python3-bpfcc); bcc writes the verifier log to
# stderr, which the SSH session merges into stdout.
GUEST_SCRIPT = r"""
import sys
from bcc import BPF
from control.program import ProgramError, compile_relay, load_xdp_fn
try:
    bpf = compile_relay(None, cflags=sys.argv[1:])
    fn = load_xdp_fn(bpf)
except ProgramError as exc:
    print(exc, flush=True)
    print("vmverify-verdict: refused", flush=True)
    sys.exit(1)
print(f"loaded xdp_relay, {len(bpf.dump_func(b'xdp_relay')) // 8} instructions", flush=True)
try:
    bpf.attach_xdp("eth0", fn, BPF.XDP_FLAGS_DRV_MODE)
    bpf.remove_xdp("eth0", BPF.XDP_FLAGS_DRV_MODE)
    print("attached and detached in native mode on eth0 (virtio-net)", flush=True)
except Exception as exc:
    print(f"native attach on eth0 failed: {exc}", flush=True)
print("vmverify-verdict: verified", flush=True)
"""


def source_root(bpf_dir: Path) -> Path:
    """Whose control/ compiles bpf_dir: the checkout it sits in (its program.py knows its
    headers and flags), else this one."""
    parent = bpf_dir.parent
    return parent if (parent / "control" / "program.py").is_file() else REPO


def _stage(share: Path, bpf_dir: Path) -> None:
    """share/bpf: the program to verify; share/src: the Python that compiles and loads it."""
    shutil.copytree(bpf_dir, share / "bpf", ignore=shutil.ignore_patterns(".*"))
    skip = shutil.ignore_patterns("__pycache__")
    for pkg in ("control", "datapath"):
        shutil.copytree(source_root(bpf_dir) / pkg, share / "src" / pkg, ignore=skip)
    (share / "verify.py").write_text(GUEST_SCRIPT)


def verify(bpf_dir: Path, cflags: list[str], cache: Path, log: Path | None) -> tuple[int, str]:
    """(exit status, the guest's output) for bpf_dir on the image's kernel."""
    image = ensure_image(cache)
    prefix = netns.lab_prefix()
    ns = f"{prefix}-verify"
    work = Path(tempfile.mkdtemp(prefix=f"{prefix}-verify-"))
    vm: Vm | None = None
    netns.create(ns)
    try:
        net = lone_vm_net(
            ns, work, name="verify", bridge="vfy0", mac=MAC, addr=ADDR, gateway=GATEWAY
        )
        share = work / "share"
        _stage(share, bpf_dir)
        spec = VmSpec(
            "verify", 1536, [Nic(net.tap, MAC)], ADDR, {SEED_TAG: net.seed, SHARE_TAG: share}
        )
        vm = Vm(spec, image, ns, work, net.key)
        t0 = time.monotonic()
        vm.boot()
        vm.wait_up()
        t1 = time.monotonic()
        print(f"vmverify: {image.kernel_release} up in {t1 - t0:.0f} s", file=sys.stderr)
        mnt = f"/mnt/{SHARE_TAG}"
        cmd = (
            f"set -e; mkdir -p {mnt}; mountpoint -q {mnt} || mount -t 9p -o "
            f"trans=virtio,version=9p2000.L,ro,msize=512000 {SHARE_TAG} {mnt}; "
            "mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf; "
            f"cd {mnt}/src; PYTHONPATH={mnt}/src PYTHONDONTWRITEBYTECODE=1 EDGE_BPF_DIR={mnt}/bpf "
            f"python3 {mnt}/verify.py {shlex.join(cflags)} 2>&1"
        )
        proc = vm.ssh(cmd, timeout=900, check=False)
        out = proc.stdout + proc.stderr
        print(f"vmverify: compile and load took {time.monotonic() - t1:.0f} s", file=sys.stderr)
        if log is not None:
            log.write_text(out)
        vm.ssh("systemctl poweroff --no-block", check=False, timeout=30)
        if f"{VERDICT} verified" in out:
            return 0, out
        if f"{VERDICT} refused" in out:
            return 1, out
        return 2, f"the guest script did not finish (exit {proc.returncode}):\n{out}"
    finally:
        if vm is not None:
            vm.close()
        netns.delete(ns)
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lab.vmverify",
        description="Compile and load a bpf/ directory's relay program in a VM running the VM "
        "lab image's kernel (Debian 12, 6.1): the verifier's verdict and log tail.",
    )
    parser.add_argument("--bpf-dir", type=Path, required=True, help="directory with relay.c")
    parser.add_argument(
        "--cflag", action="append", default=[], metavar="FLAG",
        help="an extra compiler flag (repeatable), e.g. --cflag=-DMAX_FLOWS=4096",
    )  # fmt: skip
    parser.add_argument("--log", type=Path, help="write the guest's whole output here")
    parser.add_argument("--tail", type=int, default=40, help="lines of the log to print (40)")
    parser.add_argument(
        "--cache", type=Path, default=DEFAULT_CACHE,
        help=f"the VM lab's cache (default {DEFAULT_CACHE}, env EDGE_VM_CACHE)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("vmverify: needs root (QEMU on a tap in a network namespace)", file=sys.stderr)
        return 2
    bpf_dir = args.bpf_dir.resolve()
    if not (bpf_dir / "relay.c").is_file():
        print(f"vmverify: {bpf_dir}/relay.c: no such file", file=sys.stderr)
        return 2
    try:
        status, out = verify(bpf_dir, args.cflag, args.cache, args.log)
    except (VmError, VmImageError, OSError) as exc:
        print(f"vmverify: error: {exc}", file=sys.stderr)
        return 2
    lines = out.rstrip("\n").splitlines()
    print("\n".join(lines[-args.tail :]))
    print({0: "VERIFIED", 1: "REFUSED", 2: "ERROR"}[status] + f" on the image's kernel: {bpf_dir}")
    return status


if __name__ == "__main__":
    sys.exit(main())
