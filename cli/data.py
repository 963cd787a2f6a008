"""``probmcl-med data check``: validate a dataset before a long run (labels, statistics, every image read)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from probmcl_med.cli.grammar import Command, Group
from probmcl_med.config import load_config
from probmcl_med.data.checks import check_dataset, group_leaks, missing_classes_message
from probmcl_med.data.datasets import build_dataset
from probmcl_med.errors import ConfigError, EmptySplit
from probmcl_med.fileio import OVERWRITE_HELP

CHECK_EPILOG = (
    "Examples: probmcl-med data check --dataset csv --root ~/my_patches;  "
    "probmcl-med data check --dataset adp --root '/data/ADP V1.0 Release' --split train "
    "--set dataset.options.level=L2 --sample 500 --json"
)


def run_check(
    config: Path | None,
    dataset: str | None,
    root: str | None,
    split: str,
    overrides: list[str],
    sample: int | None,
    workers: int,
) -> list[dict[str, Any]]:
    """Build the configured dataset for each requested split, as training names it (``dataset.train_split``,
    ``val_split``, ``test_split``), and check it (skip_bad on, so all bad files are listed).

    A split with no rows is reported as empty, with what training does about it (:data:`EMPTY_SPLIT`): an error for
    the training split only. So is a class without a positive image: an error in the training split (the model
    cannot learn it), a warning in the others (``missing_classes``: the one-line message, or None).
    """
    sets = list(overrides)
    if dataset is not None:
        sets.append(f"dataset.name={dataset}")
    if root is not None:
        sets.append(f"dataset.root={root}")
    cfg = load_config(config, sets).dataset
    splits = ["train", "valid", "test"] if split == "all" else [split]
    if split not in ("all", "train", "valid", "test"):
        raise ConfigError(f"--split {split!r}: use train, valid, test or all")
    own_names = {"train": cfg.train_split, "valid": cfg.val_split, "test": cfg.test_split}
    results = []
    built = {}
    for name in splits:
        try:
            ds = build_dataset(cfg.name, cfg.root, own_names[name], cfg.options, skip_bad=True)
        except EmptySplit as exc:
            results.append(empty_split_result(cfg.name, name, str(exc)))
            continue
        built[name] = ds
        result = check_dataset(ds, sample=sample, workers=workers)
        result.update(split=name, empty=False)
        missing = result["classes_without_positives"]
        result["missing_classes"] = missing_classes_message(missing, name) if missing else None
        result["ok"] = result["ok"] and not (name == "train" and missing)  # a class training cannot learn
        results.append(result)
    leaks = group_leaks(built) if len(built) > 1 else []
    for result in results:  # a group in two splits fails every split it is in
        result["group_leaks"] = [leak for leak in leaks if result["split"] in leak["splits"]]
        result["ok"] = result["ok"] and not result["group_leaks"]
    return results


def annotations_epilog() -> str:
    """The example under ``data from-annotations --help``."""
    return (
        "Example: probmcl-med data from-annotations slides/a.svs slides/b.svs -a a.geojson -a b.geojson --mpp 0.5 "
        "--patch-size 224 --min-coverage 0.5 --out data/annotated"
    )


EMPTY_SPLIT = {
    "train": "training cannot run without training images",
    "valid": "training goes on without validation and keeps its last epoch (a warning says so)",
    "test": "`probmcl-med evaluate --split test` will have nothing to score",
}
"""What an empty split means for training and evaluation, per split."""


def empty_split_result(dataset: str, split: str, reason: str) -> dict[str, Any]:
    """The check result of a split with no rows: empty, what that means, an error only for the training split."""
    return {
        "name": dataset,
        "split": split,
        "empty": True,
        "images": 0,
        "reason": reason,
        "consequence": EMPTY_SPLIT[split],
        "ok": split != "train",
    }


def _print(results: list[dict[str, Any]], console: Console) -> None:
    for r in results:
        if r["empty"]:
            style = "red" if not r["ok"] else "yellow"
            console.print(
                f"[{style}]{r['name']} / {r['split']}: empty[/{style}] ({r['reason']}): {r['consequence']}",
                highlight=False,
            )
            continue
        summary = Table(title=f"{r['name']} / {r['split']}  ({r['source']})", show_header=False)
        summary.add_column("what")
        summary.add_column("value", overflow="fold")
        sizes = r["image_sizes"]
        rows = [
            ("images", str(r["images"])),
            ("classes", str(r["classes"])),
            ("labels per image (mean)", f"{r['label_cardinality']:.3f}"),
            ("images with no label", str(r["images_without_label"])),
            ("images read", f"{r['checked']}" + (" (sample)" if r["sampled"] else " (all)")),
            ("unreadable", str(len(r["unreadable"]) + len(r["skipped_at_load"]))),
        ]
        if sizes:
            rows.append(
                (
                    "image sizes (h x w)",
                    f"{sizes['min_height']}x{sizes['min_width']} .. {sizes['max_height']}x{sizes['max_width']}",
                )
            )
        if r.get("groups") is not None:
            rows.append(("groups (patients / slides)", str(r["groups"])))
        if r["classes_without_positives"]:
            rows.append(("classes with no positive", ", ".join(r["classes_without_positives"])))
        for what, value in rows:
            summary.add_row(what, value)
        console.print(summary)
        if r.get("missing_classes"):
            style = "red" if r["split"] == "train" else "yellow"
            console.print(Text(f"{r['split']}: {r['missing_classes']}", style=style))  # names stay plain text
        classes = Table(title="positives per class")
        classes.add_column("class")
        classes.add_column("positives", justify="right")
        classes.add_column("share", justify="right")
        for name, count in r["positives"].items():
            style = "red" if count == 0 else None
            classes.add_row(name, str(count), f"{count / max(r['images'], 1):.1%}", style=style)
        console.print(classes)
        if r["top_pairs"]:
            pairs = Table(title="most frequent co-occurring pairs")
            for column in ("class a", "class b", "images"):
                pairs.add_column(column)
            for p in r["top_pairs"]:
                pairs.add_row(p["a"], p["b"], str(p["count"]))
            console.print(pairs)
        if r.get("group_leaks"):
            leaks = Table(title=f"groups in more than one split ({len(r['group_leaks'])})", style="red")
            leaks.add_column("group", overflow="fold")
            leaks.add_column("rows per split", overflow="fold")
            for leak in r["group_leaks"][:50]:
                leaks.add_row(leak["group"], ", ".join(f"{k}: {v}" for k, v in leak["splits"].items()))
            console.print(leaks)
        bad = [(u["where"], u["error"]) for u in r["unreadable"]] + [
            (m.split(": ", 1)[0], m) for m in r["skipped_at_load"]
        ]
        if bad:
            table = Table(title=f"unreadable files ({len(bad)})", style="red")
            table.add_column("where", overflow="fold")
            table.add_column("problem", overflow="fold")
            for where, error in bad[:50]:
                table.add_row(where, error)
            if len(bad) > 50:
                table.add_row("...", f"{len(bad) - 50} more (use --json for the full list)")
            console.print(table)


def from_annotations(
    slides: Annotated[list[Path], typer.Argument(help="Whole slides (.svs, .tif, ...).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The dataset folder to write (whole or not at all).")],
    mpp: Annotated[float, typer.Option("--mpp", help="Microns per pixel of the patches.")],
    patch_size: Annotated[int, typer.Option("--patch-size", min=1, help="Patch side, pixels at --mpp.")],
    annotations: Annotated[
        list[Path] | None,
        typer.Option(
            "--annotations",
            "-a",
            help="QuPath GeoJSON export per slide, in the slides' order (default: SLIDE's name with .geojson).",
        ),
    ] = None,
    min_coverage: Annotated[
        float, typer.Option("--min-coverage", help="A class labels a patch when its regions cover this fraction.")
    ] = 0.5,
    derived: Annotated[
        str,
        typer.Option(
            "--derived",
            help="QuPath derived classes ('Tumor: Positive'): full (one label, as QuPath names it) or parent "
            "('Tumor').",
        ),
    ] = "full",
    slide_mpp: Annotated[
        float | None, typer.Option("--slide-mpp", help="Level-0 mpp of slides that do not record it.")
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help=OVERWRITE_HELP)] = False,
) -> None:
    """Turn QuPath's classified annotation polygons into a slides dataset (manifest.csv, annotations.json).

    A patch's labels are the classes whose regions cover at least --min-coverage of it; train on it with
    `probmcl-med train --dataset slides --root OUT` (and `data check --dataset slides --root OUT`).
    """
    from probmcl_med.data.annotations import annotation_patches, write_annotation_dataset
    from probmcl_med.errors import UserError

    files = list(annotations or [])
    if files and len(files) != len(slides):
        raise UserError(f"{len(slides)} slide(s) but {len(files)} --annotations file(s); give one per slide")
    if not files:
        files = [s.with_suffix(".geojson") for s in slides]
    done = [
        annotation_patches(s, a, mpp, patch_size, min_coverage, derived, slide_mpp)
        for s, a in zip(slides, files, strict=True)
    ]
    settings = {"mpp": mpp, "patch_size": patch_size, "min_coverage": min_coverage, "derived": derived,
                "annotations": [str(a) for a in files]}  # fmt: skip
    write_annotation_dataset(out, done, settings, overwrite=overwrite)
    classes = sorted({name for d in done for row in d.rows for name in row["labels"]})
    Console().print(
        f"{sum(len(d.rows) for d in done)} labelled patches of {len(done)} slide(s), classes: "
        f"{', '.join(classes)}; written to {out}/manifest.csv (train: probmcl-med train --dataset slides "
        f"--root {out})",
        highlight=False,
        soft_wrap=True,
    )


def register(app: typer.Typer) -> None:
    """Add the ``data`` command group (``data check``, ``data from-annotations``) to the CLI."""
    data_app = typer.Typer(help="Inspect and validate datasets.", no_args_is_help=True, cls=Group)

    @data_app.command("check", cls=Command, epilog=CHECK_EPILOG)
    def check(
        dataset: Annotated[str | None, typer.Option("--dataset", "-d", help="A registered dataset name.")] = None,
        root: Annotated[
            str | None, typer.Option("--root", "-r", help="The dataset folder (the same as --set dataset.root=PATH).")
        ] = None,
        split: Annotated[str, typer.Option("--split", help="train, valid, test or all.")] = "all",
        config: Annotated[
            Path | None, typer.Option("--config", "-c", help="A run config to take dataset.* from.")
        ] = None,
        overrides: Annotated[
            list[str] | None,
            typer.Option(
                "--set", metavar="KEY=VALUE", help="Config override, e.g. dataset.options.level=L2 (repeatable)."
            ),
        ] = None,
        sample: Annotated[
            int | None, typer.Option("--sample", min=1, help="Read only N random images per split (default: all).")
        ] = None,
        workers: Annotated[int, typer.Option("--workers", min=1, help="Threads reading images.")] = 4,
        as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    ) -> None:
        """Check a dataset: classes, positives per class, label cardinality, co-occurring pairs, unreadable files.

        Every image (or a --sample) is read; the exit code is 1 when a file cannot be read, when a group
        (dataset.options.group_column: patient, slide) appears in two splits, or when a class has no positive image
        in the training split (it cannot be learned; in valid or test that is a warning). A split with no rows is
        reported as empty with what training does about it (an error only for the training split).
        """
        results = run_check(config, dataset, root, split, list(overrides or []), sample, workers)
        if as_json:
            typer.echo(json.dumps(results, indent=2))
        else:
            _print(results, Console())
        if not all(r["ok"] for r in results):
            raise typer.Exit(1)

    data_app.command("from-annotations", cls=Command, epilog=annotations_epilog())(from_annotations)
    app.add_typer(data_app, name="data")
