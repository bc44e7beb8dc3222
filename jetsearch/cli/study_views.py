"""What a running ``jetsearch study`` shows: the clock and ETA (:class:`StudyClock`), the live
panel on a terminal (:class:`LiveView`), one line per finished trial elsewhere
(:class:`TrialLines`), and Optuna's own log lines kept quiet after Ctrl-C.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator
from typing import Any

from jetseg.progress import format_duration

# ---------------------------------------------------------------------------------------------
# what a running study shows


class StudyClock:
    """Elapsed time of a running study and its ETA, from the trials it trained so far.

    What counts is what ``--trials`` counts (:class:`jetsearch.budget.TrialCount`): networks
    rejected before training for their latency do not, but the time they took does (it is part
    of the time per trained trial). The ETA is the mean time per trial counted in this run
    times the trials still to go,
    counted down since the last one ended (so that a view redrawn every second moves). A
    running trial that takes longer than the mean stops the count at the time the trials not
    yet started need: the ETA is then a lower bound, and :meth:`text` marks it with ``+``.
    """

    def __init__(self, total: int, start_count: int) -> None:
        self.total = total
        self.start_count = start_count
        self.done = start_count
        self.started = time.monotonic()
        self.last_end: float | None = None

    def trial_ended(self, done: int) -> None:
        """A trial ended; ``done`` trials that count are now in the study."""
        self.done = done
        self.last_end = time.monotonic()

    def elapsed_s(self) -> float:
        return time.monotonic() - self.started

    def _estimate(self) -> tuple[float | None, bool]:
        new = self.done - self.start_count
        remaining = max(0, self.total - self.done)
        if remaining == 0:
            return 0.0, False
        if new <= 0 or self.last_end is None:
            return None, False
        per_trial = (self.last_end - self.started) / new
        countdown = per_trial * remaining - (time.monotonic() - self.last_end)
        floor = per_trial * (remaining - 1)  # the trials that have not started yet
        return max(countdown, floor), countdown < floor

    def eta_s(self) -> float | None:
        """Seconds until the study holds ``total`` counted trials; ``None`` before the first."""
        return self._estimate()[0]

    def text(self) -> str:
        """The ETA as ``h:mm:ss``; ``?`` before the first trial, ``+`` while it is a bound."""
        eta, bound = self._estimate()
        return format_duration(eta) + ("+" if bound else "")


def trial_line(trial) -> str:
    """One finished trial in words: number, state, mIoU, latency (and where from), reason."""
    text = f"trial {trial.number} {trial.state.name.lower()}"
    parts = []
    attrs = trial.user_attrs
    miou = trial.values[0] if trial.values else attrs.get("val_miou")
    if miou is not None:
        parts.append(f"val mIoU {100 * miou:.2f}%")
    if attrs.get("latency_ms") is not None:
        source = attrs.get("latency_source", attrs.get("latency_provenance", "?"))
        flags = [f for f in attrs.get("latency_flags", ()) if f != "from-cache"]
        parts.append(
            f"{attrs['latency_ms']:.2f} ms ({source}{', ' + ', '.join(flags) if flags else ''})"
        )
    if attrs.get("rung"):
        parts.append(f"rung {attrs['rung']}")
    if parts:
        text += ": " + ", ".join(parts)
    reason = attrs.get("pruned_reason") or attrs.get("failure_reason")
    if reason:
        text += f" - {reason}"
    return text


class LiveView:
    """The live panel of a running study on a terminal, redrawn every second.

    Shows the trials trained (and candidates rejected for latency), the elapsed clock, the
    ETA, what the running trial is doing
    (from a :class:`jetsearch.progress.StudyProgress` the objective writes) and the current
    front, which is rebuilt when a trial ends: the view is also the study's callback.
    """

    def __init__(
        self,
        console,
        study_name: str,
        total: int,
        start_count: int,
        progress=None,
        rungs: list | None = None,
    ) -> None:
        from rich.live import Live

        self.rungs = rungs  # the study's rung studies, rung 0 first (its higher rungs' results)
        self.console = console
        self.study_name = study_name
        self.clock = StudyClock(total, start_count)
        self.rejected = 0  # candidates rejected before training, in the whole study
        self.progress = progress
        self.last: str | None = None
        self.front: Any = None  # the front table, replaced by the callback
        # get_renderable: rich's refresh thread asks for a fresh panel on every refresh, so
        # the clock and the phase move between trial ends.
        self.live = Live(
            console=console, refresh_per_second=1, transient=False, get_renderable=self.render
        )

    def __enter__(self) -> LiveView:
        self.clock = StudyClock(self.clock.total, self.clock.start_count)
        self.live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.live.__exit__(*exc)

    def render(self):
        """The panel as it stands now (called by rich once a second, and after a trial)."""
        from rich.console import Group
        from rich.text import Text

        clock = self.clock
        head = Text.assemble(
            (f"study {self.study_name}: ", ""),
            (f"{clock.done}/{clock.total}", "bold"),
            (
                f" trials trained{_rejected_text(self.rejected)} | elapsed "
                f"{format_duration(clock.elapsed_s())} | ETA {clock.text()}",
                "",
            ),
        )
        lines: list[Any] = [head]
        if self.progress is not None and self.progress.trial is not None:
            lines.append(Text(f"now: {self.progress.describe()}"))
        if self.last is not None:
            lines.append(Text(f"last: {self.last}"))
        lines.append(self.front if self.front is not None else Text("no trial finished yet"))
        return Group(*lines)

    def __call__(self, study, trial) -> None:
        from jetsearch.budget import TrialCount
        from jetsearch.report import front_table, trial_rows

        count = TrialCount.of(study)
        self.clock.trial_ended(count.counted)
        self.rejected = count.rejected
        self.last = trial_line(trial)
        self.front = front_table(study, trial_rows(study, self.rungs))
        self.live.refresh()


class TrialLines:
    """A running study where output is not a terminal (a log file, a pipe): one plain line per
    finished trial, with the trials trained (and candidates rejected for latency) and the ETA;
    the front is printed at the end."""

    def __init__(self, console, study_name: str, total: int, start_count: int) -> None:
        self.console = console
        self.study_name = study_name
        self.clock = StudyClock(total, start_count)

    def __call__(self, study, trial) -> None:
        from jetsearch.budget import TrialCount

        count = TrialCount.of(study)
        self.clock.trial_ended(count.counted)
        line = (
            f"{trial_line(trial)} | {self.clock.done}/{self.clock.total} trained"
            f"{_rejected_text(count.rejected)}, ETA {self.clock.text()}"
        )
        self.console.print(line, markup=False, highlight=False, soft_wrap=True)
        self.console.file.flush()


def _rejected_text(rejected: int) -> str:
    return f", {rejected} rejected" if rejected else ""


class _AfterInterrupt(logging.Filter):
    """Drops Optuna's "Trial N failed ... KeyboardInterrupt" warning with its traceback, and
    every record after it: the interrupt was the user's Ctrl-C, which the command reports in
    one line, and the rest ("Trial N failed with value None") only repeats it."""

    def __init__(self) -> None:
        super().__init__()
        self.interrupted = False

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        self.interrupted = self.interrupted or isinstance(error, KeyboardInterrupt)
        return not self.interrupted


@contextlib.contextmanager
def _optuna_logs() -> Iterator[None]:
    """Optuna's log records while a study runs: written to ``sys.stderr`` as it is now (inside
    a live view, rich's proxy, which prints them above the panel instead of through it), and
    quiet after a Ctrl-C."""
    import optuna

    # On Optuna's handlers, not its logger: the records of the modules below it reach the
    # handlers by propagation, which a logger's own filters never see.
    handlers = list(optuna.logging.get_logger("optuna").handlers)
    dropper = _AfterInterrupt()
    streams = {}
    for handler in handlers:
        handler.addFilter(dropper)
        if isinstance(handler, logging.StreamHandler):
            streams[handler] = handler.setStream(sys.stderr)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(dropper)
            if handler in streams:
                handler.setStream(streams[handler])
