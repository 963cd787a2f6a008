"""The example plugin test in plugins/ passes when run as a plugin author runs it (``pytest plugins/``), and the
plugin loader leaves test files alone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from probmcl_med.plugins import is_plugin_file

REPO = Path(__file__).resolve().parents[1]


def test_the_plugins_folder_tests_pass() -> None:
    tests = sorted((REPO / "plugins").glob("test_*.py"))
    assert tests, "plugins/ ships an example test"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *map(str, tests)],
        cwd=REPO,
        env={**os.environ, "PROBMCL_MED_NO_AUTOLOAD": "1"},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "failed" not in result.stdout


def test_test_files_and_private_files_are_not_plugins() -> None:
    assert is_plugin_file(REPO / "plugins" / "moment_matched_kl.py")
    assert not is_plugin_file(REPO / "plugins" / "test_moment_matched_kl.py")
    assert not is_plugin_file(Path("plugins/_helpers.py"))
