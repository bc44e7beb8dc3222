"""What a running study is doing right now, for the live view to show.

The objective writes the phase of the trial it runs (measuring latency, training epoch k of n at
rung r, validating) into a :class:`StudyProgress`; the live view reads it once a second from
another thread. Plain attribute writes of immutable values, so no lock is needed: a reader sees
either the old or the new value of each field.

    >>> progress = StudyProgress()
    >>> progress.start_trial(7, rung=1)
    >>> progress.set_phase("training", epoch=2, epochs=4)
    >>> progress.describe()
    'trial 7 (rung 1): training epoch 2/4'
"""

from __future__ import annotations

import time


class StudyProgress:
    """The running trial's number, rung and phase, and its last validation mIoU."""

    def __init__(self) -> None:
        self.trial: int | None = None
        self.rung: int = 0
        self.phase: str = "starting"
        self.epoch: int | None = None
        self.epochs: int | None = None
        self.last_miou: float | None = None
        self.phase_since: float = time.monotonic()
        self.trials_ended: int = 0  # bumped when a trial ends, so a view knows to redraw

    def start_trial(self, number: int, rung: int = 0) -> None:
        self.trial, self.rung = number, rung
        self.epoch = self.epochs = self.last_miou = None
        self.set_phase("sampling")

    def set_phase(self, phase: str, *, epoch: int | None = None, epochs: int | None = None) -> None:
        self.phase, self.epoch = phase, epoch
        if epochs is not None:
            self.epochs = epochs
        self.phase_since = time.monotonic()

    def set_miou(self, miou: float) -> None:
        self.last_miou = miou

    def end_trial(self) -> None:
        self.trials_ended += 1
        self.set_phase("between trials")

    def describe(self) -> str:
        """One line: ``trial 7 (rung 1): training epoch 2/4, last val mIoU 31.20%``."""
        if self.trial is None:
            return self.phase
        rung = f" (rung {self.rung})" if self.rung else ""
        text = f"trial {self.trial}{rung}: {self.phase}"
        if self.epoch is not None:
            text += f" epoch {self.epoch}/{self.epochs}" if self.epochs else f" epoch {self.epoch}"
        if self.last_miou is not None:
            text += f", last val mIoU {100 * self.last_miou:.2f}%"
        return text
