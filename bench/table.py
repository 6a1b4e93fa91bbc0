"""One table format for every benchmark: printed to the terminal and kept for docs/benchmarks.md."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[object]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *cells: object) -> None:
        self.rows.append(list(cells))

    def _cells(self) -> list[list[str]]:
        return [[_fmt(c) for c in row] for row in self.rows]

    def render_text(self) -> str:
        cells = [self.headers, *self._cells()]
        widths = [max(len(r[i]) for r in cells) for i in range(len(self.headers))]
        line = "  ".join("-" * w for w in widths)
        out = [self.title, line]
        for n, row in enumerate(cells):
            pairs = zip(row, widths, strict=False)
            out.append("  ".join(c.rjust(w) if n else c.ljust(w) for c, w in pairs))
            if n == 0:
                out.append(line)
        out.extend(f"  {note}" for note in self.notes)
        return "\n".join(out)

    def render_markdown(self) -> str:
        out = [f"### {self.title}", "", "| " + " | ".join(self.headers) + " |"]
        out.append("|" + "|".join("---" for _ in self.headers) + "|")
        out.extend("| " + " | ".join(row) + " |" for row in self._cells())
        if self.notes:
            out.append("")
            out.extend(f"- {note}" for note in self.notes)
        return "\n".join(out)


def _fmt(cell: object) -> str:
    if isinstance(cell, float):
        return f"{cell:,.1f}" if abs(cell) >= 10 else f"{cell:.2f}"
    if isinstance(cell, int):
        return f"{cell:,}"
    return str(cell)
