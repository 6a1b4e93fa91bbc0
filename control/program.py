"""Compile the relay's XDP program (bpf/relay.c) with bcc and load its entry point.

bcc rewrites map method calls (`flows.lookup(&k)`) only in the source text it is handed, not in
files reached through `#include`. So the local headers of bpf/ are inlined here, each under a
`#line` marker: the headers stay small and separate, and compiler or verifier messages still
name the real file and line.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from datapath.maps import SPECS

BPF_DIR: Path = Path(
    os.environ.get("EDGE_BPF_DIR") or Path(__file__).resolve().parent.parent / "bpf"
)
PROG_FUNC = "xdp_relay"
MAIN_SOURCE = "relay.c"
MAP_NAMES = tuple(SPECS)  # every pinned map

_LOCAL_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$')
# Characters allowed in a pin directory: it is pasted into a C string literal.
_SAFE_PATH = re.compile(r"^/[A-Za-z0-9._/-]+$")


class ProgramError(Exception):
    """The relay program could not be compiled or loaded; the message says why."""


def relay_source(bpf_dir: Path | None = None) -> str:
    """relay.c with its local headers inlined once each (bcc needs one translation unit)."""
    root = bpf_dir or BPF_DIR
    seen: set[Path] = set()
    return _expand(root / MAIN_SOURCE, root, seen)


def _expand(path: Path, root: Path, seen: set[Path]) -> str:
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ProgramError(f"cannot read {path}: {exc.strerror}") from exc
    out = [f'#line 1 "{path}"']
    for number, line in enumerate(lines, start=1):
        match = _LOCAL_INCLUDE.match(line)
        if not match:
            out.append(line)
            continue
        header = (root / match.group(1)).resolve()
        if header not in seen:
            seen.add(header)
            out.append(_expand(header, root, seen))
        out.append(f'#line {number + 1} "{path}"')
    return "\n".join(out) + "\n"


def compile_relay(
    pin_dir: str | None = None,
    cflags: Sequence[str] = (),
    *,
    bpf_dir: Path | None = None,
    source: str | None = None,
) -> Any:
    """Compile bpf/relay.c. With pin_dir, every map is pinned at pin_dir/<map name> (created when
    missing, reused when present, so a recompile keeps flows); without it the maps are private.

    bpf_dir and source are for the bench, which also builds another revision's program (from its
    own directory) and wraps the entry point (its own text)."""
    root = bpf_dir or BPF_DIR
    flags = [f"-I{root}", *cflags]
    if pin_dir is not None:
        if not _SAFE_PATH.match(pin_dir):
            raise ProgramError(
                f"pin directory {pin_dir!r}: use an absolute path of [A-Za-z0-9._/-]"
            )
        try:
            os.makedirs(pin_dir, exist_ok=True)
        except OSError as exc:
            raise ProgramError(f"cannot create pin directory {pin_dir}: {exc.strerror}") from exc
        flags.append(f'-DPIN_DIR="{pin_dir.rstrip("/")}"')
    from bcc import BPF  # only here: everything else relayctl does needs no bcc

    try:
        text = source if source is not None else relay_source(root)
        return BPF(text=text.encode(), cflags=flags)
    except ProgramError:
        raise
    except Exception as exc:  # bcc raises bare Exception; its compiler output went to stderr
        raise ProgramError(f"cannot compile {root / MAIN_SOURCE}: {exc}") from exc


def load_xdp_fn(bpf: Any) -> Any:  # a bcc BPF -> its function object
    """Load (verify) the xdp_relay entry point; the verifier log goes to stderr on failure."""
    from bcc import BPF

    try:
        return bpf.load_func(PROG_FUNC.encode(), BPF.XDP)
    except Exception as exc:
        raise ProgramError(f"the kernel refused {PROG_FUNC}: {exc}") from exc
