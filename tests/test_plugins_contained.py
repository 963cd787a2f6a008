"""A broken plugin file is one warning line, commands that do not need it go on, a command asking for a name it
registers names the file; ``probmcl-med plugins`` says where it looked and prints a plain table when piped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from probmcl_med import SIMILARITIES
from probmcl_med.cli.main import main
from probmcl_med.plugins import load_plugins, plugin_failures, registered_names_in

BROKEN = '''
from probmcl_med import SIMILARITIES, OVERLAPS
import definitely_not_installed_module_q

@SIMILARITIES.register("broken_sim")
def broken_sim(a, b):
    """Never registered: the import above fails."""

OVERLAPS.register(name="broken_overlap", obj=lambda ya, yb: ya @ yb.T)
'''


@pytest.fixture
def broken_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "plugs"
    folder.mkdir()
    (folder / "broken.py").write_text(textwrap.dedent(BROKEN))
    return folder


def test_the_names_a_file_registers_are_read_from_its_source(broken_dir: Path, tmp_path: Path) -> None:
    assert registered_names_in(broken_dir / "broken.py") == ("broken_sim", "broken_overlap")
    unparsable = tmp_path / "syntax.py"
    unparsable.write_text('@SIMILARITIES.register("half_sim")\ndef f(a, b:\n')
    assert registered_names_in(unparsable) == ("half_sim",)


def test_a_failed_file_is_recorded_and_named_when_its_name_is_asked_for(broken_dir: Path) -> None:
    load_plugins([broken_dir], autoload=False)  # no exception: contained
    [failure] = plugin_failures()
    assert failure.source == str((broken_dir / "broken.py").resolve())
    assert failure.error.startswith("ModuleNotFoundError") and failure.names == ("broken_sim", "broken_overlap")
    message = SIMILARITIES.unknown_message("broken_sim")
    assert str((broken_dir / "broken.py").resolve()) in message and "ModuleNotFoundError" in message
    other = SIMILARITIES.unknown_message("no_such_sim")  # any unknown name mentions the failed files
    assert "failed to import" in other and "broken.py" in other


def test_a_command_that_needs_no_plugin_goes_on(broken_dir: Path, tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(0)
    targets = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    scores = np.clip(targets * 0.6 + rng.random(targets.shape) * 0.3, 0, 1)
    np.savetxt(tmp_path / "s.csv", scores, delimiter=",", header="a,b", comments="", fmt="%.6f")
    np.savetxt(tmp_path / "t.csv", targets, delimiter=",", header="a,b", comments="", fmt="%d")
    args = ["evaluate", "--scores", str(tmp_path / "s.csv"), "--targets", str(tmp_path / "t.csv"), "--json"]
    assert main([*args, "--plugins-dir", str(broken_dir)]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["summary"]["mAP"] > 0
    [warning] = captured.err.strip().splitlines()
    assert warning.startswith("warning: plugin") and "broken.py" in warning and "broken_sim" in warning


def test_a_command_that_asks_for_a_broken_name_says_which_file(broken_dir: Path, capsys) -> None:
    args = ["train", "--dataset", "demo", "--set", "contrastive.similarity=broken_sim", "--print-config"]
    assert main(["--plugins-dir", str(broken_dir), *args]) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1
    assert str((broken_dir / "broken.py").resolve()) in lines[0] and "failed to import" in lines[0]


def _run_plugins(cwd: Path, env_dirs: list[Path], *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PROBMCL_MED_NO_AUTOLOAD", "COLUMNS")}
    env["PROBMCL_MED_PLUGINS"] = os.pathsep.join(str(d) for d in env_dirs)
    return subprocess.run(
        [sys.executable, "-m", "probmcl_med.cli", "plugins", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


def test_plugins_says_where_it_looked_and_reads_well_when_piped(tmp_path: Path) -> None:
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "cwd_overlap.py").write_text(
        textwrap.dedent(
            '''
            from probmcl_med import OVERLAPS

            @OVERLAPS.register("cwd_overlap_with_a_rather_long_name")
            def cwd_overlap(ya, yb):
                """An overlap from the working directory whose summary is long enough to wrap a narrow terminal."""
                return (ya @ yb.T).clamp(0, 1)
            '''
        )
    )
    env_dir = tmp_path / "from_env"
    env_dir.mkdir()
    missing = tmp_path / "not_there"
    result = _run_plugins(tmp_path, [env_dir, missing])
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"working directory: {tmp_path / 'plugins'} (1 file(s): cwd_overlap.py)" in out
    assert f"PROBMCL_MED_PLUGINS: {env_dir} (no plugin files)" in out
    assert f"PROBMCL_MED_PLUGINS: {missing} (absent)" in out
    assert "entry points (group probmcl_med.plugins)" in out
    assert not set("─│╭╮╰╯┃━┏") & set(out)  # no box drawing when piped
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:4] == ["registry", "name", "source", "summary"])
    name_col = lines[header].index("name")
    rows = lines[header + 1 :]
    listed = json.loads(_run_plugins(tmp_path, [env_dir], "--json").stdout)["components"]
    assert len(rows) == len(listed)  # one line per registered name: nothing wrapped or folded
    for entry, line in zip(listed, rows, strict=True):
        assert line.startswith(entry["registry"]) and line[name_col:].split()[0] == entry["name"]
        assert line.rstrip().endswith(entry["summary"].rstrip())
    assert any("cwd_overlap_with_a_rather_long_name" in line and "cwd_overlap.py" in line for line in rows)
