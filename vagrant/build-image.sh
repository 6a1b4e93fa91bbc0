#!/usr/bin/env bash
# Build the VM lab's Debian bookworm image from Debian packages only:
#   mmdebstrap -> a root directory -> ext4 (mke2fs -d: no loop device, no mount) -> qcow2,
# with the image's kernel and initrd beside it (the VMs boot them directly, no bootloader).
#
#   vagrant/build-image.sh OUTDIR [EXTRA_PACKAGE...]
#
# Writes OUTDIR/{disk.qcow2,vmlinuz,initrd.img,kernel-release,packages.txt}. The packages are
# vagrant/image-packages.txt plus the arguments (lab/vmimage.py passes the Makefile's DEBS); the
# files under vagrant/image/rootfs/ are copied over the root. Needs root (mmdebstrap's root mode).
# EDGE_VM_MIRROR overrides the Debian mirror.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
out="${1:?usage: build-image.sh OUTDIR [EXTRA_PACKAGE...]}"
shift
mirror="${EDGE_VM_MIRROR:-http://deb.debian.org/debian}"
security="${EDGE_VM_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"

[ "$(id -u)" = 0 ] || { echo "build-image.sh: needs root (mmdebstrap builds the root as root)" >&2; exit 1; }
for tool in mmdebstrap mke2fs qemu-img; do
    command -v "$tool" >/dev/null || { echo "build-image.sh: $tool is missing (vagrant/host-deps.sh installs it)" >&2; exit 1; }
done

# Units a lab VM has no use for: each costs seconds of an emulated boot.
boot_masks="systemd-binfmt.service proc-sys-fs-binfmt_misc.automount dev-hugepages.mount
 dev-mqueue.mount sys-kernel-config.mount sys-fs-fuse-connections.mount systemd-pstore.service
 modprobe@fuse.service modprobe@loop.service modprobe@efi_pstore.service modprobe@drm.service
 modprobe@dm_mod.service modprobe@configfs.service e2scrub_reap.service
 systemd-update-utmp.service systemd-update-utmp-runlevel.service systemd-tmpfiles-clean.timer"
boot_masks="$(echo $boot_masks)"
packages="$( { grep -v '^\s*#' "$here/image-packages.txt"; printf '%s\n' "$@"; } | awk 'NF {print $1}' | sort -u )"
work="$(mktemp -d "${TMPDIR:-/tmp}/edge-vm-image.XXXXXX")"
trap 'rm -rf "$work"' EXIT
root="$work/root"

echo "build-image: mmdebstrap bookworm ($(echo "$packages" | wc -l) packages) into $root"
mmdebstrap --quiet --variant=apt --mode=root \
    --include="$(echo "$packages" | paste -sd, -)" \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-include=/usr/share/locale/locale.alias' \
    --customize-hook="sync-in '$here/image/rootfs' /" \
    --customize-hook='chroot "$1" update-initramfs -u -k all' \
    --customize-hook='chroot "$1" systemctl enable systemd-networkd.service ssh.service edge-seed.service edge-hostkeys.service edge-ready.service' \
    --customize-hook='chroot "$1" systemctl mask serial-getty@ttyS0.service getty@tty1.service' \
    --customize-hook="chroot \"\$1\" systemctl mask $boot_masks" \
    --customize-hook='chroot "$1" sh -c "systemctl disable redis-server.service; systemctl mask apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer"' \
    --customize-hook='rm -f "$1"/etc/ssh/ssh_host_* "$1"/etc/machine-id; : > "$1"/etc/machine-id' \
    --customize-hook='chroot "$1" passwd -l root' \
    bookworm "$root" \
    "deb $mirror bookworm main" "deb $mirror bookworm-updates main" \
    "deb $security bookworm-security main"

kernel="$(cd "$root/boot" && ls vmlinuz-* | sort -V | tail -n 1)"
krel="${kernel#vmlinuz-}"
[ -e "$root/usr/src/linux-headers-$krel" ] || { echo "build-image: no headers for kernel $krel in the image" >&2; exit 1; }
cp "$root/boot/vmlinuz-$krel" "$work/vmlinuz"
cp "$root/boot/initrd.img-$krel" "$work/initrd.img"
chroot "$root" dpkg-query -W -f '${Package} ${Version}\n' > "$work/packages.txt"

# Room for the venv `make install` builds in every VM (pip wheels, aiortc, PyAV, playwright).
used_mb="$(du -sm "$root" | cut -f1)"
size_mb=$(( used_mb + 2560 ))
echo "build-image: ext4 of ${size_mb} MiB (${used_mb} MiB used), kernel $krel"
mke2fs -q -t ext4 -L edge-root -E root_owner=0:0 -d "$root" "$work/disk.raw" "${size_mb}M"
qemu-img convert -O qcow2 "$work/disk.raw" "$work/disk.qcow2"

mkdir -p "$out"
for f in disk.qcow2 vmlinuz initrd.img packages.txt; do mv -f "$work/$f" "$out/$f"; done
echo "$krel" > "$out/kernel-release"
echo "build-image: $out/disk.qcow2 ($(du -h "$out/disk.qcow2" | cut -f1)), kernel $krel"
