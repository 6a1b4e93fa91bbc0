"""The installed image: the VM lab's image after one VM ran the project's `make install` in it,
cached like the image (lab/vmimage.py) and keyed on what that install depends on.

Under TCG a first `make install` costs a VM many minutes (`python3 -m venv` alone byte-compiles
pip and setuptools), four at once on two cores several times that. So one VM does it, offline
from the wheelhouse, exactly as the lab would (vagrant/provision.sh install); the result keeps
only /opt/webrtc-edge/.venv (an editable install: it points at /opt/webrtc-edge, not into it),
and the lab's VMs boot from it, unpack the current checkout there and run `make install` again,
which then finds the venv up to date. The key covers the image, the wheelhouse, pyproject.toml,
the Makefile and provision.sh: a change to how the project installs is a new bake.
EDGE_VM_FRESH_INSTALL=1 skips this (every VM installs from nothing).

    python -m lab.vmbake [--cache DIR]     bake (or reuse) it, print where it is
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lab import netns
from lab.vm import Nic, Vm, VmError, VmSpec, lone_vm_net
from lab.vmimage import (
    DEFAULT_CACHE,
    REPO,
    Image,
    _build_once,
    _digest,
    _prune,
    ensure_image,
    ensure_wheelhouse,
    stage_checkout,
)
from lab.vmlab import CHECKOUT_TAG, INSTALL_DIR, SEED_TAG, WHEELS_TAG, install_checkout

ADDR, GATEWAY, MAC = "198.18.2.2", "198.18.2.1", "52:54:00:ed:00:f0"


def installed_key(image: Image, wheels: Path, repo: Path = REPO) -> str:
    return _digest([
        ("image", image.dir.name.encode()),
        ("wheels", wheels.name.encode()),
        ("pyproject.toml", (repo / "pyproject.toml").read_bytes()),
        ("Makefile", (repo / "Makefile").read_bytes()),
        ("provision.sh", (repo / "vagrant" / "provision.sh").read_bytes()),
    ])  # fmt: skip


# What a baked image must not carry into every VM: this VM's identity and keys, the seed's
# files, the checkout itself (each run brings its own).
CLEANUP = f"""
set -e
umount /mnt/{CHECKOUT_TAG} /mnt/{WHEELS_TAG}
find {INSTALL_DIR} -mindepth 1 -maxdepth 1 ! -name .venv -exec rm -rf {{}} +
rm -f /etc/ssh/ssh_host_* /etc/systemd/network/10-edge-lab.network /root/.ssh/authorized_keys
echo edge-vm > /etc/hostname
: > /etc/machine-id
sync
"""


def _bake(image: Image, wheels: Path, out: Path, repo: Path) -> None:
    disk = out / "disk.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(image.disk),
         str(disk)],
        check=True, capture_output=True,
    )  # fmt: skip
    for name in ("vmlinuz", "initrd.img", "kernel-release", "packages.txt"):
        (out / name).symlink_to(image.dir / name)
    prefix = netns.lab_prefix()
    ns = f"{prefix}-bake"
    work = Path(tempfile.mkdtemp(prefix=f"{prefix}-bake-"))
    vm: Vm | None = None
    netns.create(ns)
    try:
        net = lone_vm_net(
            ns, work, name="bake", bridge="bake0", mac=MAC, addr=ADDR, gateway=GATEWAY
        )
        share = work / "share"
        stage_checkout(share, repo)
        spec = VmSpec(
            "bake", 1536, [Nic(net.tap, MAC)], ADDR,
            {SEED_TAG: net.seed, CHECKOUT_TAG: share, WHEELS_TAG: wheels},
        )  # fmt: skip
        vm = Vm(spec, image, ns, work, net.key, disk=disk)
        t0 = time.monotonic()
        vm.boot()
        vm.wait_up()
        t1 = time.monotonic()
        install_checkout(vm)
        t2 = time.monotonic()
        vm.ssh(CLEANUP)
        vm.ssh("systemctl poweroff --no-block", check=False)
        vm.wait_exit(300)
        (out / "bake.log").write_text(
            f"boot {t1 - t0:.0f} s, make install {t2 - t1:.0f} s\n" + vm.console_text()[-20000:]
        )
    except BaseException:
        if vm is not None:
            (out.parent / f"{out.name}.console.log").write_text(vm.console_text())
        raise
    finally:
        if vm is not None:
            vm.close()
        netns.delete(ns)
        shutil.rmtree(work, ignore_errors=True)


def ensure_installed(
    image: Image, wheels: Path, cache: Path = DEFAULT_CACHE, repo: Path = REPO
) -> Image:
    """The installed image for these inputs, baked first when the cache has none."""
    parent = cache / "installed"
    key = installed_key(image, wheels, repo)

    def build(tmp: Path) -> None:
        print(f"vmbake: one VM runs make install for the installed image {key}", file=sys.stderr)
        try:
            _bake(image, wheels, tmp, repo)
        except VmError as exc:
            raise VmError(f"baking the installed image failed: {exc}") from None

    final = _build_once(parent / key, build, "installed image")
    (image.dir / ".used").touch()  # its backing file: kept as long as it is
    _prune(parent, key)
    return Image(final)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lab.vmbake",
        description="Bake (or reuse) the VM lab's installed image: the image after make install.",
    )
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="cache directory")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("vmbake: needs root (QEMU on a tap in a network namespace)", file=sys.stderr)
        return 1
    try:
        image = ensure_image(args.cache)
        installed = ensure_installed(image, ensure_wheelhouse(args.cache), args.cache)
    except (RuntimeError, OSError) as exc:
        print(f"vmbake: error: {exc}", file=sys.stderr)
        return 1
    print(f"installed image: {installed.disk}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
