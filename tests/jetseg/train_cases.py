"""Shared pieces of the training, checkpoint, prediction and progress tests."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from jetseg_cases import TINY_CONFIG
from real_data import camvid_root
from torch.utils.data import Dataset

from jetseg.config import load_config
from jetseg.data import build_datasets
from jetseg.loss import cui_class_weights
from jetseg.model import build_model
from jetseg.results import TrainResult
from jetseg.run import run_training
from jetseg.train import TIMING_KEYS, Trainer
from jetseg.train_config import TrainConfig

CAMVID_ROOT = camvid_root()
SIZE = (48, 64)


def tiny_config():
    return load_config(TINY_CONFIG)


def synthetic_data():
    """16 training and 4 validation synthetic frames at 48x64, with their class weights."""
    train, val, info = build_datasets(None, SIZE, synthetic_images=(16, 4))
    weights = cui_class_weights(train.class_pixel_counts())
    return train, val, info, weights


def make_trainer(data, out_dir, *, train_set=None, callbacks=(), hooks=None, **overrides):
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
        hooks=hooks,
    )


def synthetic_run(out: Path) -> tuple[Path, TrainConfig, TrainResult]:
    """A whole two-epoch run_training of the tiny network on synthetic frames, in ``out``."""
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
