"""Training with whole sequences held out: both figures reported, resumable."""

from __future__ import annotations

import json
import sys

import pytest
from test_sequences import FRAMES, make_root

from jetseg.config import load_config
from jetseg.data import DataError
from jetseg.run import run_training
from jetseg.train_config import TrainConfig

TINY = {
    "name": "tiny",
    "stem": {"width": 8},
    "stages": [
        {"depth": 1, "width": 8},
        {"depth": 1, "width": 16},
        {"depth": 1, "width": 16},
    ],
    "decoder": {"head_width": 8, "low_width": 4, "fuse_width": 8},
}


def recipe(**changes):
    base = dict(
        epochs=2,
        batch_size=2,
        size=(16, 24),
        device="cpu",
        progress=False,
        overlays=1,
        export_onnx=False,
    )
    return TrainConfig(**{**base, **changes})


def test_run_reports_val_and_heldout_and_never_trains_on_the_heldout(tmp_path):
    root = make_root(tmp_path / "camvid", FRAMES)
    out = tmp_path / "run"
    result = run_training(load_config(TINY), root, out, recipe(holdout=("0001TP",)))
    assert result.heldout_miou is not None and 0.0 <= result.heldout_miou <= 1.0
    assert "held-out mIoU" in result.headline()
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert all("heldout_miou" in x and x["heldout_miou"] is not None for x in lines)
    best = lines[result.best_epoch - 1]
    assert best["heldout_miou"] == pytest.approx(result.heldout_miou)
    run = json.loads((out / "run.json").read_text())
    assert run["data"]["holdout"] == ["0001TP"]
    assert run["data"]["heldout_frames"] == 2 and run["data"]["train_frames"] == 3
    # Resuming a finished run keeps the held-out figure of the best epoch (from the checkpoint).
    again = run_training(load_config(TINY), root, out, recipe(holdout=("0001TP",)))
    assert again.heldout_miou == pytest.approx(result.heldout_miou)


def test_without_holdout_nothing_changes(tmp_path):
    root = make_root(tmp_path / "camvid", FRAMES)
    result = run_training(load_config(TINY), root, tmp_path / "run", recipe())
    assert result.heldout_miou is None
    line = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert "heldout_miou" not in line


def test_unknown_sequence_is_refused_before_training(tmp_path):
    root = make_root(tmp_path / "camvid", FRAMES)
    with pytest.raises(DataError, match="0001TP, 0006R0, 0016E5"):
        run_training(load_config(TINY), root, tmp_path / "run", recipe(holdout=("XX",)))


@pytest.mark.slow
def test_cli_trains_and_evaluates_with_held_out_sequences(tmp_path):
    import subprocess

    import yaml

    root = make_root(tmp_path / "camvid", FRAMES)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "run"
    cli = [sys.executable, "-m", "jetsearch.cli"]
    train = subprocess.run(
        [
            *cli,
            "train",
            "--config",
            str(config),
            "--data",
            str(root),
            "--epochs",
            "1",
            "--batch-size",
            "2",
            "--size",
            "16x24",
            "--device",
            "cpu",
            "--out",
            str(out),
            "--holdout",
            "0001TP",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert train.returncode == 0, train.stdout + train.stderr
    assert "held-out mIoU" in train.stdout
    evaluated = subprocess.run(
        [
            *cli,
            "eval",
            "--checkpoint",
            str(out / "best.pt"),
            "--data",
            str(root),
            "--holdout",
            "0001TP",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert evaluated.returncode == 0, evaluated.stderr
    assert "held-out sequences 0001TP" in evaluated.stdout
    unknown = subprocess.run(
        [
            *cli,
            "eval",
            "--checkpoint",
            str(out / "best.pt"),
            "--data",
            str(root),
            "--holdout",
            "9999XX",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert unknown.returncode == 2 and "0001TP, 0006R0, 0016E5" in unknown.stderr
