"""relayctl's defaults, in one table: the CLI shows them, the controller and jobs use them.

Fleet-wide values that transceivers must agree with (the relays' tunnel port, the registry's
TTLs and prefix) are wire/defaults.py's.
"""

RELAY_NAME = "edge"  # pins under /sys/fs/bpf/<name>
INTERVAL = 0.5  # seconds between control-loop passes
EMPTY_GRACE = 15.0  # > registry TTL + refresh: a restarted Redis is refilled by then
FLOW_TTL = 120.0  # seconds a flow key lives in Redis
FLOW_BATCH = 32768  # flow-map entries read per pass: 1 M flows in 32 passes (bench/flow_export.py)
SLOW_PATH_RATE = 2000.0  # slow-path datagrams per second
REDIS_TIMEOUT = 2.0  # the loop's own Redis calls: never block a pass for long
SLOW_PATH_REDIS_TIMEOUT = 0.5  # per slow-path batch: packets are waiting
CLI_REDIS_TIMEOUT = 5.0  # one-shot commands (map sync)
WATCH_INTERVAL = 1.0  # map sync --watch
KEY_RETIRE_MIN_AGE = 6 * 3600.0  # keys retire: seconds since a key stopped being current
SLOW_PATH_SOURCE_RATE = 50.0  # slow-path datagrams per second per source address
SLOW_PATH_NET_RATE = 500.0  # ... per source /24 (many calls behind one NAT)
# A remote cluster's registry (control/fleet.py): read every REMOTE_INTERVAL s; unreadable for
# REMOTE_GRACE s, its transceivers leave the map; its calls never hold a pass for long.
REMOTE_INTERVAL = 2.0
REMOTE_GRACE = 300.0
REMOTE_REDIS_TIMEOUT = 1.0
