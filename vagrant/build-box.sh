#!/usr/bin/env bash
# Make a local Vagrant box (provider libvirt) from the VM lab's image, and add it to Vagrant:
#
#   vagrant/build-box.sh [CACHE]        (default: $EDGE_VM_CACHE or /var/cache/webrtc-edge)
#
# It builds (or reuses) the image and the wheelhouse with `python -m lab.vmimage`, then writes
# CACHE/box/: the box (box.img = the image plus an SSH key for root, metadata.json), the key
# (ssh_key), the image's kernel and initrd (the Vagrantfile boots them directly), and a link to the
# wheelhouse. Then `vagrant box add --force webrtc-edge-lab CACHE/box/webrtc-edge-lab.box`.
# Needs root, debugfs (e2fsprogs), qemu-img; vagrant only for the last step (skipped without it).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
cache="${1:-${EDGE_VM_CACHE:-/var/cache/webrtc-edge}}"
box="$cache/box"
py="$repo/.venv/bin/python"
[ -x "$py" ] || { echo "build-box.sh: run \`make install\` first (it makes $repo/.venv)" >&2; exit 1; }

out="$(EDGE_VM_CACHE="$cache" "$py" -m lab.vmimage --cache "$cache")"
echo "$out"
image="$(echo "$out" | sed -n 's/^image: \(.*\) (kernel.*/\1/p')"
wheels="$(echo "$out" | sed -n 's/^wheelhouse: //p')"
imgdir="$(dirname "$image")"

mkdir -p "$box"
work="$(mktemp -d "$box/.build.XXXXXX")"
trap 'rm -rf "$work"' EXIT
[ -f "$box/ssh_key" ] || ssh-keygen -q -t ed25519 -N "" -C webrtc-edge-lab -f "$box/ssh_key"

# The box is the image with root's authorized_keys written into its ext4 (debugfs: no mount).
qemu-img convert -O raw "$image" "$work/root.raw"
install -m 600 "$box/ssh_key.pub" "$work/authorized_keys"
debugfs -w "$work/root.raw" -f - >/dev/null <<EOF
mkdir /root/.ssh
set_inode_field /root/.ssh mode 040700
write $work/authorized_keys /root/.ssh/authorized_keys
set_inode_field /root/.ssh/authorized_keys mode 0100600
EOF
qemu-img convert -O qcow2 "$work/root.raw" "$work/box.img"
rm -f "$work/root.raw"
size_gb=$(( ($(qemu-img info --output=json "$work/box.img" | sed -n 's/.*"virtual-size": \([0-9]*\).*/\1/p') + (1 << 30) - 1) >> 30 ))
printf '{"provider": "libvirt", "format": "qcow2", "virtual_size": %d}\n' "$size_gb" > "$work/metadata.json"
tar -C "$work" -cf "$box/webrtc-edge-lab.box" metadata.json box.img
cp "$imgdir/vmlinuz" "$imgdir/initrd.img" "$box/"
ln -sfn "$wheels" "$box/wheels"
echo "build-box: $box/webrtc-edge-lab.box (kernel $(cat "$imgdir/kernel-release"))"

if command -v vagrant >/dev/null; then
    vagrant box add --force --name webrtc-edge-lab "$box/webrtc-edge-lab.box"
else
    echo "build-box: vagrant is not installed; add the box with:"
    echo "  vagrant box add --name webrtc-edge-lab $box/webrtc-edge-lab.box"
fi
