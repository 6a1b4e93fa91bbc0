"""ctypes mirrors of the relay's map structs (docs/wire-format.md §4, bpf/structs.h) and its
pinned maps, read and written through the bpf() syscall (datapath/bpfsys.py).

Address and port fields hold network-order bytes, so they are stored as native integers whose
memory is big-endian (`be32`/`be16` convert); ids are host order.
"""

from __future__ import annotations

import ctypes as ct
import ipaddress
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datapath import DatapathError, bpfsys

# enum bpf_map_type values used by the relay.
MAP_HASH, MAP_ARRAY, MAP_PERCPU_ARRAY, MAP_LRU_HASH = 1, 2, 6, 9


MAX_TUNNEL_LINKS = 4  # bpf/constants.h


class RelayConfig(ct.Structure):
    _fields_ = (
        ("tunnel_addr", ct.c_uint32),
        ("tunnel_port", ct.c_uint16),
        ("flags", ct.c_uint16),
        ("wall_offset_ns", ct.c_uint64),
        ("tunnel_ifindex", ct.c_uint32 * MAX_TUNNEL_LINKS),
        ("flow_idle_s", ct.c_uint16),
        ("ufrag_max_age", ct.c_uint16),
        ("ufrag_flow_limit", ct.c_uint16),
        ("ufrag_window_s", ct.c_uint16),
    )


class VipKey(ct.Structure):
    _fields_ = (("addr", ct.c_uint32), ("port", ct.c_uint16), ("pad", ct.c_uint16))


class Vip6Key(ct.Structure):
    # port 0: the VIP6 address alone (bpf/structs.h)
    _fields_ = (("addr", ct.c_uint8 * 16), ("port", ct.c_uint16), ("pad", ct.c_uint16))


class RoutingKey(ct.Structure):
    _fields_ = (
        ("k0", ct.c_uint64),
        ("k1", ct.c_uint64),
        ("live", ct.c_uint32),
        ("pad", ct.c_uint32),
    )


class TxrKey(ct.Structure):
    _fields_ = (("cluster", ct.c_uint16), ("pad", ct.c_uint16), ("id", ct.c_uint32))


class TxrVal(ct.Structure):
    _fields_ = (("addr", ct.c_uint32), ("port", ct.c_uint16), ("flags", ct.c_uint16))


class FlowKey(ct.Structure):
    _fields_ = (
        ("client_addr", ct.c_uint32),
        ("vip_addr", ct.c_uint32),
        ("client_port", ct.c_uint16),
        ("vip_port", ct.c_uint16),
    )


class Flow6Key(ct.Structure):
    _fields_ = (
        ("client_addr", ct.c_uint8 * 16),
        ("vip_addr", ct.c_uint8 * 16),
        ("client_port", ct.c_uint16),
        ("vip_port", ct.c_uint16),
    )


class FlowVal(ct.Structure):
    _fields_ = (
        ("cluster", ct.c_uint16),
        ("seen", ct.c_uint16),  # coarse time of the last client packet; 0 from the slow path
        ("id", ct.c_uint32),
        ("created_ns", ct.c_uint64),
        # addr | port << 32 | txr_gen << 48 as the program last looked them up; 0 from the
        # slow path (bpf/structs.h)
        ("txr_cache", ct.c_uint64),
    )


class Counter(ct.Structure):
    _fields_ = (("packets", ct.c_uint64), ("bytes", ct.c_uint64))


@dataclass(frozen=True)
class MapSpec:
    key: type[ct.Structure] | type[ct.c_uint32]
    value: type[ct.Structure] | type[ct.c_uint32]
    map_type: int
    max_entries: int


# max_entries is checked only where an index means something (the config slot, the 16 key
# ids); the hash maps' sizes are limits a build may override (bpf/constants.h), and counters
# has spare slots (COUNTER_SLOTS). 0: any size.
SPECS: dict[str, MapSpec] = {
    "config": MapSpec(ct.c_uint32, RelayConfig, MAP_ARRAY, 1),
    "vips": MapSpec(VipKey, ct.c_uint32, MAP_HASH, 0),
    "keys": MapSpec(ct.c_uint32, RoutingKey, MAP_ARRAY, 16),
    "transceivers": MapSpec(TxrKey, TxrVal, MAP_HASH, 0),
    "txr_addrs": MapSpec(VipKey, ct.c_uint32, MAP_HASH, 0),
    "flows": MapSpec(FlowKey, FlowVal, MAP_LRU_HASH, 0),
    "counters": MapSpec(ct.c_uint32, Counter, MAP_PERCPU_ARRAY, 0),
    "txr_gen": MapSpec(ct.c_uint32, ct.c_uint32, MAP_ARRAY, 1),
    "clusters": MapSpec(ct.c_uint32, ct.c_uint32, MAP_HASH, 0),
    "vips6": MapSpec(Vip6Key, ct.c_uint32, MAP_HASH, 0),
    "flows6": MapSpec(Flow6Key, FlowVal, MAP_LRU_HASH, 0),
}


def be32(addr: str) -> int:
    """The u32 whose in-memory bytes are `addr` in network order (for __be32 fields)."""
    return int.from_bytes(ipaddress.IPv4Address(addr).packed, sys.byteorder)


def from_be32(value: int) -> str:
    return str(ipaddress.IPv4Address(value.to_bytes(4, sys.byteorder)))


def be16(port: int) -> int:
    return int.from_bytes(port.to_bytes(2, "big"), sys.byteorder)


def from_be16(value: int) -> int:
    return int.from_bytes(value.to_bytes(2, sys.byteorder), "big")


def vip_key(addr: str, port: int) -> VipKey:
    return VipKey(be32(addr), be16(port), 0)


def in6(addr: str) -> ct.Array:
    """An IPv6 address as the 16 bytes of an `addr[16]` field (network order)."""
    return (ct.c_uint8 * 16)(*ipaddress.IPv6Address(addr).packed)


def from_in6(value: ct.Array) -> str:
    return str(ipaddress.IPv6Address(bytes(value)))


def vip6_key(addr: str, port: int) -> Vip6Key:
    """A vips6 key; port 0 is the address entry (bpf/structs.h)."""
    return Vip6Key(in6(addr), be16(port), 0)


class MapError(DatapathError):
    """A pinned map that is missing or of another layout; the message says what to do."""


def obj_get(path: Path) -> int:
    """An fd for a pinned BPF object; MapError when nothing is pinned there."""
    try:
        return bpfsys.obj_get(path)
    except bpfsys.BpfError as exc:
        raise MapError(str(exc)) from None


fd_info = bpfsys.fd_info


class PinnedMap:
    """A map pinned on bpffs, checked against its spec when opened; per-CPU aware."""

    def __init__(self, path: Path, spec: MapSpec) -> None:
        self.path = path
        self.spec = spec
        self.fd = obj_get(path)
        try:
            info = fd_info(self.fd)
            self._check(info)
            self.max_entries = int(info["max_entries"])
        except BaseException:
            os.close(self.fd)
            raise
        self.percpu = spec.map_type == MAP_PERCPU_ARRAY
        self.ncpus = bpfsys.possible_cpus() if self.percpu else 1

    def _check(self, info: dict[str, str]) -> None:
        want = {
            "map_type": self.spec.map_type,
            "key_size": ct.sizeof(self.spec.key),
            "value_size": ct.sizeof(self.spec.value),
        }
        if self.spec.max_entries:
            want["max_entries"] = self.spec.max_entries
        for field, value in want.items():
            if int(info.get(field, -1)) != value:
                raise MapError(
                    f"{self.path}: {field} is {info.get(field)}, relayctl expects {value}: "
                    "pinned by another version of the relay; `relayctl unload` (drops its "
                    "flows) and load again"
                )

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> PinnedMap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _value_buf(self) -> Any:
        return (self.spec.value * self.ncpus)() if self.percpu else self.spec.value()

    def lookup(self, key: Any) -> Any:
        """The value (a list of per-CPU values for per-CPU maps), or None when absent."""
        buf = self._value_buf()
        if not bpfsys.map_lookup(self.fd, key, buf):
            return None
        return list(buf) if self.percpu else buf

    def update(self, key: Any, value: Any, flags: int = bpfsys.ANY) -> None:
        try:
            bpfsys.map_update(self.fd, key, value, flags)
        except bpfsys.BpfError as exc:
            raise MapError(f"cannot update {self.path.name}: {exc.strerror}") from None

    def delete(self, key: Any) -> bool:
        return bpfsys.map_delete(self.fd, key)

    def keys(self) -> Iterator[Any]:
        """Every key (a snapshot per step: entries added or removed meanwhile may be missed).

        The kernel restarts the walk when the previous key was deleted meanwhile (LRU
        eviction on a busy relay), so the walk stops after max_entries steps: it ends.
        """
        prev = None
        for _ in range(self.max_entries):
            nxt = self.spec.key()
            if not bpfsys.map_next_key(self.fd, prev, nxt):
                return
            yield nxt
            prev = nxt

    def items(self) -> Iterator[tuple[Any, Any]]:
        for key in self.keys():
            value = self.lookup(key)
            if value is not None:
                yield key, value


class RelayMaps:
    """All the relay's pinned maps under one pin directory."""

    def __init__(self, directory: Path) -> None:
        if not directory.is_dir():
            raise MapError(
                f"nothing loaded under {directory}: run `relayctl load` first (or check --name)"
            )
        self.dir = directory
        self._open: dict[str, PinnedMap] = {}

    def __getitem__(self, name: str) -> PinnedMap:
        if name not in self._open:
            path = self.dir / name
            if not path.exists():
                raise MapError(f"{path} is missing: load the relay again with `relayctl load`")
            self._open[name] = PinnedMap(path, SPECS[name])
        return self._open[name]

    def close(self) -> None:
        for m in self._open.values():
            m.close()
        self._open.clear()

    def __enter__(self) -> RelayMaps:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- the config and vips maps, as plain values -----------------------------------------------

CONFIG_F_SLOW_PATH = 0x1  # bpf/constants.h: a controller listens on the VIPs
# bpf/constants.h: the clusters map's values, how this relay serves a cluster
CLUSTER_LOCAL = 1
CLUSTER_REMOTE = 2


@dataclass(frozen=True)
class Config:
    tunnel_addr: str
    tunnel_port: int
    flags: int


def read_config(maps: RelayMaps) -> Config:
    cfg = maps["config"].lookup(ct.c_uint32(0))
    return Config(from_be32(cfg.tunnel_addr), from_be16(cfg.tunnel_port), cfg.flags)


def _update_config(maps: RelayMaps, **fields: Any) -> None:
    """Read-modify-write of config[0]: each writer changes only its own fields."""
    table = maps["config"]
    value = table.lookup(ct.c_uint32(0)) or RelayConfig()
    for name, field_value in fields.items():
        setattr(value, name, field_value)
    table.update(ct.c_uint32(0), value)


def write_config(maps: RelayMaps, config: Config) -> None:
    """The tunnel endpoint and flags; the limits, links and clock stay as they are."""
    _update_config(
        maps,
        tunnel_addr=be32(config.tunnel_addr),
        tunnel_port=be16(config.tunnel_port),
        flags=config.flags,
    )


@dataclass(frozen=True)
class Limits:
    """relay_config's limits (bpf/constants.h); 0 means the program's compiled-in default."""

    flow_idle_s: int = 0
    ufrag_max_age: int = 0  # epochs of wire.ufrag.EPOCH_SECONDS
    ufrag_flow_limit: int = 0
    ufrag_window_s: int = 0


def read_limits(maps: RelayMaps) -> tuple[Limits, list[int]]:
    """The limits and the tunnel links' ifindexes."""
    cfg = maps["config"].lookup(ct.c_uint32(0))
    limits = Limits(cfg.flow_idle_s, cfg.ufrag_max_age, cfg.ufrag_flow_limit, cfg.ufrag_window_s)
    return limits, [i for i in cfg.tunnel_ifindex if i]


def write_limits(maps: RelayMaps, limits: Limits, tunnel_ifindexes: list[int]) -> None:
    if len(tunnel_ifindexes) > MAX_TUNNEL_LINKS:
        raise MapError(f"at most {MAX_TUNNEL_LINKS} tunnel links")
    links = (ct.c_uint32 * MAX_TUNNEL_LINKS)(*tunnel_ifindexes)
    _update_config(
        maps,
        tunnel_ifindex=links,
        flow_idle_s=limits.flow_idle_s,
        ufrag_max_age=limits.ufrag_max_age,
        ufrag_flow_limit=limits.ufrag_flow_limit,
        ufrag_window_s=limits.ufrag_window_s,
    )


# --- txr_gen: the transceivers map's generation ----------------------------------------------

TXR_GEN_MAX = 0xFFFF  # bpf/constants.h: 16 bits of flow_val.txr_cache; 0 means unset


def read_txr_gen(maps: RelayMaps) -> int:
    value = maps["txr_gen"].lookup(ct.c_uint32(0))
    return 0 if value is None else int(value.value)


def next_txr_gen(gen: int) -> int:
    """The value after gen, in 1..TXR_GEN_MAX (0 is never used: it disables the cache)."""
    return gen % TXR_GEN_MAX + 1


def bump_txr_gen(maps: RelayMaps) -> int:
    """Give txr_gen its next value: call it right after removing or changing a transceiver, so
    that no flow uses an endpoint it cached before (bpf/relay.c flow_transceiver), and right
    after deleting or changing flows, so that no CPU uses a copy of them in the program's flow
    cache (bpf/flowcopy.h). Returns it."""
    gen = next_txr_gen(read_txr_gen(maps))
    maps["txr_gen"].update(ct.c_uint32(0), ct.c_uint32(gen))
    return gen


def init_txr_gen(maps: RelayMaps) -> None:
    """Start the generation at 1 when unset (a first load); a reload keeps it."""
    if not read_txr_gen(maps):
        maps["txr_gen"].update(ct.c_uint32(0), ct.c_uint32(1))


CLOCK_MONOTONIC_COARSE = 6  # linux/time.h: bpf_ktime_get_coarse_ns's clock (time does not name it)
FLOW_SEEN_SHIFT = 30  # bpf/constants.h: flow_val.seen counts coarse ns >> 30 (~1.07 s), mod 2^16


def coarse_ns() -> int:
    """The coarse clock now, as bpf_ktime_get_coarse_ns reads it."""
    return time.clock_gettime_ns(CLOCK_MONOTONIC_COARSE)


def seen_of(ns: int) -> int:
    """flow_val.seen for a coarse clock reading (seen_of() in bpf/clock.h)."""
    return (ns >> FLOW_SEEN_SHIFT) & 0xFFFF


def seen_now() -> int:
    """flow_val.seen as the program would write it now."""
    return seen_of(coarse_ns())


def wall_offset_ns() -> int:
    """Unix time minus CLOCK_MONOTONIC (the program's bpf_ktime_get_ns clock), in ns."""
    return time.time_ns() - time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def write_wall_clock(maps: RelayMaps) -> int:
    """Give the program the wall clock (for the ufrag epoch, docs/wire-format.md §1); returns
    the offset written. relayctl load writes it, relayctl run and map sync refresh it, so a
    stepped wall clock is followed."""
    offset = wall_offset_ns()
    _update_config(maps, wall_offset_ns=offset)
    return offset


def read_vips(maps: RelayMaps) -> list[tuple[str, int]]:
    """The VIP:ports, in the order `relayctl load` gave them (their index)."""
    found = sorted((v.value, from_be32(k.addr), from_be16(k.port)) for k, v in maps["vips"].items())
    return [(a, p) for _, a, p in found]
