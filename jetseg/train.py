"""Training one JetSeg network: the recipe (TrainConfig), the loop (Trainer), the schedule.

A plain loop you can read top to bottom (after torchvision's segmentation reference and
detectron2's ``plain_train_net.py``)::

    >>> from jetseg.config import load_config
    >>> result = run_training(load_config("nano"), data="../shared/camvid",
    ...                       out_dir=Path("runs/nano"), train_cfg=TrainConfig(epochs=50))
    >>> print(result.headline())  # best val mIoU, its epoch, steps, time, why it stopped

:func:`run_training` builds the datasets, the Cui class weights and the model, runs a
:class:`Trainer`, and leaves a run directory behind::

    config.yaml         the network (jetseg.config.save_config)
    train_config.yaml   the TrainConfig
    metrics.jsonl       one JSON object per epoch, appended and flushed as the run goes
    last.pt, best.pt    full checkpoints (best by validation mIoU), written atomically
    best.onnx           the best model, exported for onnxruntime / TensorRT
    overlays/           validation frames: image | ground truth | prediction
    run.json            the result, the data, the device

Running the same command again in the same directory resumes from ``last.pt`` (see
:meth:`Trainer.fit`). The checkpoint format, loading and the resume checks are in
:mod:`jetseg.checkpoint`; scoring a checkpoint and predicting images in :mod:`jetseg.predict`.
The loop prints nothing: what a run shows is a set of hooks (:mod:`jetseg.progress`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import yaml
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from jetseg.checkpoint import (
    checkpoint_state,
    read_checkpoint,
    restore_trainer,
    save_checkpoint,
)
from jetseg.config import JetSegConfig, arch_hash, save_config
from jetseg.data import IGNORE_INDEX, DataInfo, build_datasets, build_holdout
from jetseg.fileio import atomic_write_text
from jetseg.loss import LOSS_NAMES, JetLossCE, build_loss, cui_class_weights
from jetseg.metrics import ConfusionMatrix, SegMetrics
from jetseg.progress import TrainHooks, default_hooks
from jetseg.validation import ConfigError, Problem, known, parse, validate

__all__ = [
    "EpochReport",
    "EvalMetrics",
    "NonFiniteLossError",
    "StopTraining",
    "TrainConfig",
    "TrainConfigError",
    "TrainResult",
    "Trainer",
    "WarmupDecaySchedule",
    "evaluate",
    "metrics_table",
    "resolve_device",
    "run_training",
]

DEFAULT_LR = {"adamw": 2e-3, "sgd": 0.05}
POLY_POWER = 0.9  # DeepLab / RegSeg's poly schedule
# History keys that measure the machine rather than the run: they differ between two runs
# that are otherwise identical (an uninterrupted one and a resumed one).
TIMING_KEYS = ("epoch_time_s", "eval_time_s", "train_time_s", "images_per_s")


# ---------------------------------------------------------------------------------------------
# configuration


class TrainConfigError(ConfigError):
    """A TrainConfig with values that cannot work; the message lists every broken field."""

    def __init__(
        self, problems: Sequence[Problem], source: str | None = None, what: str = "TrainConfig"
    ) -> None:
        super().__init__(problems, source, what)


def _device_problem(device: str) -> str | None:
    if device == "auto":
        return None
    try:
        torch.device(device)
    except (RuntimeError, ValueError):
        return f"{device!r} is not auto or a torch device such as cpu, cuda, cuda:1"
    return None


@dataclass(frozen=True)
class TrainConfig:
    """How to train one network. Validated on construction (:class:`TrainConfigError`).

    Frozen, like every config: derive a changed one with ``dataclasses.replace``.

    Attributes:
        epochs: passes over the training split (the run stops at ``epochs`` or
            ``time_budget_s``, whichever comes first).
        time_budget_s: seconds of training steps (data loading, forward, backward, update), not
            counting evaluation and checkpoints, so that how often a run is evaluated does not
            change how much it is trained. Checked after every step; see :meth:`Trainer.fit`.
        batch_size: images per step (training and evaluation).
        lr: peak learning rate; ``None`` takes 2e-3 for AdamW, 0.05 for SGD.
        weight_decay: on conv / linear weights only (not on biases and norm parameters).
        optimizer: ``"adamw"`` or ``"sgd"`` (with ``momentum``).
        schedule: per-step decay after the warm-up, ``"poly"`` (power 0.9) or ``"cosine"``, to
            0 at the last step. Under a time budget the decay follows whichever is further
            along, the steps or the budget, so a budget-bound run also ends at a low rate.
        warmup_epochs: linear warm-up length in epochs (fractions allowed), per step.
        loss: one of :data:`jetseg.loss.LOSS_NAMES`.
        ce_weight: factor on the cross-entropy term of ``"jetloss+ce"``.
        cui_beta: beta of the Cui et al. class weights (training split pixel counts).
        size: (H, W) of training and validation frames; ``None`` keeps the data's own size.
        random_scale, crop, flip: training augmentation, off by default as in the JetSeg
            paper. ``random_scale`` needs ``crop`` (or ``batch_size`` 1) so frames in a batch
            share one size.
        amp: mixed precision on CUDA (bfloat16 where supported, else float16 with a
            GradScaler); ignored on the CPU.
        channels_last: NHWC memory format on CUDA; ignored on the CPU.
        deterministic: on CUDA, deterministic cuDNN kernels (slower); otherwise cuDNN
            autotunes (``benchmark``).
        seed: seeds Python, NumPy, torch and the shuffling of the training split.
        device: ``"auto"`` (CUDA when available, else the CPU), ``"cpu"``, ``"cuda"``,
            ``"cuda:1"``...
        num_workers: DataLoader worker processes.
        eval_every: evaluate on the validation split every this many epochs (and always after
            the last one).
        max_train_images, max_val_images: keep only the first N frames of each split.
        holdout: CamVid sequences (frame-name prefixes such as ``0001TP``) kept out of
            training and evaluated beside val every epoch (see
            :func:`jetseg.data.build_holdout`); val picks the best epoch, the held-out figure
            is reported at it.
        overlays: number of validation frames drawn into ``overlays/`` by :func:`run_training`.
        export_onnx: write ``best.onnx`` in :func:`run_training`.
        progress: a progress bar (on a terminal) and one line per epoch on stderr.
    """

    epochs: int = dataclasses.field(default=50, metadata={"min": 1})
    time_budget_s: float | None = dataclasses.field(default=None, metadata={"gt": 0})
    batch_size: int = dataclasses.field(default=8, metadata={"min": 1})
    lr: float | None = dataclasses.field(default=None, metadata={"gt": 0})
    weight_decay: float = dataclasses.field(default=1e-4, metadata={"min": 0})
    optimizer: Literal["adamw", "sgd"] = "adamw"
    momentum: float = dataclasses.field(default=0.9, metadata={"min": 0, "lt": 1})
    schedule: Literal["poly", "cosine"] = "poly"
    warmup_epochs: float = dataclasses.field(default=1.0, metadata={"min": 0})
    loss: str = dataclasses.field(default="jetloss", metadata={"choices": LOSS_NAMES})
    ce_weight: float = dataclasses.field(default=1.0, metadata={"min": 0})
    cui_beta: float = dataclasses.field(default=0.999, metadata={"min": 0, "lt": 1})
    size: tuple[int, int] | None = dataclasses.field(default=None, metadata={"min": 16})
    random_scale: tuple[float, float] | None = dataclasses.field(default=None, metadata={"gt": 0})
    crop: tuple[int, int] | None = dataclasses.field(default=None, metadata={"min": 16})
    flip: bool = False
    amp: bool = True
    channels_last: bool = True
    deterministic: bool = False
    seed: int = dataclasses.field(default=0, metadata={"min": 0})
    device: str = dataclasses.field(default="auto", metadata={"check": _device_problem})
    num_workers: int = dataclasses.field(default=0, metadata={"min": 0})
    eval_every: int = dataclasses.field(default=1, metadata={"min": 1})
    max_train_images: int | None = dataclasses.field(default=None, metadata={"min": 1})
    max_val_images: int | None = dataclasses.field(default=None, metadata={"min": 1})
    holdout: tuple[str, ...] = ()
    overlays: int = dataclasses.field(default=4, metadata={"min": 0})
    export_onnx: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        # One engine checks every config (jetseg.validation); YAML's lists become tuples.
        validate(self, what="TrainConfig", error=TrainConfigError)

    @staticmethod
    def cross_field_problems(values: Any) -> list[Problem]:
        """Rules that tie training fields together (a study's ``train:`` block has them too)."""
        problems: list[Problem] = []
        scale = values.random_scale
        if scale is None or not known(scale):
            return problems
        low, high = scale
        if low > high:
            problems.append(
                (
                    "random_scale",
                    f"min_scale <= max_scale must hold, got min_scale={low}, max_scale={high}",
                )
            )
        crop, batch_size = values.crop, values.batch_size
        if known(crop, batch_size) and crop is None and batch_size != 1:
            problems.append(
                (
                    "random_scale",
                    "rescaled frames differ in size, so a batch needs a crop; set crop=(H, W) "
                    f"or batch_size=1 (got crop=None, batch_size={batch_size})",
                )
            )
        return problems

    @property
    def resolved_lr(self) -> float:
        """The peak learning rate: ``lr``, or the optimizer's default when it is ``None``."""
        return float(self.lr) if self.lr is not None else DEFAULT_LR[self.optimizer]

    def to_dict(self) -> dict[str, Any]:
        """Plain data (tuples as lists), for YAML, JSON and checkpoints."""
        return {
            f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
            for f in dataclasses.fields(self)
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str | None = None) -> TrainConfig:
        """A TrainConfig from plain data; every problem at once, unknown keys with the allowed.

        ``source`` (a file) is named in the error.
        """
        return parse(cls, data, source=source, what="TrainConfig", error=TrainConfigError)


def resolve_device(name: str = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else the CPU; any other name is checked to exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as err:
        raise ValueError(
            f"device {name!r} is not a torch device (auto, cpu, cuda, cuda:1...)"
        ) from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {name!r} was asked for but CUDA is not available here "
                f"(torch {torch.__version__}); use device='auto' or 'cpu'"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {name!r} does not exist: this machine has "
                f"{torch.cuda.device_count()} CUDA device(s)"
            )
    return device


# ---------------------------------------------------------------------------------------------
# results and callbacks


class StopTraining(Exception):  # a signal, like StopIteration, not an error
    """Raised by a callback to end the run cleanly after the current epoch.

    ``fit`` then returns normally with ``stopped_reason == "callback"`` and the message in
    ``TrainResult.stop_detail``.
    """


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message names the epoch, the step and the terms."""

    def __init__(self, message: str, epoch: int, step: int, terms: dict[str, float]) -> None:
        super().__init__(message)
        self.epoch = epoch
        self.step = step
        self.terms = terms


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


def _json_number(value: float | None) -> float | None:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    return float(value)


def _iou_dict(metrics: SegMetrics) -> dict[str, float | None]:
    names = metrics.class_names or tuple(str(i) for i in range(len(metrics.per_class_iou)))
    return {name: _json_number(iou) for name, iou in zip(names, metrics.per_class_iou, strict=True)}


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
        data["heldout_miou"] = _json_number(self.heldout_miou)
        data["heldout_per_class_iou"] = [_json_number(v) for v in self.heldout_per_class_iou]
        data["out_dir"] = None if self.out_dir is None else str(self.out_dir)
        data["best_miou"] = _json_number(self.best_miou)
        data["pixel_accuracy"] = _json_number(self.pixel_accuracy)
        data["per_class_iou"] = [_json_number(v) for v in self.per_class_iou]
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


# ---------------------------------------------------------------------------------------------
# learning-rate schedule


class WarmupDecaySchedule:
    """Per-step learning rate: linear warm-up to ``base_lr``, then poly or cosine decay to 0.

    Step ``s`` (0-based, the step about to be taken) gets ``base_lr * (s + 1) / warmup_steps``
    during the warm-up, then ``base_lr * decay(p)`` with ``p`` the fraction of the run done
    after the warm-up: ``(1 - p) ** 0.9`` (poly) or ``(1 + cos(pi p)) / 2`` (cosine). With a time
    budget, ``p`` is the larger of the step fraction and the budget fraction.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        base_lr: float,
        warmup_steps: int,
        total_steps: int,
        kind: str = "poly",
        time_budget_s: float | None = None,
    ) -> None:
        if kind not in ("poly", "cosine"):
            raise ValueError(f"schedule kind must be poly or cosine, got {kind!r}")
        self.optimizer = optimizer
        self.base_lr = float(base_lr)
        self.warmup_steps = max(0, int(warmup_steps))
        self.total_steps = max(1, int(total_steps))
        self.kind = kind
        self.time_budget_s = time_budget_s
        self.last_lr = 0.0

    def factor(self, step: int, train_time_s: float = 0.0) -> float:
        """Multiplier of ``base_lr`` for step ``step``."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        decay_steps = max(1, self.total_steps - self.warmup_steps)
        progress = (step - self.warmup_steps) / decay_steps
        if self.time_budget_s:
            progress = max(progress, train_time_s / self.time_budget_s)
        progress = min(max(progress, 0.0), 1.0)
        if self.kind == "poly":
            return (1.0 - progress) ** POLY_POWER
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    def apply(self, step: int, train_time_s: float = 0.0) -> float:
        """Set the learning rate of every parameter group for ``step``; returns it."""
        self.last_lr = self.base_lr * self.factor(step, train_time_s)
        for group in self.optimizer.param_groups:
            group["lr"] = self.last_lr
        return self.last_lr

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "base_lr": self.base_lr,
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
            "time_budget_s": self.time_budget_s,
            "last_lr": self.last_lr,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # The length and budget stay those of the current TrainConfig, so a finished run can be
        # extended by resuming it with more epochs; only where the schedule stood is restored.
        self.last_lr = float(state.get("last_lr", 0.0))


# ---------------------------------------------------------------------------------------------
# small helpers


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def base_dataset(dataset: Dataset) -> Dataset:
    """The dataset under any number of ``Subset`` wrappers."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return dataset


def _limit(dataset: Dataset, count: int | None) -> Dataset:
    """The first ``count`` frames of ``dataset`` (all of them when ``count`` is None)."""
    if count is None or count >= len(dataset):
        return dataset
    return Subset(dataset, range(count))


def _class_pixel_counts(dataset: Dataset, num_classes: int) -> np.ndarray | None:
    """Pixels per class over the raw labels (void excluded), or None if the data cannot say."""
    base = base_dataset(dataset)
    if not isinstance(dataset, Subset):
        counter = getattr(dataset, "class_pixel_counts", None)
        return None if counter is None else np.asarray(counter())
    if not hasattr(base, "raw"):
        return None
    indices = subset_indices(dataset)
    counts = np.zeros(num_classes + 1, dtype=np.int64)
    for index in indices:
        _, label = base.raw(index)
        counts += np.bincount(np.asarray(label).ravel(), minlength=num_classes + 1)[
            : num_classes + 1
        ]
    return counts[:num_classes]


def subset_indices(dataset: Dataset) -> list[int]:
    """Indices into the base dataset of a (possibly nested) Subset."""
    if not isinstance(dataset, Subset):
        return list(range(len(dataset)))
    inner = subset_indices(dataset.dataset)
    return [inner[i] for i in dataset.indices]


# ---------------------------------------------------------------------------------------------
# evaluation shared by the Trainer and jetseg.predict.evaluate_checkpoint


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    *,
    device: torch.device,
    num_classes: int,
    ignore_index: int,
    class_names: Sequence[str] | None,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    loss_fn: nn.Module | None = None,
) -> tuple[SegMetrics, float | None]:
    """Metrics of ``model`` on a whole split from one confusion matrix; with ``loss_fn`` also
    the mean loss per image (else ``None``). The model is left in the mode it was in."""
    was_training = model.training
    model.eval()
    matrix = ConfusionMatrix(num_classes, ignore_index, class_names)
    loss_sum, images = 0.0, 0
    try:
        for batch_images, labels in loader:
            batch_images = batch_images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            if channels_last:
                batch_images = batch_images.contiguous(memory_format=torch.channels_last)
            with torch.autocast(
                device.type,
                dtype=autocast_dtype or torch.float32,
                enabled=autocast_dtype is not None,
            ):
                logits = model(batch_images)
            matrix.update(logits.float(), labels)
            if loss_fn is not None:
                loss_sum += float(loss_fn(logits, labels)) * len(batch_images)
            images += len(batch_images)
    finally:
        model.train(was_training)
    val_loss = loss_sum / images if loss_fn is not None and images else None
    return matrix.compute(), val_loss


# ---------------------------------------------------------------------------------------------
# the trainer


class Trainer:
    """Trains one model on one dataset pair; checkpoints, resumes, reports every epoch.

    Args:
        model: the network, normally from ``build_model`` (its ``config`` attribute is stored
            in the checkpoints so that :func:`load_checkpoint` can rebuild it).
        train_set, val_set: datasets of ``(image float (3, H, W), label int64 (H, W))``.
        cfg: the training recipe.
        out_dir: where ``last.pt``, ``best.pt`` and ``metrics.jsonl`` go; ``None`` keeps
            everything in memory (no checkpoints, no resume).
        class_weights: per-class loss weights; ``None`` computes Cui et al.'s weights from
            ``train_set.class_pixel_counts()`` when the data can count its pixels, and uses
            uniform weights otherwise.
        callbacks: called with an :class:`EpochReport` after every evaluated epoch, after the
            checkpoint and the ``metrics.jsonl`` line are written. A callback may raise
            :class:`StopTraining` to end the run cleanly, or any other exception (e.g.
            ``optuna.TrialPruned``), which propagates out of :meth:`fit` with the epoch
            already saved, so the run can still be resumed or inspected.
        data_info: what the data is (``build_datasets``' ``DataInfo``); stated in the history,
            the checkpoints and the result. Without it the datasets' own descriptions are used.
        hooks: what the run shows (:class:`jetseg.progress.TrainHooks`: progress, epoch lines,
            the interrupt notice); the loop itself prints nothing. ``None`` takes
            :func:`jetseg.progress.default_hooks` of ``cfg.progress``: the
            :class:`~jetseg.progress.TrainingDisplay`, or only the interrupt notice. A
            sequence is used as given (``()``: silent).
    """

    def __init__(
        self,
        model: nn.Module,
        train_set: Dataset,
        val_set: Dataset,
        cfg: TrainConfig,
        out_dir: Path | None,
        class_weights: Tensor | None = None,
        callbacks: Sequence[Callable[[EpochReport], None]] = (),
        data_info: DataInfo | None = None,
        hooks: Sequence[TrainHooks] | None = None,
        heldout_set: Dataset | None = None,
    ) -> None:
        if not isinstance(cfg, TrainConfig):
            raise TypeError(f"cfg must be a TrainConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.callbacks = list(callbacks)
        self.hooks = list(default_hooks(cfg.progress) if hooks is None else hooks)
        self.data_info = data_info
        self.config: JetSegConfig | None = getattr(model, "config", None)

        self.train_set = _limit(train_set, cfg.max_train_images)
        self.val_set = _limit(val_set, cfg.max_val_images)
        if len(self.train_set) == 0 or len(self.val_set) == 0:
            raise ValueError(
                f"need at least one training and one validation frame, got "
                f"{len(self.train_set)} and {len(self.val_set)}"
            )
        base = base_dataset(self.train_set)
        self.ignore_index = int(getattr(base, "ignore_index", IGNORE_INDEX))
        self.num_classes = self._num_classes(base)
        names = (
            data_info.class_names if data_info is not None else getattr(base, "class_names", None)
        )
        self.class_names = tuple(names) if names and len(names) == self.num_classes else None
        self.synthetic_data, self.data_description = self._describe_data(base)

        self.device = resolve_device(cfg.device)
        on_cuda = self.device.type == "cuda"
        self.channels_last = cfg.channels_last and on_cuda
        self.autocast_dtype: torch.dtype | None = None
        if cfg.amp and on_cuda:
            self.autocast_dtype = (
                torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            )
        if on_cuda:
            torch.backends.cudnn.deterministic = cfg.deterministic
            torch.backends.cudnn.benchmark = not cfg.deterministic

        self.model = model.to(self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

        if class_weights is None:
            counts = _class_pixel_counts(self.train_set, self.num_classes)
            if counts is not None:
                class_weights = cui_class_weights(counts, beta=cfg.cui_beta)
        self.class_weights = None if class_weights is None else torch.as_tensor(class_weights)
        if cfg.loss == "jetloss+ce":
            loss_fn: nn.Module = JetLossCE(
                self.class_weights, self.num_classes, self.ignore_index, ce_weight=cfg.ce_weight
            )
        else:
            loss_fn = build_loss(cfg.loss, self.class_weights, self.num_classes, self.ignore_index)
        self.loss_fn = loss_fn.to(self.device)

        # A generator of its own drives the shuffling; its state goes into every checkpoint,
        # so a resumed run draws the same batches as an uninterrupted one.
        self.loader_generator = torch.Generator().manual_seed(cfg.seed)
        self.train_loader = DataLoader(
            self.train_set,
            batch_size=cfg.batch_size,
            shuffle=True,
            generator=self.loader_generator,
            num_workers=cfg.num_workers,
            pin_memory=on_cuda,
            # Full batches only when there is at least one: a tiny last batch gives noisy
            # batch-norm statistics and a noisy JetLoss.
            drop_last=len(self.train_set) >= cfg.batch_size,
        )
        self.val_loader = self._eval_loader(self.val_set)
        self.heldout_set = heldout_set
        self.heldout_loader = None if heldout_set is None else self._eval_loader(heldout_set)

        self.optimizer = self._build_optimizer()
        steps_per_epoch = len(self.train_loader)
        self.schedule = WarmupDecaySchedule(
            self.optimizer,
            base_lr=cfg.resolved_lr,
            warmup_steps=round(cfg.warmup_epochs * steps_per_epoch),
            total_steps=cfg.epochs * steps_per_epoch,
            kind=cfg.schedule,
            time_budget_s=cfg.time_budget_s,
        )
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.autocast_dtype == torch.float16
        )

        # Run state: everything below goes into the checkpoints.
        self.epoch = 0
        self.global_step = 0
        self.train_time_s = 0.0
        self.images_seen = 0
        self.best_miou = -math.inf
        self.best_epoch = 0
        self.best_metrics: SegMetrics | None = None
        self.best_heldout: SegMetrics | None = None
        self.history: list[dict[str, Any]] = []
        self.stopped_reason = ""
        self.stop_detail = ""
        self._last_saved_epoch: int | None = None

    # -- setup helpers ---------------------------------------------------------------------

    def _num_classes(self, base: Dataset) -> int:
        model_classes = self.config.num_classes if self.config is not None else None
        data_classes = (
            self.data_info.num_classes
            if self.data_info is not None
            else getattr(base, "num_classes", None)
        )
        if model_classes is not None and data_classes is not None and model_classes != data_classes:
            raise ValueError(
                f"the model predicts {model_classes} classes (config num_classes) but the data "
                f"has {data_classes}; set num_classes: {data_classes} in the config"
            )
        classes = model_classes or data_classes
        if classes is None:
            raise ValueError(
                "cannot tell the number of classes: give a model built by build_model (with "
                "a config) or datasets with a num_classes attribute"
            )
        return int(classes)

    def _describe_data(self, base: Dataset) -> tuple[bool, str]:
        if self.data_info is not None:
            return self.data_info.synthetic, self.data_info.description
        from jetseg.data import SyntheticStreets

        synthetic = isinstance(base, SyntheticStreets)
        description = getattr(base, "description", type(base).__name__)
        return synthetic, str(description)

    def _eval_loader(self, dataset: Dataset) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.cfg.batch_size,
            shuffle=False,
            num_workers=self.cfg.num_workers,
            pin_memory=self.device.type == "cuda",
        )

    def _build_optimizer(self) -> torch.optim.Optimizer:
        # No weight decay on biases and norm parameters (all the 1-D ones): decaying them only
        # fights the normalisation.
        decay, no_decay = [], []
        for param in self.model.parameters():
            if param.requires_grad:
                (decay if param.ndim > 1 else no_decay).append(param)
        groups = [
            {"params": decay, "weight_decay": self.cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        lr = self.cfg.resolved_lr
        if self.cfg.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=lr, momentum=self.cfg.momentum)
        return torch.optim.AdamW(groups, lr=lr)

    # -- the loop ----------------------------------------------------------------------------

    def fit(self, resume: bool = True) -> TrainResult:
        """Train until ``cfg.epochs`` or ``cfg.time_budget_s``; returns the result.

        Resuming: with ``resume=True`` and a ``last.pt`` in ``out_dir``, the run continues from
        the epoch after the one saved, with the model, optimizer, schedule, scaler, every random
        stream (Python, NumPy, torch, CUDA, the shuffling) and the history as they were, so the
        final weights equal those of an uninterrupted run with the same TrainConfig. A run
        that already reached its end returns its result at once; resuming with more
        ``epochs`` (or a larger budget) extends it. ``resume=False`` starts over and deletes
        the old checkpoints and metrics of ``out_dir`` first.

        Each epoch: train (:meth:`train_one_epoch`), evaluate when due, save ``best.pt`` if the
        validation mIoU improved and ``last.pt`` always, append the ``metrics.jsonl`` line,
        then call the callbacks.

        Time budget: checked after every step; when it is used up, the epoch in progress is
        cut there, evaluated, saved and marked ``partial`` in the history, and the run stops
        with ``stopped_reason="time budget"``. (Resuming such a run with a larger budget goes
        on with the next epoch.)

        The hooks hear of each of these steps (:class:`jetseg.progress.TrainHooks`).

        Raises:
            NonFiniteLossError: the loss became NaN or infinite; ``last.pt`` still holds the
                previous epoch.
            KeyboardInterrupt: re-raised after the hooks' ``on_interrupt`` got the message
                saying which epoch ``last.pt`` holds and how to resume (the default hooks
                print it on stderr); at most the epoch in progress is lost.
            Exception: whatever a callback raised (other than :class:`StopTraining`), after
                that epoch's checkpoint and metrics line were written.
        """
        cfg = self.cfg
        checkpoint = self._last_checkpoint_path()
        if resume and checkpoint is not None and checkpoint.is_file():
            self._restore(checkpoint)
        else:
            self._start_fresh()
        self.stopped_reason, self.stop_detail = "", ""
        try:
            self._call_hooks("on_fit_start")
            try:
                while not self.stopped_reason:
                    if self.epoch >= cfg.epochs:
                        self.stopped_reason = "epochs"
                        break
                    if self._budget_used():
                        self.stopped_reason = "time budget"
                        break
                    self._run_epoch(self.epoch + 1)
            finally:
                self._call_hooks("on_fit_end")
        except KeyboardInterrupt:
            self._call_hooks("on_interrupt", self._interrupt_message())
            raise
        return self.result()

    def _call_hooks(self, name: str, *args: Any) -> None:
        for hook in self.hooks:
            getattr(hook, name)(self, *args)

    def _run_epoch(self, epoch: int) -> None:
        """Train, evaluate when due, save, log, call back: one epoch of :meth:`fit`."""
        cfg = self.cfg
        stats = self.train_one_epoch(epoch)
        self.epoch = epoch
        last = epoch >= cfg.epochs or stats["partial"] or self._budget_used()
        metrics, val_loss, eval_time, heldout = None, None, 0.0, None
        if epoch % cfg.eval_every == 0 or last:
            self._call_hooks("on_validate", epoch)
            started = time.perf_counter()
            metrics, val_loss = evaluate(
                self.model,
                self.val_loader,
                device=self.device,
                num_classes=self.num_classes,
                ignore_index=self.ignore_index,
                class_names=self.class_names,
                autocast_dtype=self.autocast_dtype,
                channels_last=self.channels_last,
                loss_fn=self.loss_fn,
            )
            if self.heldout_loader is not None:
                heldout, _ = evaluate(
                    self.model,
                    self.heldout_loader,
                    device=self.device,
                    num_classes=self.num_classes,
                    ignore_index=self.ignore_index,
                    class_names=self.class_names,
                    autocast_dtype=self.autocast_dtype,
                    channels_last=self.channels_last,
                )
            eval_time = time.perf_counter() - started
            miou = metrics.miou if math.isfinite(metrics.miou) else -math.inf
            improved = self.best_epoch == 0 or miou > self.best_miou
            if improved:
                self.best_miou, self.best_epoch, self.best_metrics = miou, epoch, metrics
                self.best_heldout = heldout
        else:
            improved = False
        record = self._history_record(epoch, stats, metrics, val_loss, eval_time, heldout)
        self.history.append(record)
        if stats["partial"]:
            self.stopped_reason = "time budget"
        if improved:
            self.save_checkpoint("best")
        self.save_checkpoint("last")
        self._append_metrics_line(record)
        self._call_hooks("on_epoch_end", record)
        if metrics is None:
            return
        report = EpochReport(
            epoch=epoch,
            step=self.global_step,
            train_loss=stats["train_loss"],
            val=metrics,
            elapsed_s=self.train_time_s,
            images_per_s=stats["images_per_s"],
            best_miou=self.best_miou,
            partial=stats["partial"],
            heldout=heldout,
        )
        for callback in self.callbacks:
            try:
                callback(report)
            except StopTraining as stop:
                self.stopped_reason, self.stop_detail = "callback", str(stop)
                # The checkpoint already holds this epoch; record why the run ended.
                self.save_checkpoint("last")
                return

    def train_one_epoch(self, epoch: int) -> dict[str, Any]:
        """One pass over the training split (cut short when the time budget runs out).

        Returns ``train_loss`` (mean over images), ``steps``, ``images``, ``time_s``,
        ``images_per_s``, ``lr`` (of the last step) and ``partial`` (cut by the budget).
        """
        cfg = self.cfg
        self.model.train()
        loss_sum, images, steps = 0.0, 0, 0
        partial = False
        started = time.perf_counter()
        budget_left = None if cfg.time_budget_s is None else cfg.time_budget_s - self.train_time_s
        self._call_hooks("on_epoch_start", epoch)
        for batch_images, labels in self.train_loader:
            batch_images = batch_images.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            if self.channels_last:
                batch_images = batch_images.contiguous(memory_format=torch.channels_last)
            elapsed = time.perf_counter() - started
            self.schedule.apply(self.global_step, self.train_time_s + elapsed)

            with torch.autocast(
                self.device.type,
                dtype=self.autocast_dtype or torch.float32,
                enabled=self.autocast_dtype is not None,
            ):
                logits = self.model(batch_images)
            loss = self.loss_fn(logits, labels)  # the losses compute in float32 themselves
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                raise self._non_finite_error(
                    epoch, steps + 1, loss_value, batch_images, logits, labels
                )

            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()

            batch = len(batch_images)
            self.global_step += 1
            steps += 1
            images += batch
            loss_sum += loss_value * batch
            elapsed = time.perf_counter() - started
            self._call_hooks("on_step", steps, loss_sum / images, images / max(elapsed, 1e-9))
            if budget_left is not None and elapsed >= budget_left:
                partial = steps < len(self.train_loader)
                break
        elapsed = time.perf_counter() - started
        self.train_time_s += elapsed
        self.images_seen += images
        return {
            "train_loss": loss_sum / max(images, 1),
            "steps": steps,
            "images": images,
            "time_s": elapsed,
            "images_per_s": images / max(elapsed, 1e-9),
            "lr": self.schedule.last_lr,
            "partial": partial,
        }

    def evaluate(self, dataset: Dataset | None = None) -> SegMetrics:
        """Per-class IoU, mIoU and pixel accuracy of the current model on a whole split
        (``None``: the validation split), from one confusion matrix."""
        loader = self.val_loader if dataset is None else self._eval_loader(dataset)
        metrics, _ = evaluate(
            self.model,
            loader,
            device=self.device,
            num_classes=self.num_classes,
            ignore_index=self.ignore_index,
            class_names=self.class_names,
            autocast_dtype=self.autocast_dtype,
            channels_last=self.channels_last,
        )
        return metrics

    def _budget_used(self) -> bool:
        return self.cfg.time_budget_s is not None and self.train_time_s >= self.cfg.time_budget_s

    def _non_finite_error(
        self,
        epoch: int,
        step_in_epoch: int,
        loss_value: float,
        images: Tensor,
        logits: Tensor,
        labels: Tensor,
    ) -> NonFiniteLossError:
        terms: dict[str, float] = {"loss": loss_value}
        terms_of = getattr(self.loss_fn, "terms", None)
        if terms_of is not None:
            with torch.no_grad():
                terms = {k: float(v) for k, v in terms_of(logits.detach(), labels).items()}
        listed = ", ".join(f"{k}={v:.6g}" for k, v in terms.items())
        inputs_ok = bool(torch.isfinite(images).all())
        logits_ok = bool(torch.isfinite(logits.detach()).all())
        saved = (
            f"{self._last_checkpoint_path()} holds epoch {self._last_saved_epoch}"
            if self._last_saved_epoch is not None
            else "no checkpoint was written"
        )
        message = (
            f"non-finite loss {loss_value} at epoch {epoch}, step {step_in_epoch} of the epoch "
            f"(global step {self.global_step + 1}), loss {self.cfg.loss!r}: {listed}; "
            f"input images finite: {inputs_ok}, logits finite: {logits_ok}, "
            f"lr {self.schedule.last_lr:.3g}. "
            + (
                "The input batch holds NaN/inf: check the data. "
                if not inputs_ok
                else "Lower the learning rate (TrainConfig.lr) or turn off amp. "
            )
            + f"Training stopped; {saved}."
        )
        return NonFiniteLossError(message, epoch, self.global_step + 1, terms)

    # -- history and the interrupt message --------------------------------------------------

    def _history_record(
        self,
        epoch: int,
        stats: dict[str, Any],
        metrics: SegMetrics | None,
        val_loss: float | None,
        eval_time: float,
        heldout: SegMetrics | None = None,
    ) -> dict[str, Any]:
        held = {}
        if self.heldout_set is not None:
            held = {
                "heldout_miou": None if heldout is None else _json_number(heldout.miou),
                "heldout_per_class_iou": None if heldout is None else _iou_dict(heldout),
            }
        return {
            "epoch": epoch,
            "step": self.global_step,
            "partial": stats["partial"],
            "train_loss": _json_number(stats["train_loss"]),
            "lr": stats["lr"],
            "val_miou": None if metrics is None else _json_number(metrics.miou),
            "val_pixel_accuracy": None if metrics is None else _json_number(metrics.pixel_accuracy),
            "val_loss": _json_number(val_loss),
            "val_per_class_iou": None if metrics is None else _iou_dict(metrics),
            **held,
            "best_miou": _json_number(self.best_miou),
            "best_epoch": self.best_epoch,
            "epoch_time_s": stats["time_s"],
            "eval_time_s": eval_time,
            "train_time_s": self.train_time_s,
            "images_per_s": stats["images_per_s"],
            "synthetic_data": self.synthetic_data,
            "data": self.data_description,
        }

    def _append_metrics_line(self, record: dict[str, Any]) -> None:
        if self.out_dir is None:
            return
        with open(self.out_dir / "metrics.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()

    def _interrupt_message(self) -> str:
        """Which epoch ``last.pt`` holds after an interrupt, and how to resume from it."""
        path = self._last_checkpoint_path()
        if path is None:
            return "training interrupted; no out_dir was given, so there is nothing to resume"
        if not path.is_file():
            return (
                f"training interrupted in epoch 1 before any checkpoint; nothing to resume in "
                f"{self.out_dir}"
            )
        saved = torch.load(path, map_location="cpu", weights_only=True)
        return (
            f"training interrupted in epoch {saved['epoch'] + 1}: {path} holds epoch "
            f"{saved['epoch']} (step {saved['step']}); run the same command again (or "
            f"Trainer.fit(resume=True) with out_dir={self.out_dir}) to resume from epoch "
            f"{saved['epoch'] + 1}"
        )

    # -- checkpoints -------------------------------------------------------------------------

    def _last_checkpoint_path(self) -> Path | None:
        return None if self.out_dir is None else self.out_dir / "last.pt"

    def checkpoint_state(self) -> dict[str, Any]:
        """Everything a checkpoint holds (:func:`jetseg.checkpoint.checkpoint_state`)."""
        return checkpoint_state(self)

    def save_checkpoint(self, kind: str) -> Path | None:
        """Write ``{kind}.pt`` (``"last"`` or ``"best"``) atomically; None without out_dir."""
        if kind not in ("last", "best"):
            raise ValueError(f"checkpoint kind must be 'last' or 'best', got {kind!r}")
        if self.out_dir is None:
            return None
        path = save_checkpoint(self.checkpoint_state(), self.out_dir / f"{kind}.pt")
        if kind == "last":
            self._last_saved_epoch = self.epoch
        return path

    def _start_fresh(self) -> None:
        _seed_everything(self.cfg.seed)
        self.loader_generator.manual_seed(self.cfg.seed)
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            # An old run's files would otherwise be resumed or mixed with this run's.
            for name in ("last.pt", "best.pt", "metrics.jsonl", "last.pt.tmp", "best.pt.tmp"):
                (self.out_dir / name).unlink(missing_ok=True)
            # Temporary files of a save that a killed process never finished.
            for leftover in self.out_dir.glob(".*.pt.*.tmp"):
                leftover.unlink(missing_ok=True)

    def _restore(self, path: Path) -> None:
        restore_trainer(self, read_checkpoint(path), path)
        self._last_saved_epoch = self.epoch
        # metrics.jsonl is rewritten from the checkpoint: lines of an epoch that was cut
        # short, or a line lost to a crash between the checkpoint and the log, are made right.
        if self.out_dir is not None:
            text = "".join(json.dumps(record) + "\n" for record in self.history)
            atomic_write_text(self.out_dir / "metrics.jsonl", text)

    # -- the result --------------------------------------------------------------------------

    def result(self) -> TrainResult:
        """The :class:`TrainResult` of the run so far."""
        best = self.best_metrics
        return TrainResult(
            best_miou=self.best_miou if best is not None else math.nan,
            best_epoch=self.best_epoch,
            per_class_iou=() if best is None else best.per_class_iou,
            pixel_accuracy=math.nan if best is None else best.pixel_accuracy,
            epochs_done=self.epoch,
            steps=self.global_step,
            train_time_s=self.train_time_s,
            images_per_s=self.images_seen / self.train_time_s if self.train_time_s > 0 else 0.0,
            stopped_reason=self.stopped_reason,
            history=list(self.history),
            out_dir=self.out_dir,
            data_description=self.data_description,
            synthetic_data=self.synthetic_data,
            stop_detail=self.stop_detail,
            device=str(self.device),
            config_name="" if self.config is None else self.config.name,
            class_names=self.class_names or (),
            heldout_miou=None if self.best_heldout is None else self.best_heldout.miou,
            heldout_per_class_iou=()
            if self.best_heldout is None
            else tuple(self.best_heldout.per_class_iou),
            heldout_description=""
            if self.heldout_set is None
            else str(getattr(self.heldout_set, "description", "")),
        )


# ---------------------------------------------------------------------------------------------
# the whole run


def run_training(
    config: JetSegConfig,
    data: str | Path | None,
    out_dir: Path,
    train_cfg: TrainConfig,
    resume: bool = True,
    callbacks: Sequence[Callable[[EpochReport], None]] = (),
    hooks: Sequence[TrainHooks] | None = None,
) -> TrainResult:
    """Train ``config`` on ``data`` and leave a complete run directory in ``out_dir``.

    ``data`` is a CamVid root, or ``None`` for the embedded synthetic street scenes: then the
    summary, every ``metrics.jsonl`` line and ``run.json`` say so. The loss is weighted with
    Cui et al.'s class weights from the training split's pixel counts. What is written is
    listed in the module docstring. An existing run in ``out_dir`` is resumed (``resume``).
    Exceptions from callbacks propagate as in :meth:`Trainer.fit`; ``hooks`` are the
    Trainer's (``None``: the display or not, as ``train_cfg.progress`` says).
    """
    from jetseg.export import export_onnx
    from jetseg.model import build_model
    from jetseg.predict import write_overlays  # jetseg.predict builds on this module

    if not isinstance(config, JetSegConfig):
        raise TypeError(f"config must be a JetSegConfig, got {type(config).__name__}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = train_cfg
    synthetic = data is None or str(data) == "synthetic"
    # Frames past the limits are never decoded (CamVid decodes a split when it is opened).
    limits = [n for n in (cfg.max_train_images, cfg.max_val_images) if n is not None]
    limit = max(limits) if len(limits) == 2 and not synthetic else None
    train_set, val_set, info = build_datasets(
        data,
        cfg.size,
        random_scale=cfg.random_scale,
        crop=cfg.crop,
        flip=cfg.flip,
        limit=limit,
        synthetic_images=(cfg.max_train_images or 64, cfg.max_val_images or 16),
        holdout=cfg.holdout,
    )
    heldout_set = build_holdout(data, cfg.holdout, cfg.size) if cfg.holdout else None
    train_set = _limit(train_set, cfg.max_train_images)
    val_set = _limit(val_set, cfg.max_val_images)
    counts = _class_pixel_counts(train_set, info.num_classes)
    with warnings.catch_warnings():
        # A small training split may lack a class: it then weighs 0, which run.json records.
        warnings.simplefilter("ignore", UserWarning)
        class_weights = cui_class_weights(counts, beta=cfg.cui_beta)

    _seed_everything(cfg.seed)  # the initial weights depend on the seed only
    model = build_model(config)
    save_config(config, out_dir / "config.yaml")
    atomic_write_text(out_dir / "train_config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    trainer = Trainer(
        model,
        train_set,
        val_set,
        cfg,
        out_dir,
        class_weights=class_weights,
        callbacks=callbacks,
        data_info=info,
        hooks=hooks,
        heldout_set=heldout_set,
    )
    result = trainer.fit(resume=resume)

    # The deliverables come from the best epoch, on a fresh CPU copy of the network.
    best_model = build_model(config)
    best_model.load_state_dict(read_checkpoint(out_dir / "best.pt")["model"])
    best_model.eval()
    frame_size = tuple(val_set[0][0].shape[-2:])
    files = ["config.yaml", "train_config.yaml", "metrics.jsonl", "best.pt", "last.pt"]
    if cfg.export_onnx:
        export_onnx(best_model, out_dir / "best.onnx", input_size=frame_size)
        files.append("best.onnx")
    overlays = write_overlays(best_model, val_set, out_dir / "overlays", cfg.overlays)
    files += [str(p.relative_to(out_dir)) for p in overlays]
    files.append("run.json")

    run = {
        "result": result.to_dict(),
        "config_name": config.name,
        "arch_hash": arch_hash(config),
        "params": sum(p.numel() for p in best_model.parameters()),
        "synthetic_data": info.synthetic,
        "data": {
            "name": info.name,
            "root": None if info.root is None else str(info.root),
            "description": info.description,
            "train_frames": len(train_set),
            "val_frames": len(val_set),
            "holdout": list(cfg.holdout),
            "heldout_frames": 0 if heldout_set is None else len(heldout_set),
            "frame_size": list(frame_size),
        },
        "class_weights": {
            name: float(w) for name, w in zip(info.class_names, class_weights.tolist(), strict=True)
        },
        "class_pixel_counts": {
            name: int(n) for name, n in zip(info.class_names, counts.tolist(), strict=True)
        },
        "train_config": cfg.to_dict(),
        "device": str(trainer.device),
        "amp": None
        if trainer.autocast_dtype is None
        else str(trainer.autocast_dtype).split(".")[-1],
        "channels_last": trainer.channels_last,
        "torch_version": str(torch.__version__),
        "files": files,
    }
    if info.synthetic:
        run["note"] = (
            "trained and evaluated on synthetic street scenes (procedurally generated, not real "
            "data); pass a CamVid root for real results"
        )
    atomic_write_text(out_dir / "run.json", json.dumps(run, indent=2) + "\n")
    return result
