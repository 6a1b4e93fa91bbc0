"""`relayctl load` / `unload`: compile, pin, configure, attach; and the way back."""

from __future__ import annotations

import ctypes as ct
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from control.bpffs import ensure_bpffs, pin_dir
from control.errors import RelayctlError
from control.program import PROG_FUNC
from datapath import bpfsys, xdp
from datapath.maps import (
    MAX_TUNNEL_LINKS,
    SPECS,
    Config,
    Limits,
    PinnedMap,
    RelayMaps,
    Vip6Key,
    VipKey,
    bump_txr_gen,
    fd_info,
    init_txr_gen,
    obj_get,
    vip6_key,
    vip_key,
    write_config,
    write_limits,
    write_wall_clock,
)
from wire.ufrag import EPOCH_MOD, EPOCH_SECONDS

PROG_PIN = "prog"
MAX_VIPS = 64  # bpf/constants.h

# `relayctl load`'s limits (relay_config, docs/wire-format.md §4): (lowest, highest) accepted.
FLOW_IDLE_BOUNDS = (1, 3600)  # seconds a flow stays live after its last client packet
UFRAG_FLOWS_BOUNDS = (1, 1024)  # flows one ufrag may create per window
UFRAG_WINDOW_BOUNDS = (1, 3600)  # seconds
# A ufrag's lifetime, in seconds: at least one epoch, at most half the 4096-epoch cycle (so an
# expired ufrag is refused for at least as long as a fresh one is accepted).
UFRAG_LIFETIME_BOUNDS = (EPOCH_SECONDS, EPOCH_MOD // 2 * EPOCH_SECONDS)


@dataclass(frozen=True)
class LoadLimits:
    """What `relayctl load` writes into relay_config; None: the program's default."""

    flow_idle_s: int | None = None
    ufrag_lifetime_s: int | None = None
    ufrag_flows: int | None = None
    ufrag_window_s: int | None = None

    def checked(self) -> Limits:
        """The config fields, after the bounds; RelayctlError names the option that is out."""
        for option, value, (lo, hi) in (
            ("--flow-idle", self.flow_idle_s, FLOW_IDLE_BOUNDS),
            ("--ufrag-lifetime", self.ufrag_lifetime_s, UFRAG_LIFETIME_BOUNDS),
            ("--ufrag-flows", self.ufrag_flows, UFRAG_FLOWS_BOUNDS),
            ("--ufrag-window", self.ufrag_window_s, UFRAG_WINDOW_BOUNDS),
        ):
            if value is not None and not lo <= value <= hi:
                raise RelayctlError(f"{option} must be {lo}..{hi}, got {value}")
        lifetime = self.ufrag_lifetime_s
        return Limits(
            flow_idle_s=self.flow_idle_s or 0,
            # whole epochs, rounded up: a lifetime is never shorter than asked
            ufrag_max_age=-(-lifetime // EPOCH_SECONDS) if lifetime else 0,
            ufrag_flow_limit=self.ufrag_flows or 0,
            ufrag_window_s=self.ufrag_window_s or 0,
        )


@dataclass
class LoadResult:
    name: str
    ifaces: list[str]
    mode: str
    prog_id: int
    replaced: int  # id of the program this one replaced on the interface, 0 if none
    vips: list[tuple[str, int]]
    tunnel: tuple[str, int]
    also: list[str] = field(default_factory=list)  # other interfaces moved to the new program
    tunnel_ifaces: list[str] = field(default_factory=list)


@dataclass
class UnloadResult:
    detached: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)  # pin names; empty when pins were kept
    still_attached: list[str] = field(default_factory=list)  # pins kept: still runs there
    orphan: bool = False  # detached a relay program whose pins were gone


def _prog_id(fd: int) -> int:
    return int(fd_info(fd).get("prog_id", 0))


def pinned_prog_id(directory: Path) -> int:
    """The id of the pinned program, 0 when there is none."""
    path = directory / PROG_PIN
    if not path.exists():
        return 0
    fd = obj_get(path)
    try:
        return _prog_id(fd)
    finally:
        os.close(fd)


def _pin(fd: int, path: Path) -> None:
    path.unlink(missing_ok=True)
    try:
        bpfsys.obj_pin(fd, path)
    except bpfsys.BpfError as exc:
        raise RelayctlError(f"cannot pin the program at {path}: {exc.strerror}") from None


def configure(
    maps: RelayMaps,
    vips: list[tuple[str, int]],
    tunnel: tuple[str, int],
    tunnel_ifindexes: list[int] | None = None,
    limits: Limits | None = None,
) -> int:
    """Write config[0] (flags 0, the tunnel links, the limits, the wall clock) and make `vips`
    exactly the given set (index = position). The flows of a VIP that is removed are deleted:
    the return path trusts that every flow's VIP is ours (docs/wire-format.md §3). Returns how
    many flows were deleted."""
    write_config(maps, Config(tunnel[0], tunnel[1], 0))
    write_limits(maps, limits or Limits(), tunnel_ifindexes or [])
    write_wall_clock(maps)
    init_txr_gen(maps)
    forgotten = 0
    for family in (4, 6):
        # each family's VIPs in its own map (bpf/maps.h); the index is the --vip position
        mine = [(i, a, p) for i, (a, p) in enumerate(vips) if (":" in a) == (family == 6)]
        forgotten += _replace_vips(maps, family, mine)
    return forgotten


def _replace_vips(maps: RelayMaps, family: int, vips: list[tuple[int, str, int]]) -> int:
    """Make `vips` or `vips6` exactly these (index, addr, port); IPv6 also gets one address
    entry (port 0) per address. Deletes the flows of the VIPs removed; returns how many."""
    if family == 4:
        vmap, keyf = maps["vips"], vip_key
    else:
        vmap, keyf = maps["vips6"], vip6_key
    wanted = {bytes(k): (k, i) for i, k in ((i, keyf(a, p)) for i, a, p in vips)}
    if family == 6:  # the address entries: first index of each address
        for i, a, _ in reversed(vips):
            k = vip6_key(a, 0)
            wanted[bytes(k)] = (k, i)
    removed = set()
    for key in list(vmap.keys()):
        if bytes(key) not in wanted:
            vmap.delete(key)
            removed.add(bytes(key))
    for key, index in wanted.values():
        vmap.update(key, ct.c_uint32(index))
    return _forget_flows(maps, family, removed) if removed else 0


def _forget_flows(maps: RelayMaps, family: int, vips: set[bytes]) -> int:
    """Delete the flows to these VIPs (their key bytes; one walk of the family's flow map)."""
    flows = maps["flows" if family == 4 else "flows6"]
    keyf = VipKey if family == 4 else Vip6Key
    doomed = [k for k in flows.keys() if bytes(keyf(k.vip_addr, k.vip_port, 0)) in vips]
    deleted = sum(1 for k in doomed if flows.delete(k))
    if deleted:  # after the deletes: no flow copy in the running program outlives them
        bump_txr_gen(maps)
    return deleted


def load(
    name: str,
    ifaces: list[str],
    vips: list[tuple[str, int]],
    tunnel: tuple[str, int],
    mode: str,
    tunnel_ifaces: list[str] | None = None,
    limits: LoadLimits | None = None,
) -> LoadResult:
    """Attach to every interface in `ifaces`: an edge host may take client traffic on one NIC and
    tunnel traffic on another, and the program must see both directions.

    Tunnel datagrams are accepted only on `tunnel_ifaces` (each one of `ifaces`; default all of
    them: with one NIC there is nothing to tell apart)."""
    from control.program import ProgramError, compile_relay, load_xdp_fn

    if not vips:
        raise RelayctlError("give at least one --vip ADDR:PORT or [IPV6]:PORT")
    vips = list(dict.fromkeys(vips))
    if len(vips) > MAX_VIPS:
        raise RelayctlError(f"at most {MAX_VIPS} VIPs")
    if not ifaces:
        raise RelayctlError("give at least one --iface")
    ifaces = list(dict.fromkeys(ifaces))
    for iface in ifaces:  # fails early on a missing interface
        xdp.ifindex(iface)
    tunnel_ifaces = list(dict.fromkeys(tunnel_ifaces or ifaces))
    strays = [i for i in tunnel_ifaces if i not in ifaces]
    if strays:
        raise RelayctlError(f"--tunnel-iface {', '.join(strays)}: not one of the --iface options")
    if len(tunnel_ifaces) > MAX_TUNNEL_LINKS:
        raise RelayctlError(f"at most {MAX_TUNNEL_LINKS} tunnel interfaces")
    config_limits = (limits or LoadLimits()).checked()
    ensure_bpffs()
    directory = pin_dir(name)
    fresh = not directory.exists()
    if not fresh:
        _check_pinned_layout(directory)
    try:
        bpf = compile_relay(str(directory))
        fn = load_xdp_fn(bpf)
    except ProgramError as exc:
        _forget(directory, fresh)
        raise RelayctlError(str(exc)) from None
    try:
        # Configure through the pinned maps before attaching, so the new program never runs
        # unconfigured; a reload sees the same maps, so flows and transceivers stay.
        with RelayMaps(directory) as maps:
            configure(maps, vips, tunnel, [xdp.ifindex(i) for i in tunnel_ifaces], config_limits)
        before = xdp.attached(ifaces[0])
        # Other interfaces running the previous build of this relay get the new one too.
        old_id = pinned_prog_id(directory)
        others = [(d, m) for d, m in attachments(old_id) if d not in ifaces] if old_id else []
        for iface in ifaces:
            xdp.attach(iface, fn.fd, mode)
        for dev, dev_mode in others:
            xdp.attach(dev, fn.fd, dev_mode)
        _pin(fn.fd, directory / PROG_PIN)
        prog_id = _prog_id(fn.fd)
    except BaseException:
        _forget(directory, fresh)  # a failed first load leaves no pins behind
        raise
    finally:
        bpf.cleanup()  # drops bcc's fds; the attachment and the pins keep program and maps alive
    return LoadResult(
        name=name,
        ifaces=ifaces,
        mode=mode,
        prog_id=prog_id,
        replaced=before.native or before.generic,
        vips=vips,
        tunnel=tunnel,
        also=[d for d, _ in others],
        tunnel_ifaces=tunnel_ifaces,
    )


def _check_pinned_layout(directory: Path) -> None:
    """Refuse early, with the fix in the message, when pinned maps have another layout (bcc
    would only fail to compile)."""
    for name, spec in SPECS.items():
        if (directory / name).exists():
            PinnedMap(directory / name, spec).close()


def _forget(directory: Path, fresh: bool) -> None:
    if fresh:
        shutil.rmtree(directory, ignore_errors=True)


def attachments(prog_id: int) -> list[tuple[str, str]]:
    """(interface, mode) pairs in this netns where program `prog_id` is attached."""
    found = []
    for _, iface in xdp.interfaces():
        mode = xdp.attached(iface).mode_of(prog_id)
        if mode:
            found.append((iface, mode))
    return found


def orphans() -> list[tuple[str, str, int]]:
    """(interface, mode, program id) of relay programs attached in this netns: with their pins
    gone (a load in a private mount namespace, a deleted pin directory) only `unload --iface`
    can detach them."""
    found = []
    for _, iface in xdp.interfaces():
        now = xdp.attached(iface)
        for mode in now.modes():
            prog_id = getattr(now, mode)
            if _is_relay(prog_id):
                found.append((iface, mode, prog_id))
    return found


def _is_relay(prog_id: int) -> bool:
    try:
        return bpfsys.prog_name(prog_id) == PROG_FUNC  # bcc names a program after its function
    except bpfsys.BpfError:
        return False


def unload(name: str, iface: str | None = None) -> UnloadResult:
    """Detach the pinned program (from `iface`, or wherever it is attached in this network
    namespace) and remove the pins once it runs nowhere here.

    With `iface`, a relay program found attached there is detached even when no pins name it
    (its maps were lost): the way out of the private-bpffs trap (control/bpffs.py)."""
    directory = pin_dir(name)
    prog_id = pinned_prog_id(directory) if directory.is_dir() else 0
    if iface is not None:
        return _unload_iface(name, directory, prog_id, iface)
    if not directory.is_dir():
        hint = ", ".join(f"{i} (program {p})" for i, _, p in orphans())
        extra = (
            f"; relay programs without pins run on {hint}: `relayctl unload --iface`"
            if hint
            else ""
        )
        raise RelayctlError(f"nothing loaded under {directory} (check --name){extra}")
    result = UnloadResult()
    for dev, mode in attachments(prog_id) if prog_id else []:
        xdp.detach(dev, mode)
        result.detached.append(dev)
    result.removed = _remove_pins(directory)
    return result


def _unload_iface(name: str, directory: Path, prog_id: int, iface: str) -> UnloadResult:
    result = UnloadResult()
    now = xdp.attached(iface)
    mode = now.mode_of(prog_id)
    if mode is None:
        # Not our pinned program: an orphaned relay program may be there.
        found = [(m, getattr(now, m)) for m in now.modes()]
        relay = [(m, p) for m, p in found if _is_relay(p)]
        if not relay:
            what = ", ".join(f"program {p} ({m})" for m, p in found) or "no XDP program"
            raise RelayctlError(
                f"relay {name!r} is not attached to {iface} ({what}); nothing detached"
            )
        for m, _ in relay:
            xdp.detach(iface, m)
        result.detached.append(iface)
        result.orphan = True
        return result
    xdp.detach(iface, mode)
    result.detached.append(iface)
    result.still_attached = [d for d, _ in attachments(prog_id)]
    if not result.still_attached and directory.is_dir():
        result.removed = _remove_pins(directory)
    return result


def _remove_pins(directory: Path) -> list[str]:
    removed = sorted(p.name for p in directory.iterdir())
    shutil.rmtree(directory)
    return removed
