#!/usr/bin/env bash
# The Vagrant lab's router: keep VIP/32 routed (ECMP) over the relays whose `relayctl run
# --metrics` endpoint answers, as a BGP withdrawal or a load balancer's check would in front of a
# real edge. The QEMU lab's harness does the same in lab/vmlab.py (HealthChecker).
#
#   router-health.sh VIP RELAY_ADDR...
set -uo pipefail
vip="${1:?usage: router-health.sh VIP RELAY_ADDR...}"
shift
relays=("$@")
port=9477
fails=2        # misses in a row before a relay is taken out
interval=0.5
declare -A streak healthy
for r in "${relays[@]}"; do streak[$r]=0; healthy[$r]=1; done

apply() {
    local hops=()
    for r in "${relays[@]}"; do
        [ "${healthy[$r]}" = 1 ] && hops+=(nexthop via "$r")
    done
    if [ ${#hops[@]} -eq 0 ]; then
        ip route del "$vip/32" 2>/dev/null || true
    elif [ ${#hops[@]} -eq 3 ]; then
        ip route replace "$vip/32" via "${hops[2]}"
    else
        ip route replace "$vip/32" "${hops[@]}"
    fi
    echo "VIP $vip via: ${hops[*]:-nothing}"
}

apply
while sleep "$interval"; do
    changed=0
    for r in "${relays[@]}"; do
        if timeout 1 bash -c "exec 3<>/dev/tcp/$r/$port" 2>/dev/null; then
            s=$(( streak[$r] > 0 ? streak[$r] + 1 : 1 ))
        else
            s=$(( streak[$r] < 0 ? streak[$r] - 1 : -1 ))
        fi
        streak[$r]=$s
        if [ "${healthy[$r]}" = 1 ] && [ "$s" -le -$fails ]; then healthy[$r]=0; changed=1; fi
        if [ "${healthy[$r]}" = 0 ] && [ "$s" -ge $fails ]; then healthy[$r]=1; changed=1; fi
    done
    [ $changed = 1 ] && apply
done
