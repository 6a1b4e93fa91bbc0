"""The transceiver registry: its Redis layout and its JSON file form.

Redis (prefix default "edge"):
  hash    {prefix}:txr:{cluster}:{id}  cluster, id, tunnel "ip:port", capacity, active,
                                       draining "0"/"1", updated (unix float), version; EXPIREs
  set     {prefix}:txrs                "<cluster>:<id>" of every registered transceiver: readers
                                       find entries without a SCAN over the whole database
                                       (which also holds the relays' flow keys); members whose
                                       hash has expired are pruned by readers
  hash    {prefix}:keys                "<key id>" -> 32 hex chars (16-byte SipHash key)
  string  {prefix}:keys:current        the key id transceivers mint with
  hash    {prefix}:keys:history        "<key id>" -> unix time it stopped being current, and
                                       "added:<key id>" -> when it was added (relayctl keys)
  channel {prefix}:events              a JSON message on every change (readers poll anyway)
  hash    {prefix}:relay:{tunnel ip}  name, tunnel "ip:port", updated: a relay's tunnel source, so
                                       transceivers take tunnel datagrams only from relays; EXPIREs
                                       (RELAY_TTL, long: the data plane outlives its controller);
                                       keys "<id>=<fingerprint>,..." loaded in its map (a
                                       rotation promotes a key only once every relay has it)
  set     {prefix}:relays              the tunnel ip of every registered relay (pruned like txrs)
  string  {prefix}:flow:{client}:{cport}:{vip}:{vport}
                                       "cluster:id" of a flow learned by a relay, with a TTL:
                                       another relay takes the call over from it (§6)
  hash    {prefix}:cluster:{id}        the fleet (docs/fleet.md): id, region, lat, lon, registry
                                       (URL of the Redis its transceivers register in; "" = this
                                       one), draining "0"/"1", updated; written by operators
                                       (`relayctl clusters`), no TTL: configuration, like keys
  set     {prefix}:clusters            the id of every cluster record
  hash    {prefix}:reach               "<region>" -> "<unix time> <lat> <lon>": the last time a
                                       relay of that region read this registry (over the
                                       backbone, or locally), every REACH_REFRESH; the front
                                       places a call only on a cluster whose registry the
                                       client's region reached within REACH_FRESH (docs/fleet.md)
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from wire.addr import parse_addr_port
from wire.defaults import REDIS_PREFIX, REGISTRY_TTL, RELAY_TTL
from wire.redisconn import RedisConfigError, read_secret_file, redact
from wire.ufrag import KEY_LEN, MAX_KEY_ID


class RegistryError(ValueError):
    """A registry entry or file that cannot be used; the message says which and why."""


@dataclass(frozen=True)
class TransceiverRecord:
    cluster: int
    id: int
    tunnel: str  # "ip:port" of the transceiver's tunnel socket
    capacity: int = 0
    active: int = 0
    draining: bool = False
    updated: float = 0.0
    version: str = ""
    http: str = ""  # base URL of its signaling API as the fleet's front reaches it; "" = none

    def __post_init__(self) -> None:
        if self.http and not _is_http_url(self.http):
            raise RegistryError(f"transceiver http {self.http!r} is not an http(s)://HOST:PORT URL")
        if not 0 <= self.cluster <= 0xFFFF:
            raise RegistryError(f"transceiver cluster {self.cluster} is not 0..65535")
        if not 0 <= self.id <= 0xFFFFFFFF:
            raise RegistryError(f"transceiver id {self.id} is not 0..4294967295")
        try:
            parse_addr_port(self.tunnel, what="tunnel")
        except ValueError as exc:
            raise RegistryError(str(exc)) from None

    @property
    def key(self) -> tuple[int, int]:
        return (self.cluster, self.id)

    @property
    def tunnel_endpoint(self) -> tuple[str, int]:
        return parse_addr_port(self.tunnel, what="tunnel")


@dataclass
class Registry:
    transceivers: dict[tuple[int, int], TransceiverRecord] = field(default_factory=dict)
    keys: dict[int, bytes] = field(default_factory=dict)
    current_key: int | None = None
    problems: list[str] = field(default_factory=list)  # entries skipped, and why
    clusters: dict[int, ClusterRecord] = field(default_factory=dict)  # the fleet's records


def txr_key(prefix: str, cluster: int, txr_id: int) -> str:
    return f"{prefix}:txr:{cluster}:{txr_id}"


def index_key(prefix: str) -> str:
    return f"{prefix}:txrs"


# Prune an index member only if its hash is really gone: a transceiver re-registering between a
# reader's HGETALL and this call must not vanish from the index until its next refresh.
_PRUNE = (
    "if redis.call('EXISTS', KEYS[1]) == 0 then return redis.call('SREM', KEYS[2], ARGV[1]) end"
)


def _prune(r: Any, entries: list[tuple[str, str, str]]) -> None:
    """Drop (hash, index, member) index members whose hash expired. Best effort: a reader
    whose ACL user may not write the index (a transceiver reading relays) leaves it to others."""
    import redis

    pipe = r.pipeline(transaction=False)
    for name, index, member in entries:
        pipe.eval(_PRUNE, 2, name, index, member)
    try:
        pipe.execute()
    except redis.exceptions.NoPermissionError:
        pass


def _publish(r: Any, prefix: str, event: str, **data: Any) -> None:
    r.publish(f"{prefix}:events", json.dumps({"event": event, **data}))


def register(
    r: Any, rec: TransceiverRecord, ttl: float = REGISTRY_TTL, *, prefix: str = REDIS_PREFIX
) -> None:
    """Write (or refresh) a transceiver's hash with its TTL, then announce it."""
    name = txr_key(prefix, rec.cluster, rec.id)
    fields = {
        "cluster": rec.cluster,
        "id": rec.id,
        "tunnel": rec.tunnel,
        "capacity": rec.capacity,
        "active": rec.active,
        "draining": "1" if rec.draining else "0",
        "updated": repr(rec.updated or time.time()),
        "version": rec.version,
        "http": rec.http,
    }
    pipe = r.pipeline(transaction=True)
    pipe.hset(name, mapping=fields)
    pipe.pexpire(name, max(1, int(ttl * 1000)))
    pipe.sadd(index_key(prefix), f"{rec.cluster}:{rec.id}")
    pipe.execute()
    _publish(r, prefix, "register", cluster=rec.cluster, id=rec.id)


def deregister(r: Any, rec: TransceiverRecord, *, prefix: str = REDIS_PREFIX) -> None:
    pipe = r.pipeline(transaction=True)
    pipe.delete(txr_key(prefix, rec.cluster, rec.id))
    pipe.srem(index_key(prefix), f"{rec.cluster}:{rec.id}")
    pipe.execute()
    _publish(r, prefix, "deregister", cluster=rec.cluster, id=rec.id)


def set_key(r: Any, key_id: int, key: bytes, *, prefix: str = REDIS_PREFIX) -> None:
    _check_key(key_id, key)
    pipe = r.pipeline(transaction=True)
    pipe.hset(f"{prefix}:keys", str(key_id), key.hex())
    pipe.hset(history_key(prefix), f"added:{key_id}", repr(time.time()))
    pipe.execute()
    _publish(r, prefix, "key", key_id=key_id)


def add_key(r: Any, key_id: int, key: bytes, *, prefix: str = REDIS_PREFIX) -> bool:
    """Like set_key, but never over a key already in the slot (calls may still use it):
    False when the slot is taken."""
    _check_key(key_id, key)
    if not r.hsetnx(f"{prefix}:keys", str(key_id), key.hex()):
        return False
    r.hset(history_key(prefix), f"added:{key_id}", repr(time.time()))
    _publish(r, prefix, "key", key_id=key_id)
    return True


def remove_key(r: Any, key_id: int, *, prefix: str = REDIS_PREFIX) -> None:
    pipe = r.pipeline(transaction=True)
    pipe.hdel(f"{prefix}:keys", str(key_id))
    pipe.hdel(history_key(prefix), str(key_id), f"added:{key_id}")
    pipe.execute()
    _publish(r, prefix, "key", key_id=key_id)


def set_current_key(r: Any, key_id: int, *, prefix: str = REDIS_PREFIX) -> None:
    """Make `key_id` the key transceivers mint with; the one it replaces is stamped in
    `{prefix}:keys:history` (retiring it is safe only a call's lifetime later)."""
    if not 0 <= key_id <= MAX_KEY_ID:
        raise RegistryError(f"key id {key_id} is not 0..{MAX_KEY_ID}")
    old = r.get(f"{prefix}:keys:current")
    pipe = r.pipeline(transaction=True)
    if old is not None and _s(old) != str(key_id):
        pipe.hset(history_key(prefix), _s(old), repr(time.time()))
    pipe.set(f"{prefix}:keys:current", str(key_id))
    pipe.hdel(history_key(prefix), str(key_id))  # current now: not "stopped being current"
    pipe.execute()
    _publish(r, prefix, "current_key", key_id=key_id)


def history_key(prefix: str) -> str:
    return f"{prefix}:keys:history"


def read_key_file(path: str | Path) -> tuple[bytes, list[str]]:
    """A routing key from a file holding its 32 hex chars (one line); warnings when the file is
    readable by group or others. RegistryError, naming the file, for anything else."""
    try:
        text, warnings = read_secret_file(path, "key file")
    except RedisConfigError as exc:
        raise RegistryError(str(exc)) from None
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise RegistryError(f"key file {path}: not hex (expected 32 hex chars)") from None
    if len(key) != KEY_LEN:
        raise RegistryError(
            f"key file {path}: {len(key)} bytes, a key is {KEY_LEN} bytes (32 hex chars)"
        )
    return key, warnings


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _check_key(key_id: int, key: bytes) -> None:
    if not 0 <= key_id <= MAX_KEY_ID:
        raise RegistryError(f"key id {key_id} is not 0..{MAX_KEY_ID}")
    if len(key) != KEY_LEN:
        raise RegistryError(f"key {key_id} is {len(key)} bytes, expected {KEY_LEN}")


def parse_key(key_id: Any, hex_key: Any) -> tuple[int, bytes]:
    """("1", "<32 hex>") -> (1, 16 bytes); RegistryError when either is malformed."""
    try:
        kid = int(_s(key_id))
        key = bytes.fromhex(_s(hex_key))
    except ValueError:
        raise RegistryError(
            f"key {_s(key_id)!r}: expected an integer id and 32 hex chars"
        ) from None
    _check_key(kid, key)
    return kid, key


def record_from_fields(fields: dict[Any, Any]) -> TransceiverRecord:
    """A TransceiverRecord from a Redis hash or a JSON object (strings or numbers)."""
    f = {_s(k): v for k, v in fields.items()}
    try:
        return TransceiverRecord(
            cluster=int(_s(f["cluster"])),
            id=int(_s(f["id"])),
            tunnel=_s(f["tunnel"]),
            capacity=int(_s(f.get("capacity", 0))),
            active=int(_s(f.get("active", 0))),
            draining=_s(f.get("draining", "0")) in ("1", "True", "true"),
            updated=float(_s(f.get("updated", 0.0))),
            version=_s(f.get("version", "")),
            http=_s(f.get("http", "")),
        )
    except KeyError as exc:
        raise RegistryError(f"transceiver entry lacks field {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        raise RegistryError(f"transceiver entry {f!r}: {exc}") from None


def read_transceivers(
    r: Any, *, prefix: str = REDIS_PREFIX
) -> tuple[dict[tuple[int, int], TransceiverRecord], list[str]]:
    """(the registered transceivers, problems): malformed entries are skipped, expired index
    members pruned."""
    txrs: dict[tuple[int, int], TransceiverRecord] = {}
    problems: list[str] = []
    members = sorted(_s(m) for m in r.smembers(index_key(prefix)))
    names = [f"{prefix}:txr:{m}" for m in members]
    pipe = r.pipeline(transaction=False)
    for name in names:
        pipe.hgetall(name)
    gone = []
    for member, name, fields in zip(members, names, pipe.execute(), strict=True):
        if not fields:  # its TTL ran out: the transceiver is gone
            gone.append((member, name))
            continue
        try:
            rec = record_from_fields(fields)
        except RegistryError as exc:
            problems.append(f"{_s(name)}: {exc}")
            continue
        txrs[rec.key] = rec
    if gone:
        _prune(r, [(name, index_key(prefix), member) for member, name in gone])
    return txrs, problems


def read_registry(r: Any, *, prefix: str = REDIS_PREFIX) -> Registry:
    """Everything the relay needs from Redis; malformed entries are skipped into `problems`."""
    reg = Registry()
    reg.transceivers, reg.problems = read_transceivers(r, prefix=prefix)
    for kid, hex_key in r.hgetall(f"{prefix}:keys").items():
        try:
            k, key = parse_key(kid, hex_key)
        except RegistryError as exc:
            reg.problems.append(f"{prefix}:keys: {exc}")
            continue
        reg.keys[k] = key
    current = r.get(f"{prefix}:keys:current")
    if current is not None:
        try:
            reg.current_key = int(_s(current))
        except ValueError:
            reg.problems.append(f"{prefix}:keys:current: {_s(current)!r} is not a key id")
    _check_current(reg)
    reg.clusters, problems = read_clusters(r, prefix=prefix)
    reg.problems.extend(problems)
    return reg


def _check_current(reg: Registry) -> None:
    # Transceivers minting with a key the relays lack would have every new call dropped.
    if reg.current_key is not None and reg.current_key not in reg.keys:
        reg.problems.append(f"current key {reg.current_key} is not among the keys")


def registry_from_json(data: Any) -> Registry:
    """The file form: {"keys": {"1": hex}, "current_key": 1, "transceivers": [{...}]}."""
    if not isinstance(data, dict):
        raise RegistryError("registry file must hold a JSON object")
    reg = Registry()
    keys = data.get("keys", {})
    if not isinstance(keys, dict):
        raise RegistryError('"keys" must be an object of key id -> 32 hex chars')
    for kid, hex_key in keys.items():
        k, key = parse_key(kid, hex_key)
        reg.keys[k] = key
    current = data.get("current_key")
    if current is not None and (isinstance(current, bool) or not isinstance(current, int)):
        raise RegistryError('"current_key" must be an integer key id')
    reg.current_key = current
    txrs: Iterable[Any] = data.get("transceivers", [])
    if not isinstance(txrs, list):
        raise RegistryError('"transceivers" must be a list')
    for entry in txrs:
        if not isinstance(entry, dict):
            raise RegistryError(f"transceiver entry {entry!r} is not an object")
        rec = record_from_fields(entry)
        if rec.key in reg.transceivers:
            raise RegistryError(f"transceiver {rec.cluster}/{rec.id} is listed twice")
        reg.transceivers[rec.key] = rec
    _check_current(reg)
    return reg


def load_registry_file(path: str | Path) -> Registry:
    """Read the JSON registry file; RegistryError with the path in the message on any problem."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise RegistryError(f"{path}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise RegistryError(f"{path}: not JSON ({exc})") from None
    try:
        return registry_from_json(data)
    except RegistryError as exc:
        raise RegistryError(f"{path}: {exc}") from None


# --- relays: who may send a transceiver tunnel datagrams (docs/security.md) ----------------------


@dataclass(frozen=True)
class RelayRecord:
    name: str  # "<host>/<relay name>", for people
    tunnel: str  # "ip:port" the relay's tunnel datagrams come from
    updated: float = 0.0
    keys: tuple[tuple[int, str], ...] = ()  # (key id, fingerprint) loaded in its keys map

    def __post_init__(self) -> None:
        try:
            parse_addr_port(self.tunnel, what="relay tunnel")
        except ValueError as exc:
            raise RegistryError(str(exc)) from None

    @property
    def tunnel_endpoint(self) -> tuple[str, int]:
        return parse_addr_port(self.tunnel, what="relay tunnel")


def relay_key(prefix: str, tunnel_ip: str) -> str:
    return f"{prefix}:relay:{tunnel_ip}"


def relay_index_key(prefix: str) -> str:
    return f"{prefix}:relays"


def register_relay(
    r: Any, rec: RelayRecord, ttl: float = RELAY_TTL, *, prefix: str = REDIS_PREFIX
) -> None:
    """Write (or refresh) a relay's entry with its TTL; announce it only when it is new."""
    ip, _ = rec.tunnel_endpoint
    name = relay_key(prefix, ip)
    pipe = r.pipeline(transaction=True)
    pipe.exists(name)
    pipe.hset(
        name,
        mapping={
            "name": rec.name,
            "tunnel": rec.tunnel,
            "updated": repr(rec.updated or time.time()),
            "keys": ",".join(f"{kid}={fp}" for kid, fp in rec.keys),
        },
    )
    pipe.pexpire(name, max(1, int(ttl * 1000)))
    pipe.sadd(relay_index_key(prefix), ip)
    existed = pipe.execute()[0]
    if not existed:
        _publish(r, prefix, "relay", tunnel=rec.tunnel)


def deregister_relay(r: Any, tunnel_ip: str, *, prefix: str = REDIS_PREFIX) -> None:
    pipe = r.pipeline(transaction=True)
    pipe.delete(relay_key(prefix, tunnel_ip))
    pipe.srem(relay_index_key(prefix), tunnel_ip)
    pipe.execute()
    _publish(r, prefix, "relay", tunnel=tunnel_ip, gone=True)


def read_relays(r: Any, *, prefix: str = REDIS_PREFIX) -> tuple[dict[str, RelayRecord], list[str]]:
    """(tunnel ip -> RelayRecord, problems): every relay that may send tunnel datagrams."""
    members = sorted(_s(m) for m in r.smembers(relay_index_key(prefix)))
    pipe = r.pipeline(transaction=False)
    for ip in members:
        pipe.hgetall(relay_key(prefix, ip))
    relays: dict[str, RelayRecord] = {}
    problems: list[str] = []
    gone = []
    for ip, fields in zip(members, pipe.execute(), strict=True):
        if not fields:
            gone.append(ip)
            continue
        f = {_s(k): _s(v) for k, v in fields.items()}
        try:
            rec = RelayRecord(
                f.get("name", ""),
                f.get("tunnel", ""),
                float(f.get("updated", 0)),
                _parse_relay_keys(f.get("keys", "")),
            )
        except (RegistryError, ValueError) as exc:
            problems.append(f"{relay_key(prefix, ip)}: {exc}")
            continue
        if rec.tunnel_endpoint[0] != ip:
            problems.append(f"{relay_key(prefix, ip)}: tunnel {rec.tunnel} is not at {ip}")
            continue
        relays[ip] = rec
    if gone:
        _prune(r, [(relay_key(prefix, ip), relay_index_key(prefix), ip) for ip in gone])
    return relays, problems


def _parse_relay_keys(text: str) -> tuple[tuple[int, str], ...]:
    out = []
    for item in filter(None, text.split(",")):
        kid, sep, fp = item.partition("=")
        if not sep or not kid.isdigit():
            raise RegistryError(f"keys {text!r} is not ID=FINGERPRINT,...")
        out.append((int(kid), fp))
    return tuple(out)


# --- the flow cache (docs/wire-format.md §6) ------------------------------------------------


def flow_key(prefix: str, client: str, cport: int, vip: str, vport: int) -> str:
    return f"{prefix}:flow:{client}:{cport}:{vip}:{vport}"


# The same keys and values, built inside Redis from packed records, for a relay exporting up to
# a million flows: formatting them in Python costs more than Redis spends storing them.
# ARGV[1] prefix, ARGV[2] TTL in ms, ARGV[3] records of FLOW_RECORD bytes: client addr (4),
# VIP addr (4), client port (2, big endian), VIP port (2, big endian) - the relay's flow-map
# key as it is in memory - then cluster (u16, little endian) and transceiver id (u32, little
# endian). tests/wire/test_registry.py checks it against flow_key and flow_value. Redis >= 7
# checks every SET against the caller's ACL (~{prefix}:flow:*).
FLOW_RECORD = 18
SET_FLOWS = """
local prefix, ttl, blob = ARGV[1], ARGV[2], ARGV[3]
local n = 0
for i = 1, #blob - 17, 18 do
  local a, b, c, d, e, f, g, h, p1, p2, q1, q2, c1, c2, i1, i2, i3, i4 =
    string.byte(blob, i, i + 17)
  local key = string.format('%s:flow:%d.%d.%d.%d:%d:%d.%d.%d.%d:%d', prefix, a, b, c, d,
    p1 * 256 + p2, e, f, g, h, q1 * 256 + q2)
  local value = string.format('%d:%d', c1 + c2 * 256, i1 + i2 * 256 + i3 * 65536 + i4 * 16777216)
  redis.call('SET', key, value, 'PX', ttl)
  n = n + 1
end
return n
"""


def flow_record(raw_key: bytes, cluster: int, txr_id: int) -> bytes:
    """One SET_FLOWS record: the 12 flow-map key bytes, then the value packed."""
    return raw_key + cluster.to_bytes(2, "little") + txr_id.to_bytes(4, "little")


def flow_value(cluster: int, txr_id: int) -> str:
    return f"{cluster}:{txr_id}"


def parse_flow_value(value: Any) -> tuple[int, int]:
    """b"1:7" -> (1, 7); ValueError for anything else (a hand-edited or foreign key)."""
    text = _s(value)
    cluster_s, sep, id_s = text.partition(":")
    if not sep or not cluster_s.isdigit() or not id_s.isdigit():
        raise ValueError(f"flow value {text!r} is not CLUSTER:ID")
    cluster, txr_id = int(cluster_s), int(id_s)
    if cluster > 0xFFFF or txr_id > 0xFFFFFFFF:
        raise ValueError(f"flow value {text!r}: id out of range")
    return cluster, txr_id


# --- the fleet: clusters, where they are and where their registries live (docs/fleet.md) ------


@dataclass(frozen=True)
class ClusterRecord:
    id: int
    region: str  # a name for people and for the front's location header ("eu-west")
    lat: float  # where the cluster is, degrees: the front places a call at the nearest one
    lon: float
    registry: str = ""  # redis:// URL of the registry its transceivers register in; "" = this one
    draining: bool = False  # takes no new calls (the front skips it); calls in progress go on
    updated: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.id <= 0xFFFF:
            raise RegistryError(f"cluster id {self.id} is not 0..65535")
        if not _region_ok(self.region):
            raise RegistryError(
                f"cluster {self.id}: region {self.region!r} is not 1-32 of a-z, 0-9, '-', '_'"
            )
        if not (-90.0 <= self.lat <= 90.0 and -180.0 <= self.lon <= 180.0):
            raise RegistryError(f"cluster {self.id}: lat {self.lat}, lon {self.lon} off the globe")
        if self.registry and urlsplit(self.registry).scheme not in ("redis", "rediss", "unix"):
            raise RegistryError(
                f"cluster {self.id}: registry {redact(self.registry)!r} is not a redis://,"
                " rediss:// or unix:// URL"
            )


_REGION_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_")


def _region_ok(region: str) -> bool:
    return 0 < len(region) <= 32 and all(c in _REGION_CHARS for c in region)


def _is_http_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
        return parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port is not None
    except ValueError:
        return False


def cluster_key(prefix: str, cluster_id: int) -> str:
    return f"{prefix}:cluster:{cluster_id}"


def cluster_index_key(prefix: str) -> str:
    return f"{prefix}:clusters"


def put_cluster(r: Any, rec: ClusterRecord, *, prefix: str = REDIS_PREFIX) -> None:
    """Write (or replace) a cluster record, then announce it."""
    pipe = r.pipeline(transaction=True)
    pipe.delete(cluster_key(prefix, rec.id))
    pipe.hset(
        cluster_key(prefix, rec.id),
        mapping={
            "id": rec.id,
            "region": rec.region,
            "lat": repr(rec.lat),
            "lon": repr(rec.lon),
            "registry": rec.registry,
            "draining": "1" if rec.draining else "0",
            "updated": repr(rec.updated or time.time()),
        },
    )
    pipe.sadd(cluster_index_key(prefix), str(rec.id))
    pipe.execute()
    _publish(r, prefix, "cluster", id=rec.id)


def remove_cluster(r: Any, cluster_id: int, *, prefix: str = REDIS_PREFIX) -> bool:
    """Delete a cluster record; False if there was none."""
    pipe = r.pipeline(transaction=True)
    pipe.delete(cluster_key(prefix, cluster_id))
    pipe.srem(cluster_index_key(prefix), str(cluster_id))
    existed = pipe.execute()[0]
    _publish(r, prefix, "cluster", id=cluster_id, gone=True)
    return bool(existed)


def cluster_from_fields(fields: dict[Any, Any]) -> ClusterRecord:
    f = {_s(k): _s(v) for k, v in fields.items()}
    try:
        return ClusterRecord(
            id=int(f["id"]),
            region=f["region"],
            lat=float(f["lat"]),
            lon=float(f["lon"]),
            registry=f.get("registry", ""),
            draining=f.get("draining", "0") in ("1", "True", "true"),
            updated=float(f.get("updated", 0.0)),
        )
    except KeyError as exc:
        raise RegistryError(f"cluster entry lacks field {exc.args[0]!r}") from None
    except ValueError as exc:
        raise RegistryError(f"cluster entry: {exc}") from None


def read_clusters(
    r: Any, *, prefix: str = REDIS_PREFIX
) -> tuple[dict[int, ClusterRecord], list[str]]:
    """(cluster id -> ClusterRecord, problems): the fleet as this registry knows it."""
    members = sorted(_s(m) for m in r.smembers(cluster_index_key(prefix)))
    pipe = r.pipeline(transaction=False)
    for m in members:
        pipe.hgetall(f"{prefix}:cluster:{m}")
    clusters: dict[int, ClusterRecord] = {}
    problems: list[str] = []
    for m, fields in zip(members, pipe.execute(), strict=True):
        name = f"{prefix}:cluster:{m}"
        if not fields:
            problems.append(f"{name}: listed in {cluster_index_key(prefix)} but missing")
            continue
        try:
            rec = cluster_from_fields(fields)
        except RegistryError as exc:
            problems.append(f"{name}: {exc}")
            continue
        if str(rec.id) != m:
            problems.append(f"{name}: holds cluster {rec.id}")
            continue
        clusters[rec.id] = rec
    return clusters, problems


# --- reach: which regions' relays can get to this registry (docs/fleet.md, faults) -------------


@dataclass(frozen=True)
class ReachReport:
    region: str  # the relay's region ("ap-south")
    lat: float
    lon: float
    at: float  # unix time of the relay's last successful read of this registry

    def __post_init__(self) -> None:
        if not _region_ok(self.region):
            raise RegistryError(f"region {self.region!r} is not 1-32 of a-z, 0-9, '-', '_'")
        if not (-90 <= self.lat <= 90 and -180 <= self.lon <= 180):  # NaN fails both
            raise RegistryError(f"region {self.region}: location {self.lat},{self.lon}")
        if not math.isfinite(self.at):
            raise RegistryError(f"region {self.region}: time {self.at}")


def reach_key(prefix: str) -> str:
    return f"{prefix}:reach"


def report_reach(r: Any, rep: ReachReport, *, prefix: str = REDIS_PREFIX) -> None:
    """Say that a relay of rep.region has just read this registry (one HSET: regions overwrite
    their own field; the hash holds one field per region that ever reported)."""
    r.hset(reach_key(prefix), rep.region, f"{rep.at!r} {rep.lat!r} {rep.lon!r}")


def read_reach(r: Any, *, prefix: str = REDIS_PREFIX) -> tuple[dict[str, ReachReport], list[str]]:
    """(region -> its last ReachReport, problems) of this registry."""
    reports: dict[str, ReachReport] = {}
    problems: list[str] = []
    for k, v in r.hgetall(reach_key(prefix)).items():
        region, value = _s(k), _s(v)
        try:
            at, lat, lon = (float(x) for x in value.split())
            reports[region] = ReachReport(region, lat, lon, at)
        except (ValueError, RegistryError) as exc:
            problems.append(f"{reach_key(prefix)} {region!r}: {value!r}: {exc}")
    return reports, problems
