"""Issue 25's report reads partial results honestly: every arm the protocol runs is listed, with its numbers when its
``result.json`` exists and ``not run`` / ``started, unfinished`` otherwise; an arm without a complete block is not
decided (never 'does not work'); the study's folder is only read. The rule's paired test is checked against
scipy's ``ttest_rel`` on hand-made seeds."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "evidence"))
import issue25
import issue25_report


def _finish(out: Path, dataset: str, init: str, arm: str, seed: int, test_map: float, valid_map: float = 50.0) -> None:
    run = out / "issue25" / dataset / init / f"{arm}__seed{seed}"
    run.mkdir(parents=True, exist_ok=True)
    result = {"valid": {"mAP": valid_map}, "test": {"mAP": test_map, "CF1": test_map - 10.0}}
    (run / "result.json").write_text(json.dumps(result))
    (run / "cpu.json").write_text(json.dumps({"cpu_seconds": 100.0 + seed, "wall_seconds": 1.0, "attempts": 1}))


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_partial_screen_lists_every_arm_and_fills_in_nothing(tmp_path: Path) -> None:
    out, results = tmp_path / "study", tmp_path / "results"
    dataset, init = issue25.SCREEN_BLOCK
    _finish(out, dataset, init, "none", 0, 70.25)
    _finish(out, dataset, init, "supcon", 0, 84.5)
    (out / "issue25" / dataset / init / "tau05__seed0").mkdir(parents=True)  # running: a folder, no result.json
    before = _files(out)

    text = issue25_report.report(out, results)

    screen = text.split("### Screen")[1].split("\n\n`-`")[0]
    rows = {line.split(" | ")[0].strip("| "): line for line in screen.splitlines() if line.startswith("| ")}
    for arm in issue25.SCREEN_ARMS:
        assert arm in rows, f"{arm} missing from the screen table"
    assert rows["none"].startswith("| none | 50.0 | 70.2 | 60.2 |")  # valid, test, CF1 as written
    assert "started, unfinished" in rows["tau05"]
    for arm in set(issue25.SCREEN_ARMS) - {"none", "supcon", "tau05"}:
        assert f"| {arm} | not run |" in text
    assert "2 of 12 runs finished (none, supcon)" in text
    assert "Confirmation: not started" in text
    for dataset_b, init_b in issue25.BLOCKS[1:]:
        assert f"### {dataset_b}, {init_b}: not run" in text
    assert "does not work" not in text and "WORKS" not in text
    assert "`paper`: blocks none complete" in text and "not decided" in text
    decision = json.loads((results / "decision.json").read_text())
    assert decision["rule"]["paper"]["works"] is None
    assert decision["status"]["screen"]["started"] == ["tau05"]
    assert _files(out) == before  # the study's folder is read, never written


def test_a_finished_screen_is_not_saved_into_the_study_folder(tmp_path: Path) -> None:
    out = tmp_path / "study"
    dataset, init = issue25.SCREEN_BLOCK
    for i, arm in enumerate(issue25.SCREEN_ARMS):
        _finish(out, dataset, init, arm, 0, 60.0 + i, valid_map=60.0 + i)
    screen = issue25.screen_decision(out, save=False)
    assert not (out / "screen.json").exists()
    control = 60.0 + issue25.SCREEN_ARMS.index("supcon")
    best = max(issue25.CANDIDATES, key=lambda a: issue25.SCREEN_ARMS.index(a))
    assert screen["control"] == control and screen["advanced"][0] == best
    issue25_report.report(out, tmp_path / "results")
    assert not (out / "screen.json").exists()


def test_the_rule_on_a_complete_block_uses_the_paired_t_test(tmp_path: Path) -> None:
    out = tmp_path / "study"
    dataset, init = issue25.BLOCKS[0]
    paper, supcon = [80.0, 81.5, 79.0], [78.0, 80.0, 78.2]
    paper_ft, none_ft = [85.0, 86.0, 84.5], [84.0, 84.9, 83.0]
    for seed in range(issue25.SEEDS):
        for arm, values in (("paper", paper), ("supcon", supcon), ("paper+ft", paper_ft), ("none+ft", none_ft)):
            _finish(out, dataset, init, arm, seed, values[seed])
    rows, _ = issue25_report.load(out)
    verdict = issue25_report.decision(rows, [])["paper"]
    frozen_p = stats.ttest_rel(paper, supcon).pvalue
    ft_p = stats.ttest_rel(paper_ft, none_ft).pvalue
    assert verdict["complete_blocks"] == [f"{dataset}/{init}"]
    assert verdict["frozen_vs_supcon"]["p"] == pytest.approx(frozen_p, rel=1e-12)
    assert verdict["ft_vs_none_ft"]["p"] == pytest.approx(ft_p, rel=1e-12)
    assert verdict["works"] is bool(frozen_p < 0.05 and ft_p < 0.05)


def test_the_gradient_table_reads_each_arms_contrastive_path(tmp_path: Path) -> None:
    """The control's contrastive gradient is its ``nll_z`` path (it sits in the likelihood slot); a mixture arm's is
    the ``pcl`` path; both shown x 1000 per epoch, beside the effective rank."""
    out = tmp_path / "study"
    dataset, init = issue25.SCREEN_BLOCK
    grads = {"paper": {"nll_z": 0.0003, "nll_mdn": 0.002, "pcl": 0.0025}, "supcon": {"nll_z": 0.0099, "pcl": 0.0}}
    for arm, grad in grads.items():
        _finish(out, dataset, init, arm, 0, 80.0)
        epochs = [{"epoch": e, "grad": grad, "erank": 160.0 + e} for e in range(2)]
        probe = out / "issue25" / dataset / init / f"{arm}__seed0" / "stage1_probe.json"
        probe.write_text(json.dumps({"epochs": epochs}))

    text = issue25_report.report(out, tmp_path / "results")

    gradient = text.split("contrastive gradient on the pooled feature r")[1].split("\n\n")[1]
    header, _, *body = gradient.splitlines()
    assert header.split(" | ")[1:3] == ["paper", "supcon |"]
    assert body[1] == "| 1 | 2.50 | 9.90 |"
    rank = text.split("effective rank of the training features")[1].split("\n\n")[1].splitlines()
    assert rank[3] == "| 1 | 161 | 161 |"


def test_the_extension_puts_the_arms_the_screen_left_to_the_same_rule(tmp_path: Path) -> None:
    """``--phase extend``: an arm the screen did not advance, once it has 3 seeds frozen and fine-tuned on the screen's
    block, is listed there (marked) and decided by the same paired rule; one left at its screen run is not."""
    out = tmp_path / "study"
    dataset, init = issue25.SCREEN_BLOCK
    advanced = ["sharp", "log"]
    extension = issue25.extension_arms(advanced)
    assert "tau05" in extension and "paper_bc" in extension
    assert not set(extension) & {*issue25.REFERENCES, *advanced}
    tau05, supcon = [83.0, 84.0, 85.5], [82.0, 82.5, 83.0]
    tau05_ft, none_ft = [88.0, 87.0, 89.0], [87.5, 87.2, 88.0]
    for seed in range(issue25.SEEDS):
        for arm, values in (("tau05", tau05), ("supcon", supcon), ("tau05+ft", tau05_ft), ("none+ft", none_ft)):
            _finish(out, dataset, init, arm, seed, values[seed])
    _finish(out, dataset, init, "mean8", 0, 80.0)  # the screen's run only
    rows, _ = issue25_report.load(out)

    verdict = issue25_report.decision(rows, advanced)

    assert verdict["tau05"]["extension"] and verdict["tau05"]["complete_blocks"] == [f"{dataset}/{init}"]
    assert verdict["tau05"]["frozen_vs_supcon"]["p"] == pytest.approx(stats.ttest_rel(tau05, supcon).pvalue)
    assert verdict["tau05"]["ft_vs_none_ft"]["p"] == pytest.approx(stats.ttest_rel(tau05_ft, none_ft).pvalue)
    assert "mean8" not in verdict and not verdict["paper"]["extension"]
    lines, _ = issue25_report.block_tables(rows, advanced)
    assert any(line.startswith("| tau05 (extension) | 84.2") for line in lines)
    assert not any(line.startswith("| mean8") for line in lines)


@pytest.fixture
def supcon_likelihood():
    """The cosine control's likelihood name (benchmarks/evidence/plugins/supcon_features.py), registered for the
    test only (its value is not used: only the config's name check)."""
    from probmcl_med.registry import LIKELIHOODS

    added = "supcon_features" not in LIKELIHOODS
    if added:
        LIKELIHOODS.register("supcon_features", lambda mixture, z, labels: z.sum())
    yield
    if added:
        LIKELIHOODS.unregister("supcon_features")


@pytest.mark.usefixtures("supcon_likelihood")
def test_every_run_of_the_protocol_has_a_config_the_schema_accepts(tmp_path: Path) -> None:
    """Each arm's overrides (screen, references, candidates and their fine-tuning in every block) load, in the mode
    the arm means: frozen-head arms two-stage (``none``: probe, no stage 1), every ``+ft`` a probe that fine-tunes."""
    import defaults_study as base
    import stage1_study

    from probmcl_med.config import load_config

    ctx = {
        "out": tmp_path / "study",
        "sizes": dict(base.SIZES),
        "epochs": base.EPOCHS,
        "weights": str(tmp_path / "weights.pt"),
        "folders": {d: tmp_path / d for d, _ in issue25.BLOCKS},
    }
    tuned = [*issue25.FT_REFERENCES, "paper_bc+ft", *(f"{a}+ft" for a in issue25.CANDIDATES)]
    for dataset, init in issue25.BLOCKS:
        for arm in [*issue25.SCREEN_ARMS, *tuned]:
            job = stage1_study.issue25_job(dataset, init, arm, 1, ctx)
            config = load_config(None, overrides=[*job["sets"], "seed=1"], optional=base.COMMON)
            expected = "probe" if arm == "none" or arm.endswith("+ft") else "two-stage"
            assert config.mode == expected, arm
            if arm.endswith("+ft"):
                assert config.classifier.encoder_lr > 0, arm
            if arm in issue25.CANDIDATES:
                key, value = issue25.CANDIDATES[arm][-1].split("=")
                assert config.to_dict()["contrastive"][key.split(".")[1]] == yaml.safe_load(value), arm
