"""The CLI entry point: version, plugins listing, one-line errors and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from probmcl_med import __version__
from probmcl_med.cli.main import main


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert __version__ in capsys.readouterr().out


def test_plugins_lists_builtins_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plugins", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["components"]
    names = {(r["registry"], r["name"]) for r in rows}
    for expected in [
        ("similarities", "correlation"),
        ("similarities", "bhattacharyya"),
        ("overlaps", "jaccard"),
        ("overlaps", "cosine"),
        ("likelihoods", "density"),
        ("likelihoods", "responsibility"),
        ("datasets", "adp"),
        ("datasets", "coco"),
        ("datasets", "slides"),
        ("datasets", "csv"),
        ("datasets", "demo"),
        ("encoders", "tresnet_m"),
    ]:
        assert expected in names
    assert all(r["summary"] for r in rows if r["registry"] in ("similarities", "overlaps"))


def test_a_dropped_plugin_file_appears_with_its_source(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "my_plugins"
    folder.mkdir()
    (folder / "dropped.py").write_text(
        textwrap.dedent(
            '''
            from probmcl_med import OVERLAPS

            @OVERLAPS.register("dropped_overlap")
            def dropped_overlap(ya, yb):
                """Dropped into a folder by a test."""
                return (ya @ yb.T).clamp(0, 1)
            '''
        )
    )
    try:
        assert main(["--plugins-dir", str(folder), "plugins", "--json"]) == 0
        rows = json.loads(capsys.readouterr().out)["components"]
        row = next(r for r in rows if r["name"] == "dropped_overlap")
        assert row["registry"] == "overlaps" and row["source"] == str((folder / "dropped.py").resolve())
        assert row["summary"] == "Dropped into a folder by a test."
    finally:
        from probmcl_med import OVERLAPS

        OVERLAPS.unregister("dropped_overlap")


def test_broken_plugin_is_one_warning_line_and_the_command_goes_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "broken.py").write_text("raise RuntimeError('boom')\n")
    assert main(["--plugins-dir", str(tmp_path), "plugins", "--json"]) == 0
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("warning: plugin") and "broken.py" in lines[0] and "RuntimeError: boom" in lines[0]
    assert "Traceback" not in captured.err
    document = json.loads(captured.out)
    assert [f["source"] for f in document["failed"]] == [str((tmp_path / "broken.py").resolve())]
    assert any(r["name"] == "correlation" for r in document["components"])


def test_debug_shows_the_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "broken2.py").write_text("raise RuntimeError('boom2')\n")
    assert main(["--debug", "--plugins-dir", str(tmp_path), "plugins"]) == 0
    assert "Traceback" in capsys.readouterr().err


def test_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plugins", "--no-such-option"]) == 2
    assert "no-such-option" in capsys.readouterr().err


def test_console_script_runs_as_a_module() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "probmcl_med.cli", "--version"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0 and __version__ in result.stdout


def test_an_error_from_a_dataloader_worker_keeps_its_original_message() -> None:
    import torch
    from torch.utils.data import DataLoader, Dataset

    from probmcl_med.errors import DataError, one_line_message

    class Broken(Dataset):
        def __len__(self) -> int:
            return 2

        def __getitem__(self, i: int) -> torch.Tensor:
            raise DataError(f"/data/images/p{i}.png (row {i + 2}): not an image")

    with pytest.raises(DataError) as info:
        next(iter(DataLoader(Broken(), num_workers=1)))
    assert str(info.value).startswith("Caught DataError in DataLoader worker")
    assert one_line_message(info.value) == "/data/images/p0.png (row 2): not an image"
    assert one_line_message(DataError("plain\nsecond line")) == "plain"


@pytest.mark.parametrize(
    "command",
    [
        ["plugins"],
        ["train"],
        ["evaluate"],
        ["predict"],
        ["explain"],
        ["info"],
        ["sweep"],
        ["data", "check"],
        ["export"],
    ],
)
def test_every_command_help_shows_an_example(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert "Example" in out and "probmcl-med" in out.split("Example", 1)[1]
