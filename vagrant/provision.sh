#!/usr/bin/env bash
# Set a VM of the lab up for its role, as an operator sets up an edge host (docs/operations.md).
# Used by the Vagrantfile and by lab/vmlab.py (over SSH), so both labs are provisioned alike.
#
#   provision.sh install SRC WHEELS        copy the checkout SRC to /opt/webrtc-edge, make install
#                                          offline (pip reads only the wheelhouse WHEELS)
#   provision.sh registry ADDR PASSWORD    redis-server on ADDR:6379 and 127.0.0.1, with a password
#   provision.sh transceiver ADDR VIP:PORT REDIS_URL CLUSTER ID
#                                          `transceiver serve` as edge-transceiver.service
#   provision.sh relay ADDR VIP:PORT REDIS_URL [IFACE]
#                                          sysctls, /etc/default/relayctl, relayctl-run.service
#   provision.sh routes GATEWAY NET...     (Vagrant) lab routes via GATEWAY, at every boot
#   provision.sh router VIP RELAY_ADDR...  (Vagrant's router VM) forwarding, the VIP over the relays
#                                          (ECMP), and a health check that drops a dead relay
set -euo pipefail

DEST=/opt/webrtc-edge
TUNNEL_PORT=6080
METRICS_PORT=9477
role="${1:?usage: provision.sh install|registry|transceiver|relay|router ARGS...}"
shift

case "$role" in
install)
    src="${1:?SRC}" wheels="${2:?WHEELS}"
    mkdir -p "$DEST"
    if [ -f "$src" ]; then tar -xf "$src" -C "$DEST"; else cp -a "$src/." "$DEST/"; fi
    cd "$DEST"
    # make install unchanged: every Debian package it checks for is in the image, and pip
    # honours these two for the pip upgrade, the build backend and the dependencies alike.
    # PIP_NO_COMPILE: byte-compiling every installed module costs minutes under emulation;
    # Python compiles what it imports, once, on first import.
    PIP_NO_INDEX=1 PIP_FIND_LINKS="$wheels" PIP_NO_COMPILE=1 make install
    ;;
registry)
    addr="${1:?ADDR}" password="${2:?PASSWORD}"
    install -m 600 -o redis -g redis /dev/null /etc/redis/edge-lab.conf
    printf 'bind %s 127.0.0.1\nrequirepass %s\nsave ""\n' "$addr" "$password" > /etc/redis/edge-lab.conf
    grep -qx 'include /etc/redis/edge-lab.conf' /etc/redis/redis.conf ||
        echo 'include /etc/redis/edge-lab.conf' >> /etc/redis/redis.conf
    systemctl enable --now redis-server
    systemctl restart redis-server
    ;;
transceiver)
    addr="${1:?ADDR}" vip="${2:?VIP:PORT}" redis="${3:?REDIS_URL}" cluster="${4:?CLUSTER}" id="${5:?ID}"
    api_key="${6:?API_KEY}"
    # The signaling API key, in a file only root reads (never on the command line).
    install -d -m 700 /etc/webrtc-edge
    install -m 600 /dev/null /etc/webrtc-edge/api-keys
    printf '%s\n' "$api_key" > /etc/webrtc-edge/api-keys
    cat > /etc/default/edge-transceiver <<EOF
TXR_ARGS="--listen=$addr:8080 --udp=$addr:5000 --vip=$vip --cluster=$cluster --id=$id --redis=$redis --relay-tunnel-port=$TUNNEL_PORT --api-keys=/etc/webrtc-edge/api-keys"
EOF
    chmod 600 /etc/default/edge-transceiver
    cat > /etc/systemd/system/edge-transceiver.service <<EOF
[Unit]
Description=WebRTC edge transceiver (transceiver serve)
Wants=network-online.target
After=network-online.target redis-server.service

[Service]
EnvironmentFile=/etc/default/edge-transceiver
ExecStart=$DEST/.venv/bin/transceiver serve \$TXR_ARGS
Restart=on-failure
RestartSec=1
# SIGTERM drains running calls (--drain-timeout, 30 s)
TimeoutStopSec=40

[Install]
WantedBy=multi-user.target
EOF
    systemctl daemon-reload
    systemctl enable edge-transceiver
    systemctl restart edge-transceiver  # a re-provisioned VM takes its new key or settings
    ;;
relay)
    addr="${1:?ADDR}" vip="${2:?VIP:PORT}" redis="${3:?REDIS_URL}" iface="${4:-eth0}"
    # docs/operations.md: forwarding for bpf_fib_lookup; packets the program hands to the kernel
    # carry a local source, so accept_local and a loose reverse-path check.
    cat > /etc/sysctl.d/60-edge-relay.conf <<EOF
net.ipv4.ip_forward=1
net.ipv4.conf.all.accept_local=1
net.ipv4.conf.all.rp_filter=2
net.ipv4.conf.default.rp_filter=2
EOF
    sysctl -q --system
    cat > /etc/default/relayctl <<EOF
RELAYCTL_NAME=edge
RELAY_VIP_ADDRS="${vip%:*}"
RELAY_LOAD_ARGS="--iface $iface --vip $vip --tunnel $addr:$TUNNEL_PORT --mode native"
RELAY_RUN_ARGS="--redis $redis --metrics $addr:$METRICS_PORT"
EOF
    chmod 600 /etc/default/relayctl
    cp "$DEST/deploy/systemd/relayctl-run.service" /etc/systemd/system/
    # `relayctl load` compiles the program with bcc before the controller reports ready: under
    # emulation that alone outlasts systemd's default 90 s start timeout.
    mkdir -p /etc/systemd/system/relayctl-run.service.d
    printf '[Service]\nTimeoutStartSec=20min\n' > /etc/systemd/system/relayctl-run.service.d/lab-timeout.conf
    systemctl daemon-reload
    # --no-block: a unit that fails keeps restarting (Restart=always) and a blocking start would
    # wait for ever; the caller watches it (lab/vmlab.py: wait_relay_unit).
    systemctl enable --now --no-block relayctl-run
    ;;
routes)
    gw="${1:?GATEWAY}"
    shift
    cmds=""
    for net in "$@"; do cmds="$cmds ip route replace $net via $gw;"; done
    cat > /etc/systemd/system/edge-routes.service <<EOF
[Unit]
Description=The VM lab's routes (via $gw)
After=network-online.target
Wants=network-online.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c '$cmds'

[Install]
WantedBy=multi-user.target
EOF
    systemctl daemon-reload
    systemctl enable edge-routes
    systemctl restart edge-routes
    ;;
router)
    vip="${1:?VIP}"
    shift
    [ $# -ge 1 ] || { echo "provision.sh router: give the relays' addresses" >&2; exit 2; }
    cat > /etc/sysctl.d/60-edge-router.conf <<EOF
net.ipv4.ip_forward=1
net.ipv4.fib_multipath_hash_policy=1
net.ipv4.conf.all.rp_filter=1
net.ipv4.conf.default.rp_filter=1
EOF
    # Strict reverse-path check: the client's packets from any other address (its Vagrant
    # management NIC's) are dropped here rather than answered through the relays.
    sysctl -q --system
    install -m 755 "$DEST/vagrant/router-health.sh" /usr/local/sbin/edge-router-health
    cat > /etc/systemd/system/edge-router-health.service <<EOF
[Unit]
Description=Keep the VIP routed over the relays that answer their health check
After=network-online.target
Wants=network-online.target

[Service]
ExecStart=/usr/local/sbin/edge-router-health $vip $*
Restart=always

[Install]
WantedBy=multi-user.target
EOF
    systemctl daemon-reload
    systemctl enable --now edge-router-health
    ;;
*)
    echo "provision.sh: unknown role $role" >&2
    exit 2
    ;;
esac
