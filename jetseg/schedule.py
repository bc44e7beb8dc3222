"""The learning rate of every training step: linear warm-up, then poly or cosine decay.

:class:`jetseg.train.Trainer` builds a :class:`WarmupDecaySchedule` from its TrainConfig and
keeps the schedule's state in every checkpoint.
"""

from __future__ import annotations

import math
from typing import Any

import torch

__all__ = ["WarmupDecaySchedule"]

POLY_POWER = 0.9  # DeepLab / RegSeg's poly schedule


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
