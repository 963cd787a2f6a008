"""Calibration is a file, not a mutation: `evaluate --calibrate --save` writes RUN/calibration.json (never model.pt),
predict, explain and evaluate then report sigmoid(logit / T) and name the file, a stale file is refused with the
command that refits it, and thresholds meet calibrations by the documented rule (raw thresholds convert exactly;
thresholds tuned on another calibration are refused).

Expected temperatures come from scipy's bounded scalar minimiser of each class's validation NLL on the hand-run
model's logits (independent of ``fit_temperatures``); expected probabilities from the hand-run model; file integrity
from hashlib on the bytes of model.pt."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.optimize import minimize_scalar
from test_inference import MEAN, STD, cli, error_line, read_csv
from test_thresholds_file import scored_run

from probmcl_med.bundle import load_model_bundle
from probmcl_med.core.temperature import T_MAX, T_MIN


def hand_logits(encoder, head, paths: list[Path]) -> np.ndarray:
    """head(normalize(encoder(x))) of the hand-run model, float64 (test_inference.hand_probs without the sigmoid)."""
    x = np.stack([np.asarray(Image.open(p).convert("RGB")).astype(np.float64) / 255.0 for p in paths])
    x = (x - np.asarray(MEAN)) / np.asarray(STD)
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2)).float()
    with torch.no_grad():
        return head(F.normalize(encoder.model(xt).float(), dim=1)).double().numpy()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """scored_run's model and images, with valid and test labels drawn from sigmoid(logit / 3) of the model itself:
    a model three times over-confident, so that each fitted temperature lies inside the search interval."""
    out = scored_run(tmp_path_factory.mktemp("calibration"))
    rng = np.random.default_rng(7)
    table = out["root"] / "data" / "labels.csv"
    lines = table.read_text().splitlines()
    for split in ("valid", "test"):
        paths = [p for p, _ in out["rows"][split]]
        z = hand_logits(out["encoder"], out["head"], paths)
        y = (rng.random(z.shape) < 1 / (1 + np.exp(-z / 3))).astype(int)
        y[0, :], y[1, :] = 1, 0  # both labels in every class
        for path, labels in zip(paths, y, strict=True):
            i = next(k for k, line in enumerate(lines) if line.startswith(f"images/{path.name},"))
            lines[i] = ",".join([f"images/{path.name}", *map(str, labels), split])
        out["expected"][split] = (z, y.astype(np.float64))
    table.write_text("\n".join(lines) + "\n")
    return out


@pytest.fixture
def run(tmp_path: Path, setup: dict) -> Path:
    shutil.copytree(setup["root"] / "run", tmp_path / "run")
    return tmp_path / "run"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _scipy_temperatures(z: np.ndarray, targets: np.ndarray) -> list[float]:
    """Per class, scipy's minimiser of the mean binary NLL of sigmoid(z / T) over T in [T_MIN, T_MAX]."""
    out = []
    for c in range(z.shape[1]):

        def nll(t: float, c: int = c) -> float:
            u = z[:, c] / t
            return float(np.mean(np.logaddexp(0, u) - targets[:, c] * u))

        out.append(minimize_scalar(nll, bounds=(T_MIN, T_MAX), method="bounded", options={"xatol": 1e-10}).x)
    return out


def _evaluate_json(args: list[str], capsys: pytest.CaptureFixture[str]) -> dict:
    assert cli(["evaluate", *args, "--json", "--device", "cpu", "--bootstrap", "0"]) == 0
    return json.loads(capsys.readouterr().out)


def test_calibrate_without_save_writes_nothing_and_with_save_only_calibration_json(
    run: Path, setup: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    before, files = _sha(run / "model.pt"), sorted(p.name for p in run.iterdir())
    doc = _evaluate_json(["-c", str(run), "--calibrate"], capsys)
    assert sorted(p.name for p in run.iterdir()) == files and "not saved" in doc["meta"]["calibration"]
    doc = _evaluate_json(["-c", str(run), "--calibrate", "--save"], capsys)
    assert sorted(p.name for p in run.iterdir()) == sorted([*files, "calibration.json"])
    assert _sha(run / "model.pt") == before
    saved = json.loads((run / "calibration.json").read_text())
    assert saved["format"] == "probmcl-med/calibration" and saved["model_sha256"] == before
    vz, vt = setup["expected"]["valid"]
    expected = _scipy_temperatures(vz, vt)
    assert all(T_MIN < t < T_MAX for t in expected)
    assert list(saved["temperatures"].values()) == pytest.approx(expected, rel=1e-4)
    assert "calibration.json" in doc["meta"]["probabilities"]


def test_every_command_reports_calibrated_probabilities_and_names_the_file(
    run: Path, setup: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _evaluate_json(["-c", str(run), "--calibrate", "--save"], capsys)
    temps = np.asarray(list(json.loads((run / "calibration.json").read_text())["temperatures"].values()))
    test_logits, _ = setup["expected"]["test"]
    expected = 1 / (1 + np.exp(-test_logits / temps))
    # predict: the probabilities written are the calibrated hand-run ones, and the output says where they come from
    paths = [p for p, _ in setup["rows"]["test"]]
    folder = tmp_path / "inputs"
    folder.mkdir()
    for p in paths:
        shutil.copy(p, folder / p.name)
    assert cli(["predict", str(folder), "-c", str(run), "--out", str(tmp_path / "pred"), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "probabilities: calibrated by" in out and "calibration.json" in out
    _, rows = read_csv(tmp_path / "pred" / "predictions.csv")
    got = {Path(r[0]).name: [float(v) for v in r[1:]] for r in rows}
    for i, p in enumerate(paths):
        assert got[p.name] == pytest.approx(expected[i], abs=1e-5)
    assert "calibration.json" in json.loads((tmp_path / "pred" / "meta.json").read_text())["probabilities"]
    # evaluate: ECE of the evaluated split before and after, and the calibrated scores
    doc = _evaluate_json(["-c", str(run), "--split", "test"], capsys)
    assert doc["temperature_scaling"]["per_class_ece_calibrated"] is not None
    assert "raw -> calibrated" in " ".join(doc["meta"])
    # explain: its JSON names the calibration and holds the calibrated probability
    assert cli(["explain", str(paths[0]), "-c", str(run), "--out", str(tmp_path / "cam")]) == 0
    explained = json.loads((tmp_path / "cam" / "explain.json").read_text())
    assert "calibration.json" in explained["probabilities_source"]
    assert list(explained["probabilities"].values()) == pytest.approx(expected[0], abs=1e-5)


def test_a_stale_calibration_is_refused_with_the_command_that_refits_it(
    run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _evaluate_json(["-c", str(run), "--calibrate", "--save"], capsys)
    doc = json.loads((run / "calibration.json").read_text())
    doc["model_sha256"] = "0" * 64
    (run / "calibration.json").write_text(json.dumps(doc))
    assert cli(["evaluate", "-c", str(run), "--device", "cpu", "--bootstrap", "0"]) != 0
    line = error_line(capsys)
    assert "stale" in line and f"probmcl-med evaluate --checkpoint {run} --calibrate --save" in line
    _evaluate_json(["-c", str(run), "--calibrate", "--save"], capsys)  # refitting replaces it
    assert load_model_bundle(run).calibration is not None


def test_raw_thresholds_convert_exactly_and_thresholds_of_another_calibration_are_refused(
    run: Path, setup: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    _evaluate_json(["-c", str(run), "--tune-thresholds", "recall=0.9", "--save"], capsys)
    raw = load_model_bundle(run)
    raw_thresholds = np.asarray(raw.thresholds)
    test_logits, _ = setup["expected"]["test"]
    calls_raw = 1 / (1 + np.exp(-test_logits)) >= raw_thresholds
    _evaluate_json(["-c", str(run), "--calibrate", "--save"], capsys)
    calibrated = load_model_bundle(run)
    temps = np.asarray(calibrated.calibration.temperatures)
    p_cal = 1 / (1 + np.exp(-test_logits / temps))
    assert calibrated.tuned.converted and "converted exactly" in calibrated.tuned.describe()
    assert ((p_cal >= np.asarray(calibrated.thresholds)) == calls_raw).all()
    # thresholds tuned now are on the calibrated scale, and their file says so
    _evaluate_json(["-c", str(run), "--tune-thresholds", "recall=0.9", "--save"], capsys)
    saved = json.loads((run / "thresholds.json").read_text())
    assert saved["scores"] == "calibrated" and saved["calibration_sha256"] == _sha(run / "calibration.json")
    # a calibration changed since: the thresholds no longer apply
    doc = json.loads((run / "calibration.json").read_text())
    doc["temperatures"] = {k: 1.0 for k in doc["temperatures"]}
    (run / "calibration.json").write_text(json.dumps(doc))
    assert cli(["predict", str(setup["rows"]["test"][0][0]), "-c", str(run), "--out", str(run.parent / "p")]) != 0
    assert "re-tune" in error_line(capsys)
