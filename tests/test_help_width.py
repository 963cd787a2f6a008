"""`--help` reads on an 80-column terminal: no option's cell folds into more than three lines."""

from __future__ import annotations

import pytest
from test_cli_grammar import command_paths

from probmcl_med.cli.main import main

MAX_LINES = 3


def _cells(text: str) -> dict[str, list[str]]:
    """Per option of the Options panel, the lines of its row (the first holds the option's name)."""
    cells: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if not line.startswith("│"):
            current = None
            continue
        body = line[1:].strip()
        if body.startswith("--") or body.startswith("*"):
            current = body.lstrip("* ").split()[0]
            cells[current] = [line]
        elif current is not None:
            cells[current].append(line)
    return cells


@pytest.mark.parametrize("path", command_paths(), ids=" ".join)
def test_help_at_80_columns_keeps_every_option_within_three_lines(
    path: tuple[str, ...], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setenv("TERM", "dumb")
    assert main([*path, "--help"]) == 0
    text = capsys.readouterr().out
    assert max(len(line) for line in text.splitlines()) <= 80
    cells = _cells(text)
    assert "--help" in cells
    long = {name: len(lines) for name, lines in cells.items() if len(lines) > MAX_LINES}
    assert not long, f"{' '.join(path)} --help: cells of more than {MAX_LINES} lines at 80 columns: {long}"
