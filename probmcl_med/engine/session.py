"""The run folder: its lock, its files, its checkpoints, and where a run continues from.

A :class:`Session` is what a run's stages share besides the encoder and the data (:mod:`probmcl_med.engine.inputs`):

- the lock (:class:`~probmcl_med.runlock.RunLock`, main process) held for the whole run;
- the resume point (:meth:`Session.find_resume`): the newest readable checkpoint, checked against the run's classes,
  encoder, mode and every key that shaped what it holds (:mod:`probmcl_med.engine.resume`), or a refusal;
- the run files, written once, when the first stage's engine starts (:meth:`Session.start_writing`): until then
  nothing is written, so every refusal leaves the folder byte for byte as it was;
- the checkpoints (:class:`~probmcl_med.engine.checkpoint.CheckpointManager`) and the per-stage epoch records.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from probmcl_med.config import RunConfig, save_config
from probmcl_med.data.cache import describe_loading, keep_in_memory
from probmcl_med.engine.checkpoint import CheckpointManager, check_compatible, check_same_mode
from probmcl_med.engine.distributed import DistContext
from probmcl_med.engine.handlers import MetricsLog
from probmcl_med.engine.inputs import RunInputs
from probmcl_med.engine.preflight import Component
from probmcl_med.errors import CheckpointError
from probmcl_med.fileio import atomic_write_text
from probmcl_med.runlock import RunLock
from probmcl_med.threads import choose_workers, configure_threads


@dataclass(frozen=True)
class Resume:
    """The training state a run continues from, and its file."""

    state: dict[str, Any]
    path: Path

    @property
    def stage_index(self) -> int:
        """The position, in the mode's list of stages, of the stage the state was saved in."""
        return int(self.state["stage_index"])

    @property
    def complete(self) -> bool:
        """Whether that stage had trained all its epochs."""
        return bool(self.state.get("complete"))


class Session:
    """The run folder of ``config.output_dir`` (see the module docstring).

    Args:
        config: the run's config.
        ctx: this process's place in the run (only the main process locks, logs and writes).
        console: where progress lines go (None: silent).
    """

    def __init__(self, config: RunConfig, ctx: DistContext, console: Console | None = None) -> None:
        self.config = config
        self.ctx = ctx
        self.console = console if ctx.is_main else None
        self.out = Path(config.output_dir)
        self.manager = CheckpointManager(self.out / "checkpoints", config.checkpoint.keep_last)
        self.lock = RunLock(self.out, "train") if ctx.is_main else None
        self.records: dict[str, list[dict[str, Any]]] = {}
        self._pending: tuple[RunInputs, list[Component], str, Resume | None, tuple[str, ...]] | None = None
        self.wrote = False
        # where the training data load and torch's threads (prepare_loading chooses them); recorded in run.json
        self.loading: dict[str, Any] = {"in_memory": None, "workers": config.workers, "threads": None}

    def log(self, message: str) -> None:
        if self.console is not None:
            self.console.print(message, highlight=False)

    # ----------------------------------------------------------------------------------------------------- the lock
    def __enter__(self) -> Session:
        if self.lock is not None:
            self.lock.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.lock is not None:
            # a refused run wrote nothing: a note a killed holder left in .lock stays, byte for byte
            self.lock.release(keep_stale_note=not self.wrote)

    # --------------------------------------------------------------------------------------------------- resuming
    def find_resume(self, resume: bool, first: int, names: list[str], class_names: list[str]) -> Resume | None:
        """The state the run continues from, or None for a fresh start; every refusal is decided here.

        Args:
            resume: ``--resume``: continue from the newest readable checkpoint.
            first: the index of the first stage this command trains (``--stage``).
            names: the mode's stage names, by index.
            class_names: the configured dataset's classes.

        Raises:
            CheckpointError: checkpoints without ``--resume``; a checkpoint of other classes, another encoder or
                mode; a stage to build on that did not finish.
        """
        existing = self.manager.list()
        if not resume:
            clash = [c for c in existing if c.stage_index >= first]
            if clash:
                raise CheckpointError(
                    f"{self.out} already holds checkpoints ({clash[-1].path.name}); pass --resume to continue that run, "
                    f"or use another --output-dir"
                )
            if first == 0:
                return None
        loaded = self.manager.load_latest()
        if loaded is None:
            if first > 0:
                raise CheckpointError(
                    f"{self.out} holds no finished {names[first - 1]} stage for the {names[first]} stage to start "
                    f"from; train it first (--stage {names[first - 1]}), or use mode probe for a head on the "
                    "configured encoder"
                )
            self.log(f"no checkpoint in {self.manager.folder}: starting from scratch")
            return None
        found = Resume(*loaded)
        check_compatible(found.state, class_names, self.config.encoder.name, found.path)
        check_same_mode(found.state, self.config.mode, names, found.path)
        if found.stage_index < first - 1 or (found.stage_index == first - 1 and not found.complete):
            raise CheckpointError(
                f"the {names[found.stage_index]} stage in {self.out} did not finish ({found.path.name}); finish it "
                f"first: --stage {names[found.stage_index]} --resume"
            )
        if resume:
            self.log(f"resuming from {found.path}")
        return found

    # ------------------------------------------------------------------------------------------------ the loading
    def prepare_loading(self, inputs: RunInputs) -> None:
        """Keep the training and validation images in memory, decoded and resized once, when they fit
        (``dataset.cache_gb``, :mod:`probmcl_med.data.cache`), then choose the loader workers and torch's threads
        from that (:func:`probmcl_med.threads.choose_workers`). Called once the run is known to go ahead (decoding a
        whole training set takes a while)."""
        c = self.config
        kept = keep_in_memory([inputs.train_ds, inputs.val_ds], inputs.eval_transform(), c.dataset.cache_gb)
        explicit = "workers" in c.model_fields_set
        workers = choose_workers(c.workers, explicit, kept is not None, self.ctx.device.type)
        self.loading = {"in_memory": kept, "workers": workers, "threads": configure_threads(c.threads, workers)}
        self.log(describe_loading(self.loading))

    # ------------------------------------------------------------------------------------------------ the run files
    def plan_writing(
        self,
        inputs: RunInputs,
        components: list[Component],
        amp: str,
        resume: Resume | None,
        stages: tuple[str, ...],
    ) -> None:
        """What :meth:`start_writing` will write: the run files for ``inputs`` and the metric lines to keep."""
        self._pending = (inputs, components, amp, resume, stages)

    def start_writing(self, engine: Any = None) -> None:
        """Write the run files and drop the metric lines of epochs to be redone: once, when a stage's engine starts
        (after every refusal; TensorBoard's writer opens then too)."""
        if self._pending is None:
            return
        inputs, components, amp, resume, stages = self._pending
        self._pending = None
        self.wrote = True
        if not self.ctx.is_main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        save_config(self.config, self.out / "config.yaml")
        atomic_write_text(self.out / "class_names.json", json.dumps(inputs.class_names, indent=2) + "\n")
        atomic_write_text(self.out / "run.json", json.dumps(self._run_record(inputs, components, amp), indent=2) + "\n")
        self._truncate_metrics(resume, stages)

    def _run_record(self, inputs: RunInputs, components: list[Component], amp: str) -> dict[str, Any]:
        e = self.config.encoder
        return {
            "encoder": {
                "name": e.name,
                "options": e.options,
                "num_features": int(inputs.encoder.num_features),
                "pretrained": e.pretrained,
                "weights": e.weights,
            },
            "normalization": inputs.normalization.to_dict(),
            "image_size": self.config.dataset.image_size,
            "dataset": {
                "name": self.config.dataset.name,
                "train_images": len(inputs.train_ds),
                "classes": inputs.num_classes,
            },
            "components": [c.record() for c in components],
            "loading": self.loading,
            "world_size": self.ctx.world_size,
            "device": str(self.ctx.device),
            "amp": amp,
            "versions": {"torch": torch.__version__, "python": platform.python_version()},
        }

    def _truncate_metrics(self, resume: Resume | None, stages: tuple[str, ...]) -> None:
        """Drop the metric lines of epochs that will be redone (resume) or of stages about to restart (fresh)."""
        path = self.out / "metrics.jsonl"
        if resume is None:
            MetricsLog.truncate(path, lambda r: r.get("stage") not in stages)
            return
        index, done = resume.stage_index, int(resume.state["epoch"])
        order = {name: i for i, name in enumerate(resume.state.get("stages", []))}

        def keep(r: dict[str, Any]) -> bool:
            i = order.get(r.get("stage"), -1)
            return i < index or (i == index and int(r.get("epoch", 0)) <= done)

        MetricsLog.truncate(path, keep)

    # ----------------------------------------------------------------------------------------------------- results
    def finish_stage(self, stage: str, records: list[dict[str, Any]]) -> None:
        """Keep a stage's epoch records (the summary the caller prints)."""
        self.records[stage] = records
