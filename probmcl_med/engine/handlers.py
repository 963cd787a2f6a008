"""Engine handlers (objects with ``attach(engine)``, like MONAI's): epoch averages, metrics.jsonl, TensorBoard,
crash-proof checkpoints.

Each epoch's numbers go where ignite keeps them, ``engine.state.metrics``: :class:`EpochStats` writes the loss-term
averages (each term under its name, :data:`~probmcl_med.core.losses.LOSS_TERMS`), the learning rate, images/s and
seconds; validation (:mod:`probmcl_med.engine.validation`: MONAI's evaluator and ``ValidationHandler``) adds
``val_*`` and ``best_epoch``. Stock handlers read them from there: MONAI's ``TensorBoardStatsHandler``
(:class:`TensorBoardLog`) and ``LrScheduleHandler`` (:class:`~probmcl_med.engine.steps.IterationLrSchedule`) serve as
they are. Kept as ours, each for a need the stock one does not meet:

- :class:`EpochStats`: ignite's ``Average`` metric cannot be checkpointed mid-epoch here (its ``state_dict()``
  all-gathers across ranks, a collective, while only rank 0 writes a checkpoint), and a batch emptied by
  ``dataset.skip_bad`` has no loss to average;
- :class:`MetricsLog`: the one-line-per-epoch ``metrics.jsonl`` that a resume truncates to the epochs it keeps;
- :class:`Checkpointer` (with :class:`~probmcl_med.engine.checkpoint.CheckpointManager`): ignite's ``DiskSaver``
  renames its temporary file without an fsync (a power cut can leave an empty file under the final name;
  ``fileio.atomic_write`` syncs, and ``tests/test_os_errors.py`` makes that fsync fail), and ignite's ``Checkpoint``
  rotates only the files its own process saved, while ``checkpoint.keep_last`` counts every stage and the files of the
  process a resume continues.

Attach order matters at ``EPOCH_COMPLETED``: :class:`EpochStats` first, then validation (classifier stage), then the
progress line, :class:`MetricsLog`, :class:`TensorBoardLog` and :class:`Checkpointer` last, so that the checkpoint
of an epoch is written after everything that epoch reports.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Events
from monai.handlers import TensorBoardStatsHandler

from probmcl_med.data.base import every_sample_skipped
from probmcl_med.engine.distributed import DistContext, all_reduce_sum
from probmcl_med.fileio import atomic_write_text


def epoch_iteration(engine: Any) -> int:
    """1-based iteration within the current epoch."""
    return (engine.state.iteration - 1) % engine.state.epoch_length + 1


def epoch_record(engine: Any, stage: str) -> dict[str, Any]:
    """The epoch's line of ``metrics.jsonl``: stage, epoch, global iteration, then ``engine.state.metrics``."""
    return {"stage": stage, "epoch": engine.state.epoch, "iteration": engine.state.iteration, **engine.state.metrics}


class EpochStats:
    """Running sums of the loss terms, images and time over an epoch, averaged into ``engine.state.metrics`` at its
    end (over every rank's batches).

    The sums are part of the training checkpoint, so a run resumed mid-epoch reports the same epoch averages.
    """

    def __init__(self, ctx: DistContext) -> None:
        self.ctx = ctx
        self.reset()
        self._resumed = False

    def reset(self) -> None:
        self.sums: dict[str, float] = {}
        self.count = 0
        self.images = 0
        self.seconds = 0.0
        self._pending: dict[str, torch.Tensor] = {}
        self._start = time.perf_counter()

    def attach(self, engine: Any) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)

    def _epoch_started(self, engine: Any) -> None:
        if self._resumed:
            self._resumed = False
            self._start = time.perf_counter()
            return
        self.reset()

    def _iteration_completed(self, engine: Any) -> None:
        out = engine.state.output or {}
        if out.get("skipped_batch"):
            return
        for name, value in (out.get("terms") or {}).items():
            tensor = value.detach().float() if torch.is_tensor(value) else torch.tensor(float(value))
            self._pending[name] = self._pending.get(name, 0) + tensor
        self.count += 1
        self.images += int(out.get("images", 0))

    def flush(self) -> None:
        """Move on-device partial sums to Python floats (one sync)."""
        for name, value in self._pending.items():
            self.sums[name] = self.sums.get(name, 0.0) + float(value)
        self._pending = {}
        now = time.perf_counter()
        self.seconds += now - self._start
        self._start = now

    def _epoch_completed(self, engine: Any) -> None:
        self.flush()
        names = sorted(self.sums)
        values = torch.tensor([self.sums[n] for n in names] + [float(self.count)], dtype=torch.float64)
        values = all_reduce_sum(values, self.ctx)
        if values[-1].item() == 0:  # not one batch trained on, on any rank: every sample was skipped
            raise every_sample_skipped(getattr(engine.state.dataloader, "dataset", None), "training epoch")
        count = values[-1].item()
        metrics: dict[str, Any] = {n: values[i].item() / count for i, n in enumerate(names)}
        metrics["lr"] = (engine.state.output or {}).get("lr")
        metrics["images_per_s"] = self.images / self.seconds if self.seconds > 0 else None
        metrics["seconds"] = self.seconds
        engine.state.metrics = metrics

    def state_dict(self) -> dict[str, Any]:
        self.flush()
        return {"sums": dict(self.sums), "count": self.count, "images": self.images, "seconds": self.seconds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reset()
        self.sums = {str(k): float(v) for k, v in state["sums"].items()}
        self.count, self.images, self.seconds = int(state["count"]), int(state["images"]), float(state["seconds"])
        self._resumed = True


class MetricsLog:
    """One JSON line per epoch per stage in ``RUN/metrics.jsonl`` (rank 0 only), flushed and fsynced per line."""

    def __init__(self, path: str | Path, stage: str, ctx: DistContext) -> None:
        self.path = Path(path)
        self.stage = stage
        self.ctx = ctx
        self.records: list[dict[str, Any]] = []

    def attach(self, engine: Any) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)

    def _write(self, engine: Any) -> None:
        record = epoch_record(engine, self.stage)
        self.records.append(record)
        if not self.ctx.is_main:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    @staticmethod
    def truncate(path: str | Path, keep: Callable[[dict[str, Any]], bool]) -> None:
        """Rewrite ``path`` atomically with only the records ``keep`` accepts (a resume drops epochs redone)."""
        path = Path(path)
        if not path.is_file():
            return
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        kept = []
        for line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line torn by a crash mid-write
                continue
            if keep(record):
                kept.append(json.dumps(record))
        atomic_write_text(path, "".join(f"{line}\n" for line in kept))


def _iteration_scalars(output: dict[str, Any] | None) -> dict[str, Any]:
    out = output or {}
    scalars = {f"iter/{name}": value for name, value in (out.get("terms") or {}).items()}
    return {**scalars, "iter/lr": out["lr"]} if out.get("lr") is not None else scalars


class TensorBoardLog(TensorBoardStatsHandler):
    """MONAI's TensorBoard handler in ``log_dir`` (one folder per stage): the loss terms and learning rate every
    ``every`` iterations (tags ``iter/<name>``), every scalar of ``engine.state.metrics`` at each epoch end (tags
    ``loss``, ``val_mAP``, ...); the writer is closed when the stage completes. Rank 0 only."""

    def __init__(self, log_dir: str | Path, every: int) -> None:
        super().__init__(log_dir=str(log_dir), iteration_log=max(1, every), output_transform=_iteration_scalars)

    def attach(self, engine: Any) -> None:
        super().attach(engine)
        engine.add_event_handler(Events.COMPLETED, lambda _: self.close())


class OnStart:
    """Calls ``action(engine)`` when the engine starts (ignite's STARTED: after a resume has restored the engine, so
    whatever it writes is written only once every refusal has been decided)."""

    def __init__(self, action: Callable[[Any], Any]) -> None:
        self.action = action

    def attach(self, engine: Any) -> None:
        engine.add_event_handler(Events.STARTED, self.action)


class Checkpointer:
    """Calls ``save(engine)`` at every epoch end and every ``every_n_iterations`` iterations within an epoch.

    ``save`` builds and writes the full training state (see :mod:`probmcl_med.engine.session`); only rank 0 writes.
    """

    def __init__(self, save: Callable[[Any], Any], every_n_iterations: int, ctx: DistContext) -> None:
        self.save = save
        self.every = every_n_iterations
        self.ctx = ctx

    def attach(self, engine: Any) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch)

    def _iteration(self, engine: Any) -> None:
        if not self.every:
            return
        k = epoch_iteration(engine)
        if k % self.every == 0 and k != engine.state.epoch_length and self.ctx.is_main:
            self.save(engine)

    def _epoch(self, engine: Any) -> None:
        if self.ctx.is_main:
            self.save(engine)
