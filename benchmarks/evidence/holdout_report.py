"""Tables of the hold-out study (holdout_study.py): the decision on the deciding sets, then every dataset's arms,
paired tests against the plain loop, calibration before and after temperature scaling, and cost.

    python benchmarks/evidence/holdout_study.py --decide    # deciding sets only: writes results_holdout/decision.json
    python benchmarks/evidence/holdout_study.py --report    # everything: results_holdout/tables.md and runs.json
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from holdout_study import CONFIRMING, DECIDING, PLAIN_ARMS, PROJECT_ARMS, SCHEDULES

BOOTSTRAP = 2000
SHIPPED = "onecycle"
"""The schema's default after the study. The protocol's rule picked ``constant`` on the deciding sets (no schedule
passed; constant had the smallest shortfall); it failed both confirmation sets, where ``onecycle`` was the best of
the three candidates. The issue asks for a decaying schedule by default "or whatever the protocol shows is better on
the confirmation sets", so the project ships ``onecycle``: a departure from the rule the protocol fixed, stated as one
in the tables, benchmarks/evidence/README.md and the README."""
ECE_BAR = 20.0
"""The issue's bar: no class's ECE at the default operating point above 20 %."""


# ----------------------------------------------------------------------------------------------------------- loading
def load_runs(out: Path, datasets: dict[str, int]) -> list[dict]:
    """Every finished run of ``datasets``: its result.json, cost.json and the path of its scores.npz."""
    rows = []
    for dataset in datasets:
        for path in sorted((out / dataset).glob("*__seed*/result.json")):
            arm, seed = path.parent.name.rsplit("__seed", 1)
            cost_file = path.parent / "cost.json"
            cost = json.loads(cost_file.read_text()) if cost_file.is_file() else {}
            record = {"dataset": dataset, "arm": arm, "seed": int(seed), **json.loads(path.read_text()), **cost}
            record["scores"] = str(path.parent / "scores.npz")
            ran = record.get("lr_schedule")
            if arm.startswith("sched-") and ran != arm.removeprefix("sched-"):
                raise ValueError(f"{path}: the run's lr_schedule is {ran!r}, not its arm's; move it to its own arm")
            if arm == "default" and not (out / dataset / f"sched-{ran}__seed{seed}" / "result.json").is_file():
                record["arm"] = f"sched-{ran}"  # the config-free run is its schedule's candidate where none ran
            rows.append(record)
    return rows


def identical_defaults(rows: list[dict]) -> str:
    """How many config-free ``default`` runs equal, metric for metric, the ``sched-`` run of the schedule they ran."""
    pairs = [(r, s) for r in rows if r["arm"] == "default" for s in rows
             if s["arm"] == f"sched-{r['lr_schedule']}" and (s["dataset"], s["seed"]) == (r["dataset"], r["seed"])]  # fmt: skip
    same = sum(r["test"] == s["test"] and r["valid"] == s["valid"] for r, s in pairs)
    return f"{same} of {len(pairs)}"


def test_maps(rows: list[dict], dataset: str, arm: str) -> dict[int, float]:
    """{seed: test mAP} of one arm."""
    return {r["seed"]: r["test"]["mAP"] for r in rows if r["dataset"] == dataset and r["arm"] == arm}


def mean_sd(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{np.mean(values):.1f}" + (f" ± {np.std(values, ddof=1):.1f}" if len(values) > 1 else "")


def schedule_arm(schedule: str) -> str:
    """The arm that ran a candidate schedule (``lr_schedule`` set on the command line)."""
    return f"sched-{schedule}"


def best_plain(rows: list[dict], dataset: str) -> tuple[str, list[float]] | None:
    """The plain arm with the highest mean test mAP on ``dataset`` (its own best schedule) and its per-seed mAPs."""
    means = {a: np.mean(list(m.values())) for a in PLAIN_ARMS if (m := test_maps(rows, dataset, a))}
    if not means:
        return None
    arm = max(means, key=means.get)
    return arm, list(test_maps(rows, dataset, arm).values())


def passes(rows: list[dict], dataset: str, arm: str) -> tuple[bool, float] | None:
    """(mean >= best plain mean - best plain seed std, shortfall in mAP) of one arm; None without enough runs."""
    best = best_plain(rows, dataset)
    maps = list(test_maps(rows, dataset, arm).values())
    if best is None or not maps or len(best[1]) < 2:
        return None
    bar = np.mean(best[1]) - np.std(best[1], ddof=1)
    return bool(np.mean(maps) >= bar), float(np.mean(best[1]) - np.mean(maps))


# ----------------------------------------------------------------------------------------------------------- decision
def decide(out: Path, results: Path | None = None) -> str:
    """The protocol's decision rule on the deciding sets only; writes ``decision.json`` when every run is in."""
    rows = load_runs(out, DECIDING)
    lines = [
        "| deciding set | best plain loop | " + " | ".join(SCHEDULES) + " |",
        "|---|---|" + "---|" * len(SCHEDULES),
    ]
    verdict: dict[str, dict] = {s: {"passes": True, "worst_shortfall": -np.inf, "complete": True} for s in SCHEDULES}
    for dataset in DECIDING:
        best = best_plain(rows, dataset)
        cells = [f"{best[0]}: {mean_sd(best[1])}" if best else "-"]
        for schedule in SCHEDULES:
            maps = list(test_maps(rows, dataset, schedule_arm(schedule)).values())
            check = passes(rows, dataset, schedule_arm(schedule))
            v = verdict[schedule]
            if check is None or len(maps) < 3 or best is None or len(best[1]) < 3:
                v["complete"] = False
            if check is not None:
                v["passes"] &= check[0]
                v["worst_shortfall"] = max(v["worst_shortfall"], check[1])
            cells.append(f"{mean_sd(maps)}" + ("" if check is None else (" pass" if check[0] else " FAIL")))
        lines.append(f"| {dataset} | " + " | ".join(cells) + " |")
    complete = all(v["complete"] for v in verdict.values())
    passing = [s for s in SCHEDULES if verdict[s]["passes"]]
    chosen = passing[0] if passing else min(SCHEDULES, key=lambda s: verdict[s]["worst_shortfall"])
    why = "first candidate passing on every deciding set" if passing else "none passes: smallest worst shortfall"
    lines.append(f"\nDecision ({'final: 3 seeds of every arm' if complete else 'PROVISIONAL: runs missing'}): "
                 f"`lr_schedule: {chosen}` ({why}).")  # fmt: skip
    if complete and results is not None:
        results.mkdir(parents=True, exist_ok=True)
        record = {"schedule": chosen, "why": why, "verdict": {s: {**v, "worst_shortfall": float(v["worst_shortfall"])}
                                                            for s, v in verdict.items()}}  # fmt: skip
        (results / "decision.json").write_text(json.dumps(record, indent=2) + "\n")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------- tests
def paired(rows: list[dict], dataset: str, arm: str, reference: str) -> str:
    """Paired bootstrap over test images of mean_s [mAP(arm, s) - mAP(reference, s)], and a paired t-test over seeds."""
    from scipy import stats

    from probmcl_med.core.metrics import average_precision

    seeds = sorted(set(test_maps(rows, dataset, arm)) & set(test_maps(rows, dataset, reference)))
    if not seeds:
        return "-"
    by = {(r["arm"], r["seed"]): r for r in rows if r["dataset"] == dataset}
    scores = {}
    for a in (arm, reference):
        for s in seeds:
            z = np.load(by[(a, s)]["scores"])
            scores[(a, s)] = (1.0 / (1.0 + np.exp(-z["test_logits"])), z["test_targets"])
    n = scores[(arm, seeds[0])][0].shape[0]
    rng = np.random.default_rng(0)

    def mean_ap(p: np.ndarray, t: np.ndarray) -> float:
        has = t.sum(0) > 0
        return 100.0 * float(average_precision(p[:, has], t[:, has]).mean())

    observed = np.mean([mean_ap(*scores[(arm, s)]) - mean_ap(*scores[(reference, s)]) for s in seeds])
    deltas = np.empty(BOOTSTRAP)
    for b in range(BOOTSTRAP):
        idx = rng.integers(0, n, n)
        deltas[b] = np.mean([mean_ap(scores[(arm, s)][0][idx], scores[(arm, s)][1][idx])
                             - mean_ap(scores[(reference, s)][0][idx], scores[(reference, s)][1][idx])
                             for s in seeds])  # fmt: skip
    lo, hi = np.percentile(deltas, [2.5, 97.5])
    p_boot = min(1.0, 2.0 * min((deltas <= 0).mean(), (deltas >= 0).mean()))
    t_text = ""
    if len(seeds) >= 2:
        a = [test_maps(rows, dataset, arm)[s] for s in seeds]
        b = [test_maps(rows, dataset, reference)[s] for s in seeds]
        t_text = f", t-test p {stats.ttest_rel(a, b).pvalue:.3f}"
    return f"{observed:+.1f} [{lo:+.1f}, {hi:+.1f}] p {p_boot:.3f}{t_text}"


# ----------------------------------------------------------------------------------------------------------- calibration
def calibration_cells(record: dict) -> dict[str, float]:
    """Test-split ECE per class (percent) of one run before and after per-class temperature scaling fitted on its own
    valid logits, and the most over-called class at 0.5 (call rate minus prevalence, percent)."""
    from probmcl_med.core.temperature import calibrated_probabilities, fit_temperatures
    from probmcl_med.evaluation.calibrate import per_class_ece

    z = np.load(record["scores"])
    temps = fit_temperatures(z["valid_logits"], z["valid_targets"])
    raw = per_class_ece(calibrated_probabilities(z["test_logits"], np.ones_like(temps)), z["test_targets"])
    cal = per_class_ece(calibrated_probabilities(z["test_logits"], temps), z["test_targets"])
    called = (z["test_logits"] >= 0).mean(0) * 100.0
    prevalence = z["test_targets"].mean(0) * 100.0
    k = int(np.argmax(called - prevalence))
    return {"raw_worst": max(raw), "raw_mean": float(np.mean(raw)), "cal_worst": max(cal),
            "cal_mean": float(np.mean(cal)), "called": float(called[k]), "prevalence": float(prevalence[k])}  # fmt: skip


# ----------------------------------------------------------------------------------------------------------- report
def report(out: Path, results: Path, deciding_only: bool = False) -> str:
    """Markdown tables of every finished run (results/tables.md) and the raw records (results/runs.json).

    ``deciding_only``: the deciding sets alone (results/tables_deciding.md), what may be read before the decision.
    """
    chosen = dict(DECIDING) if deciding_only else {**DECIDING, **CONFIRMING}
    rows = load_runs(out, chosen)
    results.mkdir(parents=True, exist_ok=True)
    (results / ("runs_deciding.json" if deciding_only else "runs.json")).write_text(json.dumps(rows, indent=2) + "\n")
    lines = [
        "## Decision (deciding sets only)\n",
        decide(out, results),
        "\n## Summary: test mAP, mean ± std over seeds\n",
    ]
    arms = [a for a in (*PLAIN_ARMS, *PROJECT_ARMS) if a != "default" and any(r["arm"] == a for r in rows)]
    shipped = schedule_arm(SHIPPED)
    lines.append("| set | role | " + " | ".join(arms) + " | each schedule within 1 std of the best plain loop | "
                 f"shipped default ({SHIPPED}) - plain-onecycle (the issue's bar: >= -1.5) |")  # fmt: skip
    lines.append("|---|---|" + "---:|" * len(arms) + "---|---:|")
    for dataset in chosen:
        cells = [
            f"{mean_sd(list(test_maps(rows, dataset, a).values()))} ({len(test_maps(rows, dataset, a))})" for a in arms
        ]
        verdicts = []
        for schedule in SCHEDULES:
            check = passes(rows, dataset, schedule_arm(schedule))
            verdicts.append(f"{schedule} " + ("-" if check is None else "yes" if check[0] else "NO"))
        d, o = test_maps(rows, dataset, shipped), test_maps(rows, dataset, "plain-onecycle")
        gap = f"{np.mean(list(d.values())) - np.mean(list(o.values())):+.1f}" if d and o else "-"
        role = "deciding" if dataset in DECIDING else "confirmation"
        lines.append(f"| {dataset} | {role} | " + " | ".join(cells) + f" | {', '.join(verdicts)} | {gap} |")
    lines.append(f"\nThe config-free `default` runs (nothing set; on the confirmation sets they are the `constant` "
                 f"candidate's runs) equal the `sched-` run of their schedule metric for metric in "
                 f"{identical_defaults(rows)} pairs (same seed). Shipped default: `lr_schedule: {SHIPPED}` "
                 f"(holdout_report.SHIPPED: why).")  # fmt: skip
    for dataset in chosen:
        block = [r for r in rows if r["dataset"] == dataset]
        if not block:
            continue
        best = best_plain(rows, dataset)
        ref = best[0] if best else None
        lines.append(
            f"\n### {dataset} ({'deciding' if dataset in DECIDING else 'confirmation'}; best plain loop: {ref})\n"
        )
        lines.append(f"| arm | n | valid mAP | test mAP | CP | CR | CF1 | vs {ref}: Δ [95 % CI] p (paired bootstrap over "
                     "test images, mean over seeds) | vs plain-onecycle | test ECE worst / mean, raw -> calibrated | "
                     "most over-called at 0.5: called / present | CPU s | wall s |")  # fmt: skip
        lines.append("|---|---:|---:|---:|---:|---:|---:|---|---|---|---|---:|---:|")
        for arm in arms:
            runs = [r for r in block if r["arm"] == arm]
            if not runs:
                continue
            cal = [calibration_cells(r) for r in runs]
            ece = (f"{np.mean([c['raw_worst'] for c in cal]):.1f} / {np.mean([c['raw_mean'] for c in cal]):.1f} -> "
                   f"{np.mean([c['cal_worst'] for c in cal]):.1f} / {np.mean([c['cal_mean'] for c in cal]):.1f}")  # fmt: skip
            over = f"{np.mean([c['called'] for c in cal]):.0f} % / {np.mean([c['prevalence'] for c in cal]):.0f} %"
            metric = {k: mean_sd([r["test"][k] for r in runs]) for k in ("mAP", "CP", "CR", "CF1")}
            versus = "" if arm == ref or ref is None else paired(rows, dataset, arm, ref)
            versus_oc = "" if arm == "plain-onecycle" else paired(rows, dataset, arm, "plain-onecycle")
            cpu = mean_sd([r["cpu_seconds"] for r in runs if "cpu_seconds" in r])
            wall = mean_sd([r["wall_seconds"] for r in runs if "wall_seconds" in r])
            lines.append(f"| {arm} | {len(runs)} | {mean_sd([r['valid']['mAP'] for r in runs])} | {metric['mAP']} | "
                         f"{metric['CP']} | {metric['CR']} | {metric['CF1']} | {versus} | {versus_oc} | {ece} | {over} | "
                         f"{cpu} | {wall} |")  # fmt: skip
    lines.append(f"\nECE: 10 equal-width bins per class, test split, percent; calibrated = one temperature per class "
                 f"fitted on the run's own validation logits (probmcl_med.core.temperature). Bar: worst class <= "
                 f"{ECE_BAR:.0f} %.")  # fmt: skip
    text = "\n".join(lines) + "\n"
    (results / ("tables_deciding.md" if deciding_only else "tables.md")).write_text(text)
    return text


# ----------------------------------------------------------------------------------------------------------- budget
def budget_report(out: Path, versus: Path, results: Path, dataset: str = "realhisto", seed: int = 0) -> str:
    """The supplementary table: each arm's test mAP at seed ``seed`` with ``--train-images N`` (``out``) beside the
    same arm and seed at 1000 training images (``versus``, the study's folder), and its difference from
    ``plain-onecycle`` at each size; results/tables_budget.md."""
    big = {r["arm"]: r for r in load_runs(out, {dataset: 0}) if r["seed"] == seed}
    small = {r["arm"]: r for r in load_runs(versus, {dataset: 0}) if r["seed"] == seed}
    lines = [f"{dataset}, seed {seed}: test mAP (difference from plain-onecycle at the same size); worst-class ECE "
             "at 0.5, raw; CPU s. Supplementary: one seed, outside the decision.\n",
             "| arm | 1000 train images | N train images | worst ECE (N) | CPU s (N) |", "|---|---:|---:|---:|---:|"]  # fmt: skip
    for arm in [a for a in (*PLAIN_ARMS, *(schedule_arm(x) for x in SCHEDULES)) if a in big]:
        cells = []
        for runs in (small, big):
            if arm in runs and "plain-onecycle" in runs:
                m, ref = runs[arm]["test"]["mAP"], runs["plain-onecycle"]["test"]["mAP"]
                cells.append(f"{m:.1f} ({m - ref:+.1f})")
            else:
                cells.append("-")
        ece = calibration_cells(big[arm])["raw_worst"]
        lines.append(
            f"| {arm} | {cells[0]} | {cells[1]} | {ece:.1f} | {big[arm].get('cpu_seconds', float('nan')):.0f} |"
        )
    meta = json.loads(next((out / "data").glob(f"{dataset}-*/meta.json")).read_text())
    lines.append(f"\nN = {meta['splits']['train']['images']} (the data folder's meta.json); 8 epochs, batch 64.")
    text = "\n".join(lines) + "\n"
    results.mkdir(parents=True, exist_ok=True)
    (results / "tables_budget.md").write_text(text)
    return text
