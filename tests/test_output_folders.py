"""Output folders never eat a user's files, and a killed writer's temporaries never stay (issue 24 items 3 and 7).

The expectations are written out by hand (which files must exist, with which bytes), not taken from an earlier run.
The kill test kills a real writer process with SIGKILL in the middle of its report.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import test_os_errors
from test_inference import cli, error_line

from probmcl_med import fileio
from probmcl_med.errors import DataError

MARKER = ".probmcl-med-test"

evaluated = test_os_errors.evaluated  # the module fixture: a run folder (run), its dataset (data), two images (imgs)


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every entry under ``folder``: files with their bytes, folders as ``name/`` -> None."""
    out: dict[str, bytes | None] = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        out[rel + "/" if p.is_dir() else rel] = None if p.is_dir() else p.read_bytes()
    return out


def write_output(path: Path, files: dict[str, str], **kwargs) -> None:
    """One run of a command that writes ``files`` (relative path -> text) as an output folder."""
    with fileio.atomic_directory(path, MARKER, **kwargs) as tmp:
        for name, text in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_text(text)


def manifest(path: Path) -> list[str]:
    return json.loads((path / MARKER).read_text())["entries"]


# --------------------------------------------------------------------------------------------------------------------
# The mechanism
# --------------------------------------------------------------------------------------------------------------------


def test_rerun_into_our_own_folder_replaces_it_whole(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_output(out, {"a.txt": "1", "sub/b.txt": "1"})
    assert manifest(out) == [MARKER, "a.txt", "sub/", "sub/b.txt"]
    write_output(out, {"a.txt": "2", "c.txt": "2"})
    assert {k: v for k, v in snapshot(out).items() if k != MARKER} == {"a.txt": b"2", "c.txt": b"2"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary, no .old


def test_user_files_refuse_the_folder_and_overwrite_keeps_them(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_output(out, {"a.txt": "1", "sub/b.txt": "1", "sub/deep/d.txt": "1"})
    (out / "notes.txt").write_text("my notes")
    (out / "mine").mkdir()
    (out / "mine" / "x.txt").write_text("my data")
    (out / "empty_of_mine").mkdir()
    (out / "sub" / "kept.txt").write_text("mine too, inside an output subfolder")
    before = snapshot(out)

    with pytest.raises(DataError) as err:
        write_output(out, {"a.txt": "2"})
    message = str(err.value)
    assert "--overwrite" in message and "empty_of_mine/" in message and "mine/" in message and "\n" not in message
    assert snapshot(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["out"]

    write_output(out, {"a.txt": "2", "c/e.txt": "2"}, overwrite=True)
    expected = {
        "a.txt": b"2",
        "c/": None,
        "c/e.txt": b"2",
        "notes.txt": b"my notes",
        "mine/": None,
        "mine/x.txt": b"my data",
        "empty_of_mine/": None,
        "sub/": None,  # held a file of the user's: kept; sub/b.txt and sub/deep/ (ours) are gone
        "sub/kept.txt": b"mine too, inside an output subfolder",
    }
    assert {k: v for k, v in snapshot(out).items() if k != MARKER} == expected
    assert manifest(out) == [MARKER, "a.txt", "c/", "c/e.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]

    write_output(out, {"a.txt": "3"}, overwrite=True)  # a second overwrite: again only our own files change
    expected = {k: v for k, v in expected.items() if not k.startswith("c/")} | {"a.txt": b"3"}
    assert {k: v for k, v in snapshot(out).items() if k != MARKER} == expected


def test_a_user_link_or_folder_in_the_way_is_refused_even_with_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "out"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out.mkdir()
    (out / "heatmaps").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(DataError, match="heatmaps"):
        write_output(out, {"heatmaps/a.png": "x"}, overwrite=True)
    assert list(elsewhere.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "out"]
    (out / "a.txt").mkdir()
    with pytest.raises(DataError, match=r"a\.txt"):
        write_output(out, {"a.txt": "x"}, overwrite=True)


def test_a_marker_without_a_manifest_no_longer_vouches_for_the_folder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / MARKER).write_text("written by an older probmcl-med\n")  # the old marker: one line, no list
    (out / "report.html").write_text("old")
    (out / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="kept no list of its files"):
        write_output(out, {"report.html": "new"})
    write_output(out, {"report.html": "new"}, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine" and (out / "report.html").read_text() == "new"


def test_a_file_at_the_path_is_refused(tmp_path: Path) -> None:
    (tmp_path / "out").write_text("x")
    with pytest.raises(DataError, match="is a file"):
        write_output(tmp_path / "out", {"a.txt": "1"}, overwrite=True)


# --------------------------------------------------------------------------------------------------------------------
# Stale temporaries
# --------------------------------------------------------------------------------------------------------------------


def test_stale_temporaries_are_removed_and_a_swapped_out_folder_restored(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_output(out, {"a.txt": "earlier output"})
    out.rename(tmp_path / ".out.abcdefgh.old")  # a swap killed between its two renames
    partial = tmp_path / ".out.ijklmnop.tmp"  # a build killed half-way
    partial.mkdir()
    (partial / fileio.PARTIAL).touch()
    (partial / "metrics.json").write_text("{")
    (tmp_path / ".out.qrstuvwx.tmp").mkdir()  # killed between mkdtemp and its first file
    users = tmp_path / ".out.users123.tmp"  # a user's folder that happens to have such a name
    users.mkdir()
    (users / "thesis.tex").write_text("keep")
    (tmp_path / ".out.tmp").write_text("not a name we make")

    fileio.clean_stale_temporaries(out)
    assert (out / "a.txt").read_text() == "earlier output"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.tmp", ".out.users123.tmp", "out"]
    assert (users / "thesis.tex").read_text() == "keep"


def test_stale_file_temporary_removed_but_a_live_one_kept(tmp_path: Path) -> None:
    stale = tmp_path / ".model.pt.abcd1234.tmp"
    stale.write_bytes(b"torn checkpoint")
    live = tmp_path / ".model.pt.efgh5678.tmp"
    live.write_bytes(b"being written")
    with live.open("rb") as handle:  # another open file description holding the lock, as a live writer does
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        fileio.atomic_write_bytes(tmp_path / "model.pt", b"new model")
        assert sorted(p.name for p in tmp_path.iterdir()) == [".model.pt.efgh5678.tmp", "model.pt"]
    fileio.atomic_write_bytes(tmp_path / "model.pt", b"newer model")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


KILLED_REPORT = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from probmcl_med.evaluation import multilabel_metrics, report
    from probmcl_med.evaluation import plots

    def hang(*args, **kwargs):  # every other file of the report is written by now
        open(sys.argv[2], "w").write("inside")
        time.sleep(600)

    tiny = lambda *args, **kwargs: b"png"
    for name in ("recall_precision_bars", "precision_recall_grid", "reliability_diagram", "cooccurrence_heatmaps"):
        setattr(plots, name, tiny)
    report.to_html = hang
    rng = np.random.default_rng(0)
    targets = (rng.random((40, 3)) < 0.4).astype(float)
    targets[0] = 1
    scores = np.clip(targets * 0.5 + rng.random((40, 3)) * 0.5, 0, 1)
    names = ["a", "b", "c"]
    report.write_report(sys.argv[1], multilabel_metrics(scores, targets, class_names=names), scores, targets, names)
    """
)


def test_report_killed_with_sigkill_leaves_nothing_after_the_next_run(tmp_path: Path) -> None:
    from probmcl_med.evaluation import multilabel_metrics, write_report

    out, signal_file = tmp_path / "rep", tmp_path / "inside"
    env = {**os.environ, "MPLBACKEND": "Agg"}
    proc = subprocess.Popen([sys.executable, "-c", KILLED_REPORT, str(out), str(signal_file)], env=env)
    try:
        deadline = time.monotonic() + 240
        while not signal_file.exists():
            assert proc.poll() is None, "the writer ended before it was killed"
            assert time.monotonic() < deadline
            time.sleep(0.1)
        temporaries = [p for p in tmp_path.iterdir() if p.name.startswith(".rep.")]
        assert len(temporaries) == 1 and (temporaries[0] / "metrics.json").is_file()
        assert fileio.clean_stale_temporaries(out) == [] and temporaries[0].is_dir()  # its writer is alive
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL and temporaries[0].is_dir()  # what kill -9 leaves

    import numpy as np

    targets = np.array([[1, 0], [0, 1], [1, 1], [0, 0]], dtype=float)
    scores = np.array([[0.9, 0.2], [0.1, 0.8], [0.7, 0.6], [0.3, 0.1]])
    write_report(out, multilabel_metrics(scores, targets, class_names=["x", "y"]), scores, targets, ["x", "y"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inside", "rep"]
    assert (out / "report.html").is_file()


# --------------------------------------------------------------------------------------------------------------------
# Through the commands
# --------------------------------------------------------------------------------------------------------------------


def add_user_files(folder: Path) -> dict[str, bytes | None]:
    (folder / "notes.txt").write_text("what I saw in these")
    (folder / "figures").mkdir()
    (folder / "figures" / "fig1.svg").write_text("<svg/>")
    return {"notes.txt": b"what I saw in these", "figures/": None, "figures/fig1.svg": b"<svg/>"}


@pytest.mark.parametrize("command", ["predict", "evaluate", "explain"])
def test_commands_keep_user_files(evaluated: Path, tmp_path: Path, command: str, capsys) -> None:
    out = tmp_path / "out"
    run = str(evaluated / "run")
    args = {
        "predict": ["predict", str(evaluated / "imgs"), "-c", run, "--out", str(out), "--device", "cpu"],
        "evaluate": ["evaluate", "-c", run, "--report", str(out), "--bootstrap", "0", "--gallery", "0"],
        "explain": ["explain", str(next((evaluated / "imgs").iterdir())), "-c", run, "--out", str(out)],
    }[command] + (["--device", "cpu"] if command != "predict" else [])
    assert cli(args) == 0
    first = snapshot(out)
    assert cli(args) == 0  # a rerun into its own folder
    assert set(snapshot(out)) == set(first)
    users = add_user_files(out)
    before = snapshot(out)
    capsys.readouterr()

    assert cli(args) == 1
    line = error_line(capsys)
    assert "notes.txt" in line and "--overwrite" in line and str(out) in line
    assert snapshot(out) == before

    assert cli([*args, "--overwrite"]) == 0
    after = snapshot(out)
    assert {k: after.get(k) for k in users} == users  # the user's files, byte for byte
    assert set(after) == set(first) | set(users)  # and every output of the command
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_export_refuses_a_file_it_did_not_write(evaluated: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "model.pt"
    args = ["export", "-c", str(evaluated / "run"), "--format", "torchscript", "--out", str(out), "--check-batch", "1"]
    assert cli(args) == 0 and cli(args) == 0  # its own earlier export is replaced
    out.write_bytes(b"my own model, not an export")
    capsys.readouterr()
    assert cli(args) == 1
    assert "--overwrite" in error_line(capsys) and out.read_bytes() == b"my own model, not an export"
    assert cli([*args, "--overwrite"]) == 0 and out.read_bytes() != b"my own model, not an export"


def test_a_linked_output_folder_is_written_where_the_link_leads(tmp_path: Path) -> None:
    target = tmp_path / "real"
    write_output(target, {"a.txt": "1"})
    (tmp_path / "link").symlink_to(target, target_is_directory=True)
    write_output(tmp_path / "link", {"a.txt": "2"})
    assert (tmp_path / "link").is_symlink() and (target / "a.txt").read_text() == "2"
