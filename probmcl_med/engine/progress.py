"""Progress: a rich progress bar per epoch (loss terms, lr, images/s), one line per epoch when not on a terminal,
and a rich summary table at the end of each stage.

The bar shows only on rank 0, on a terminal, and not when ``PROBMCL_MED_NO_PROGRESS=1`` (tests, CI logs); then a
single line per epoch is printed instead (and nothing at all when ``console`` is None).
"""

from __future__ import annotations

import os
import time
from typing import Any

from ignite.engine import Events
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from probmcl_med.core.losses import LOSS_TERMS
from probmcl_med.engine.handlers import epoch_iteration


def progress_enabled(console: Console | None) -> bool:
    """True when a live bar makes sense: a terminal console and no opt-out."""
    if console is None or os.environ.get("PROBMCL_MED_NO_PROGRESS", "") not in ("", "0"):
        return False
    return bool(console.is_terminal)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    value = float(value)
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e4):
        return f"{value:.2e}"
    return f"{value:.4f}"


class ProgressHandler:
    """Per-epoch bar (or line) for one stage.

    Args:
        stage: "contrastive" or "classifier" (shown in the bar).
        console: where to draw; None prints nothing.
        every: iterations between refreshes of the loss/lr/throughput fields (each refresh syncs the device).
        enabled: draw a live bar (default: :func:`progress_enabled`).
    """

    def __init__(self, stage: str, console: Console | None, every: int = 10, enabled: bool | None = None) -> None:
        self.stage = stage
        self.console = console
        self.every = max(1, every)
        self.live = progress_enabled(console) if enabled is None else enabled
        self.progress: Progress | None = None
        self.task: Any = None
        self._t0 = time.perf_counter()
        self._images = 0

    def attach(self, engine: Any) -> None:
        if self.console is None:
            return
        engine.add_event_handler(Events.EPOCH_STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._advance)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._end)
        engine.add_event_handler(Events.COMPLETED, lambda _: self._stop())
        engine.add_event_handler(Events.EXCEPTION_RAISED, self._on_error)

    def _start(self, engine: Any) -> None:
        self._t0, self._images = time.perf_counter(), 0
        if not self.live:
            return
        if self.progress is None:
            self.progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
                console=self.console,
                transient=False,
            )
            self.progress.start()
        done = (engine.state.iteration % engine.state.epoch_length) if engine.state.iteration else 0
        description = f"{self.stage} {engine.state.epoch}/{engine.state.max_epochs}"
        self.task = self.progress.add_task(description, total=engine.state.epoch_length, completed=done, info="")

    def _advance(self, engine: Any) -> None:
        out = engine.state.output or {}
        self._images += int(out.get("images", 0))
        if self.progress is None or self.task is None:
            return
        k = epoch_iteration(engine)
        info = None
        if k % self.every == 0 or k == engine.state.epoch_length:
            info = self.info(out)
        kwargs = {"info": info} if info is not None else {}
        self.progress.update(self.task, completed=k, **kwargs)

    def info(self, out: dict[str, Any]) -> str:
        parts = [f"{n} {_fmt(v)}" for n, v in _terms(out.get("terms") or {})]
        if out.get("lr") is not None:
            parts.append(f"lr {_fmt(out['lr'])}")
        elapsed = time.perf_counter() - self._t0
        if elapsed > 0 and self._images:
            parts.append(f"{self._images / elapsed:.1f} img/s")
        return "  ".join(parts)

    def _end(self, engine: Any) -> None:
        summary = engine.state.metrics or {}
        line = epoch_line(summary)
        if self.progress is not None and self.task is not None:
            self.progress.update(self.task, info=line)
        elif self.console is not None:
            self.console.print(
                f"{self.stage} epoch {engine.state.epoch}/{engine.state.max_epochs}: {line}",
                highlight=False,
                soft_wrap=True,
            )

    def _on_error(self, engine: Any, exc: BaseException) -> None:
        self._stop()
        raise exc

    def _stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def _terms(values: dict[str, Any]) -> list[tuple[str, Any]]:
    """The loss terms among ``values``, in the order of :data:`~probmcl_med.core.losses.LOSS_TERMS`."""
    return [(n, values[n]) for n in LOSS_TERMS if values.get(n) is not None]


def epoch_line(summary: dict[str, Any]) -> str:
    """``loss 1.23  nll ...  lr ...  val mAP ...  123.4 img/s`` for one epoch summary."""
    parts = [f"{n} {_fmt(v)}" for n, v in _terms(summary)]
    if summary.get("lr") is not None:
        parts.append(f"lr {_fmt(summary['lr'])}")
    if summary.get("val_mAP") is not None:
        parts.append(f"val mAP {summary['val_mAP']:.2f}")
    if summary.get("images_per_s"):
        parts.append(f"{summary['images_per_s']:.1f} img/s")
    return "  ".join(parts)


def summary_table(stage: str, records: list[dict[str, Any]]) -> Table:
    """One row per epoch: loss terms, lr, validation mAP (classifier stage), images/s, seconds."""
    columns = [
        n
        for n in (*LOSS_TERMS, "lr", "val_mAP", "images_per_s", "seconds")
        if any(r.get(n) is not None for r in records)
    ]
    table = Table(title=f"{stage} stage")
    table.add_column("epoch", justify="right")
    for name in columns:
        table.add_column(name.replace("_", " "), justify="right")
    best = max((r.get("val_mAP") or -1.0 for r in records), default=-1.0)
    for r in records:
        cells = []
        for name in columns:
            value = r.get(name)
            text = (
                "-"
                if value is None
                else (f"{value:.2f}" if name in ("val_mAP", "images_per_s", "seconds") else _fmt(value))
            )
            if name == "val_mAP" and value is not None and value == best:
                text = f"[bold green]{text}[/]"
            cells.append(text)
        table.add_row(str(r.get("epoch", "")), *cells)
    return table
