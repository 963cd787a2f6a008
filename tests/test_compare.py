"""`compare`: the paired bootstrap against an explicit resampling loop with scikit-learn, a model against itself,
the folder it writes, and refusals."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from probmcl_med.cli.main import main
from probmcl_med.errors import DataError
from probmcl_med.evaluation.compare import compare_score_files
from probmcl_med.evaluation.paired import paired_ap_difference

NAMES = ["tumour", "stroma", "necrosis", "fat"]


def _data(n: int = 90, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, 4)) < np.array([0.4, 0.3, 0.08, 0.5])).astype(float)
    targets[:2, 2] = 1
    a = np.clip(rng.random(targets.shape) * 0.8 + 0.25 * targets, 0, 1).round(2)  # ties on purpose
    b = np.clip(a + 0.2 * targets * rng.random(targets.shape), 0, 1).round(2)  # B separates better
    return a, b, targets


def _explicit_paired_bootstrap(a, b, targets, resamples, seed, level=0.95):
    """Row-index resamples drawn as the method states, both models' AP by sklearn on the resampled rows."""
    n, c = targets.shape
    draws = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    d_map, d_ap = [], []
    for idx in draws:
        t = targets[idx]
        rows = []
        for k in range(c):
            if t[:, k].sum() == 0:
                rows.append(np.nan)
                continue
            rows.append(
                100 * (average_precision_score(t[:, k], b[idx, k]) - average_precision_score(t[:, k], a[idx, k]))
            )
        d_ap.append(rows)
        d_map.append(np.nanmean(rows))
    d_ap, d_map = np.array(d_ap), np.array(d_map)
    full = [
        100 * (average_precision_score(targets[:, k], b[:, k]) - average_precision_score(targets[:, k], a[:, k]))
        for k in range(c)
    ]
    observed = float(np.mean(full))
    tail = 100 * (1 - level) / 2

    def p_value(d, values):
        values = values[np.isfinite(values)]
        return (1 + np.sum(np.abs(values - d) >= abs(d))) / (values.size + 1)

    per_class = []
    for k in range(c):
        v = d_ap[:, k][np.isfinite(d_ap[:, k])]
        enough = targets[:, k].sum() >= 10
        per_class.append(
            {
                "delta_ap": full[k],
                "delta_ap_ci": list(np.percentile(v, [tail, 100 - tail])) if enough else None,
                "delta_ap_p": p_value(full[k], d_ap[:, k]) if enough else None,
            }
        )
    return observed, list(np.percentile(d_map, [tail, 100 - tail])), p_value(observed, d_map), per_class


def test_paired_bootstrap_equals_an_explicit_loop_with_sklearn() -> None:
    a, b, targets = _data()
    got = paired_ap_difference(a, b, targets, resamples=200, seed=7)
    observed, ci, p, per_class = _explicit_paired_bootstrap(a, b, targets, 200, 7)
    assert got["delta_mAP"] == pytest.approx(observed, abs=1e-9)
    assert got["delta_mAP_ci"] == pytest.approx(ci, abs=1e-9)
    assert got["delta_mAP_p"] == pytest.approx(p, abs=1e-12)
    assert got["delta_mAP_ci"][0] > 0 and got["delta_mAP_p"] < 0.05  # B was built to rank better
    for g, w in zip(got["per_class"], per_class, strict=True):
        assert g["delta_ap"] == pytest.approx(w["delta_ap"], abs=1e-9)
        assert g["delta_ap_ci"] == (None if w["delta_ap_ci"] is None else pytest.approx(w["delta_ap_ci"], abs=1e-9))
        assert g["delta_ap_p"] == (None if w["delta_ap_p"] is None else pytest.approx(w["delta_ap_p"], abs=1e-12))
    assert got["per_class"][2]["delta_ap_ci"] is None  # 'necrosis': fewer than 10 positives


def test_a_model_against_itself_gives_zero_with_interval_zero_and_p_one() -> None:
    a, _, targets = _data(seed=3)
    got = paired_ap_difference(a, a, targets, resamples=300)
    assert got["delta_mAP"] == 0.0 and got["delta_mAP_ci"] == [0.0, 0.0] and got["delta_mAP_p"] == 1.0
    for row in got["per_class"]:
        assert row["delta_ap"] == 0.0
        assert row["delta_ap_ci"] in (None, [0.0, 0.0]) and row["delta_ap_p"] in (None, 1.0)


def _write(path: Path, header: list[str], rows: np.ndarray, fmt: str) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", *header])
        for i, row in enumerate(rows):
            writer.writerow([f"img{i}.png", *(format(x, fmt) for x in row)])
    return path


def test_compare_cli_writes_html_and_json_with_deltas(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b, targets = _data()
    sa = _write(tmp_path / "asl.csv", NAMES, a, ".2f")
    sb = _write(tmp_path / "probmcl.csv", NAMES, b, ".2f")
    t = _write(tmp_path / "truth.csv", NAMES, targets, ".0f")
    out = tmp_path / "cmp"
    args = ["compare", "--scores", str(sa), "--scores", str(sb), "--scores", str(sa), "--targets", str(t)]
    assert main([*args, "--out", str(out), "--bootstrap", "200"]) == 0
    printed = capsys.readouterr().out
    assert "probmcl against asl: mAP +" in printed and "ranks these images better" in printed
    document = json.loads((out / "compare.json").read_text())
    assert [m["label"] for m in document["models"]] == ["asl", "probmcl", "asl (2)"]
    first, itself = document["comparisons"]
    want = paired_ap_difference(a, b, targets, resamples=200)
    assert first["delta_mAP"] == pytest.approx(want["delta_mAP"]) and first["delta_mAP_ci"] == want["delta_mAP_ci"]
    assert {"delta_mAP", "delta_mAP_ci", "delta_mAP_p", "delta_summary"} <= set(first)
    assert {"delta_ap", "delta_ap_ci", "delta_ap_p"} <= set(first["per_class"][0])
    assert itself["delta_mAP"] == 0 and itself["delta_mAP_ci"] == [0, 0] and itself["delta_mAP_p"] == 1
    ap_a = np.mean([100 * average_precision_score(targets[:, k], a[:, k]) for k in range(4)])
    assert document["models"][0]["summary"]["mAP"] == pytest.approx(ap_a)
    page = (out / "compare.html").read_text()
    assert "The paper&#x27;s metrics side by side" in page and "data:image/png;base64," in page
    assert (out / "delta_ap_1.png").is_file() and (out / "compare.md").is_file()


def test_compare_refuses_mismatched_inputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b, targets = _data()
    sa = _write(tmp_path / "a.csv", NAMES, a, ".2f")
    other = _write(tmp_path / "b.csv", ["tumour", "stroma", "necrosis", "muscle"], b, ".2f")
    t = _write(tmp_path / "t.csv", NAMES, targets, ".0f")
    with pytest.raises(DataError, match="class column 4"):
        compare_score_files([sa, other], t)
    with pytest.raises(DataError, match="at least two"):
        compare_score_files([sa], t)
    assert main(["compare", "--scores", str(sa), "--scores", str(sa)]) == 2
    assert "--targets" in capsys.readouterr().err
    precious = tmp_path / "thesis"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep")
    assert main(["compare", "--scores", str(sa), "--scores", str(sa), "--targets", str(t), "--out", str(precious)]) == 1
    err = capsys.readouterr().err
    assert "holds files probmcl-med did not write there (notes.txt)" in err and "comparison folder" in err
    assert sorted(p.name for p in precious.iterdir()) == ["notes.txt"]
    assert (precious / "notes.txt").read_text() == "keep"


def test_compare_runs_scores_each_run_as_by_hand_and_refuses_another_dataset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from test_inference import make_bundle, make_csv_dataset
    from test_thresholds_file import scored_run

    setup = scored_run(tmp_path)
    make_bundle(tmp_path / "run_b", dataset_root=tmp_path / "data", seed=1)
    args = ["compare", str(tmp_path / "run"), str(tmp_path / "run_b"), str(tmp_path / "run")]
    assert main([*args, "--json", "--device", "cpu", "--bootstrap", "100"]) == 0
    document = json.loads(capsys.readouterr().out)
    scores, targets = setup["expected"]["test"]
    ap = np.mean([100 * average_precision_score(targets[:, k], scores[:, k]) for k in range(scores.shape[1])])
    assert document["models"][0]["summary"]["mAP"] == pytest.approx(ap, abs=1e-4)  # the model run by hand
    assert [m["label"] for m in document["models"]] == ["run", "run_b", "run (2)"]
    itself = document["comparisons"][1]
    assert itself["delta_mAP"] == 0 and itself["delta_mAP_ci"] in (None, [0, 0]) and itself["delta_mAP_p"] in (None, 1)
    # a run of another dataset (other images) is refused in one line
    make_csv_dataset(tmp_path / "other_data", n_per_split=12)
    make_bundle(tmp_path / "run_c", dataset_root=tmp_path / "other_data")
    assert main(["compare", str(tmp_path / "run"), str(tmp_path / "run_c"), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "hold different images or labels" in err and str(tmp_path / "run_c") in err
