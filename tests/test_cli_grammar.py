"""One CLI grammar, checked against Click's own parameter lists: global options before or after the command, one
``--root`` for the dataset folder, flags shown as flags, and every option an error hint names exists on the command
that can print it."""

from __future__ import annotations

import ast
import itertools
import re
from pathlib import Path

import pytest
import typer.main
from typer._click import Context

from probmcl_med import __version__
from probmcl_med.cli import main as cli_main
from probmcl_med.cli.grammar import is_flag

REPO = Path(__file__).resolve().parents[1]
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9_-]*")
_WORDS = "data check|train|evaluate|predict|explain|export|info|sweep|plugins"
NAMED = re.compile(rf"probmcl-med\s+({_WORDS})\b|\b({_WORDS})(?=\s+--)|\b(torchrun|vips)\b")
SCOPE_END = re.compile(r"[`;(),\n]")
"""A command named in a message (after ``probmcl-med``, or a bare command word right before an option; a value
such as ``--split train`` is no command) owns the options after it up to the next backtick, semicolon, comma, bracket or line
end ("finish it with `probmcl-med train --resume`", "then evaluate --scores --targets"); the options of ``torchrun``
and ``vips`` (named in a hint on re-saving a TIFF) are not ours."""


def _root():
    cli_main._register_commands()
    return typer.main.get_command(cli_main.app)


def command_paths() -> list[tuple[str, ...]]:
    """Every runnable command, as the words typed after ``probmcl-med`` (walked from Click's group)."""
    paths: list[tuple[str, ...]] = []

    def walk(group, prefix: tuple[str, ...]) -> None:
        for name, command in getattr(group, "commands", {}).items():
            if getattr(command, "commands", None):
                walk(command, (*prefix, name))
            else:
                paths.append((*prefix, name))

    walk(_root(), ())
    return sorted(paths)


def command_params(path: tuple[str, ...]) -> list:
    """Click's parameters of a command as it parses them under the app (global options included)."""
    root = _root()
    ctx = Context(root, info_name="probmcl-med")
    command = root
    for word in path:
        command = command.commands[word]
        ctx = Context(command, info_name=word, parent=ctx)
    return command.get_params(ctx)


def command_options(path: tuple[str, ...]) -> set[str]:
    return {opt for p in command_params(path) for opt in (*p.opts, *p.secondary_opts) if opt.startswith("--")}


def test_the_walk_finds_every_command() -> None:
    assert set(command_paths()) == {
        ("train",), ("evaluate",), ("predict",), ("explain",), ("info",), ("data", "check"), ("sweep",), ("plugins",),
        ("export",), ("data", "from-annotations"),
    }  # fmt: skip


@pytest.mark.parametrize("path", command_paths(), ids=" ".join)
def test_global_options_after_the_command(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    assert {"--debug", "--plugins-dir", "--version"} <= command_options(path)
    assert cli_main.main([*path, "--version"]) == 0
    assert capsys.readouterr().out.strip() == f"probmcl-med {__version__}"


def test_debug_and_plugins_dir_work_on_either_side(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = str(tmp_path / "no-run")
    for args in (["--debug", "info", "--checkpoint", missing], ["info", "--checkpoint", missing, "--debug"]):
        assert cli_main.main(args) == 1
        assert "Traceback" in capsys.readouterr().err
    assert cli_main.main(["info", "--checkpoint", missing]) == 1
    assert "Traceback" not in capsys.readouterr().err
    folder = tmp_path / "plugs"
    folder.mkdir()
    (folder / "after.py").write_text(
        "from probmcl_med import OVERLAPS\n\n"
        "@OVERLAPS.register('after_overlap')\n"
        "def after_overlap(ya, yb):\n    '''Registered from a --plugins-dir given after the command.'''\n"
        "    return (ya @ yb.T).clamp(0, 1)\n"
    )
    from probmcl_med import OVERLAPS

    try:
        assert cli_main.main(["plugins", "--plugins-dir", str(folder), "--json"]) == 0
        assert "after_overlap" in capsys.readouterr().out
    finally:
        OVERLAPS.unregister("after_overlap")


@pytest.mark.parametrize("path", command_paths(), ids=" ".join)
def test_flags_are_shown_as_flags(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main.main([*path, "--help"]) == 0
    text = capsys.readouterr().out
    flags = [p for p in command_params(path) if is_flag(p)]
    assert any("--help" in p.opts for p in flags) and "<bool>" not in text
    for param in flags:
        for opt in param.opts:
            line = next(line for line in text.splitlines() if re.search(rf"{re.escape(opt)}(?![\w-])", line))
            after = line.split(opt, 1)[1]
            assert not re.match(r"\s*[<\[]", after), f"{' '.join(path)} {opt}: {line!r}"


def test_a_flag_given_a_value_says_it_is_a_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main.main(["plugins", "--json", "true"]) == 2
    assert "--json is a flag" in capsys.readouterr().err


@pytest.mark.parametrize("path", [("train",), ("evaluate",), ("data", "check"), ("sweep",)], ids=" ".join)
def test_every_command_that_reads_a_dataset_takes_root(path: tuple[str, ...]) -> None:
    options = command_options(path)
    assert "--root" in options and "--data-root" not in options


def test_train_root_and_set_dataset_root_name_the_same_folder(tmp_path: Path, capsys) -> None:
    base = ["train", "--dataset", "demo", "--print-config"]
    assert cli_main.main([*base, "--root", str(tmp_path / "a")]) == 0
    assert f"root: {tmp_path / 'a'}" in capsys.readouterr().out
    assert cli_main.main([*base, "--set", f"dataset.root={tmp_path / 'b'}"]) == 0
    assert f"root: {tmp_path / 'b'}" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------------------------------
# Every option named in a message exists on the commands that can print it
# --------------------------------------------------------------------------------------------------------------------

ALL = "all"
MODEL_READERS = [("predict",), ("evaluate",), ("explain",), ("info",)]
DATASET_READERS = [("train",), ("evaluate",), ("data", "check"), ("sweep",)]
CONFIG_READERS = [("train",), ("data", "check"), ("sweep",)]

REACHED_BY: dict[str, object] = {
    # the CLI modules: the command each defines
    "cli/train.py": [("train",)],
    "cli/evaluate.py": [("evaluate",)],
    "cli/evaluate_files.py": [("evaluate",)],
    "cli/predict.py": [("predict",)],
    "cli/explain.py": [("explain",)],
    "cli/info.py": [("info",)],
    "cli/data.py": [("data", "check")],
    "cli/data.py:from_annotations": [("data", "from-annotations")],
    "cli/data.py:annotations_epilog": [("data", "from-annotations")],
    "cli/sweep.py": [("sweep",)],
    "cli/plugins.py": [("plugins",)],
    "cli/export.py": [("export",)],
    "cli/main.py": ALL,
    "cli/grammar.py": ALL,
    # the library: which commands call into the module (the sweep scores with run_eval's score_split at a fixed
    # split and threshold, which cannot raise its --split / --threshold / --tune-thresholds messages)
    "probmcl_med/plugins.py": ALL,
    "probmcl_med/registry.py": ALL,
    "probmcl_med/config/loading.py": CONFIG_READERS,
    "probmcl_med/config/files.py": CONFIG_READERS,
    "probmcl_med/config/schema.py:with_epochs": [("train",), ("sweep",)],  # the --epochs N of both
    "probmcl_med/engine/modes.py": [("train",)],
    "probmcl_med/engine/session.py": [("train",)],
    "probmcl_med/engine/checkpoint.py": [("train",)],
    "probmcl_med/engine/resume.py": [("train",)],
    "probmcl_med/engine/schedule.py": [("train",)],
    "probmcl_med/engine/training.py": [("train",)],
    "probmcl_med/engine/run.py": [("train",)],
    "probmcl_med/engine/inputs.py": [("train",)],
    "probmcl_med/sweep/runner.py": [("sweep",)],
    "probmcl_med/sweep/grid.py": [("sweep",)],
    "probmcl_med/sweep/results.py": [("sweep",)],
    "probmcl_med/data/csv_dataset.py": DATASET_READERS,
    "probmcl_med/data/annotations.py": [("data", "from-annotations")],
    "probmcl_med/data/mpp.py": [("predict",), ("data", "from-annotations")],  # both have --slide-mpp
    "probmcl_med/data/regions.py": [("predict",)],
    "probmcl_med/data/tiling.py": [("predict",)],
    "probmcl_med/bundle.py": MODEL_READERS,
    "probmcl_med/evaluation/run_eval.py": [("evaluate",)],
    "probmcl_med/evaluation/report.py": [("evaluate",)],
    "probmcl_med/evaluation/findings.py": [("evaluate",)],
    "probmcl_med/inference/export.py": [("export",)],
    # output folders: the commands that write one (--out is atomic_directory's default; evaluate passes --report)
    "probmcl_med/fileio.py:check_replaceable_folder": [
        ("predict",),
        ("evaluate",),
        ("explain",),
        ("data", "from-annotations"),
    ],
    "probmcl_med/fileio.py:atomic_directory": [("predict",), ("explain",), ("data", "from-annotations")],
    # a stale thresholds file: the commands that apply thresholds print the fix (info shows it as the file's state)
    "probmcl_med/operating_point.py": [("predict",), ("evaluate",), ("explain",)],
    # a stale calibration, or thresholds tuned on another calibration: the same commands, the same fixes
    "probmcl_med/calibration_file.py": [("predict",), ("evaluate",), ("explain",)],
    "probmcl_med/inference/inputs.py:__getitem__": [("predict",)],  # ItemDataset: predict's images and patches
    "probmcl_med/inference/inputs.py": [("predict",), ("evaluate",)],
    "probmcl_med/inference/loop.py": [("predict",)],
    "probmcl_med/inference/writers.py": [("predict",), ("explain",)],
    "probmcl_med/inference/explain.py": [("explain",)],
    "probmcl_med/inference/predict.py:decision_thresholds": [("predict",), ("explain",), ("evaluate",)],
    "probmcl_med/inference/predict.py": [("predict",)],
}
"""Where each message with an option can be printed from: ``file`` or ``file:function`` -> command paths."""


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    # a string right after an assignment documents it (attribute docstrings)
    for parent in ast.walk(tree):
        body = getattr(parent, "body", None)
        if isinstance(body, list):
            for a, b in itertools.pairwise(body):
                if (
                    isinstance(a, ast.Assign | ast.AnnAssign)
                    and isinstance(b, ast.Expr)
                    and isinstance(b.value, ast.Constant)
                ):
                    ids.add(id(b.value))
    return ids


def message_hints() -> list[tuple[str, str, str, str]]:
    """(file, enclosing function, text, option) for every option named in a string of the package and the CLI,
    docstrings excepted (f-strings count by their literal parts)."""
    found = []
    files = sorted([*(REPO / "probmcl_med").rglob("*.py"), *(REPO / "cli").glob("*.py")])
    for path in files:
        rel = path.relative_to(REPO).as_posix()
        tree = ast.parse(path.read_text())
        skip = _docstrings(tree)
        functions: dict[int, str] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                for child in ast.walk(node):
                    functions.setdefault(id(child), node.name)  # ast.walk is breadth-first: outermost wins
        for node in ast.walk(tree):
            if isinstance(node, ast.JoinedStr):
                text = "".join(v.value for v in node.values if isinstance(v, ast.Constant))
                for v in node.values:
                    skip.add(id(v))
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
                text = node.value
            else:
                continue
            for option in OPTION.findall(text):
                found.append((rel, functions.get(id(node), ""), text, option))
    return found


def _commands_for(rel: str, function: str) -> list[tuple[str, ...]]:
    key = f"{rel}:{function}"
    where = REACHED_BY.get(key, REACHED_BY.get(rel))
    assert where is not None, f"{rel} ({function}) names an option: add where it can be printed to REACHED_BY"
    return command_paths() if where == ALL else where  # type: ignore[return-value]


def test_the_walk_finds_the_hints_it_must() -> None:
    hints = {(rel, option) for rel, _, _, option in message_hints()}
    assert ("probmcl_med/data/csv_dataset.py", "--root") in hints  # the hint train used to print without --root
    assert ("probmcl_med/inference/writers.py", "--out") in hints  # an option passed as an argument
    assert ("probmcl_med/registry.py", "--plugins-dir") in hints
    assert not any(option == "--data-root" for _, option in hints)


def _named_command(text: str, option: str) -> tuple[str, ...] | None:
    """The command a message names for ``option`` (its first occurrence), None when it names none."""
    at = re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text)
    assert at is not None
    owners = [
        m
        for m in NAMED.finditer(text)
        if m.end() <= at.start()
        and not SCOPE_END.search(text[m.end() : at.start()])
        and not text[: m.start()].rstrip().rsplit(" ", 1)[-1].startswith("--")  # "--split train": a value
    ]
    return tuple(next(g for g in owners[-1].groups() if g).split()) if owners else None


def test_named_commands_and_their_scopes() -> None:
    text = "finish it with `probmcl-med train --resume --output-dir X` or pass another --checkpoint"
    assert _named_command(text, "--resume") == ("train",) and _named_command(text, "--checkpoint") is None
    text = "instead (probmcl-med predict, then evaluate --scores --targets)"
    assert _named_command(text, "--targets") == ("evaluate",)
    assert _named_command("probmcl-med data check --root R", "--root") == ("data", "check")
    text = "torchrun --nproc_per_node=4 -m probmcl_med.cli train --dataset coco"
    assert _named_command(text, "--nproc_per_node") == ("torchrun",) and _named_command(text, "--dataset") == ("train",)
    assert _named_command("re-save it (e.g. `vips tiffsave in.tif out.tif --tile --pyramid`)", "--tile") == ("vips",)


def test_every_hint_names_an_option_of_its_command() -> None:
    wrong = []
    for rel, function, text, option in message_hints():
        named = _named_command(text, option)
        if named in (("torchrun",), ("vips",)):
            continue
        paths = [named] if named is not None else _commands_for(rel, function)
        for path in paths:
            if option not in command_options(path):
                wrong.append(f"{rel} ({function}): {option} is not an option of `{' '.join(path)}`: {text!r}")
    assert not wrong, "\n".join(wrong)


def test_the_hints_of_real_errors_name_options_of_their_command(tmp_path: Path, capsys) -> None:
    from test_inference import make_bundle, write_images

    run = tmp_path / "run"
    make_bundle(run, dataset_root=tmp_path / "moved")
    [image] = write_images(tmp_path / "imgs", 1)
    cases = [
        (("data", "check"), ["--dataset", "csv"], "--root"),
        (("evaluate",), ["--checkpoint", str(run), "--device", "cpu"], "--root"),
        (("predict",), [str(image), "-c", str(run), "--out", str(tmp_path / "o"), "--uncertainty"], "--uncertainty"),
        (("info",), ["--checkpoint", str(tmp_path / "nothing")], None),
    ]
    for path, args, expected in cases:
        assert cli_main.main([*path, *args]) == 1
        [line] = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error:")]
        named = set(OPTION.findall(line))
        assert expected is None or expected in named, line
        assert named <= command_options(path), (path, line)
