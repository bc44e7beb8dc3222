"""The trainer: it learns, stops when told, fails loudly, writes a whole run."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import onnxruntime as ort
import optuna
import pytest
import torch
import yaml
from PIL import Image
from train_cases import CAMVID_ROOT, SIZE, FlakyDataset, make_trainer, synthetic_data, tiny_config
from train_cases import synthetic_run as train_synthetic_run

from jetseg.checkpoint import load_checkpoint
from jetseg.config import ConfigError, arch_hash, load_config
from jetseg.loss import LOSS_NAMES
from jetseg.predict import panel_layout
from jetseg.results import EpochReport
from jetseg.run import run_training
from jetseg.schedule import WarmupDecaySchedule
from jetseg.train import NonFiniteLossError
from jetseg.train_config import TrainConfig, TrainConfigError


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
# configuration


def test_train_config_rejects_bad_values_naming_each_field():
    with pytest.raises(TrainConfigError) as err:
        TrainConfig(epochs=0, batch_size=-1, lr=-1.0, optimizer="adam", loss="dice", size=(8, 8))
    message = str(err.value)
    for field in ("epochs", "batch_size", "lr", "optimizer", "loss", "size[0]", "size[1]"):
        assert f"{field}:" in message
    assert "optimizer: 'adam' is not one of 'adamw', 'sgd'" in message
    assert "epochs: 0 is out of range; value >= 1 must hold" in message
    assert len(err.value.problems) == 7
    with pytest.raises(TrainConfigError, match="random_scale: .*needs a crop"):
        TrainConfig(random_scale=(0.5, 2.0))
    with pytest.raises(TrainConfigError, match="device"):
        TrainConfig(device="gpu please")
    unknown = r"invalid TrainConfig \(x.yaml\):\n  epoch: unknown key; allowed keys: epochs, "
    with pytest.raises(TrainConfigError, match=unknown):
        TrainConfig.from_dict({"epoch": 3}, source="x.yaml")
    # One engine for every config: a TrainConfigError is a ConfigError, and the rules that tie
    # fields together come with the per-key problems.
    with pytest.raises(ConfigError) as err:
        TrainConfig.from_dict({"random_scale": [2.0, 0.5], "lr": "fast", "epochs": 0})
    assert isinstance(err.value, TrainConfigError)
    assert [path for path, _ in err.value.problems] == [
        "epochs",
        "lr",
        "random_scale",
        "random_scale",
    ]
    assert "min_scale <= max_scale must hold, got min_scale=2.0, max_scale=0.5" in str(err.value)


def test_train_config_round_trips_and_resolves_the_default_lr():
    cfg = TrainConfig(size=[48, 64], crop=(32, 32), random_scale=(0.5, 1.5), optimizer="sgd")
    assert cfg.size == (48, 64) and cfg.resolved_lr == 0.05
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.epochs = 3  # frozen like every config: dataclasses.replace derives another
    assert dataclasses.replace(cfg, epochs=3).epochs == 3
    assert TrainConfig().resolved_lr == 2e-3
    assert TrainConfig.from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_dict()))) == cfg


def test_schedule_warms_up_linearly_then_decays_to_zero():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    poly = WarmupDecaySchedule(optimizer, 0.1, warmup_steps=4, total_steps=20, kind="poly")
    assert [round(poly.apply(s), 6) for s in range(4)] == [0.025, 0.05, 0.075, 0.1]
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1)
    assert poly.factor(12) == pytest.approx(0.5**0.9)
    assert poly.factor(20) == 0.0
    cosine = WarmupDecaySchedule(optimizer, 0.1, warmup_steps=0, total_steps=10, kind="cosine")
    assert cosine.factor(5) == pytest.approx(0.5)
    # Under a time budget the decay follows the budget when it is further along.
    timed = WarmupDecaySchedule(optimizer, 0.1, 0, 1000, kind="cosine", time_budget_s=10.0)
    assert timed.factor(1, train_time_s=5.0) == pytest.approx(0.5)


# ---------------------------------------------------------------------------------------------
# learning


def test_training_on_synthetic_data_lowers_the_loss_and_raises_miou(data):
    result = make_trainer(data, None, epochs=8).fit()
    first, last = result.history[0], result.history[-1]
    assert result.stopped_reason == "epochs" and result.epochs_done == 8
    assert result.steps == 8 * 4  # 16 frames in batches of 4
    assert last["train_loss"] < first["train_loss"] - 0.1
    assert last["val_miou"] > first["val_miou"] + 0.03
    assert result.best_miou == max(r["val_miou"] for r in result.history)
    assert result.history[result.best_epoch - 1]["val_miou"] == result.best_miou
    assert result.synthetic_data and "synthetic" in result.data_description


@pytest.mark.parametrize("loss", LOSS_NAMES)
@pytest.mark.parametrize("optimizer, schedule", [("adamw", "poly"), ("sgd", "cosine")])
def test_every_loss_optimizer_and_schedule_trains(data, loss, optimizer, schedule):
    trainer = make_trainer(
        data, None, epochs=1, loss=loss, optimizer=optimizer, schedule=schedule, ce_weight=0.5
    )
    before = [p.detach().clone() for p in trainer.model.parameters()]
    result = trainer.fit()
    assert math.isfinite(result.history[0]["train_loss"]) and result.steps == 4
    after = list(trainer.model.parameters())
    changed = [not torch.equal(a, b) for a, b in zip(before, after, strict=True)]
    assert all(changed)  # every parameter received a gradient and moved
    if loss == "jetloss+ce":
        assert trainer.loss_fn.ce_weight == 0.5
    expected = torch.optim.SGD if optimizer == "sgd" else torch.optim.AdamW
    assert isinstance(trainer.optimizer, expected)


def test_evaluate_counts_the_whole_split_in_one_matrix(data, uninterrupted):
    trainer, result = uninterrupted
    train, val, _, _ = data
    metrics = trainer.evaluate()
    # The trainer's last epoch evaluated exactly this model on this split.
    assert metrics.miou == pytest.approx(result.history[-1]["val_miou"], abs=1e-12)
    assert len(metrics.per_class_iou) == 11
    assert metrics.class_names[0] == "Sky"
    on_train = trainer.evaluate(train)
    assert 0.0 <= on_train.pixel_accuracy <= 1.0 and on_train != metrics


# ---------------------------------------------------------------------------------------------
# stopping


def test_non_finite_loss_stops_at_once_with_the_epoch_step_and_terms(data, tmp_path):
    train = data[0]
    flaky = FlakyDataset(train, fail_at=17, failure="nan")  # first frame of epoch 2
    trainer = make_trainer(data, tmp_path, train_set=flaky, epochs=3)
    with pytest.raises(NonFiniteLossError) as err:
        trainer.fit()
    message = str(err.value)
    assert "non-finite loss nan at epoch 2, step 1 of the epoch (global step 5)" in message
    assert "recall=" in message and "soft_iou=" in message
    assert "input images finite: False" in message
    assert "last.pt holds epoch 1" in message
    assert err.value.epoch == 2 and err.value.step == 5 and "loss" in err.value.terms
    saved = torch.load(tmp_path / "last.pt", weights_only=True)
    assert saved["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in saved["model"].values() if t.is_floating_point())


def test_a_callback_exception_propagates_after_the_epoch_is_saved(data, tmp_path):
    reports = []

    def prune(report: EpochReport) -> None:
        reports.append(report)
        raise optuna.TrialPruned(f"pruned at epoch {report.epoch}")

    with pytest.raises(optuna.TrialPruned, match="pruned at epoch 1"):
        make_trainer(data, tmp_path, epochs=3, callbacks=[prune]).fit()
    (report,) = reports
    assert report.epoch == 1 and report.step == 4 and report.elapsed_s > 0
    assert report.images_per_s > 0 and 0.0 <= report.val.miou <= 1.0
    assert torch.load(tmp_path / "last.pt", weights_only=True)["epoch"] == 1
    assert (tmp_path / "best.pt").is_file()
    (line,) = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert json.loads(line)["val_miou"] == pytest.approx(report.val.miou)


def test_time_budget_cuts_the_epoch_evaluates_and_stops(data, tmp_path):
    reports = []
    trainer = make_trainer(
        data, tmp_path, epochs=50, time_budget_s=1e-4, callbacks=[reports.append]
    )
    result = trainer.fit()
    assert result.stopped_reason == "time budget"
    assert result.epochs_done == 1 and result.steps == 1
    assert result.history[0]["partial"] is True and result.history[0]["val_miou"] is not None
    assert len(reports) == 1 and reports[0].partial
    assert result.train_time_s >= 1e-4
    assert torch.load(tmp_path / "last.pt", weights_only=True)["step"] == 1
    # A resumed run whose budget is spent does no more work.
    assert make_trainer(data, tmp_path, epochs=50, time_budget_s=1e-4).fit().steps == 1


def test_eval_every_skips_evaluations_but_always_evaluates_the_last_epoch(data):
    seen = []
    result = make_trainer(data, None, epochs=3, eval_every=2, callbacks=[seen.append]).fit()
    evaluated = [r["val_miou"] is not None for r in result.history]
    assert evaluated == [False, True, True]
    assert [r.epoch for r in seen] == [2, 3]


# ---------------------------------------------------------------------------------------------
# the whole run


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    """A whole run_training directory: two epochs of the tiny network on synthetic frames."""
    return train_synthetic_run(tmp_path_factory.mktemp("run"))


def test_run_training_writes_every_file(synthetic_run):
    out, cfg, result = synthetic_run
    for name in ("config.yaml", "train_config.yaml", "metrics.jsonl", "best.pt", "last.pt"):
        assert (out / name).is_file(), name
    assert load_config(out / "config.yaml") == tiny_config()
    assert TrainConfig.from_dict(yaml.safe_load((out / "train_config.yaml").read_text())) == cfg

    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2]
    assert all(line["synthetic_data"] is True and "synthetic" in line["data"] for line in lines)
    assert lines == json.loads(json.dumps(result.history))

    run = json.loads((out / "run.json").read_text())
    assert run["synthetic_data"] is True and "synthetic" in run["note"]
    assert run["result"]["best_miou"] == pytest.approx(result.best_miou)
    assert result.class_names[0] == "Sky" and len(result.per_class_iou) == 11
    best_line = lines[result.best_epoch - 1]["val_per_class_iou"]
    assert run["result"]["per_class_iou"] == [best_line[name] for name in result.class_names]
    assert run["data"]["train_frames"] == 16 and run["data"]["val_frames"] == 4
    assert sum(run["class_weights"].values()) == pytest.approx(1.0, abs=1e-6)
    assert all((out / name).is_file() for name in run["files"])
    assert run["arch_hash"] == arch_hash(tiny_config()) and run["device"] == "cpu"

    overlays = sorted((out / "overlays").glob("*.png"))
    assert len(overlays) == 2
    for path in overlays:
        with Image.open(path) as image:
            assert image.size == panel_layout(*SIZE).size and image.mode == "RGB"


def test_run_training_passes_augmentation_to_the_training_split(tmp_path):
    cfg = TrainConfig(
        epochs=1,
        batch_size=4,
        size=SIZE,
        crop=(32, 32),
        random_scale=(0.75, 1.25),
        flip=True,
        max_train_images=8,
        max_val_images=2,
        overlays=1,
        export_onnx=False,
        progress=False,
    )
    result = run_training(tiny_config(), data=None, out_dir=tmp_path, train_cfg=cfg)
    assert result.steps == 2 and math.isfinite(result.history[0]["train_loss"])
    saved = yaml.safe_load((tmp_path / "train_config.yaml").read_text())
    assert saved["crop"] == [32, 32] and saved["flip"] is True
    assert not (tmp_path / "best.onnx").exists()
    # Validation frames stay whole: the overlay is three 48x64 panels, not crops.
    (overlay,) = (tmp_path / "overlays").glob("*.png")
    with Image.open(overlay) as image:
        assert image.size == panel_layout(*SIZE).size


def test_best_onnx_matches_the_best_checkpoint_in_onnxruntime(synthetic_run):
    out, _, result = synthetic_run
    model, config, state = load_checkpoint(out / "best.pt")
    assert state["epoch"] == result.best_epoch and config == tiny_config()
    session = ort.InferenceSession(str(out / "best.onnx"), providers=["CPUExecutionProvider"])
    image = torch.randn(2, 3, *SIZE, generator=torch.Generator().manual_seed(1))
    (got,) = session.run(None, {session.get_inputs()[0].name: image.numpy()})
    with torch.no_grad():
        expected = model(image).numpy()
    assert got.shape == (2, 11, *SIZE)
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_run_training_resumes_a_finished_run_without_training_again(synthetic_run):
    out, cfg, result = synthetic_run
    again = run_training(tiny_config(), data=None, out_dir=out, train_cfg=cfg)
    assert again.steps == result.steps and again.epochs_done == 2
    assert again.best_miou == result.best_miou and again.stopped_reason == "epochs"


# ---------------------------------------------------------------------------------------------
# real data


@pytest.mark.skipif(not CAMVID_ROOT.is_dir(), reason=f"CamVid is not at {CAMVID_ROOT}")
def test_real_camvid_frames_load_and_train_one_step(tmp_path):
    cfg = TrainConfig(
        epochs=1,
        batch_size=2,
        size=(180, 240),
        max_train_images=2,
        max_val_images=2,
        overlays=1,
        export_onnx=False,
        progress=False,
    )
    result = run_training(tiny_config(), data=CAMVID_ROOT, out_dir=tmp_path, train_cfg=cfg)
    assert result.steps == 1 and not result.synthetic_data
    assert math.isfinite(result.history[0]["train_loss"])
    assert "CamVid" in result.data_description
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["synthetic_data"] is False and "note" not in run
    assert run["data"]["name"] == "camvid" and run["data"]["frame_size"] == [180, 240]
    (overlay,) = (tmp_path / "overlays").glob("*.png")
    assert overlay.stem.startswith("000_")  # named after the CamVid frame
    with Image.open(overlay) as image:
        assert image.size == panel_layout(180, 240).size
