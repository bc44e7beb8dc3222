"""``jetsearch train``, ``eval`` and ``predict`` on one tiny synthetic run, end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from jetseg_cases import TINY_CONFIG
from PIL import Image

from jetsearch.cli import EXIT_OK, main
from jetseg.predict import evaluate_checkpoint


def test_train_then_eval_then_predict_through_the_cli(tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY_CONFIG))
    run = tmp_path / "run"
    train = ["train", "--config", str(config), "--epochs", "1", "--size", "48x64"]
    train += ["--batch-size", "8", "--lr", "0.01", "--out", str(run)]
    assert main(train) == EXIT_OK
    out, err = capsys.readouterr()
    assert "SYNTHETIC DATA" in out and "best val mIoU" in out and "tiny" in out
    assert "epoch 1/1" in err and "[synthetic data]" in err  # the per-epoch line
    summary = json.loads((run / "run.json").read_text())
    assert summary["synthetic_data"] is True
    assert summary["result"]["steps"] == 8  # 64 synthetic frames in batches of 8
    assert summary["data"]["frame_size"] == [48, 64]
    for name in ("best.pt", "last.pt", "best.onnx", "metrics.jsonl", "config.yaml"):
        assert (run / name).is_file()

    # eval: same split, same size (taken from the checkpoint), so the same mIoU as training.
    assert main(["eval", "--checkpoint", str(run / "best.pt")]) == EXIT_OK
    table = capsys.readouterr().out
    best = summary["result"]["best_miou"]
    assert f"{100 * best:.2f}%" in table and "Bicyclist" in table and "SYNTHETIC" in table
    assert evaluate_checkpoint(run / "best.pt", None).miou == pytest.approx(best, abs=1e-9)

    frame = np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    Image.fromarray(frame).save(tmp_path / "frame.png")
    predictions = tmp_path / "predictions"
    argv = ["predict", "--checkpoint", str(run / "best.pt"), str(tmp_path / "frame.png")]
    assert main([*argv, "-o", str(predictions)]) == EXIT_OK
    assert "wrote 2 files" in capsys.readouterr().out
    for name in ("frame_mask.png", "frame_overlay.png"):
        with Image.open(predictions / name) as image:
            assert image.size == (50, 40) and image.mode == "RGB"

    # Running the same train command again resumes the finished run instead of retraining.
    assert main(train) == EXIT_OK
    assert json.loads((run / "run.json").read_text())["result"]["steps"] == 8
