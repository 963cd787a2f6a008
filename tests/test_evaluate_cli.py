"""evaluate --checkpoint: metrics equal scikit-learn's on scores computed by running the model by hand; report,
per-class table sorted by recall, tuned thresholds against 0.5; bad input is one line naming the file."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, precision_score, recall_score
from test_inference import CLASSES, cli, error_line, make_bundle
from test_thresholds_file import _brute_force_threshold, scored_run


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return scored_run(tmp_path_factory.mktemp("evaluate"))


def _sklearn_metrics(scores: np.ndarray, targets: np.ndarray, thresholds: np.ndarray) -> dict:
    pred = (scores >= thresholds[None, :]).astype(int)
    c = scores.shape[1]
    ap = [average_precision_score(targets[:, k], scores[:, k]) for k in range(c)]
    p = [precision_score(targets[:, k], pred[:, k], zero_division=0) for k in range(c)]
    r = [recall_score(targets[:, k], pred[:, k], zero_division=0) for k in range(c)]
    return {
        "ap": np.array(ap) * 100,
        "precision": np.array(p) * 100,
        "recall": np.array(r) * 100,
        "OP": 100 * precision_score(targets.ravel(), pred.ravel(), zero_division=0),
        "OR": 100 * recall_score(targets.ravel(), pred.ravel(), zero_division=0),
    }


def test_metrics_equal_sklearn_on_hand_computed_scores(setup: dict, capsys: pytest.CaptureFixture[str]) -> None:
    run = setup["root"] / "run"
    assert cli(["evaluate", "--checkpoint", str(run), "--split", "test", "--json", "--device", "cpu"]) == 0
    doc = json.loads(capsys.readouterr().out)
    scores, targets = setup["expected"]["test"]
    ref = _sklearn_metrics(scores, targets, np.full(3, 0.5))
    per_class = {r["name"]: r for r in doc["per_class"]}
    assert list(per_class) == CLASSES
    for k, name in enumerate(CLASSES):
        assert per_class[name]["ap"] == pytest.approx(ref["ap"][k], abs=1e-6)
        assert per_class[name]["precision"] == pytest.approx(ref["precision"][k], abs=1e-9)
        assert per_class[name]["recall"] == pytest.approx(ref["recall"][k], abs=1e-9)
        assert per_class[name]["support"] == int(targets[:, k].sum())
    assert doc["summary"]["mAP"] == pytest.approx(ref["ap"].mean(), abs=1e-6)
    assert doc["summary"]["CP"] == pytest.approx(ref["precision"].mean(), abs=1e-9)
    assert doc["summary"]["CR"] == pytest.approx(ref["recall"].mean(), abs=1e-9)
    assert doc["summary"]["OP"] == pytest.approx(ref["OP"], abs=1e-9)
    assert doc["summary"]["OR"] == pytest.approx(ref["OR"], abs=1e-9)
    assert doc["num_samples"] == len(targets)
    # model cost of encoder + head: parameters counted by hand
    params = sum(p.numel() for p in setup["encoder"].parameters()) + sum(p.numel() for p in setup["head"].parameters())
    assert doc["model_cost"]["params"] == params
    assert doc["model_cost"]["input_shape"] == [1, 3, 32, 32]
    assert doc["model_cost"]["gmac"] > 0


def test_table_sorted_by_recall_and_report_written(
    setup: dict, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps long tables to the terminal width
    run, report = setup["root"] / "run", setup["root"] / "report"
    code = cli(["evaluate", "-c", str(run), "--report", str(report), "--recall-floor", "0.99", "--device", "cpu"])
    assert code == 0
    out = capsys.readouterr().out
    table = out[out.index("lowest recall first") :]
    positions = {name: table.index(name) for name in CLASSES}
    metrics = json.loads((report / "metrics.json").read_text())
    recall = {r["name"]: r["recall"] for r in metrics["per_class"]}
    shown = sorted(CLASSES, key=lambda n: positions[n])
    assert [recall[n] for n in shown] == sorted(recall[n] for n in shown)
    assert "GMAC" in out
    for name in ("metrics.json", "per_class.csv", "scores.npz", "report.md", "report.html"):
        assert (report / name).is_file(), name
    saved = np.load(report / "scores.npz")
    np.testing.assert_allclose(saved["scores"], setup["expected"]["test"][0], rtol=1e-5, atol=1e-6)
    assert metrics["meta"]["split"] == "test"
    assert "GMAC" in metrics["meta"]["model cost"]


def test_tuned_thresholds_report_their_cost_against_the_baseline(
    tmp_path: Path, setup: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(setup["root"] / "run", run)
    report = tmp_path / "report"
    code = cli(["evaluate", "-c", str(run), "--tune-thresholds", "recall=0.9", "--report", str(report), "--json",
                "--gallery", "0", "--device", "cpu"])  # fmt: skip
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    vs, vt = setup["expected"]["valid"]
    tuned = np.array([_brute_force_threshold(vs[:, k], vt[:, k], 0.9) for k in range(3)])
    ts, tt = setup["expected"]["test"]
    ref = _sklearn_metrics(ts, tt, tuned)
    for k, row in enumerate(doc["per_class"]):
        assert row["threshold"] == pytest.approx(tuned[k], rel=1e-5)
        assert row["recall"] == pytest.approx(ref["recall"][k], abs=1e-9)
    base = _sklearn_metrics(ts, tt, np.full(3, 0.5))
    changes = [r["precision_change"] for r in doc["threshold_tuning"]["per_class"]]
    np.testing.assert_allclose(changes, ref["precision"] - base["precision"], atol=1e-9)
    changes = [r["recall_change"] for r in doc["threshold_tuning"]["per_class"]]
    np.testing.assert_allclose(changes, ref["recall"] - base["recall"], atol=1e-9)
    written = json.loads((report / "metrics.json").read_text())
    assert written == {k: v for k, v in doc.items() if k != "report"}  # one result: --json is metrics.json
    page = (report / "report.html").read_text()
    assert "The operating point: tuned thresholds against 0.5" in page
    for key, per_class in (("CP", "precision"), ("CR", "recall")):
        before, after = base[per_class].mean(), ref[per_class].mean()
        verb = "rises" if after > before else "falls"
        assert f"({key}) {verb} from {before:.1f} % to {after:.1f} %" in page


def test_scores_and_targets_files(tmp_path: Path, setup: dict, capsys: pytest.CaptureFixture[str]) -> None:
    scores, targets = setup["expected"]["test"]
    header = ",".join(CLASSES)
    np.savetxt(tmp_path / "s.csv", scores, delimiter=",", header=header, comments="", fmt="%.10f")
    np.savetxt(tmp_path / "t.csv", targets, delimiter=",", header=header, comments="", fmt="%d")
    assert cli(["evaluate", "--scores", str(tmp_path / "s.csv"), "--targets", str(tmp_path / "t.csv"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    ref = _sklearn_metrics(scores, targets, np.full(3, 0.5))
    assert doc["summary"]["mAP"] == pytest.approx(ref["ap"].mean(), abs=1e-6)
    assert [r["name"] for r in doc["per_class"]] == CLASSES


def test_class_mismatch_is_one_line_naming_the_checkpoint(
    tmp_path: Path, setup: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    make_bundle(tmp_path / "other", dataset_root=setup["root"] / "data", classes=["epithelium", "stroma", "fat"])
    assert cli(["evaluate", "-c", str(tmp_path / "other"), "--device", "cpu"]) == 1
    line = error_line(capsys)
    assert str(tmp_path / "other" / "model.pt") in line
    assert "'necrosis'" in line and "'fat'" in line


def test_missing_checkpoint_and_bad_recall_target(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["evaluate", "-c", str(tmp_path / "nope")]) == 1
    assert str(tmp_path / "nope") in error_line(capsys)
    assert cli(["evaluate", "-c", str(tmp_path / "nope"), "--tune-thresholds", "recal=0.9"]) == 1
    assert re.search(r"did you mean recall", error_line(capsys))


def test_report_gallery_and_training_curves(tmp_path: Path, setup: dict, capsys: pytest.CaptureFixture[str]) -> None:
    """--gallery 2: per class the two positives with the lowest hand-computed scores under 0.5 and the two negatives
    with the highest scores at or above it, each an embedded [image | Grad-CAM] thumbnail whose caption says so;
    training curves from the run's metrics.jsonl."""
    import base64
    import io
    import shutil

    from PIL import Image

    run = tmp_path / "run"
    shutil.copytree(setup["root"] / "run", run)
    records = [
        {"stage": "classifier", "epoch": e, "loss": 1.0 / e, "asl": 1.0 / e, "val_mAP": 50.0 + e} for e in (1, 2)
    ]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n{torn")
    report = tmp_path / "report"
    assert cli(["evaluate", "-c", str(run), "--report", str(report), "--gallery", "2", "--device", "cpu"]) == 0
    capsys.readouterr()
    scores, targets = setup["expected"]["test"]
    rows = setup["rows"]["test"]
    md = (report / "report.md").read_text()
    page = (report / "report.html").read_text()
    for k in range(3):
        missed = sorted((scores[i, k], i) for i in range(len(rows)) if targets[i, k] == 1 and scores[i, k] < 0.5)
        alarms = sorted((-scores[i, k], i) for i in range(len(rows)) if targets[i, k] == 0 and scores[i, k] >= 0.5)
        for kind, chosen in (("missed", missed[:2]), ("false_alarm", alarms[:2])):
            for j, (_, i) in enumerate(chosen):
                name = f"gallery/class{k:03d}_{kind}_{j}.png"
                thumb = Image.open(report / name)
                assert thumb.size == (2 * 120 + 4, 120)
                caption = f"{rows[i][0].name}: p = {scores[i, k]:.2f} (threshold 0.50), "
                caption += "has the class" if kind == "missed" else "lacks the class"
                assert f"![{caption}]({name})" in md
                data = base64.b64encode((report / name).read_bytes()).decode()
                assert data in page
            assert not (report / f"gallery/class{k:03d}_{kind}_{len(chosen)}.png").exists()
    # test_resnet at 32 px: layer1 gives 8 x 8 (stride 4), layer2 4 x 4: the deepest map at least 7 x 7 is layer1's
    assert "Grad-CAM layer: <code>encoder.model.layer1</code>" in page
    curves = Image.open(io.BytesIO((report / "training_curves.png").read_bytes()))
    assert curves.format == "PNG" and "Training curves" in page
