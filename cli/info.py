"""``probmcl-med info``: what a checkpoint holds and what its inference model costs (the paper's Table 3)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from probmcl_med.cli.grammar import Command

EXAMPLE = "Example: probmcl-med info --checkpoint runs/adp --json"

BEST_MAP_KEYS = ("best_val_map", "best_val_mAP", "best_map")
"""Where a bundle may record its best validation mAP (top level, or under ``metrics``)."""


def best_validation_map(raw: dict[str, Any], bundle_path: Path) -> tuple[float | None, str | None]:
    """The best validation mAP and where it was found: the bundle itself, else the run's ``metrics.jsonl``.

    ``metrics.jsonl`` (one JSON record per epoch, written by training beside ``model.pt``) is read for the largest
    ``val_mAP``; torn or non-JSON lines are ignored.
    """
    for source in (raw, raw.get("metrics") or {}):
        if isinstance(source, dict):
            for key in BEST_MAP_KEYS:
                if source.get(key) is not None:
                    return float(source[key]), "checkpoint"
    from probmcl_med.fileio import read_json_lines

    log = bundle_path.parent / "metrics.jsonl"
    values = [float(r["val_mAP"]) for r in read_json_lines(log) if isinstance(r.get("val_mAP"), int | float)]
    return (max(values), str(log)) if values else (None, None)


def checkpoint_info(checkpoint: Path) -> dict[str, Any]:
    """A JSON-ready description of a bundle: encoder, classes, normalisation, config summary, model cost.

    Raises:
        CheckpointError: missing or unreadable checkpoint.
    """
    # the library is imported here, not at the top: see probmcl_med/cli/__init__.py
    from probmcl_med.bundle import BUNDLE_FORMAT, load_model_bundle, read_checkpoint, resolve_bundle_path
    from probmcl_med.calibration_file import describe_probabilities
    from probmcl_med.evaluation.complexity import model_cost
    from probmcl_med.inference.predict import describe_thresholds

    path = resolve_bundle_path(checkpoint)
    raw = read_checkpoint(path, expected_format=BUNDLE_FORMAT)
    bundle = load_model_bundle(path)
    cost = model_cost(bundle.classifier(), bundle.image_size)
    cfg = bundle.training_config
    best_map, best_source = best_validation_map(raw, path)
    training = {
        "mode": cfg.get("mode"),
        "seed": cfg.get("seed"),
        "epochs": cfg.get("epochs"),
        "dataset": None if bundle.dataset is None else bundle.dataset.to_dict(),
        **{section: cfg[section] for section in ("contrastive", "classifier") if isinstance(cfg.get(section), dict)},
    }
    return {
        "checkpoint": str(path),
        "encoder": bundle.encoder_name,
        "encoder_options": dict(bundle.encoder_options),
        "feature_width": int(bundle.head.in_features),
        "head_reads": "unit-norm features" if bundle.normalize_features else "raw pooled features",
        "mdn": None
        if bundle.mdn is None
        else {
            "components": bundle.mdn.num_classes,
            "latent_dim": bundle.mdn.latent_dim,
            "params": sum(p.numel() for p in bundle.mdn.parameters()),
            "used_by": "predict --uncertainty (per-class pi_k and var_k)",
        },
        "classes": list(bundle.class_names),
        "num_classes": len(bundle.class_names),
        "image_size": bundle.image_size,
        "normalization": {
            "mean": list(bundle.mean),
            "std": list(bundle.std),
            "mode": (cfg.get("dataset") or {}).get("normalization"),
        },
        "thresholds": bundle.thresholds,
        "thresholds_source": f"not applied: {bundle.threshold_problem}"
        if bundle.threshold_problem
        else describe_thresholds(bundle, None),
        "probabilities": f"not applied: {bundle.calibration_problem}"
        if bundle.calibration_problem
        else describe_probabilities(bundle.calibration),
        "temperatures": None if bundle.calibration is None else list(bundle.calibration.temperatures),
        "mpp": bundle.mpp,
        "stain_reference": bundle.stain_reference,
        "training": {k: v for k, v in training.items() if v is not None},
        "model_cost": {
            **cost.to_dict(),
            "model": "encoder + linear head, what predict and evaluate run (predict --uncertainty adds the MDN)",
        },
        "best_val_map": best_map,
        "best_val_map_source": best_source,
    }


def info_command(
    checkpoint: Annotated[Path, typer.Option("--checkpoint", "-c", help="Run folder (or its model.pt).")],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Show a checkpoint: encoder, classes, normalisation, training settings, parameters (M) and GMAC."""
    info = checkpoint_info(checkpoint)
    if as_json:
        sys.stdout.write(json.dumps(info, indent=2, default=str) + "\n")
        return
    console = Console()
    table = Table(title=f"Checkpoint {info['checkpoint']}", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value", overflow="fold")
    cost = info["model_cost"]
    shape = "x".join(str(s) for s in cost["input_shape"])
    t = info["training"]
    data = t.get("dataset") or {}
    thresholds = info["thresholds"]
    run = f"mode {t.get('mode', '?')}, dataset {data.get('name', '?')} ({data.get('root') or 'default root'})"
    run += f", seed {t.get('seed', '?')}" + (f", {t['epochs']} epochs" if t.get("epochs") is not None else "")
    rows = [
        ("encoder", f"{info['encoder']} ({info['feature_width']} features, head reads {info['head_reads']})"),
        ("classes", f"{info['num_classes']}: {', '.join(info['classes'])}"),
        (
            "input",
            f"{info['image_size']} x {info['image_size']} px"
            + (f" at {info['mpp']:g} um/px" if info.get("mpp") else " (mpp not recorded)")
            + (f", Macenko-normalised to {info['stain_reference']['source']}" if info.get("stain_reference") else ""),
        ),
        ("normalisation", f"mean {info['normalization']['mean']}, std {info['normalization']['std']}"),
        (
            "thresholds",
            info["thresholds_source"]
            + ("" if thresholds is None else ": " + ", ".join(f"{x:.3g}" for x in thresholds)),
        ),
        ("probabilities", info["probabilities"]),
        ("training", run),
        *(
            (
                section,
                ", ".join(
                    f"{key} {value:g}" if isinstance(value, float) else f"{key} {value}"
                    for key, value in t[section].items()
                ),
            )
            for section in ("contrastive", "classifier")
            if section in t
        ),
        (
            "MDN",
            "not kept"
            if info["mdn"] is None
            else f"{info['mdn']['components']} components, {info['mdn']['params']:,} parameters "
            "(run by predict --uncertainty)",
        ),
        ("parameters", f"{cost['params_m']:.2f} M ({cost['params']:,}; encoder + head)"),
        ("GMAC", f"{cost['gmac']:.3f} at {shape} (MACs = FLOPs / 2, FlopCounterMode)"),
        (
            "best val mAP",
            "not recorded"
            if info["best_val_map"] is None
            else f"{info['best_val_map']:.2f} % (from {info['best_val_map_source']})",
        ),
    ]
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)


def register(app: typer.Typer) -> None:
    """Attach ``info`` to the app."""
    app.command("info", cls=Command, epilog=EXAMPLE)(info_command)
