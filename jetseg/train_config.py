"""The training recipe: :class:`TrainConfig`, checked on construction, and the device it names.

:func:`resolve_device` turns ``TrainConfig.device`` into a torch device. The loop that follows
the recipe is :mod:`jetseg.train`; :func:`jetseg.run.run_training` runs it with a run directory.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from jetseg.loss import LOSS_NAMES
from jetseg.validation import ConfigError, Problem, known, parse, validate

__all__ = ["TrainConfig", "TrainConfigError", "resolve_device"]

DEFAULT_LR = {"adamw": 2e-3, "sgd": 0.05}


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
