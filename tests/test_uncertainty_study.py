"""The uncertainty study's analysis (benchmarks/evidence/uncertainty_study.py, issue 25 item 4) on synthetic seeds
where the answer is known: a variance that marks the wrong predictions helps, a random one does not."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "evidence"))
import uncertainty_study


def seeds(informative: bool, n: int = 400, classes: int = 4) -> list[dict]:
    rng = np.random.default_rng(0)
    targets = (rng.random((n, classes)) < 0.4).astype(float)
    out = []
    for _ in range(3):
        logits = (2 * targets - 1) * rng.gamma(2.0, 1.0, size=(n, classes)) + rng.normal(0, 1.5, size=(n, classes))
        probs = 1 / (1 + np.exp(-logits))
        wrong = (probs >= 0.5) != (targets >= 0.5)
        var = 1 + rng.random((n, classes)) + (2.0 * wrong if informative else 0.0)
        pi = rng.dirichlet(np.ones(classes), size=n)
        out.append(
            {"probs": probs, "targets": targets, "pi": pi, "var": var, "classes": [f"c{k}" for k in range(classes)]}
        )
    return out


def test_an_informative_variance_helps_and_the_auroc_is_scikit_learns() -> None:
    data = seeds(informative=True)
    rows = uncertainty_study.analyse(data)["rows"]
    summary = uncertainty_study.summarise(rows)
    assert summary["mdn_var_vs_confidence"]["helps"] and summary["mdn_helps"]
    wrong = (data[1]["probs"][:, 2] >= 0.5) != (data[1]["targets"][:, 2] >= 0.5)
    row = next(r for r in rows if r["seed"] == 1 and r["class"] == "c2")
    assert row["auroc_mdn_var"] == pytest.approx(roc_auc_score(wrong, data[1]["var"][:, 2]), abs=1e-12)
    assert row["auroc_confidence"] == pytest.approx(
        roc_auc_score(wrong, -np.abs(data[1]["probs"][:, 2] - 0.5)), abs=1e-12
    )


def test_a_random_variance_does_not_help() -> None:
    summary = uncertainty_study.summarise(uncertainty_study.analyse(seeds(informative=False))["rows"])
    assert not summary["mdn_helps"]
    assert abs(summary["mean"]["mdn_var"]["auroc"] - 0.5) < 0.06
    assert summary["mean"]["confidence"]["auroc"] > 0.7  # the classifier's own confidence is informative here
    lines = uncertainty_study.markdown("synthetic", summary, uncertainty_study.analyse(seeds(False))["rows"])
    assert any("does not help" in line for line in lines)


def test_without_a_complete_block_nothing_is_decided(tmp_path: Path) -> None:
    """Two of three seeds finished: the block is listed as not run and ``mdn_helps`` is None, not False."""
    out, results = tmp_path / "study", tmp_path / "results"
    for seed in range(2):
        run = out / "issue25" / "realhisto" / "scratch" / f"paper__seed{seed}"
        run.mkdir(parents=True)
        (run / "result.json").write_text("{}")
    assert uncertainty_study.main(["--out", str(out), "--results", str(results)]) == 0
    report = json.loads((results / "uncertainty.json").read_text())
    assert report["mdn_helps"] is None and report["blocks"] == {}
    text = (results / "uncertainty.md").read_text()
    assert "realhisto, scratch: not run (2 of 3 seeds of `paper` finished)" in text
    assert "does not help" not in text


def test_the_study_reads_real_two_stage_runs(tmp_path: Path) -> None:
    """Three tiny two-stage runs (seeds 0-2) in the study's layout: ``predictions`` gives the evaluation path's
    probabilities and the MDN run by hand on the encoder's unit-norm features, and ``main`` writes the block."""
    import torch
    import torch.nn.functional as F

    from probmcl_med.bundle import load_model_bundle
    from probmcl_med.config import load_config
    from probmcl_med.engine import train
    from probmcl_med.evaluation.run_eval import build_split_dataset, score_split

    sys.path.insert(0, str(Path(__file__).parent))
    from test_train import TINY

    out = tmp_path / "study"
    for seed in range(3):
        run = out / "issue25" / "realhisto" / "scratch" / f"paper__seed{seed}"
        train(load_config(overrides=[*TINY, f"seed={seed}", f"output_dir={run}"]))
        (run / "result.json").write_text("{}")
    run = out / "issue25" / "realhisto" / "scratch" / "paper__seed1"

    got = uncertainty_study.predictions(run)

    scored = score_split(load_model_bundle(run), "test", checkpoint=run, device="cpu", workers=0)
    np.testing.assert_allclose(got["probs"], scored.scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got["targets"], scored.targets)
    bundle = load_model_bundle(run)
    dataset = build_split_dataset(bundle, "test", checkpoint=run)
    images = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
    with torch.no_grad():
        mixture = bundle.mdn(F.normalize(bundle.encoder(images).float(), dim=1))
    np.testing.assert_allclose(got["pi"], mixture.weights.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["var"], mixture.variances.numpy(), rtol=1e-5, atol=1e-6)

    assert uncertainty_study.main(["--out", str(out), "--results", str(tmp_path / "results")]) == 0
    report = json.loads((tmp_path / "results" / "uncertainty.json").read_text())
    assert list(report["blocks"]) == ["realhisto/scratch"] and report["mdn_helps"] in (True, False)
    rows = report["blocks"]["realhisto/scratch"]["rows"]
    assert {r["seed"] for r in rows} == {0, 1, 2} and all(r["n"] == len(dataset) for r in rows)
