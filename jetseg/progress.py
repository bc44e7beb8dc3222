"""What a training run shows while it runs, kept out of the loop: hooks the Trainer calls.

The :class:`~jetseg.train.Trainer` prints nothing itself. It calls its hooks at fixed points
(:class:`TrainHooks` lists them in order), and whatever is attached decides what to show::

    >>> trainer = Trainer(model, train, val, cfg, out_dir, hooks=[TrainingDisplay()])

:class:`TrainingDisplay` is the display of ``jetsearch train``: on a terminal a progress bar
(epoch or "validating", loss, images/s, the last val mIoU, the time so far and an ETA for the
whole run); everywhere one line per epoch on stderr; and the interrupt notice.
:class:`InterruptNotice` is the notice alone, the quiet default (``TrainConfig.progress=False``).
"""

from __future__ import annotations

import math
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jetseg.train import Trainer

__all__ = [
    "InterruptNotice",
    "TrainHooks",
    "TrainingDisplay",
    "default_hooks",
    "format_duration",
    "run_eta_s",
]


class TrainHooks:
    """The points of :meth:`Trainer.fit <jetseg.train.Trainer.fit>` an observer hears about.

    Every method does nothing here; a subclass overrides the ones it needs. The order within
    one ``fit``::

        on_fit_start(trainer)                     after a resume, before the first epoch
          on_epoch_start(trainer, epoch)          per epoch (1-based)
            on_step(trainer, step, loss, images_per_s)    per optimizer step of the epoch
            on_validate(trainer, epoch)           when the epoch is evaluated, before it is
          on_epoch_end(trainer, record)           the epoch's metrics.jsonl record, once saved
        on_fit_end(trainer)                       always, also when fit raises
        on_interrupt(trainer, message)            Ctrl-C, after on_fit_end; then it re-raises

    ``step`` counts the steps of this epoch from 1; ``loss`` and ``images_per_s`` are the
    epoch's running means. ``message`` says which epoch ``last.pt`` holds and how to resume.
    Hooks read the trainer and must not change it; an exception from a hook propagates out of
    ``fit`` as a callback's would. (Callbacks, which may stop or prune a run, are the
    Trainer's ``callbacks``; hooks only watch.)
    """

    def on_fit_start(self, trainer: Trainer) -> None:
        """Before the first epoch of this ``fit`` (after a resume restored the run)."""

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        """Before the first step of ``epoch``."""

    def on_step(self, trainer: Trainer, step: int, loss: float, images_per_s: float) -> None:
        """After optimizer step ``step`` of the epoch."""

    def on_validate(self, trainer: Trainer, epoch: int) -> None:
        """Before the validation split is evaluated after ``epoch``."""

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        """After the epoch's checkpoint and ``metrics.jsonl`` line are written."""

    def on_fit_end(self, trainer: Trainer) -> None:
        """When ``fit`` ends, whichever way."""

    def on_interrupt(self, trainer: Trainer, message: str) -> None:
        """On a KeyboardInterrupt, after :meth:`on_fit_end`."""


class InterruptNotice(TrainHooks):
    """Says on stderr, after Ctrl-C, which epoch ``last.pt`` holds and how to resume.

    A run without an ``out_dir`` (a study's trial) has nothing to resume: its caller decides
    what an interrupt means (a study re-runs the trial), so the notice stays silent there.
    """

    def on_interrupt(self, trainer: Trainer, message: str) -> None:
        if trainer.out_dir is None:
            return
        print(message, file=sys.stderr)


def default_hooks(progress: bool) -> list[TrainHooks]:
    """The hooks of a Trainer given none: the display when ``progress``, else the notice."""
    return [TrainingDisplay()] if progress else [InterruptNotice()]


def run_eta_s(
    epochs_left: float,
    epoch_s: float | None,
    budget_left_s: float | None = None,
    wall_per_train_s: float = 1.0,
) -> float | None:
    """Seconds until the run ends, or ``None`` when nothing is known yet.

    The run ends after ``epochs_left`` more epochs of ``epoch_s`` wall seconds each, or when
    its time budget runs out, whichever comes first. The budget counts training seconds only,
    so ``budget_left_s`` is scaled by ``wall_per_train_s`` (wall time per training second:
    evaluations and checkpoints make it larger than 1).
    """
    estimates = []
    if epoch_s is not None and math.isfinite(epoch_s):
        estimates.append(max(0.0, epochs_left) * epoch_s)
    if budget_left_s is not None:
        estimates.append(max(0.0, budget_left_s) * max(1.0, wall_per_train_s))
    return min(estimates) if estimates else None


def format_duration(seconds: float | None) -> str:
    """``h:mm:ss`` (``?`` for ``None``), as rich's time columns print it."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    total = int(round(max(0.0, seconds)))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def _percent(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{100 * value:.2f}%"


class TrainingDisplay(InterruptNotice):
    """The live display of a training run (``jetsearch train``, ``TrainConfig.progress``).

    On a terminal: a progress bar of the epoch's steps, then a "validating" phase, with the
    running loss, images/s, the last val mIoU, the elapsed time and the ETA of the whole run
    (epochs left x mean epoch time so far, or the time budget left if that ends sooner).
    Everywhere: one line per epoch on stderr (with the ETA while epochs remain), and the
    interrupt notice.

    Args:
        console: a ``rich.console.Console``; default one on stderr.

    Attributes:
        progress: the ``rich.progress.Progress`` while a fit runs on a terminal, else ``None``.
    """

    def __init__(self, console: Any = None) -> None:
        self.console = console
        self.progress: Any = None
        self._task: Any = None
        self._epoch = 0
        self._epoch_started = 0.0
        self._steps_total = 1
        self._walls: list[float] = []  # wall seconds of the epochs of this fit
        self._wall_per_train: list[float] = []

    # -- hooks -------------------------------------------------------------------------------

    def on_fit_start(self, trainer: Trainer) -> None:
        if self.console is None:
            from rich.console import Console

            self.console = Console(stderr=True)
        self._walls, self._wall_per_train = [], []
        # A resumed run knows its earlier epochs' times from the history.
        for record in trainer.history:
            train_s = record.get("epoch_time_s") or 0.0
            wall = train_s + (record.get("eval_time_s") or 0.0)
            if wall > 0:
                self._walls.append(wall)
                self._wall_per_train.append(wall / train_s if train_s > 0 else 1.0)
        if not self.console.is_terminal:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.progress = Progress(
            TextColumn("{task.fields[phase]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[speed]} img/s"),
            TextColumn("val mIoU {task.fields[miou]}"),
            TimeElapsedColumn(),
            TextColumn("ETA {task.fields[eta]}"),
            console=self.console,
            transient=True,
        )
        self._task = None
        self.progress.start()

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        self._epoch = epoch
        self._epoch_started = time.perf_counter()
        self._steps_total = max(1, len(trainer.train_loader))
        if self.progress is None:
            return
        last_val = trainer.history[-1]["val_miou"] if trainer.history else None
        fields = {
            "phase": f"epoch {epoch}/{trainer.cfg.epochs}",
            "loss": "-",
            "speed": "-",
            "miou": _percent(last_val),
            "eta": format_duration(self._eta(trainer, 0.0)),
        }
        if self._task is None:
            self._task = self.progress.add_task("train", total=self._steps_total, **fields)
        else:
            self.progress.reset(self._task, total=self._steps_total, **fields)

    def on_step(self, trainer: Trainer, step: int, loss: float, images_per_s: float) -> None:
        if self.progress is None:
            return
        train_s = time.perf_counter() - self._epoch_started
        eta = self._eta(trainer, step / self._steps_total, train_in_epoch_s=train_s)
        self.progress.update(
            self._task,
            completed=step,
            loss=f"{loss:.4f}",
            speed=f"{images_per_s:.1f}",
            eta=format_duration(eta),
        )

    def on_validate(self, trainer: Trainer, epoch: int) -> None:
        if self.progress is None:
            return
        self.progress.update(
            self._task,
            phase=f"validating {epoch}/{trainer.cfg.epochs}",
            eta=format_duration(self._eta(trainer, 1.0)),
        )

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        wall = time.perf_counter() - self._epoch_started
        self._walls.append(wall)
        train_s = record.get("epoch_time_s") or 0.0
        self._wall_per_train.append(wall / train_s if train_s > 0 else 1.0)
        val = (
            f"val mIoU {_percent(record['val_miou'])} (best {_percent(record['best_miou'])} "
            f"@ {record['best_epoch']})"
            if record["val_miou"] is not None or record["val_per_class_iou"] is not None
            else "not evaluated"
        )
        epochs = trainer.cfg.epochs
        ends = record["partial"] or record["epoch"] >= epochs or _budget_used(trainer)
        eta = None if ends else self._eta(trainer, 1.0)
        cut = " [time budget: epoch cut short]" if record["partial"] else ""
        synthetic = " [synthetic data]" if trainer.synthetic_data else ""
        line = (
            f"epoch {record['epoch']}/{epochs} step {record['step']} "
            f"loss {record['train_loss']:.4f} {val} {record['images_per_s']:.1f} img/s "
            f"train {record['train_time_s']:.1f} s"
            + (f" ETA {format_duration(eta)}" if eta is not None else "")
            + f"{cut}{synthetic}"
        )
        self.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def on_fit_end(self, trainer: Trainer) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    # -- the estimate ------------------------------------------------------------------------

    def _eta(
        self, trainer: Trainer, epoch_done: float, train_in_epoch_s: float = 0.0
    ) -> float | None:
        """ETA of the whole run with ``epoch_done`` (0..1) of the current epoch behind it."""
        epochs_left = trainer.cfg.epochs - (self._epoch - 1) - epoch_done
        if self._walls:
            epoch_s: float | None = sum(self._walls) / len(self._walls)
        elif epoch_done > 0:  # the first epoch: project its own pace
            epoch_s = (time.perf_counter() - self._epoch_started) / epoch_done
        else:
            epoch_s = None
        budget_left = None
        if trainer.cfg.time_budget_s is not None:
            # During the steps train_time_s still holds the earlier epochs only.
            budget_left = trainer.cfg.time_budget_s - trainer.train_time_s - train_in_epoch_s
        ratio = (
            sum(self._wall_per_train) / len(self._wall_per_train) if self._wall_per_train else 1.0
        )
        return run_eta_s(epochs_left, epoch_s, budget_left, ratio)


def _budget_used(trainer: Trainer) -> bool:
    budget = trainer.cfg.time_budget_s
    return budget is not None and trainer.train_time_s >= budget
