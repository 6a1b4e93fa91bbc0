"""`python -m bench` (`make bench`): run every benchmark present, print, rewrite docs/benchmarks.md.

Each benchmark module has `run() -> Table | list[Table]`. A module that is not there yet is
skipped with a note; one that fails is reported (the others still run) and the exit status is 1.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.util
import os
import platform
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from bench.table import Table

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "benchmarks.md"
# (module, section title), in the order they run and appear.
BENCHMARKS = (
    ("bench.bpf_paths", "XDP program paths"),
    ("bench.bpf_breakdown", "Where a forwarded packet's time goes"),
    ("bench.relay_pps", "Relay throughput and latency"),
    ("bench.relay_mpps", "Relay forwarding limit"),
    ("bench.relay_rtt", "Round trip and call set-up through the relay"),
    ("bench.setup_rtts", "Call set-up counted in round trips"),
    ("bench.calls", "Transceiver calls per core"),
    ("bench.calls_scale", "Transceiver calls per core at scale"),
    ("bench.media_stall", "Media stalls while calls set up"),
    ("bench.media_burst", "Media while a burst of calls arrives"),
    ("bench.datachannel", "Data channel messages"),
    ("bench.registry_read", "Registry read beside the flow cache"),
    ("bench.flow_export", "Flow export at 1 M flows"),
    ("bench.turn", "Calls without UDP: TURN over TLS on 443"),
    ("bench.globe", "The nearest relay and the backbone against the public internet"),
    ("bench.ice_restart", "ICE restart after a network change"),
)
INTRO = """\
Numbers from `make bench` (`python -m bench`), which rewrites this file. Every benchmark measures
its baseline in the same run on the same machine, so the ratios hold even where the absolute
numbers depend on the machine (and on whatever else it was running)."""


@dataclass
class Section:
    module: str
    title: str
    about: str = ""
    tables: list[Table] = field(default_factory=list)
    note: str = ""  # skipped or failed: why
    seconds: float = 0.0


def machine_line() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    cpus = f"{os.cpu_count()} CPUs" + (f" ({model})" if model else "")
    return f"{cpus}, Linux {platform.release()}, Python {platform.python_version()}, {now}"


def _about(module: object) -> str:
    """The module docstring: what is measured and how, in its owner's words."""
    doc = (getattr(module, "__doc__", None) or "").strip()
    return doc


def run_one(module_name: str, title: str) -> Section:
    section = Section(module_name, title)
    t0 = time.monotonic()
    try:
        module = importlib.import_module(module_name)
        section.about = _about(module)
        result = module.run()
        section.tables = result if isinstance(result, list) else [result]
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # one benchmark failing must not hide the others
        traceback.print_exc(file=sys.stderr)
        section.note = f"failed: {type(exc).__name__}: {exc}"
    section.seconds = time.monotonic() - t0
    return section


def render_section(s: Section, alone: str = "") -> list[str]:
    """One section's lines from its `## ` heading on; `alone`: the machine line of a run of this
    section by itself (spliced into a document another run wrote)."""
    out = [f"## {s.title}", ""]
    if s.about:
        out += [s.about, ""]
    if s.note:
        out += [f"_{s.note}_", ""]
    for t in s.tables:
        out += [t.render_markdown(), ""]
    if s.seconds:
        where = f"; run alone with `--only {s.module.split('.')[-1]}`: {alone}" if alone else ""
        out += [f"_(`{s.module}`, {s.seconds:.0f} s{where})_", ""]
    return out


def render_markdown(sections: list[Section], machine: str, command: str) -> str:
    out = ["# Benchmarks", "", INTRO, "", f"Machine: {machine}.", "", f"Command: `{command}`."]
    for s in sections:
        out += ["", *render_section(s)]
    return "\n".join(out).rstrip() + "\n"


def splice_markdown(doc: str, sections: list[Section], machine: str) -> str:
    """doc with the sections of these titles replaced (inserted after the section BENCHMARKS
    puts before them, when missing), every other byte kept: a run of some benchmarks keeps the
    rest of the last full run."""
    head, *parts = doc.split("\n## ")
    raw = {p.split("\n", 1)[0].strip(): p for p in parts}
    new = {
        s.title: "\n".join(render_section(s, machine))[len("## ") :].rstrip() + "\n\n"
        for s in sections
    }
    titles = list(raw)
    order = [t for _, t in BENCHMARKS]
    for title in (t for t in order if t in new and t not in raw):
        before = [t for t in order[: order.index(title)] if t in titles]
        titles.insert(titles.index(before[-1]) + 1 if before else len(titles), title)
    return (head + "".join("\n## " + new.get(t, raw.get(t, "")) for t in titles)).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    ap.add_argument(
        "--only",
        action="append",
        metavar="MODULE",
        help="run only this benchmark (e.g. relay_pps); repeatable",
    )
    ap.add_argument(
        "--write",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="rewrite docs/benchmarks.md (default: yes for a full run, no with --only; with "
        "--only, only those sections are replaced and the others kept)",
    )
    ap.add_argument("--out", type=Path, default=DOC, help="where to write (default: %(default)s)")
    args = ap.parse_args(argv)
    wanted = [(m, t) for m, t in BENCHMARKS if not args.only or m.split(".")[-1] in args.only]
    if args.only and len(wanted) != len(set(args.only)):
        known = ", ".join(m.split(".")[-1] for m, _ in BENCHMARKS)
        print(f"bench: unknown benchmark in --only; known: {known}", file=sys.stderr)
        return 2
    write = args.write if args.write is not None else not args.only
    machine = machine_line()
    print(f"machine: {machine}", flush=True)
    sections = []
    for module, title in wanted:
        print(f"\n== {title} ({module})", flush=True)
        section = run_one(module, title)
        sections.append(section)
        for t in section.tables:
            print(t.render_text(), flush=True)
        if section.note:
            print(section.note, flush=True)
    if write:
        if args.only and args.out.exists():
            args.out.write_text(splice_markdown(args.out.read_text(), sections, machine))
        else:
            only = "".join(f" --only {o}" for o in args.only or [])
            args.out.write_text(render_markdown(sections, machine, f"python -m bench{only}"))
        print(f"\nwrote {args.out}")
    return 1 if any(s.note.startswith("failed") for s in sections) else 0


if __name__ == "__main__":
    sys.exit(main())
