"""`python -m lab sweep`: remove labs left behind (namespaces, pinned maps, temp directories)."""

from __future__ import annotations

import argparse
import os
import sys

from lab import netns
from lab.topology import sweep_lab, sweep_stale_labs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lab", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    sw = sub.add_parser("sweep", help="remove leftover labs")
    which = sw.add_mutually_exclusive_group(required=True)
    which.add_argument("--stale", action="store_true", help="labs whose owner process is gone")
    which.add_argument("--prefix", help=f"one lab, by its name prefix ({netns.LAB_BASE}...)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("lab: sweeping namespaces needs root", file=sys.stderr)
        return 1
    try:
        removed = sweep_stale_labs() if args.stale else sweep_lab(args.prefix)
    except netns.NetnsError as exc:
        print(f"lab: {exc}", file=sys.stderr)
        return 1
    for item in removed:
        print(f"removed {item}")
    print(f"{len(removed)} removed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
