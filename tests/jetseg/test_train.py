"""The trainer: it learns, resumes exactly, stops when told, fails loudly, writes a whole run."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import onnxruntime as ort
import optuna
import pytest
import torch
import yaml
from jetseg_cases import TINY_CONFIG
from PIL import Image
from rich.console import Console
from torch.utils.data import Dataset

from jetseg.config import ConfigError, arch_hash, load_config
from jetseg.data import build_datasets
from jetseg.loss import LOSS_NAMES, cui_class_weights
from jetseg.model import build_model
from jetseg.train import (
    TIMING_KEYS,
    EpochReport,
    EvalMetrics,
    NonFiniteLossError,
    StopTraining,
    TrainConfig,
    TrainConfigError,
    Trainer,
    WarmupDecaySchedule,
    evaluate_checkpoint,
    load_checkpoint,
    metrics_table,
    predict_images,
    run_training,
)

CAMVID_ROOT = Path(__file__).resolve().parents[2] / ".." / "shared" / "camvid"
SIZE = (48, 64)


def tiny_config():
    return load_config(TINY_CONFIG)


@pytest.fixture(scope="module")
def data():
    """16 training and 4 validation synthetic frames at 48x64, with their class weights."""
    train, val, info = build_datasets(None, SIZE, synthetic_images=(16, 4))
    weights = cui_class_weights(train.class_pixel_counts())
    return train, val, info, weights


def make_trainer(data, out_dir, *, train_set=None, callbacks=(), **overrides):
    train, val, info, weights = data
    settings = dict(epochs=2, batch_size=4, lr=1e-2, warmup_epochs=0.5, progress=False)
    settings.update(overrides)
    torch.manual_seed(0)  # same initial weights for every trainer built here
    return Trainer(
        build_model(tiny_config()),
        train if train_set is None else train_set,
        val,
        TrainConfig(**settings),
        out_dir,
        class_weights=weights,
        callbacks=callbacks,
        data_info=info,
    )


def without_timings(history):
    return [{k: v for k, v in record.items() if k not in TIMING_KEYS} for record in history]


def assert_same_weights(model_a, model_b):
    state_b = model_b.state_dict()
    for name, tensor in model_a.state_dict().items():
        assert torch.allclose(tensor.float(), state_b[name].float(), atol=1e-6, rtol=0), name


class FlakyDataset(Dataset):
    """The wrapped frames, except that item access number ``fail_at`` (1-based) misbehaves."""

    def __init__(self, base, fail_at, failure):
        self.base, self.fail_at, self.failure, self.calls = base, fail_at, failure, 0

    def __len__(self):
        return len(self.base)

    def __getitem__(self, index):
        self.calls += 1
        image, label = self.base[index]
        if self.calls >= self.fail_at:
            if self.failure == "interrupt":
                raise KeyboardInterrupt
            image = torch.full_like(image, math.nan)
        return image, label


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
# the whole run, checkpoints, predictions


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cfg = TrainConfig(
        epochs=2,
        batch_size=4,
        lr=1e-2,
        size=SIZE,
        max_train_images=16,
        max_val_images=4,
        overlays=2,
        progress=False,
    )
    result = run_training(tiny_config(), data=None, out_dir=out, train_cfg=cfg)
    return out, cfg, result


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
            assert image.size == (3 * SIZE[1], SIZE[0]) and image.mode == "RGB"


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
        assert image.size == (3 * SIZE[1], SIZE[0])


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


def test_summary_and_tables_state_synthetic_data(synthetic_run):
    out, _, result = synthetic_run
    console = Console(width=140, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(result.summary())
    text = console.export_text()
    assert "SYNTHETIC DATA" in text and "Sky" in text and "mIoU" in text
    assert f"{100 * result.best_miou:.2f}%" in text

    metrics = evaluate_checkpoint(out / "best.pt", None, "val")
    assert isinstance(metrics, EvalMetrics) and metrics.synthetic_data
    assert metrics.frames == 16 and len(metrics.per_class_iou) == 11  # the default val split
    console.print(metrics_table(metrics, title="best.pt on val"))
    assert "SYNTHETIC DATA" in console.export_text()


def test_run_training_resumes_a_finished_run_without_training_again(synthetic_run):
    out, cfg, result = synthetic_run
    again = run_training(tiny_config(), data=None, out_dir=out, train_cfg=cfg)
    assert again.steps == result.steps and again.epochs_done == 2
    assert again.best_miou == result.best_miou and again.stopped_reason == "epochs"


def test_predict_images_writes_mask_and_overlay_of_the_image_size(synthetic_run, tmp_path):
    out, _, _ = synthetic_run
    frame = np.random.default_rng(0).integers(0, 255, (37, 53, 3), dtype=np.uint8)
    Image.fromarray(frame).save(tmp_path / "street.png")
    written = predict_images(
        out / "best.pt", [tmp_path / "street.png"], tmp_path / "pred", size=SIZE
    )
    assert [p.name for p in written] == ["street_mask.png", "street_overlay.png"]
    for path in written:
        with Image.open(path) as image:
            assert image.size == (53, 37)


def test_predict_images_names_a_missing_or_unreadable_image(synthetic_run, tmp_path):
    out, _, _ = synthetic_run
    with pytest.raises(FileNotFoundError, match="image .*nowhere.png does not exist"):
        predict_images(out / "best.pt", [tmp_path / "nowhere.png"], tmp_path / "pred")
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ValueError, match="cannot read image .*notes.png"):
        predict_images(out / "best.pt", [tmp_path / "notes.png"], tmp_path / "pred")
    assert not (tmp_path / "pred").exists()  # nothing is written before every image is checked


def test_load_checkpoint_rejects_files_that_are_not_checkpoints(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint .*missing.pt does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="not a JetSeg training checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    (tmp_path / "garbage.pt").write_bytes(b"\x00" * 10)
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "garbage.pt")


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
        assert image.size == (3 * 240, 180)
