"""Tables and the decision of issue 25's study (``stage1_study.py --study issue25 --report``): the screen with the
per-epoch gap of every arm beside the cosine control's, each confirmation block with paired tests, and the
decision rule of issue25.py applied to what has finished. Writes ``runs.json``, ``probes.json``, ``decision.json``
and ``tables.md`` to the results folder."""

from __future__ import annotations

import json
from pathlib import Path

import defaults_study as base
import issue25
import numpy as np

PROBE_KEYS = ("probe_mAP", "logit_gap", "sim_pos", "sim_neg", "cos_pos", "cos_neg", "tau", "pi_std")


def load(out: Path) -> tuple[list[dict], dict[str, list[dict]]]:
    """Finished runs (with ``cpu_seconds`` when recorded) and per-epoch probes, keyed ``dataset/init/arm__seedS``."""
    rows = [r for r in base.load_results(out) if r["phase"] == "issue25"]
    for r in rows:
        cpu = out / "issue25" / r["dataset"] / r["init"] / f"{r['arm']}__seed{r['seed']}" / "cpu.json"
        r["cpu_seconds"] = json.loads(cpu.read_text())["cpu_seconds"] if cpu.is_file() else None
    probes = {}
    for path in sorted(out.glob("issue25/*/*/*/stage1_probe.json")):
        probes["/".join(path.parts[-4:-1])] = json.loads(path.read_text())["epochs"]
    return rows, probes


def _metric(rows: list[dict], dataset: str, init: str, arm: str, split: str = "test", key: str = "mAP") -> dict:
    return {(r["seed"],): r[split][key] for r in rows if (r["dataset"], r["init"], r["arm"]) == (dataset, init, arm)}


def _fmt(x: float | None, digits: int = 1) -> str:
    return "-" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.{digits}f}"


def _cmp(c: dict) -> str:
    if not c["n"]:
        return "-"
    p = "" if np.isnan(c["p"]) else f", p {c['p']:.3f}"
    return f"{c['mean']:+.1f} (n {c['n']}{p})"


def screen_tables(rows: list[dict], probes: dict[str, list[dict]]) -> list[str]:
    dataset, init = issue25.SCREEN_BLOCK
    lines = [
        f"\n### Screen: {dataset}, {init}, seed 0, {issue25.IMAGE_SIZE} px (frozen linear head)\n",
        "| arm | valid mAP | test mAP | CF1 | logit gap, last epoch | Sim pos / neg | cosine gap / tau | tau | CPU s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for arm in issue25.SCREEN_ARMS:
        run = next((r for r in rows if (r["dataset"], r["init"], r["arm"], r["seed"]) == (dataset, init, arm, 0)), None)
        if run is None:
            continue
        last = (probes.get(f"{dataset}/{init}/{arm}__seed0") or [{}])[-1]
        gap = last.get("cos_logit_gap") if arm == "supcon" else last.get("logit_gap")
        sims = f"{_fmt(last.get('sim_pos'), 3)} / {_fmt(last.get('sim_neg'), 3)}" if arm != "supcon" else "-"
        lines.append(
            f"| {arm} | {_fmt(run['valid']['mAP'])} | {_fmt(run['test']['mAP'])} | {_fmt(run['test']['CF1'])} | "
            f"{_fmt(gap, 2)} | {sims} | {_fmt(last.get('cos_logit_gap'), 2)} | {_fmt(last.get('tau'), 3)} | "
            f"{_fmt(run['cpu_seconds'], 0)} |"
        )
    runs = {
        a: probes[f"{dataset}/{init}/{a}__seed0"]
        for a in issue25.SCREEN_ARMS
        if f"{dataset}/{init}/{a}__seed0" in probes
    }
    for key, title in (
        ("gap", "the logit gap its loss sees, (mean S+ - mean S-) / tau (supcon: the cosine's)"),
        ("probe_mAP", "a linear probe's test mAP on the frozen features"),
        ("cos_logit_gap", "the cosine gap of the features / 0.2, whatever the loss"),
    ):
        if not runs:
            break
        lines += [
            f"\nPer stage-1 epoch, {title}:\n",
            "| epoch | " + " | ".join(runs) + " |",
            "|---:|" + "---:|" * len(runs),
        ]
        for i in range(max(len(v) for v in runs.values())):
            cells = []
            for arm, epochs in runs.items():
                row = epochs[i] if i < len(epochs) else {}
                value = (
                    (row.get("cos_logit_gap") if arm == "supcon" else row.get("logit_gap"))
                    if key == "gap"
                    else row.get(key)
                )
                cells.append(_fmt(value, 1 if key == "probe_mAP" else 2))
            lines.append(f"| {i} | " + " | ".join(cells) + " |")
    return lines


def block_tables(rows: list[dict], advanced: list[str]) -> tuple[list[str], dict]:
    lines, comparisons = [], {}
    for dataset, init in issue25.BLOCKS:
        block = [r for r in rows if (r["dataset"], r["init"]) == (dataset, init)]
        if not block:
            continue
        control = _metric(rows, dataset, init, "supcon")
        none_ft = _metric(rows, dataset, init, "none+ft")
        lines += [
            f"\n### {dataset}, {init}: test mAP, mean ± sd over seeds (n); paired differences\n",
            "| arm | frozen head | Δ vs supcon (frozen) | fine-tuned (arm+ft) | Δ vs none+ft | CPU s per run (frozen / ft) |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for arm in ["none", "paper", "supcon", *advanced]:
            frozen, tuned = _metric(rows, dataset, init, arm), _metric(rows, dataset, init, f"{arm}+ft")
            if not frozen and not tuned:
                continue
            vs_control, vs_none = issue25.paired(frozen, control), issue25.paired(tuned, none_ft)
            comparisons[f"{dataset}/{init}/{arm}"] = {
                "frozen": frozen,
                "ft": tuned,
                "vs_control": vs_control,
                "vs_none_ft": vs_none,
            }
            cpu = [
                np.mean([r["cpu_seconds"] for r in block if r["arm"] == a and r["cpu_seconds"] is not None] or [np.nan])
                for a in (arm, f"{arm}+ft")
            ]
            lines.append(
                f"| {arm} | {base.mean_sd(list(frozen.values()))} ({len(frozen)}) | "
                f"{'' if arm == 'supcon' else _cmp(vs_control)} | {base.mean_sd(list(tuned.values()))} ({len(tuned)}) | "
                f"{'' if arm == 'none' else _cmp(vs_none)} | {_fmt(cpu[0], 0)} / {_fmt(cpu[1], 0)} |"
            )
    return lines, comparisons


def decision(rows: list[dict], advanced: list[str]) -> dict:
    """The rule over every block where the arm and its references have 3 seeds: pooled pairs (block, seed)."""
    out = {}
    for arm in ["paper", *advanced]:
        frozen, control, tuned, none_ft = {}, {}, {}, {}
        blocks = []
        for dataset, init in issue25.BLOCKS:
            parts = [_metric(rows, dataset, init, a) for a in (arm, "supcon", f"{arm}+ft", "none+ft")]
            if min(len(p) for p in parts) < issue25.SEEDS:
                continue
            blocks.append(f"{dataset}/{init}")
            for target, part in zip((frozen, control, tuned, none_ft), parts, strict=True):
                target.update({(dataset, init, *k): v for k, v in part.items()})
        vs_control, vs_none = issue25.paired(frozen, control), issue25.paired(tuned, none_ft)
        out[arm] = {
            "complete_blocks": blocks,
            "frozen_vs_supcon": vs_control,
            "ft_vs_none_ft": vs_none,
            "works": bool(blocks) and issue25.works(vs_control, vs_none),
        }
    return out


def report(out: Path, results: Path) -> str:
    rows, probes = load(out)
    results.mkdir(parents=True, exist_ok=True)
    screen = issue25.screen_decision(out)
    advanced = screen["advanced"] if screen else []
    lines = [
        "Issue 25 (protocol: benchmarks/evidence/README.md, 'Issue 25'). Percent; test split unless it says valid.",
        *screen_tables(rows, probes),
    ]
    if screen:
        lines.append(
            f"\nScreen outcome (valid mAP, seed 0; control {screen['control']:.1f}, margin {screen['margin']}): "
            f"qualified {screen['qualified'] or 'none'}; advanced {screen['advanced']}."
        )
    block_lines, comparisons = block_tables(rows, advanced)
    verdict = decision(rows, advanced)
    lines += [*block_lines, "\n### Decision rule (blocks with 3 seeds of the arm, supcon, arm+ft and none+ft)\n"]
    for arm, d in verdict.items():
        lines.append(
            f"- `{arm}`: blocks {d['complete_blocks'] or 'none complete'}; frozen vs supcon {_cmp(d['frozen_vs_supcon'])}; "
            f"ft vs none+ft {_cmp(d['ft_vs_none_ft'])}: {'WORKS' if d['works'] else 'does not work'}"
        )
    text = "\n".join(lines) + "\n"
    (results / "runs.json").write_text(json.dumps(rows, indent=2) + "\n")
    (results / "probes.json").write_text(json.dumps(probes, indent=2) + "\n")
    serial = {
        k: {**v, "frozen": {str(s): m for s, m in v["frozen"].items()}, "ft": {str(s): m for s, m in v["ft"].items()}}
        for k, v in comparisons.items()
    }
    (results / "decision.json").write_text(
        json.dumps({"screen": screen, "blocks": serial, "rule": verdict}, indent=2) + "\n"
    )
    (results / "tables.md").write_text(text)
    return text
