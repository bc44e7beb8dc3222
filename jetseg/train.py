"""Training one JetSeg network: the loop (:class:`Trainer`, ``train_one_epoch``, ``evaluate``).

A plain loop you can read top to bottom (after torchvision's segmentation reference and
detectron2's ``plain_train_net.py``). The recipe it follows is
:class:`jetseg.train_config.TrainConfig`, the learning rate of each step
:class:`jetseg.schedule.WarmupDecaySchedule`; what it reports and returns is in
:mod:`jetseg.results`, and :func:`jetseg.run.run_training` runs it with a run directory.

The checkpoint format, loading and the resume checks are in :mod:`jetseg.checkpoint`; scoring a
checkpoint and predicting images in :mod:`jetseg.predict`. The loop prints nothing: what a run
shows is a set of hooks (:mod:`jetseg.progress`).
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from jetseg.checkpoint import (
    checkpoint_state,
    read_checkpoint,
    restore_trainer,
    save_checkpoint,
)
from jetseg.config import JetSegConfig
from jetseg.data import IGNORE_INDEX, DataInfo
from jetseg.fileio import atomic_write_text
from jetseg.loss import JetLossCE, build_loss, cui_class_weights
from jetseg.metrics import ConfusionMatrix, SegMetrics, frame_counts
from jetseg.progress import TrainHooks, default_hooks
from jetseg.results import EpochReport, TrainResult, iou_dict, json_number
from jetseg.schedule import WarmupDecaySchedule
from jetseg.train_config import TrainConfig, resolve_device

__all__ = [
    "NonFiniteLossError",
    "StopTraining",
    "Trainer",
    "evaluate",
]

# History keys that measure the machine rather than the run: they differ between two runs
# that are otherwise identical (an uninterrupted one and a resumed one).
TIMING_KEYS = ("epoch_time_s", "eval_time_s", "train_time_s", "images_per_s")


# ---------------------------------------------------------------------------------------------
# signals and errors


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


# ---------------------------------------------------------------------------------------------
# small helpers


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch with one seed, as a run starts."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def base_dataset(dataset: Dataset) -> Dataset:
    """The dataset under any number of ``Subset`` wrappers."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return dataset


def first_frames(dataset: Dataset, count: int | None) -> Dataset:
    """The first ``count`` frames of ``dataset`` (all of them when ``count`` is None)."""
    if count is None or count >= len(dataset):
        return dataset
    return Subset(dataset, range(count))


def class_pixel_counts(dataset: Dataset, num_classes: int) -> np.ndarray | None:
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
    frames: list[Tensor] | None = None,
) -> tuple[SegMetrics, float | None]:
    """Metrics of ``model`` on a whole split from one confusion matrix; with ``loss_fn`` also
    the mean loss per image (else ``None``); with a ``frames`` list, each batch's per-image
    counts (:func:`jetseg.metrics.frame_counts`) are appended to it, for a bootstrap over the
    frames. The model is left in the mode it was in."""
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
            if frames is not None:
                frames.append(frame_counts(logits.argmax(1), labels, num_classes, ignore_index))
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

        self.train_set = first_frames(train_set, cfg.max_train_images)
        self.val_set = first_frames(val_set, cfg.max_val_images)
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
            counts = class_pixel_counts(self.train_set, self.num_classes)
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
        # Per-image TP/FP/FN of the latest validation (frames, 3, classes), for a bootstrap.
        self.val_frame_counts: Tensor | None = None
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
        metrics, val_loss, eval_time, heldout, heldout_loss = None, None, 0.0, None, None
        if epoch % cfg.eval_every == 0 or last:
            self._call_hooks("on_validate", epoch)
            started = time.perf_counter()
            frames: list[Tensor] = []
            metrics, val_loss = self._evaluate_loader(
                self.val_loader, loss_fn=self.loss_fn, frames=frames
            )
            self.val_frame_counts = torch.cat(frames)
            if self.heldout_loader is not None:
                heldout, heldout_loss = self._evaluate_loader(
                    self.heldout_loader, loss_fn=self.loss_fn
                )
            eval_time = time.perf_counter() - started
            miou = metrics.miou if math.isfinite(metrics.miou) else -math.inf
            improved = self.best_epoch == 0 or miou > self.best_miou
            if improved:
                self.best_miou, self.best_epoch, self.best_metrics = miou, epoch, metrics
                self.best_heldout = heldout
        else:
            improved = False
        record = self._history_record(
            epoch, stats, metrics, val_loss, eval_time, heldout, heldout_loss
        )
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
        return self._evaluate_loader(loader)[0]

    def _evaluate_loader(
        self, loader, loss_fn=None, frames: list[Tensor] | None = None
    ) -> tuple[SegMetrics, float | None]:
        return evaluate(
            self.model,
            loader,
            device=self.device,
            num_classes=self.num_classes,
            ignore_index=self.ignore_index,
            class_names=self.class_names,
            autocast_dtype=self.autocast_dtype,
            channels_last=self.channels_last,
            loss_fn=loss_fn,
            frames=frames,
        )

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
        heldout_loss: float | None = None,
    ) -> dict[str, Any]:
        held = {}
        if self.heldout_set is not None:
            held = {
                "heldout_miou": None if heldout is None else json_number(heldout.miou),
                "heldout_loss": json_number(heldout_loss),
                "heldout_per_class_iou": None if heldout is None else iou_dict(heldout),
            }
        return {
            "epoch": epoch,
            "step": self.global_step,
            "partial": stats["partial"],
            "train_loss": json_number(stats["train_loss"]),
            "lr": stats["lr"],
            "val_miou": None if metrics is None else json_number(metrics.miou),
            "val_pixel_accuracy": None if metrics is None else json_number(metrics.pixel_accuracy),
            "val_loss": json_number(val_loss),
            "val_per_class_iou": None if metrics is None else iou_dict(metrics),
            **held,
            "best_miou": json_number(self.best_miou),
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
        seed_everything(self.cfg.seed)
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
