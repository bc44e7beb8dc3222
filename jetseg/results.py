"""What a training run reports and returns, and how it is shown.

:class:`EpochReport` is what a per-epoch callback of :class:`jetseg.train.Trainer` receives,
:class:`TrainResult` what ``Trainer.fit`` and :func:`jetseg.run.run_training` return,
:class:`EvalMetrics` the metrics of one split; :func:`metrics_table` renders metrics with rich.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jetseg.metrics import SegMetrics

__all__ = ["EpochReport", "EvalMetrics", "TrainResult", "metrics_table"]


@dataclass(frozen=True)
class EpochReport:
    """What a per-epoch callback receives, after an evaluated epoch.

    Attributes:
        epoch: 1-based epoch number.
        step: optimizer steps taken since the start of the run.
        train_loss: mean training loss of this epoch.
        val: validation metrics after this epoch.
        elapsed_s: training seconds since the start of the run (the clock of the time budget:
            evaluation and checkpoints excluded).
        images_per_s: training throughput of this epoch.
        best_miou: best validation mIoU so far, this epoch included.
        partial: the time budget cut this epoch short.
        heldout: metrics on the held-out sequences after this epoch (when the trainer has
            a ``heldout_set``), else None.
    """

    epoch: int
    step: int
    train_loss: float
    val: SegMetrics
    elapsed_s: float
    images_per_s: float
    best_miou: float
    partial: bool = False
    heldout: SegMetrics | None = None


def json_number(value: float | None) -> float | None:
    """A number for JSON: None stays None, NaN and infinities become None."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    return float(value)


def iou_dict(metrics: SegMetrics) -> dict[str, float | None]:
    """Per-class IoU by class name, JSON-safe (an absent class is None)."""
    names = metrics.class_names or tuple(str(i) for i in range(len(metrics.per_class_iou)))
    return {name: json_number(iou) for name, iou in zip(names, metrics.per_class_iou, strict=True)}


@dataclass
class TrainResult:
    """The outcome of :meth:`Trainer.fit` / :func:`run_training`.

    ``best_miou``, ``per_class_iou`` and ``pixel_accuracy`` belong to the best epoch (the model
    in ``best.pt``); ``per_class_iou`` follows ``class_names`` and holds NaN for a class absent
    from both the ground truth and the prediction, as in :class:`SegMetrics`.
    ``stopped_reason`` is ``"epochs"``, ``"time budget"`` or ``"callback"`` (a
    :class:`StopTraining`, whose message is in ``stop_detail``). ``history`` holds one dict per
    epoch, the same objects as the lines of ``metrics.jsonl``. ``heldout_miou`` and
    ``heldout_per_class_iou`` are the held-out sequences' figures at the epoch val picked (None
    without a held-out set): val chooses, the unseen streets only report.
    """

    best_miou: float
    best_epoch: int
    per_class_iou: tuple[float, ...]
    pixel_accuracy: float
    epochs_done: int
    steps: int
    train_time_s: float
    images_per_s: float
    stopped_reason: str
    history: list[dict[str, Any]]
    out_dir: Path | None
    data_description: str
    synthetic_data: bool = False
    stop_detail: str = ""
    device: str = "cpu"
    config_name: str = ""
    class_names: tuple[str, ...] = ()
    heldout_miou: float | None = None
    heldout_per_class_iou: tuple[float, ...] = ()
    heldout_description: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (NaN becomes ``None``, paths strings)."""
        data = dataclasses.asdict(self)
        data["heldout_miou"] = json_number(self.heldout_miou)
        data["heldout_per_class_iou"] = [json_number(v) for v in self.heldout_per_class_iou]
        data["out_dir"] = None if self.out_dir is None else str(self.out_dir)
        data["best_miou"] = json_number(self.best_miou)
        data["pixel_accuracy"] = json_number(self.pixel_accuracy)
        data["per_class_iou"] = [json_number(v) for v in self.per_class_iou]
        data["class_names"] = list(self.class_names)
        return data

    def headline(self) -> str:
        """One line: best mIoU, where it was reached, how long, why it stopped."""
        name = f"{self.config_name}: " if self.config_name else ""
        stop = self.stopped_reason + (f" ({self.stop_detail})" if self.stop_detail else "")
        held = (
            f", held-out mIoU {_percent(self.heldout_miou)} at that epoch"
            if self.heldout_miou is not None
            else ""
        )
        return (
            f"{name}best val mIoU {_percent(self.best_miou)} at epoch {self.best_epoch}{held} "
            f"(pixel accuracy {_percent(self.pixel_accuracy)}); {self.epochs_done} epochs, "
            f"{self.steps} steps, {self.train_time_s:.1f} s training, "
            f"{self.images_per_s:.1f} images/s on {self.device}; stopped: {stop}"
        )

    def summary(self) -> Any:
        """A rich renderable: the headline, the data (flagged when synthetic), per-class IoU."""
        from rich.console import Group
        from rich.text import Text

        metrics = SegMetrics(
            per_class_iou=self.per_class_iou,
            miou=self.best_miou,
            pixel_accuracy=self.pixel_accuracy,
            class_names=self.class_names or None,
        )
        parts: list[Any] = [Text(self.headline(), style="bold")]
        if self.synthetic_data:
            parts.append(
                Text(
                    "SYNTHETIC DATA: these scores say the code runs and learns, nothing about "
                    "real scenes. Pass a CamVid root for real results.",
                    style="bold red",
                )
            )
        parts.append(Text(f"data: {self.data_description}"))
        if self.out_dir is not None:
            parts.append(Text(f"run directory: {self.out_dir}"))
        parts.append(metrics_table(metrics, title=f"best epoch ({self.best_epoch}) on val"))
        return Group(*parts)


def _percent(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{100 * value:.2f}%"


@dataclass(frozen=True)
class EvalMetrics(SegMetrics):
    """:class:`SegMetrics` of one split, with what the split was (for tables and logs)."""

    split: str = "val"
    frames: int = 0
    data_description: str = ""
    synthetic_data: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            **super().to_dict(),
            "split": self.split,
            "frames": self.frames,
            "data_description": self.data_description,
            "synthetic_data": self.synthetic_data,
        }


def metrics_table(metrics: SegMetrics, title: str) -> Any:
    """A ``rich.table.Table``: IoU per class, then mIoU and pixel accuracy.

    A class with no pixel in the ground truth and none predicted has no IoU ("absent"); it is
    left out of the mean, as :class:`SegMetrics` defines.
    """
    from rich.table import Table

    caption = None
    if isinstance(metrics, EvalMetrics) and metrics.data_description:
        caption = (
            f"SYNTHETIC DATA, not real scenes: {metrics.frames} {metrics.split} frames"
            if metrics.synthetic_data
            else metrics.data_description
        )
    # Wide enough that the title and the caption stay on one line each (up to 100 columns).
    width = min(100, max(len(title), len(caption or "")))
    table = Table(
        title=title,
        title_justify="left",
        caption=caption,
        caption_justify="left",
        min_width=width,
    )
    table.add_column("class")
    table.add_column("IoU", justify="right")
    names = metrics.class_names or tuple(str(i) for i in range(len(metrics.per_class_iou)))
    for name, iou in zip(names, metrics.per_class_iou, strict=True):
        table.add_row(name, "absent" if math.isnan(iou) else f"{100 * iou:.2f}")
    table.add_section()
    table.add_row("[bold]mIoU", f"[bold]{_percent(metrics.miou)}")
    table.add_row("pixel accuracy", _percent(metrics.pixel_accuracy))
    return table
