"""The docs name the tests that prove their claims (docs/security.md above all): every
`tests/PATH.py::test_name` they cite must exist, so a renamed or deleted test cannot leave a
claim standing on nothing."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CITED = re.compile(r"((?:tests/[\w/]+/)?test_\w+\.py)::(\w+)")


def test_every_cited_test_exists() -> None:
    by_name: dict[str, list[Path]] = {}
    for f in (REPO / "tests").rglob("test_*.py"):
        by_name.setdefault(f.name, []).append(f)
    cited = 0
    missing = []
    for doc in sorted((REPO / "docs").glob("*.md")):
        for path, name in CITED.findall(doc.read_text()):
            cited += 1
            # A bare file name (the docs' short form after a full path) must name one file.
            found = [REPO / path] if "/" in path else by_name.get(path, [])
            if len(found) != 1 or not found[0].exists():
                missing.append(f"{doc.name}: {path} (no such test file, or not one)")
            elif not re.search(rf"\bdef {name}\(", found[0].read_text()):
                missing.append(f"{doc.name}: {path}::{name}")
    assert cited >= 50  # docs/security.md alone cites more than that
    assert not missing, "docs cite tests that do not exist:\n" + "\n".join(missing)
