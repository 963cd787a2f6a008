"""Tables the commands print: a rich table on a terminal, aligned plain text when the output is piped.

Piped output (``| grep``, ``> file``) has no terminal width to wrap to: a rich table would fold long cells onto
several lines and draw box characters around them. :func:`plain_table` writes one line per row instead, columns
two spaces apart, nothing cut, so every row can be found with ``grep`` and read with ``column``-style tools.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.table import Table


def plain_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """``rows`` under a header of ``columns``, aligned, one line each, no box characters and no wrapping."""
    widths = [max([len(c), *(len(r[i]) for r in rows)]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def print_table(
    console: Console, columns: Sequence[str], rows: Sequence[Sequence[str]], title: str | None = None
) -> None:
    """A rich table (folded to the terminal's width) when ``console`` is a terminal, else :func:`plain_table`
    (after the title, when there is one)."""
    if not console.is_terminal:
        if title:
            console.print(title, markup=False, highlight=False, soft_wrap=True)
        console.print(plain_table(columns, rows), markup=False, highlight=False, soft_wrap=True)
        return
    table = Table(title=title)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*row)
    console.print(table)
