"""A wrong path is refused before torch, MONAI or timm are imported (issue 23.7; the timing is in
benchmarks/bench_refusal.py): each command runs in a fresh interpreter and reports which heavy modules it loaded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("torch", "monai", "timm", "openslide")
PROBE = """
import json, sys
from probmcl_med.cli.main import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "loaded": [m for m in HEAVY if m in sys.modules]}))
""".replace("HEAVY", repr(HEAVY))


def _run(args: list[str], cwd: Path) -> tuple[dict, str]:
    env = {**os.environ, "PROBMCL_MED_NO_AUTOLOAD": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}
    done = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, env=env, cwd=cwd,
                          check=False, timeout=600)  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["evaluate", "--checkpoint", "no_run"],
        ["evaluate", "--checkpoint", "no_run", "--recall-floor", "0.8", "--precision-floor", "2"],
        ["predict", "missing.png", "--checkpoint", "no_run", "--out", "out"],
        ["predict", "here.png", "--checkpoint", "no_run", "--out", "out"],
        ["explain", "here.png", "--checkpoint", "no_run", "--out", "out"],
        ["info", "--checkpoint", "no_run"],
        ["export", "--checkpoint", "no_run", "--out", "m.onnx"],
        ["compare", "no_run", "other_run"],
        ["train", "--dataset", "adp"],
        ["train", "--dataset", "csv", "--root", "no_run"],
        ["data", "check", "--dataset", "adp"],
        ["data", "check", "--dataset", "coco", "--root", "no_run"],
    ],
    ids=lambda a: " ".join(a[:3]),
)
def test_a_wrong_path_is_refused_before_the_heavy_imports(tmp_path: Path, args: list[str]) -> None:
    (tmp_path / "here.png").write_bytes(b"")
    result, err = _run(args, tmp_path)
    assert result["code"] == 1, err
    assert result["loaded"] == [], f"{' '.join(args)} imported {result['loaded']} before refusing: {err}"
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[0].startswith("error:") and any(word in lines[0] for word in ("no_run", "missing.png", "2", "folder"))


@pytest.mark.parametrize("args", [["train"], ["train", "--epochs", "2"], ["data", "check"]], ids=" ".join)
def test_a_command_that_names_no_data_is_refused_with_how_to_name_it(tmp_path: Path, args: list[str]) -> None:
    """Issue 23.6: a bare ``train`` trained the demo set for 120 epochs and ``data check`` checked it, exit 0."""
    result, err = _run(args, tmp_path)
    assert result["code"] == 1 and result["loaded"] == [], err
    first = next(line for line in err.splitlines() if line.strip())
    assert first.startswith("error:") and "--dataset NAME" in first and "--dataset demo" in first
    assert not any(tmp_path.iterdir()), "a refused command wrote into the working directory"


def test_naming_the_data_by_set_or_print_config_is_not_refused(tmp_path: Path) -> None:
    result, err = _run(["train", "--print-config"], tmp_path)
    assert result["code"] == 0, err
    result, err = _run(["train", "--set", "dataset.name=csv", "--set", "dataset.root=no_run"], tmp_path)
    assert result["code"] == 1 and "dataset folder" in err and "no_run" in err


def test_the_built_in_names_the_config_accepts_unimported_are_what_the_registries_hold(tmp_path: Path) -> None:
    """The config accepts the built-in names without importing their modules (config.schema.BUILT_IN_NAMES): they
    must be exactly what those modules register (a fresh interpreter with no plugins)."""
    probe = (
        "import json; from probmcl_med import DATASETS, LIKELIHOODS, OVERLAPS, SIMILARITIES; "
        "print(json.dumps({r.kind: r.names() for r in (DATASETS, LIKELIHOODS, OVERLAPS, SIMILARITIES)}))"
    )
    env = {**os.environ, "PROBMCL_MED_NO_AUTOLOAD": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=tmp_path,
                          check=True, timeout=600)  # fmt: skip
    from probmcl_med.config.sections import BUILT_IN_NAMES

    assert {kind: sorted(names) for kind, names in BUILT_IN_NAMES.items()} == json.loads(done.stdout)
