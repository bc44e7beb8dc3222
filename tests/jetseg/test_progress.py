"""What a run shows is hooks: the loop calls them in order and prints nothing itself."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console
from train_cases import FlakyDataset, make_trainer, synthetic_data

from jetseg.progress import (
    InterruptNotice,
    TrainHooks,
    TrainingDisplay,
    default_hooks,
    format_duration,
    run_eta_s,
)


@pytest.fixture(scope="module")
def data():
    return synthetic_data()


class Recorder(TrainHooks):
    """Every hook call, as a short tuple."""

    def __init__(self):
        self.events = []

    def on_fit_start(self, trainer):
        self.events.append(("fit_start",))

    def on_epoch_start(self, trainer, epoch):
        self.events.append(("epoch_start", epoch))

    def on_step(self, trainer, step, loss, images_per_s):
        assert loss > 0 and images_per_s > 0
        self.events.append(("step", step))

    def on_validate(self, trainer, epoch):
        self.events.append(("validate", epoch))

    def on_epoch_end(self, trainer, record):
        # The record is the saved one: metrics.jsonl (when written) already ends with it.
        assert trainer.history[-1] is record
        self.events.append(("epoch_end", record["epoch"]))

    def on_fit_end(self, trainer):
        self.events.append(("fit_end",))

    def on_interrupt(self, trainer, message):
        self.events.append(("interrupt", message))


def test_the_loop_calls_the_hooks_in_order_and_prints_nothing(data, capsys):
    recorder = Recorder()
    make_trainer(data, None, epochs=2, eval_every=2, hooks=[recorder]).fit()
    steps = [("step", s) for s in (1, 2, 3, 4)]  # 16 frames in batches of 4
    assert recorder.events == [
        ("fit_start",),
        ("epoch_start", 1),
        *steps,
        ("epoch_end", 1),  # eval_every=2: epoch 1 is not validated
        ("epoch_start", 2),
        *steps,
        ("validate", 2),
        ("epoch_end", 2),
        ("fit_end",),
    ]
    # progress=True only picks the default hooks; given hooks (none here) are used as they are.
    make_trainer(data, None, epochs=1, progress=True, hooks=()).fit()
    assert capsys.readouterr() == ("", "")


def test_an_interrupt_reaches_on_interrupt_after_on_fit_end(data, tmp_path, capsys):
    recorder = Recorder()
    flaky = FlakyDataset(data[0], fail_at=22, failure="interrupt")  # in epoch 2
    with pytest.raises(KeyboardInterrupt):
        make_trainer(data, tmp_path, train_set=flaky, hooks=[recorder]).fit()
    (*_, fit_end, (kind, message)) = recorder.events
    assert fit_end == ("fit_end",) and kind == "interrupt"
    assert "interrupted in epoch 2" in message and "holds epoch 1 (step 4)" in message
    assert capsys.readouterr().err == ""  # the notice is a hook too, and none was attached


def test_default_hooks_follow_the_progress_flag():
    (quiet,) = default_hooks(False)
    assert type(quiet) is InterruptNotice
    (shown,) = default_hooks(True)
    assert isinstance(shown, TrainingDisplay)


def test_the_display_prints_a_line_per_epoch_with_the_eta_while_epochs_remain(data):
    out = io.StringIO()
    display = TrainingDisplay(Console(file=out, width=200))  # not a terminal: no bar
    make_trainer(data, None, epochs=3, hooks=[display]).fit()
    lines = out.getvalue().splitlines()
    assert [line.split(" step")[0] for line in lines] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    assert all("[synthetic data]" in line and "val mIoU" in line for line in lines)
    assert all(re.search(r" ETA \d+:\d\d:\d\d", line) for line in lines[:2])
    assert "ETA" not in lines[2]  # the run ends there
    assert display.progress is None


class PhaseRecorder(TrainingDisplay):
    """The display, noting what its bar showed at each point."""

    def __init__(self, console):
        super().__init__(console)
        self.seen = []

    def on_step(self, trainer, step, loss, images_per_s):
        super().on_step(trainer, step, loss, images_per_s)
        self.seen.append(dict(self.progress.tasks[0].fields))

    def on_validate(self, trainer, epoch):
        super().on_validate(trainer, epoch)
        self.seen.append(dict(self.progress.tasks[0].fields))


def test_on_a_terminal_the_bar_shows_the_phase_and_an_eta(data):
    display = PhaseRecorder(Console(file=io.StringIO(), force_terminal=True, width=200))
    make_trainer(data, None, epochs=2, hooks=[display]).fit()
    phases = [fields["phase"] for fields in display.seen]
    assert phases == ["epoch 1/2"] * 4 + ["validating 1/2"] + ["epoch 2/2"] * 4 + ["validating 2/2"]
    assert all(re.fullmatch(r"\d+:\d\d:\d\d", fields["eta"]) for fields in display.seen)
    assert display.seen[0]["loss"] != "-" and display.seen[5]["miou"].endswith("%")
    assert display.progress is None  # stopped with the fit


def test_the_eta_is_epochs_left_times_epoch_time_or_the_budget_left():
    assert run_eta_s(2.5, 10.0) == 25.0
    # The budget counts training seconds: 5 s left at 2 wall seconds per training second.
    assert run_eta_s(2.5, 10.0, budget_left_s=5.0, wall_per_train_s=2.0) == 10.0
    assert run_eta_s(0.5, 10.0, budget_left_s=100.0) == 5.0
    assert run_eta_s(1.0, None, budget_left_s=-3.0) == 0.0
    assert run_eta_s(1.0, None) is None
    assert format_duration(3725.4) == "1:02:05" and format_duration(None) == "?"
