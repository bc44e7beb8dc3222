"""Checkpoints: a resume equals an uninterrupted run, interrupts lose at most an epoch, foreign
files and other networks are refused."""

from __future__ import annotations

import json
import random
import warnings

import numpy as np
import pytest
import torch
from jetseg_cases import TINY_CONFIG
from train_cases import (
    FlakyDataset,
    assert_same_weights,
    make_trainer,
    synthetic_data,
    tiny_config,
    without_timings,
)

from jetseg.checkpoint import (
    CHECKPOINT_FORMAT,
    checkpoint_input_size,
    load_checkpoint,
    read_checkpoint,
    restore_rng_state,
    rng_state,
)
from jetseg.config import arch_hash, load_config
from jetseg.model import build_model
from jetseg.results import EpochReport
from jetseg.train import StopTraining, Trainer
from jetseg.train_config import TrainConfig


@pytest.fixture(scope="module")
def data():
    """16 training and 4 validation synthetic frames at 48x64, with their class weights."""
    return synthetic_data()


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory):
    """The reference: two epochs in one go."""
    trainer = make_trainer(data, tmp_path_factory.mktemp("uninterrupted"))
    result = trainer.fit()
    return trainer, result


# ---------------------------------------------------------------------------------------------
# resuming


def test_resume_after_a_stop_equals_an_uninterrupted_run(data, uninterrupted, tmp_path):
    reference, reference_result = uninterrupted

    def stop_after_first_epoch(report: EpochReport) -> None:
        if report.epoch == 1:
            raise StopTraining("pause")

    first = make_trainer(data, tmp_path, callbacks=[stop_after_first_epoch]).fit()
    assert first.stopped_reason == "callback" and first.stop_detail == "pause"
    assert first.epochs_done == 1 and first.steps == 4

    resumed_trainer = make_trainer(data, tmp_path)
    resumed = resumed_trainer.fit(resume=True)
    assert resumed.epochs_done == 2 and resumed.steps == reference_result.steps == 8
    assert resumed.stopped_reason == "epochs"
    assert_same_weights(resumed_trainer.model, reference.model)
    assert without_timings(resumed.history) == without_timings(reference_result.history)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]


def test_keyboard_interrupt_mid_epoch_keeps_the_previous_epoch(
    data, uninterrupted, tmp_path, capsys
):
    reference, reference_result = uninterrupted
    train = data[0]
    # 16 frames per epoch: access 22 is in the second batch of epoch 2.
    flaky = FlakyDataset(train, fail_at=22, failure="interrupt")
    with pytest.raises(KeyboardInterrupt):
        make_trainer(data, tmp_path, train_set=flaky).fit()
    message = capsys.readouterr().err
    assert "interrupted in epoch 2" in message and "holds epoch 1 (step 4)" in message
    assert "resume" in message
    saved = torch.load(tmp_path / "last.pt", weights_only=True)
    assert saved["epoch"] == 1 and saved["step"] == 4
    assert not (tmp_path / "last.pt.tmp").exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]

    resumed_trainer = make_trainer(data, tmp_path)
    resumed = resumed_trainer.fit(resume=True)
    assert_same_weights(resumed_trainer.model, reference.model)
    assert without_timings(resumed.history) == without_timings(reference_result.history)


def test_keyboard_interrupt_from_a_callback_leaves_a_resumable_checkpoint(
    data, uninterrupted, tmp_path, capsys
):
    reference, _ = uninterrupted

    def interrupt(report: EpochReport) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        make_trainer(data, tmp_path, callbacks=[interrupt]).fit()
    assert "holds epoch 1" in capsys.readouterr().err
    model, config, state = load_checkpoint(tmp_path / "last.pt")
    assert state["epoch"] == 1 and config == tiny_config()

    resumed_trainer = make_trainer(data, tmp_path)
    assert resumed_trainer.fit().epochs_done == 2
    assert_same_weights(resumed_trainer.model, reference.model)


def test_resume_refuses_a_checkpoint_of_another_network(data, uninterrupted, tmp_path):
    make_trainer(data, tmp_path, epochs=1).fit()
    other = load_config({**TINY_CONFIG, "decoder": {**TINY_CONFIG["decoder"], "out_width": 16}})
    train, val, info, weights = data
    trainer = Trainer(
        build_model(other), train, val, TrainConfig(epochs=2, progress=False), tmp_path
    )
    with pytest.raises(ValueError, match="another network .*resume=False"):
        trainer.fit(resume=True)
    # Starting over is allowed and replaces the old run.
    assert trainer.fit(resume=False).epochs_done == 2
    assert torch.load(tmp_path / "last.pt", weights_only=True)["arch_hash"] == arch_hash(other)


def test_resume_with_a_changed_recipe_warns_naming_the_changed_keys(data, tmp_path):
    make_trainer(data, tmp_path, epochs=1).fit()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # more epochs is a resumable change: no warning
        assert make_trainer(data, tmp_path, epochs=2).fit().epochs_done == 2
    with pytest.warns(UserWarning, match=r"different TrainConfig \(lr, weight_decay\)") as caught:
        make_trainer(data, tmp_path, epochs=3, lr=5e-3, weight_decay=0.0).fit()
    # The warning points at the line that called fit, not into the library.
    assert caught[0].filename == __file__


def test_a_checkpoint_holds_the_documented_format_and_rebuilds_the_network(uninterrupted):
    trainer, result = uninterrupted
    state = read_checkpoint(trainer.out_dir / "last.pt")
    assert state["format"] == CHECKPOINT_FORMAT
    assert state["epoch"] == result.epochs_done and state["step"] == result.steps
    assert state["arch_hash"] == arch_hash(tiny_config())
    assert state["train_config"] == trainer.cfg.to_dict()
    assert state["data"] == {"description": trainer.data_description, "synthetic": True}
    for key in ("optimizer", "scheduler", "scaler", "rng", "best_metrics", "history"):
        assert key in state, key
    model, config, _ = load_checkpoint(trainer.out_dir / "last.pt")
    assert config == tiny_config() and not model.training
    assert_same_weights(model, trainer.model)


def test_rng_state_round_trips_every_stream():
    generator = torch.Generator().manual_seed(3)
    saved = rng_state(generator)

    def draw():
        return (
            random.random(),
            float(np.random.rand()),
            float(np.random.randn()),  # the cached second Gaussian is part of the state
            float(torch.rand(())),
            torch.randperm(10, generator=generator).tolist(),
        )

    first = draw()
    restore_rng_state(saved, generator)
    assert draw() == first


# ---------------------------------------------------------------------------------------------
# reading checkpoints


def test_load_checkpoint_rejects_files_that_are_not_checkpoints(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint .*missing.pt does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="not a JetSeg training checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    (tmp_path / "garbage.pt").write_bytes(b"\x00" * 10)
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "garbage.pt")


def test_a_checkpoint_without_a_network_config_cannot_be_rebuilt(tmp_path):
    torch.save({"format": CHECKPOINT_FORMAT, "config": None}, tmp_path / "bare.pt")
    assert read_checkpoint(tmp_path / "bare.pt")["config"] is None
    with pytest.raises(ValueError, match="holds no network config"):
        load_checkpoint(tmp_path / "bare.pt")


def test_the_input_size_is_the_given_one_else_the_trained_one():
    trained = {"train_config": {"size": [48, 64]}}
    assert checkpoint_input_size(trained, None) == (48, 64)
    assert checkpoint_input_size(trained, (32, 40)) == (32, 40)
    assert checkpoint_input_size({"train_config": {"size": None}}, None) is None
