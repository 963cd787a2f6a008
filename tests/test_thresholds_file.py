"""Thresholds are a file, not a mutation: `evaluate --tune-thresholds R --save` writes RUN/thresholds.json (never
model.pt), every command that reads the model says which thresholds it uses, a stale file is refused with a
one-line fix, and reporting on the split the thresholds were tuned on is warned about.

Expected thresholds come from a brute-force search over every candidate score of a hand-run model (independent of
``tune_thresholds``); file integrity from hashlib on the bytes of model.pt."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_inference import CLASSES, cli, error_line, hand_probs, make_bundle, make_csv_dataset, write_images

from probmcl_med.bundle import load_model_bundle
from probmcl_med.errors import CheckpointError
from probmcl_med.inference.predict import decision_thresholds, describe_thresholds
from probmcl_med.operating_point import read_thresholds, save_thresholds


def scored_run(root: Path) -> dict:
    """A csv dataset in ROOT/data, a bundle in ROOT/run, and the hand-run model's (scores, targets) per split."""
    rows = make_csv_dataset(root / "data", n_per_split=16)
    encoder, head = make_bundle(root / "run", dataset_root=root / "data")
    expected = {}
    for split in ("valid", "test"):
        paths = [p for p, _ in rows[split]]
        expected[split] = (hand_probs(encoder, head, paths), np.stack([y for _, y in rows[split]]))
    return {"root": root, "rows": rows, "expected": expected, "encoder": encoder, "head": head}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return scored_run(tmp_path_factory.mktemp("thresholds"))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _brute_force_threshold(scores: np.ndarray, targets: np.ndarray, recall: float) -> float:
    """The largest candidate t (a score value) with recall(score >= t) >= recall, by trying every candidate."""
    best = None
    for t in np.unique(scores):
        tp = ((scores >= t) & (targets == 1)).sum()
        if tp / targets.sum() >= recall and (best is None or t > best):
            best = t
    return float(best)


@pytest.fixture
def run(tmp_path: Path, setup: dict) -> Path:
    shutil.copytree(setup["root"] / "run", tmp_path / "run")
    return tmp_path / "run"


def _evaluate_json(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[dict, str]:
    assert cli(["evaluate", *args, "--json", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    return json.loads(captured.out), captured.err


def test_tune_without_save_reports_only_and_writes_nothing(
    run: Path, setup: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _sha(run / "model.pt")
    files = sorted(p.name for p in run.iterdir())
    doc, _ = _evaluate_json(["-c", str(run), "--tune-thresholds", "recall=0.9"], capsys)
    vs, vt = setup["expected"]["valid"]
    expected = [_brute_force_threshold(vs[:, k], vt[:, k], 0.9) for k in range(3)]
    assert [r["threshold"] for r in doc["per_class"]] == pytest.approx(expected, rel=1e-5)
    assert doc["operating_point"]["saved"] is None and "not saved" in doc["meta"]["thresholds from"]
    assert _sha(run / "model.pt") == before
    assert sorted(p.name for p in run.iterdir()) == files


def test_save_writes_thresholds_json_and_every_command_uses_and_names_it(
    run: Path, setup: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _sha(run / "model.pt")
    doc, _ = _evaluate_json(["-c", str(run), "--tune-thresholds", "recall=0.9", "--save"], capsys)
    assert _sha(run / "model.pt") == before  # model.pt is never rewritten
    saved = json.loads((run / "thresholds.json").read_text())
    vs, vt = setup["expected"]["valid"]
    expected = [_brute_force_threshold(vs[:, k], vt[:, k], 0.9) for k in range(3)]
    assert list(saved["thresholds"]) == CLASSES
    np.testing.assert_allclose(list(saved["thresholds"].values()), expected, rtol=1e-5)
    assert saved["model_sha256"] == before and saved["split"] == "valid" and saved["samples"] == len(vs)
    assert saved["rule"] == "recall >= 0.9 per class" and saved["date"][:4].isdigit()
    assert doc["operating_point"]["saved"] == str(run / "thresholds.json")
    assert "just saved" not in doc["meta"]["thresholds from"]  # the report stays true when read later
    assert "written by this evaluation" in doc["meta"]["thresholds from"]
    assert not [p for p in run.iterdir() if p.name.startswith(".thresholds")]  # no temporary file left

    # evaluate without flags: the file's thresholds, named
    again, _ = _evaluate_json(["-c", str(run)], capsys)
    assert [r["threshold"] for r in again["per_class"]] == pytest.approx(expected, rel=1e-5)
    assert str(run / "thresholds.json") in again["meta"]["thresholds from"]
    # predict, explain and info say which thresholds they use
    [image] = write_images(tmp_path / "imgs", 1)
    assert cli(["predict", str(image), "-c", str(run), "--out", str(tmp_path / "p"), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "thresholds: per class from" in out and "thresholds.json" in out
    meta = json.loads((tmp_path / "p" / "meta.json").read_text())
    np.testing.assert_allclose(meta["thresholds"], expected, rtol=1e-5)
    assert cli(["explain", str(image), "-c", str(run), "--out", str(tmp_path / "e"), "--device", "cpu"]) == 0
    assert "thresholds: per class from" in capsys.readouterr().out
    assert cli(["info", "-c", str(run), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert "thresholds.json" in info["thresholds_source"] and info["thresholds"] == pytest.approx(expected, rel=1e-5)
    # --threshold overrides the file, and says so
    assert cli(["predict", str(image), "-c", str(run), "--out", str(tmp_path / "p2"), "--threshold", "0.3",
                "--device", "cpu"]) == 0  # fmt: skip
    assert "thresholds: --threshold 0.3 for every class" in capsys.readouterr().out


def test_default_is_named_when_there_is_no_file(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    [image] = write_images(tmp_path / "imgs", 1)
    assert cli(["predict", str(image), "-c", str(run), "--out", str(tmp_path / "p"), "--device", "cpu"]) == 0
    assert (
        "thresholds: 0.5 for every class (the default: no thresholds.json beside model.pt)" in capsys.readouterr().out
    )
    assert cli(["info", "-c", str(run)]) == 0
    assert "0.5 for every class" in capsys.readouterr().out


def test_reporting_on_the_tuning_split_warns(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc, err = _evaluate_json(["-c", str(run), "--tune-thresholds", "recall=0.9", "--split", "valid"], capsys)
    assert "warning:" in err and "tuned on the valid split" in err
    assert "optimistic" in doc["warnings"][0] and doc["operating_point"]["same_split"] is True
    # the same later, from the saved file
    _evaluate_json(["-c", str(run), "--tune-thresholds", "recall=0.9", "--save"], capsys)
    doc, err = _evaluate_json(["-c", str(run), "--split", "val"], capsys)
    assert "tuned on the valid split" in err and doc["operating_point"]["same_split"] is True
    doc, err = _evaluate_json(["-c", str(run), "--split", "test"], capsys)
    assert "warning" not in err and doc["operating_point"]["same_split"] is False


def test_stale_file_is_refused_in_one_line(run: Path, setup: dict, tmp_path: Path, capsys) -> None:
    _evaluate_json(["-c", str(run), "--tune-thresholds", "recall=0.9", "--save"], capsys)
    make_bundle(run, dataset_root=setup["root"] / "data", seed=5)  # retrained into the same folder
    [image] = write_images(tmp_path / "imgs", 1)
    assert cli(["predict", str(image), "-c", str(run), "--out", str(tmp_path / "p"), "--device", "cpu"]) == 1
    line = error_line(capsys)
    assert str(run / "thresholds.json") in line and "stale" in line and "--tune-thresholds" in line
    assert not (tmp_path / "p").exists()
    assert cli(["evaluate", "-c", str(run), "--device", "cpu"]) == 1
    assert "stale" in error_line(capsys)
    # info still describes the model, and says why the file is not applied
    assert cli(["info", "-c", str(run), "--json"]) == 0
    assert "stale" in json.loads(capsys.readouterr().out)["thresholds_source"]
    # --threshold works; re-tuning with --save replaces the stale file
    assert cli(["predict", str(image), "-c", str(run), "--out", str(tmp_path / "p"), "--threshold", "0.5",
                "--device", "cpu"]) == 0  # fmt: skip
    capsys.readouterr()
    _evaluate_json(["-c", str(run), "--tune-thresholds", "recall=0.9", "--save"], capsys)
    assert json.loads((run / "thresholds.json").read_text())["model_sha256"] == _sha(run / "model.pt")


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        (lambda d: "{not json", "cannot be read as JSON"),
        (lambda d: json.dumps({**d, "thresholds": {"stroma": 0.2}}), "does not match the classes"),
        (lambda d: json.dumps({**d, "thresholds": {**d["thresholds"], "stroma": 1.5}}), "not a number in [0, 1]"),
        (lambda d: json.dumps({**d, "format": "other"}), "not a probmcl-med thresholds file"),
    ],
)
def test_malformed_file_is_a_one_line_error(run: Path, damage, needle: str) -> None:
    model = run / "model.pt"
    save_thresholds(model, CLASSES, [0.2, 0.4, 0.6], rule="by hand", split="valid")
    path = run / "thresholds.json"
    path.write_text(damage(json.loads(path.read_text())))
    with pytest.raises(CheckpointError) as err:
        read_thresholds(model, CLASSES)
    assert needle in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)
    bundle = load_model_bundle(run)
    assert bundle.threshold_problem == str(err.value)
    with pytest.raises(CheckpointError):
        decision_thresholds(bundle, None)
    assert decision_thresholds(bundle, 0.25).tolist() == [0.25] * 3


def test_library_round_trip(run: Path) -> None:
    tuned = save_thresholds(run / "model.pt", CLASSES, [0.2, 0.4, 0.6], rule="recall >= 0.9 per class", split="valid")
    bundle = load_model_bundle(run)
    assert bundle.thresholds == [0.2, 0.4, 0.6] and bundle.tuned == tuned
    assert describe_thresholds(bundle, None).startswith(f"per class from {run / 'thresholds.json'}")
    with pytest.raises(CheckpointError, match="2 thresholds for the 3 classes"):
        save_thresholds(run / "model.pt", CLASSES, [0.1, 0.2], rule="x", split="valid")
