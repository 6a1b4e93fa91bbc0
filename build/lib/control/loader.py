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
    SPECS,
    Config,
    PinnedMap,
    RelayMaps,
    fd_info,
    obj_get,
    vip_key,
    write_config,
)

PROG_PIN = "prog"
MAX_VIPS = 64  # bpf/constants.h


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


def configure(maps: RelayMaps, vips: list[tuple[str, int]], tunnel: tuple[str, int]) -> None:
    """Write config[0] (flags 0) and make `vips` exactly the given set (index = position)."""
    write_config(maps, Config(tunnel[0], tunnel[1], 0))
    wanted = {(k.addr, k.port): (k, i) for i, k in enumerate(vip_key(a, p) for a, p in vips)}
    vmap = maps["vips"]
    for key in list(vmap.keys()):
        if (key.addr, key.port) not in wanted:
            vmap.delete(key)
    for key, index in wanted.values():
        vmap.update(key, ct.c_uint32(index))


def load(
    name: str, ifaces: list[str], vips: list[tuple[str, int]], tunnel: tuple[str, int], mode: str
) -> LoadResult:
    """Attach to every interface in `ifaces`: an edge host may take client traffic on one NIC and
    tunnel traffic on another, and the program must see both directions."""
    from control.program import ProgramError, compile_relay, load_xdp_fn

    if not vips:
        raise RelayctlError("give at least one --vip ADDR:PORT")
    vips = list(dict.fromkeys(vips))
    if len(vips) > MAX_VIPS:
        raise RelayctlError(f"at most {MAX_VIPS} VIPs")
    if not ifaces:
        raise RelayctlError("give at least one --iface")
    ifaces = list(dict.fromkeys(ifaces))
    for iface in ifaces:  # fails early on a missing interface
        xdp.ifindex(iface)
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
            configure(maps, vips, tunnel)
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
