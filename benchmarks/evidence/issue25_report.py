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


STATE_TEXT = {"started": "started, unfinished", "not run": "not run"}
"""What a table says in place of numbers for a run without ``result.json`` (nothing is filled in)."""


def screen_status(out: Path) -> dict[str, list[str]]:
    """The screen's arms by state (``finished``, ``started``, ``not run``), in the protocol's order."""
    dataset, init = issue25.SCREEN_BLOCK
    status: dict[str, list[str]] = {"finished": [], "started": [], "not run": []}
    for arm in issue25.SCREEN_ARMS:
        status[issue25.run_state(out, dataset, init, arm, 0)].append(arm)
    return status


def status_lines(out: Path, rows: list[dict], screen: dict | None) -> list[str]:
    """What has run and what has not, in words: the screen's arms by state, the confirmation by block, CPU spent."""
    status = screen_status(out)
    total = len(issue25.SCREEN_ARMS)
    cpu = [r["cpu_seconds"] for r in rows if r["cpu_seconds"] is not None]
    lines = [
        "\n### Status (read from the run folders; a run counts when its result.json exists)\n",
        f"- Screen ({'/'.join(issue25.SCREEN_BLOCK)}, seed 0): {len(status['finished'])} of {total} runs finished "
        f"({', '.join(status['finished']) or 'none'}); started, unfinished: {', '.join(status['started']) or 'none'}; "
        f"not run: {', '.join(status['not run']) or 'none'}.",
    ]
    if screen is None:
        lines.append(
            "- Confirmation: not started. Which candidates it runs depends on the screen's outcome, and the screen "
            "has not finished, so no candidate has advanced and no block has 3 seeds of any arm."
        )
    else:
        for dataset, init in issue25.BLOCKS:
            done = sorted({f"{r['arm']}" for r in rows if (r["dataset"], r["init"]) == (dataset, init)})
            seeds = sorted({r["seed"] for r in rows if (r["dataset"], r["init"]) == (dataset, init)})
            lines.append(
                f"- {dataset}/{init}: " + (f"finished runs of {', '.join(done)} (seeds {seeds})" if done else "not run")
            )
    lines.append(f"- CPU seconds of the finished runs: {sum(cpu):.0f} over {len(cpu)} runs with cpu.json.")
    return lines


def _contrast_gradient(arm: str, row: dict) -> float | None:
    """The norm (x 1000) of the contrastive term's gradient on the encoder's pooled feature r, one batch of 64 view
    pairs (stage1_probe.py ``grad``): the mixture arms' PCL path through the MDN; the control's loss (it sits in the
    likelihood slot, lambda = 0, so its gradient is the ``nll_z`` path)."""
    grad = row.get("grad") or {}
    value = grad.get("nll_z") if arm == "supcon" else grad.get("pcl")
    return None if value is None else 1000.0 * value


PER_EPOCH_TABLES = (
    (
        "the logit gap its loss sees, (mean S+ - mean S-) / tau (supcon: the cosine's)",
        2,
        lambda arm, row: row.get("cos_logit_gap") if arm == "supcon" else row.get("logit_gap"),
    ),
    ("a linear probe's test mAP on the frozen features", 1, lambda arm, row: row.get("probe_mAP")),
    ("the cosine gap of the features / 0.2, whatever the loss", 2, lambda arm, row: row.get("cos_logit_gap")),
    (
        "the norm x 1000 of the contrastive gradient on the pooled feature r (64 view pairs; mixture arms: the PCL "
        "term through the MDN; supcon: its loss)",
        2,
        _contrast_gradient,
    ),
    (
        "the effective rank of the training features (of 512; Roy & Vetterli 2007)",
        0,
        lambda arm, row: row.get("erank"),
    ),
)
"""The per-epoch probe tables of the screen: (title, decimals, value of an arm's probe row)."""


def screen_tables(out: Path, rows: list[dict], probes: dict[str, list[dict]]) -> list[str]:
    dataset, init = issue25.SCREEN_BLOCK
    lines = [
        f"\n### Screen: {dataset}, {init}, seed 0, {issue25.IMAGE_SIZE} px (frozen linear head)\n",
        "| arm | valid mAP | test mAP | CF1 | logit gap, last epoch | Sim pos / neg | cosine gap / tau | tau | CPU s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for arm in issue25.SCREEN_ARMS:
        run = next((r for r in rows if (r["dataset"], r["init"], r["arm"], r["seed"]) == (dataset, init, arm, 0)), None)
        if run is None:
            state = STATE_TEXT[issue25.run_state(out, dataset, init, arm, 0)]
            lines.append(f"| {arm} | {state} |" + " |" * 8)
            continue
        last = (probes.get(f"{dataset}/{init}/{arm}__seed0") or [{}])[-1]
        gap = last.get("cos_logit_gap") if arm == "supcon" else last.get("logit_gap")
        sims = f"{_fmt(last.get('sim_pos'), 3)} / {_fmt(last.get('sim_neg'), 3)}" if arm != "supcon" else "-"
        lines.append(
            f"| {arm} | {_fmt(run['valid']['mAP'])} | {_fmt(run['test']['mAP'])} | {_fmt(run['test']['CF1'])} | "
            f"{_fmt(gap, 2)} | {sims} | {_fmt(last.get('cos_logit_gap'), 2)} | {_fmt(last.get('tau'), 3)} | "
            f"{_fmt(run['cpu_seconds'], 0)} |"
        )
    lines.append(
        "\n`-`: not measured for that arm (`none` has no stage 1, so no probe and no similarities); a row that says "
        "`not run` or `started, unfinished` has no result yet."
    )
    runs = {
        a: probes[f"{dataset}/{init}/{a}__seed0"]
        for a in issue25.SCREEN_ARMS
        if f"{dataset}/{init}/{a}__seed0" in probes
    }
    for title, digits, value in PER_EPOCH_TABLES:
        if not runs:
            break
        lines += [
            f"\nPer stage-1 epoch, {title} (arms with a probe so far):\n",
            "| epoch | " + " | ".join(runs) + " |",
            "|---:|" + "---:|" * len(runs),
        ]
        for i in range(max(len(v) for v in runs.values())):
            cells = [_fmt(value(arm, epochs[i]) if i < len(epochs) else None, digits) for arm, epochs in runs.items()]
            lines.append(f"| {i} | " + " | ".join(cells) + " |")
    return lines


def extended_arms(rows: list[dict], advanced: list[str], dataset: str, init: str) -> list[str]:
    """The arms of ``--phase extend`` (issue25.extension_arms) with a run in the block beyond the screen's seed-0
    frozen one: listed in its table and put to the rule, marked as the extension."""
    return [
        a
        for a in issue25.extension_arms(advanced)
        if any(
            (r["dataset"], r["init"]) == (dataset, init) and (r["arm"] == f"{a}+ft" or (r["arm"] == a and r["seed"]))
            for r in rows
        )
    ]


def block_tables(rows: list[dict], advanced: list[str]) -> tuple[list[str], dict]:
    """One table per block: the arms the protocol runs there (references, then the advanced candidates, then those
    of the extension), each frozen and fine-tuned, ``not run`` where no seed has finished."""
    lines, comparisons = [], {}
    for dataset, init in issue25.BLOCKS:
        block = [r for r in rows if (r["dataset"], r["init"]) == (dataset, init)]
        if not block:
            lines.append(f"\n### {dataset}, {init}: not run")
            continue
        control = _metric(rows, dataset, init, "supcon")
        none_ft = _metric(rows, dataset, init, "none+ft")
        lines += [
            f"\n### {dataset}, {init}: test mAP, mean ± sd over seeds (n finished of {issue25.SEEDS}); paired "
            "differences\n",
            "| arm | frozen head | Δ vs supcon (frozen) | fine-tuned (arm+ft) | Δ vs none+ft | CPU s per run (frozen / ft) |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        extended = extended_arms(rows, advanced, dataset, init)
        for arm in [*issue25.REFERENCES, *advanced, *extended]:
            frozen, tuned = _metric(rows, dataset, init, arm), _metric(rows, dataset, init, f"{arm}+ft")
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
            frozen_text = f"{base.mean_sd(list(frozen.values()))} ({len(frozen)})" if frozen else "not run"
            tuned_text = f"{base.mean_sd(list(tuned.values()))} ({len(tuned)})" if tuned else "not run"
            label = f"{arm} (extension)" if arm in extended else arm
            lines.append(
                f"| {label} | {frozen_text} | {'' if arm == 'supcon' else _cmp(vs_control)} | {tuned_text} | "
                f"{'' if arm == 'none' else _cmp(vs_none)} | {_fmt(cpu[0], 0)} / {_fmt(cpu[1], 0)} |"
            )
    return lines, comparisons


def decision(rows: list[dict], advanced: list[str]) -> dict:
    """The rule over every block where the arm and its references have 3 seeds: pooled pairs (block, seed).
    ``works`` is None (not decided) for an arm without a complete block: the rule has nothing to test there."""
    out = {}
    extension = [
        a
        for a in issue25.extension_arms(advanced)
        if any(a in extended_arms(rows, advanced, *b) for b in issue25.BLOCKS)
    ]
    for arm in ["paper", *advanced, *extension]:
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
            "works": issue25.works(vs_control, vs_none) if blocks else None,
            "extension": arm in extension,
        }
    return out


def verdict_text(works: bool | None) -> str:
    return {True: "WORKS", False: "does not work", None: "not decided (no complete block)"}[works]


def report(out: Path, results: Path) -> str:
    """Read the study's folder ``out`` (never written here) and write the tables of what has finished to
    ``results``: ``runs.json``, ``probes.json``, ``decision.json``, ``tables.md``."""
    rows, probes = load(out)
    results.mkdir(parents=True, exist_ok=True)
    screen = issue25.screen_decision(out, save=False)
    advanced = screen["advanced"] if screen else []
    lines = [
        "Issue 25 (protocol: benchmarks/evidence/README.md, 'Issue 25'). Percent; test split unless it says valid.",
        *status_lines(out, rows, screen),
        *screen_tables(out, rows, probes),
    ]
    if screen:
        lines.append(
            f"\nScreen outcome (valid mAP, seed 0; control {screen['control']:.1f}, margin {screen['margin']}): "
            f"qualified {screen['qualified'] or 'none'}; advanced {screen['advanced']}."
        )
    else:
        lines.append("\nScreen outcome: none yet (it is decided when every screen arm has finished).")
    block_lines, comparisons = block_tables(rows, advanced)
    verdict = decision(rows, advanced)
    lines += [*block_lines, "\n### Decision rule (blocks with 3 seeds of the arm, supcon, arm+ft and none+ft)\n"]
    for arm, d in verdict.items():
        lines.append(
            f"- `{arm}`: blocks {d['complete_blocks'] or 'none complete'}; frozen vs supcon {_cmp(d['frozen_vs_supcon'])}; "
            f"ft vs none+ft {_cmp(d['ft_vs_none_ft'])}: {verdict_text(d['works'])}"
            + (" (extension: run after the confirmation, on the screen's block)" if d["extension"] else "")
        )
    if not advanced:
        lines.append("- the candidates: not decided (none has advanced from the screen)")
    text = "\n".join(lines) + "\n"
    (results / "runs.json").write_text(json.dumps(rows, indent=2) + "\n")
    (results / "probes.json").write_text(json.dumps(probes, indent=2) + "\n")
    serial = {
        k: {**v, "frozen": {str(s): m for s, m in v["frozen"].items()}, "ft": {str(s): m for s, m in v["ft"].items()}}
        for k, v in comparisons.items()
    }
    status = {"screen": screen_status(out), "confirmation_started": screen is not None}
    (results / "decision.json").write_text(
        json.dumps({"status": status, "screen": screen, "blocks": serial, "rule": verdict}, indent=2) + "\n"
    )
    (results / "tables.md").write_text(text)
    return text
