"""Sweeps: grid expansion, resumability, aggregation against numpy, and a tiny real sweep on the demo data."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from sklearn.metrics import average_precision_score
from test_train import TINY

from probmcl_med import sweep
from probmcl_med.errors import ConfigError


def test_grid_expansion_is_the_cartesian_product_with_seeds_innermost():
    grid = sweep.parse_grid(["contrastive.tau=0.1,0.2,0.5", "mode=asl,joint", "contrastive.mdn_hidden=[8,4],[16,8]"])
    assert grid[2] == ("contrastive.mdn_hidden", ["[8,4]", "[16,8]"])
    runs = sweep.expand_grid(sweep.grid_points(grid), 2)
    expected = [
        ((("contrastive.tau", t), ("mode", m), ("contrastive.mdn_hidden", h)), s)
        for t in ("0.1", "0.2", "0.5")
        for m in ("asl", "joint")
        for h in ("[8,4]", "[16,8]")
        for s in (0, 1)
    ]
    assert [(r.point, r.seed) for r in runs] == expected
    assert len({r.name for r in runs}) == len(runs) == 3 * 2 * 2 * 2
    assert runs[0].overrides(Path("o")) == [
        "contrastive.tau=0.1",
        "mode=asl",
        "contrastive.mdn_hidden=[8,4]",
        "seed=0",
        "output_dir=o",
    ]
    assert sweep.grid_points([]) == [()]


@pytest.mark.parametrize("bad", ["tau", "=1,2", "contrastive.tau=0.1,,0.2", "mode=asl,asl"])
def test_bad_grid_is_a_one_line_config_error(bad):
    with pytest.raises(ConfigError, match="--grid"):
        sweep.parse_grid([bad])


def test_aggregation_matches_numpy_mean_and_sample_std():
    rng = np.random.default_rng(0)
    records, values = [], {}
    for point in ("a", "b"):
        for seed in range(3):
            metrics = {m: float(rng.uniform(0, 100)) for m in sweep.METRICS}
            values.setdefault(point, []).append(metrics)
            records.append({"point": point, "seed": seed, "overrides": {"k": point}, **metrics})
    records.append({"point": "c", "seed": 0, "overrides": {"k": "c"}, **dict.fromkeys(sweep.METRICS, 50.0)})
    rows = sweep.aggregate(records, ["k"])
    assert [(r["point"], r["n"], r["k"]) for r in rows] == [("a", 3, "a"), ("b", 3, "b"), ("c", 1, "c")]
    for row in rows[:2]:
        for m in sweep.METRICS:
            xs = np.array([v[m] for v in values[row["point"]]])
            assert row[f"{m}_mean"] == pytest.approx(np.mean(xs))
            assert row[f"{m}_std"] == pytest.approx(np.std(xs, ddof=1))
    assert np.isnan(rows[2]["mAP_std"]) and rows[2]["mAP_mean"] == 50.0


def test_second_invocation_runs_nothing_new(tmp_path, monkeypatch):
    calls = []

    def fake_train(config, resume):
        calls.append((config.output_dir, config.seed, config.contrastive.tau, resume))
        out = Path(config.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "model.pt").write_bytes(b"x")

    def fake_eval(run_dir, device="auto", split="test"):
        return dict.fromkeys(sweep.METRICS, 10.0 * len(calls))

    from probmcl_med.sweep import runner

    monkeypatch.setattr(runner, "train_run", fake_train)
    monkeypatch.setattr(runner, "evaluate_run", fake_eval)
    points = sweep.grid_points(sweep.parse_grid(["contrastive.tau=0.1,0.5"]))
    first = sweep.run_sweep(None, points, 2, tmp_path, ["mode=two-stage"], plots=False)
    assert first.trained == 4 and len(calls) == 4
    assert sorted((c[1], c[2]) for c in calls) == [(0, 0.1), (0, 0.5), (1, 0.1), (1, 0.5)]
    # an interrupted run: its marker is gone and a checkpoint is left; it is resumed, the others are skipped
    interrupted = tmp_path / "contrastive.tau=0.5__seed1"
    (interrupted / sweep.MARKER).unlink()
    (interrupted / "checkpoints").mkdir()
    (interrupted / "checkpoints" / "ckpt.pt").write_bytes(b"x")
    second = sweep.run_sweep(None, points, 2, tmp_path, ["mode=two-stage"], plots=False)
    assert second.trained == 1 and calls[-1][0] == str(interrupted) and calls[-1][3] is True
    third = sweep.run_sweep(None, points, 2, tmp_path, ["mode=two-stage"], plots=False)
    assert third.trained == 0 and len(calls) == 5
    assert [r["mAP"] for r in third.records] == [r["mAP"] for r in second.records]


def test_tiny_real_sweep_through_the_cli(tmp_path, capsys):
    from probmcl_med.cli.main import main

    out = tmp_path / "sweep"
    args = ["sweep", "--grid", "mode=two-stage,asl", "--seeds", "1", "--out", str(out), "--epochs", "2"]
    for s in [*(t for t in TINY if not t.startswith(("mode=", "contrastive.epochs", "classifier.epochs"))),
              "classifier.augment=false"]:  # fmt: skip
        args += ["--set", s]
    capsys.readouterr()
    assert main(args) == 0
    # the --set of two-stage's keys applied to its runs only, said once each; --epochs 2 is each run's length
    err = capsys.readouterr().err
    assert "warning: --set contrastive.batch_size=8: applies to the runs of mode two-stage only" in err
    assert err.count("contrastive.batch_size=8") == 1
    two = yaml.safe_load((out / "mode=two-stage__seed0" / "config.yaml").read_text())
    asl = yaml.safe_load((out / "mode=asl__seed0" / "config.yaml").read_text())
    assert (two["contrastive"]["epochs"], two["classifier"]["epochs"], asl["epochs"]) == (1, 1, 2)
    assert "contrastive" not in asl
    for name in ("runs.csv", "sweep.csv", "sweep.md", "plot_mode.png"):
        assert (out / name).is_file(), name
    assert Image.open(out / "plot_mode.png").format == "PNG"
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert [r["mode"] for r in rows] == ["two-stage", "asl"]

    # independent check of one run's test mAP: scikit-learn on the bundle's own test-split scores
    from probmcl_med.bundle import load_model_bundle
    from probmcl_med.evaluation.run_eval import score_split

    run_dir = out / "mode=asl__seed0"
    record = json.loads((run_dir / sweep.MARKER).read_text())
    scored = score_split(load_model_bundle(run_dir), "test", device="cpu")
    has_pos = scored.targets.sum(axis=0) > 0
    ap = [average_precision_score(scored.targets[:, c], scored.scores[:, c]) for c in np.flatnonzero(has_pos)]
    assert record["mAP"] == pytest.approx(100 * np.mean(ap), abs=1e-6)
    assert float(rows[1]["mAP_mean"]) == pytest.approx(record["mAP"])
    # resumable from the CLI too: nothing is trained again, the table is the same
    before = (out / "sweep.csv").read_text()
    assert main(args) == 0
    assert (out / "sweep.csv").read_text() == before

    # ranking on the validation split, independently: scikit-learn on each run's validation scores
    valid_map = {}
    for mode in ("two-stage", "asl"):
        scored = score_split(load_model_bundle(out / f"mode={mode}__seed0"), "valid", device="cpu")
        has_pos = scored.targets.sum(axis=0) > 0
        aps = [average_precision_score(scored.targets[:, c], scored.scores[:, c]) for c in np.flatnonzero(has_pos)]
        valid_map[mode] = 100 * np.mean(aps)
    best_yaml = tmp_path / "best.yaml"
    assert main([*args, "--write-best", str(best_yaml)]) == 0
    winner = max(valid_map, key=valid_map.get)
    from probmcl_med.config import load_config

    best = load_config(best_yaml)
    assert best.mode == winner and best.output_dir != str(out / f"mode={winner}__seed0")
    assert f"validation mAP: mode={winner}" in best_yaml.read_text().splitlines()[0]


def test_pick_best_ranks_by_validation_never_by_test():
    records = [
        {"point": "a", "seed": 0, "overrides": {"k": "a"}, "mAP": 90.0, "valid": {"mAP": 70.0}},
        {"point": "a", "seed": 1, "overrides": {"k": "a"}, "mAP": 92.0, "valid": {"mAP": 72.0}},
        {"point": "b", "seed": 0, "overrides": {"k": "b"}, "mAP": 60.0, "valid": {"mAP": 75.0}},
        {"point": "b", "seed": 1, "overrides": {"k": "b"}, "mAP": 61.0, "valid": {"mAP": 69.0}},
    ]
    rows = sweep.aggregate(records, ["k"])
    assert [r["valid_mAP_mean"] for r in rows] == [71.0, 72.0]
    assert sweep.pick_best(rows, "mAP")["point"] == "b"  # b wins on validation (72 > 71), a on test
    with pytest.raises(ConfigError, match="--pick-by 'AUC'"):
        sweep.pick_best(rows, "AUC")
    no_valid = sweep.aggregate([{**r, "valid": None} for r in records], ["k"])
    with pytest.raises(ConfigError, match="no run has validation metrics"):
        sweep.pick_best(no_valid, "mAP")


def test_a_set_no_grid_point_reads_is_an_error_and_epochs_applies_per_mode(tmp_path):
    points = sweep.grid_points(sweep.parse_grid(["mode=asl,probe"]))
    with pytest.raises(ConfigError, match=r"--set contrastive.tau=0.1: no grid point's mode \(asl, probe\) reads it"):
        sweep.run_sweep(None, points, 1, tmp_path / "out", ["contrastive.tau=0.1"], plots=False)
    assert not (tmp_path / "out").exists()  # refused before the sweep folder was made
    with pytest.raises(
        ConfigError,
        match=r"grid point mode=two-stage: --epochs 1: mode two-stage trains 2 stages of at least 1 pass each",
    ):
        sweep.run_sweep(None, sweep.grid_points(sweep.parse_grid(["mode=asl,two-stage"])), 1, tmp_path, epochs=1)
