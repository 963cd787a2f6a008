"""``probmcl-med predict`` over a cohort of slides (several slides, a folder of slides, a glob or a manifest).

Thin: the slides, ids and resuming are :mod:`probmcl_med.inference.cohort_inputs` and
:mod:`probmcl_med.inference.cohort`, the summaries :mod:`probmcl_med.inference.cohort_report`. Here: the process
group under ``torchrun`` (gloo, for Python objects only: each rank runs its model on its own device), the plan made
by rank 0 and sent to every rank, the progress bars, the summary lines and the exit code.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from probmcl_med.cli.evaluate import RichProgress
from probmcl_med.errors import UserError, one_line_message

FAILED_EXIT = 3
"""Exit code of a cohort run that finished with at least one slide failed (listed in ``OUT/failed.csv``)."""

COLLECTIVE_TIMEOUT = timedelta(days=7)
"""How long a rank that finished its slides waits for the others (torch's default, 30 minutes, is shorter than one
large slide on a slow rank; a rank that dies ends the job through torchrun, not through this timeout)."""


class CohortProgress(RichProgress):
    """Two rich bars on stderr: the slides of this process (with the time left) and the patches of the current
    slide (a :class:`~probmcl_med.inference.loop.ProgressHook`, each slide's pass named by its id).

    :meth:`slide_done` advances the slides; messages go through :meth:`print` so that they do not tear the bars.
    """

    def __init__(self, console: Console, total: int, enabled: bool = True) -> None:
        super().__init__(console, enabled)
        self.slides = self.progress.add_task("slides", total=total)

    def start(self, description: str, total: int) -> None:
        super().start(f"  {description}", total)

    def slide_done(self) -> None:
        self.progress.advance(self.slides, 1)

    def print(self, text: str) -> None:
        self.progress.console.print(text, markup=False, highlight=False, soft_wrap=True)


def _plan(inputs: list[Path], out: Path, model_path: Path, bundle: Any, options: Any, large_pixels: int) -> dict:
    """Rank 0's plan: every slide, the settings, which slides to predict, and what changed for those done before."""
    from probmcl_med.fileio import atomic_write_text, file_sha256
    from probmcl_med.inference.cohort_inputs import collect_slides
    from probmcl_med.inference.cohort_state import (
        COHORT_MARKER,
        check_cohort_folder,
        common_settings,
        read_record,
        settings_change,
        slide_settings,
    )

    slides = collect_slides(inputs, large_pixels)
    check_cohort_folder(out, slides)
    common = common_settings(bundle, file_sha256(model_path), options)
    todo, redo = [], []
    for slide in slides:
        record = read_record(out / slide.id)
        change = settings_change(record, slide_settings(common, slide, options))
        if change is not None:
            todo.append(slide)
            if record is not None:
                redo.append(f"{slide.id}: {change}")
    if not (out / COHORT_MARKER).is_file():
        atomic_write_text(out / COHORT_MARKER, "written by probmcl-med predict over a cohort of slides\n")
    given = " ".join(str(p) for p in inputs)
    return {"slides": slides, "todo": todo, "redo": redo, "common": common, "inputs": given}


def predict_cohort_command(
    inputs: list[Path],
    *,
    checkpoint: Path,
    out: Path,
    fail_fast: bool,
    tile_above: float,
    options: dict[str, Any],
) -> None:
    """Predict every slide of ``inputs`` into ``out`` (layout in :mod:`probmcl_med.inference.cohort`), shard them
    over ``torchrun``'s ranks, and write the summaries on rank 0 once every rank is done.

    Raises:
        typer.Exit: code :data:`FAILED_EXIT` when a slide failed.
        UserError: the inputs, the model or ``out`` cannot be used (every rank raises the same one line).
    """
    from probmcl_med.bundle import load_model_bundle, resolve_bundle_path
    from probmcl_med.engine.distributed import broadcast_object, cleanup_distributed, setup_distributed
    from probmcl_med.inference.cohort_state import SlideOptions

    ctx = setup_distributed(str(options["device"]), backend="gloo", timeout=COLLECTIVE_TIMEOUT)
    try:
        model_path = resolve_bundle_path(checkpoint)
        bundle = load_model_bundle(model_path, device=ctx.device)
        slide_options = SlideOptions(**{**options, "device": ctx.device})
        plan: Any = None
        if ctx.is_main:
            try:
                plan = _plan(inputs, out, model_path, bundle, slide_options, int(tile_above * 1e6))
            except (UserError, OSError) as exc:
                plan = {"error": one_line_message(exc)}
        plan = broadcast_object(plan, ctx)
        if "error" in plan:
            raise UserError(plan["error"])
        _run(ctx, plan, bundle, model_path, out, slide_options, fail_fast)
    finally:
        cleanup_distributed()


def _run(ctx: Any, plan: dict, bundle: Any, model_path: Path, out: Path, options: Any, fail_fast: bool) -> None:
    """Predict this rank's share of the plan; on rank 0, once every rank is done, the summaries and the last line."""
    from probmcl_med.calibration_file import describe_probabilities
    from probmcl_med.engine.distributed import all_gather_objects
    from probmcl_med.inference.cohort import DONE, FAILED, SlideResult, predict_cohort, result_from_dict
    from probmcl_med.inference.cohort_report import COHORT_CSV, COHORT_HTML, FAILED_CSV, write_cohort_summary
    from probmcl_med.inference.cohort_state import shard_slides
    from probmcl_med.inference.predict import describe_thresholds

    console, err = Console(), Console(stderr=True)
    slides, todo = plan["slides"], plan["todo"]
    thresholds = describe_thresholds(bundle, options.threshold)
    probabilities = describe_probabilities(bundle.calibration)
    mine = shard_slides(todo, ctx.rank, ctx.world_size)
    if ctx.is_main:
        where = f" over {ctx.world_size} processes" if ctx.distributed else ""
        console.print(f"thresholds: {thresholds}\nprobabilities: {probabilities}", highlight=False, soft_wrap=True,
                      markup=False)  # fmt: skip
        console.print(
            f"{len(slides)} slides: {len(slides) - len(todo)} done earlier with these settings, {len(todo)} to "
            f"predict{where}",
            highlight=False,
        )
        for line in plan["redo"][:5]:
            console.print(f"  predicted again, {line}", highlight=False, markup=False, soft_wrap=True)
        if len(plan["redo"]) > 5:
            console.print(f"  ... and {len(plan['redo']) - 5} more predicted again", highlight=False)
    meta = {"checkpoint": str(model_path), "encoder": bundle.encoder_name, "device": str(options.device),
            "thresholds_source": thresholds, "probabilities": probabilities, "rank": ctx.rank,
            "world_size": ctx.world_size}  # fmt: skip
    prefix = f"[rank {ctx.rank}] " if ctx.distributed else ""

    lines = not err.is_terminal  # a log file (SLURM, nohup): a line per slide instead of the bars
    finished = []

    with CohortProgress(err, len(mine), enabled=ctx.is_main) as progress:

        def report(result: SlideResult) -> None:
            progress.slide_done()
            finished.append(result)
            if result.status == FAILED:
                progress.print(f"{prefix}failed: {result.slide.id}: {result.reason}")
            elif lines:
                took = f" in {result.seconds:.1f} s" if result.status != DONE else ""
                progress.print(f"{prefix}[{len(finished)}/{len(mine)}] {result.slide.id}: {result.status}{took}")

        results = predict_cohort(bundle, mine, out, options, plan["common"], meta, fail_fast=fail_fast,
                                 progress=progress, on_result=report)  # fmt: skip
    gathered = all_gather_objects([r.to_dict() for r in results], ctx)  # every rank waits here for the slowest
    if not ctx.is_main:
        return
    by_id = {s.id: s for s in slides}
    outcome = {s.id: SlideResult(s, DONE) for s in slides}
    for part in gathered:
        for data in part:
            outcome[data["id"]] = result_from_dict(by_id[data["id"]], data)
    title = {"model": f"{model_path} ({bundle.encoder_name}, sha256 {plan['common']['model_sha256'][:12]})",
             "thresholds": thresholds, "probabilities": probabilities, "slides": plan["inputs"]}  # fmt: skip
    rows = write_cohort_summary(out, slides, outcome, list(bundle.class_names), title)
    statuses = [row["status"] for row in rows]
    failed = statuses.count(FAILED)
    done_before = sum(1 for s in slides if outcome[s.id].status == DONE)
    console.print(f"written: {out / COHORT_CSV}, {COHORT_HTML}, {FAILED_CSV}", highlight=False, soft_wrap=True)
    summary = (
        f"{len(slides)} slides: {statuses.count('predicted')} predicted, {statuses.count('no tissue')} no tissue, "
        f"{failed} failed ({done_before} done by an earlier run)"
    )
    if failed:
        err.print(f"{summary}; reasons in {out / FAILED_CSV}", highlight=False, soft_wrap=True, markup=False)
        raise typer.Exit(FAILED_EXIT)
    console.print(summary, highlight=False, soft_wrap=True, markup=False)
