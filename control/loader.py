"""`relayctl load` / `unload`: compile, pin, configure, attach; and the way back."""

from __future__ import annotations

import ctypes as ct
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from control import xdp
from control.bpffs import ensure_bpffs, pin_dir
from control.errors import RelayctlError
from control.maps import RelayConfig, RelayMaps, be16, be32, fd_info, obj_get, vip_key

PROG_PIN = "prog"


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
    removed: list[str] = field(default_factory=list)


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
    from bcc.libbcc import lib

    lib.bpf_obj_pin.argtypes = [ct.c_int, ct.c_char_p]
    lib.bpf_obj_pin.restype = ct.c_int
    path.unlink(missing_ok=True)
    if lib.bpf_obj_pin(fd, str(path).encode()) != 0:
        raise RelayctlError(f"cannot pin the program at {path}: {os.strerror(ct.get_errno())}")


def configure(maps: RelayMaps, vips: list[tuple[str, int]], tunnel: tuple[str, int]) -> None:
    """Write config[0] and make `vips` exactly the given set (index = position)."""
    maps["config"].update(ct.c_uint32(0), RelayConfig(be32(tunnel[0]), be16(tunnel[1]), 0))
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
    if len(set(vips)) > 64:
        raise RelayctlError("at most 64 VIPs")
    if not ifaces:
        raise RelayctlError("give at least one --iface")
    ifaces = list(dict.fromkeys(ifaces))
    indexes = [xdp.ifindex(iface) for iface in ifaces]  # fails early on a missing interface
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
            configure(maps, list(dict.fromkeys(vips)), tunnel)
        before = xdp.attached(indexes[0])
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
        vips=list(dict.fromkeys(vips)),
        tunnel=tunnel,
        also=[d for d, _ in others],
    )


def _check_pinned_layout(directory: Path) -> None:
    """Refuse early, with the fix in the message, when pinned maps have another layout (bcc
    would only fail to compile)."""
    from control.maps import SPECS, PinnedMap

    for name, spec in SPECS.items():
        if (directory / name).exists():
            PinnedMap(directory / name, spec).close()


def _forget(directory: Path, fresh: bool) -> None:
    if fresh:
        shutil.rmtree(directory, ignore_errors=True)


def attachments(prog_id: int) -> list[tuple[str, str]]:
    """(interface, mode) pairs in this netns where program `prog_id` is attached."""
    found = []
    for index, iface in xdp.interfaces():
        mode = xdp.attached(index).mode_of(prog_id)
        if mode:
            found.append((iface, mode))
    return found


def unload(name: str, iface: str | None = None) -> UnloadResult:
    """Detach the pinned program (from `iface`, or wherever it is attached) and remove the pins."""
    directory = pin_dir(name)
    if not directory.is_dir():
        raise RelayctlError(f"nothing loaded under {directory} (check --name)")
    prog_id = pinned_prog_id(directory)
    result = UnloadResult()
    targets = attachments(prog_id) if prog_id else []
    if iface is not None:
        index = xdp.ifindex(iface)
        mode = xdp.attached(index).mode_of(prog_id)
        if mode is None:
            raise RelayctlError(f"relay {name!r} is not attached to {iface}; nothing detached")
        targets = [(iface, mode)]
    for dev, mode in targets:
        xdp.detach(dev, mode)
        result.detached.append(dev)
    result.removed = sorted(p.name for p in directory.iterdir())
    shutil.rmtree(directory)
    return result
