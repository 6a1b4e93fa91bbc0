"""`python -m bench --only X` rewrites only X's section of docs/benchmarks.md (pure: no kernel)."""

from __future__ import annotations

from bench.__main__ import BENCHMARKS, Section, render_markdown, splice_markdown
from bench.table import Table


def section(module: str, title: str, value: int) -> Section:
    table = Table(f"{title} table", ["k", "v"])
    table.add("x", value)
    return Section(module, title, about=f"about {title}", tables=[table], seconds=2.0)


def test_splicing_replaces_one_section_and_keeps_the_others() -> None:
    (m1, t1), (m2, t2), (m3, t3) = BENCHMARKS[:3]
    full = render_markdown([section(m1, t1, 1), section(m2, t2, 2)], "machine A", "python -m bench")
    out = splice_markdown(full, [section(m2, t2, 20)], "machine B")
    head, first, second = out.split("\n## ")
    assert head == full.split("\n## ")[0]  # the intro and the full run's machine line
    assert "## " + first == "## " + full.split("\n## ")[1]  # untouched, byte for byte
    assert "| x | 20 |" in second and "| x | 2 |" not in second
    assert "run alone with `--only " + m2.split(".")[-1] + "`: machine B" in second
    again = splice_markdown(out, [section(m3, t3, 3)], "machine C")  # missing: appended
    assert again.startswith(out.rstrip("\n")) and again.split("\n## ")[-1].startswith(t3)
    only_3 = render_markdown([section(m1, t1, 1), section(m3, t3, 3)], "A", "python -m bench")
    inserted = splice_markdown(only_3, [section(m2, t2, 2)], "B")  # in BENCHMARKS order
    assert [p.split("\n", 1)[0] for p in inserted.split("\n## ")[1:]] == [t1, t2, t3]
