"""How fast the trainer trains, before and after its speed-ups, in one run.

Every study trial, rung and reference training pays for the trainer's speed. This measures
training images/s of the nano and agx presets on real CamVid at the rung sizes of
``studies/local.yaml`` (96x128, 128x160) and the reference size (120x160), with the reference's
augmentation, for two variants of the same loop:

* ``before``: JetLoss through a one-hot tensor of the logits' size (``p*t``, ``p*(1-t)``,
  ``(1-p)*t``), and every frame resized twice per epoch (to the training size, then by its
  random scale);
* ``after``: JetLoss from the true class's probability alone (``jetseg.loss``), and the
  fixed-size resize done once per frame (``SegmentationDataset``).

Variants alternate round by round so that a change in the machine's load falls on both; the
figure is the median over rounds. Also measured: evaluation images/s by evaluation batch size,
and the threads per job (one job with 2 threads against two jobs with 1 thread each). Then the
results: a short training of the nano preset under both variants with two seeds, so that the
speed-up can be seen to leave val mIoU within the seed spread. Nothing here is asserted by the
test suite.

Example::

    python benchmarks/train_speed.py                  # about 15 minutes on 2 cores
    python benchmarks/train_speed.py --rounds 1 --frames 32 --no-results
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import describe  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO / ".." / "shared" / "camvid"
SIZES = {"rung 0": (96, 128), "rung 1": (128, 160), "reference": (120, 160)}


def _one_hot_jetloss():
    """JetLoss as it was computed before: through a one-hot tensor the size of the logits."""
    import torch

    from jetseg.loss import JetLoss, _at_least_float32, _check_inputs

    class OneHotJetLoss(JetLoss):
        def _soft_counts(self, logits, target):
            target = _check_inputs(logits, target, self.num_classes, "JetLoss")
            labelled = target != self.ignore_index
            probs = torch.softmax(_at_least_float32(logits), dim=1)
            mask = labelled.unsqueeze(1)
            probs = torch.where(mask, probs, 0.0)
            safe_target = torch.where(labelled, target, 0).unsqueeze(1)
            one_hot = torch.zeros_like(probs).scatter_(1, safe_target, 1.0)
            one_hot = torch.where(mask, one_hot, 0.0)
            axes = (0, 2, 3)
            return (
                (probs * one_hot).sum(axes),
                (probs * (1.0 - one_hot)).sum(axes),
                ((1.0 - probs) * one_hot).sum(axes),
            )

    return OneHotJetLoss


class _Uncached:
    """The dataset's transform hidden behind a plain callable: every frame resized twice."""

    def __init__(self, transform: Any) -> None:
        self.transform = transform

    def __call__(self, image, label):
        return self.transform(image, label)


def make_trainer(
    preset: str, size: tuple[int, int], variant: str, data: str, frames: int, seed: int = 0
):
    import torch

    from jetseg.config import load_config
    from jetseg.data import build_datasets
    from jetseg.loss import cui_class_weights
    from jetseg.model import build_model
    from jetseg.train import Trainer, seed_everything
    from jetseg.train_config import TrainConfig

    aug = {"random_scale": (0.5, 2.0), "crop": size, "flip": True}
    train, val, info = build_datasets(data, size, holdout=("0006R0",), **aug)
    cfg = TrainConfig(
        size=size,
        epochs=3,
        seed=seed,
        device="cpu",
        progress=False,
        export_onnx=False,
        overlays=0,
        max_train_images=frames,
        **aug,
    )
    seed_everything(seed)
    trainer = Trainer(
        build_model(load_config(preset)),
        train,
        val,
        cfg,
        out_dir=None,
        class_weights=cui_class_weights(train.class_pixel_counts()),
        data_info=info,
        hooks=(),
    )
    if variant == "before":
        train.transform = _Uncached(train.transform)
        old = _one_hot_jetloss()(trainer.class_weights, trainer.num_classes, trainer.ignore_index)
        trainer.loss_fn = old
    torch.manual_seed(seed)
    return trainer


def epoch_speed(job: dict[str, Any]) -> float:
    """Training images/s of one epoch (after one warm-up epoch), in a fresh process."""
    import torch

    torch.set_num_threads(job["threads"])
    trainer = make_trainer(job["preset"], job["size"], job["variant"], job["data"], job["frames"])
    trainer.train_one_epoch(1)
    return trainer.train_one_epoch(2)["images_per_s"]


def eval_speed(job: dict[str, Any]) -> dict[int, float]:
    import torch
    from torch.utils.data import DataLoader

    from jetseg.train import evaluate

    torch.set_num_threads(job["threads"])
    trainer = make_trainer("nano", job["size"], "after", job["data"], 16)
    out = {}
    for batch in job["batches"]:
        loader = DataLoader(trainer.val_set, batch_size=batch)
        for _ in range(2):  # the first pass warms up; the second is timed
            start = time.perf_counter()
            evaluate(
                trainer.model,
                loader,
                device=trainer.device,
                num_classes=trainer.num_classes,
                ignore_index=trainer.ignore_index,
                class_names=None,
            )
        out[batch] = len(trainer.val_set) / (time.perf_counter() - start)
    return out


def short_result(job: dict[str, Any]) -> float:
    """Val mIoU of the nano preset after a short training under one variant and seed."""
    import torch

    torch.set_num_threads(job["threads"])
    trainer = make_trainer("nano", job["size"], job["variant"], job["data"], None, seed=job["seed"])
    for epoch in range(1, job["epochs"] + 1):
        trainer.train_one_epoch(epoch)
    return trainer.evaluate().miou


def in_process(function, job):
    """Run one measurement in a fresh spawned process (no state shared between variants)."""
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(function, (job,))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--presets", nargs="+", default=["nano", "agx"])
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per cell")
    parser.add_argument("--frames", type=int, default=96, help="training frames per epoch")
    parser.add_argument("--no-results", action="store_true", help="skip the mIoU check")
    parser.add_argument("--result-epochs", type=int, default=4)
    args = parser.parse_args(argv)
    if not Path(args.data).is_dir():
        parser.error(f"--data {args.data}: no such directory (a CamVid root is needed)")

    print(f"machine: {describe(1)}", flush=True)
    print(f"training images/s (median of {args.rounds} alternating rounds, 1 thread)")
    print(f"{'preset':<6} {'recipe':<10} {'size':<8} {'before':>7} {'after':>7} {'speed-up':>8}")
    for preset in args.presets:
        for name, size in SIZES.items():
            speeds: dict[str, list[float]] = {"before": [], "after": []}
            for _ in range(args.rounds):
                for variant in ("before", "after"):
                    job = {
                        "preset": preset,
                        "size": size,
                        "variant": variant,
                        "data": args.data,
                        "frames": args.frames,
                        "threads": 1,
                    }
                    speeds[variant].append(in_process(epoch_speed, job))
            before = statistics.median(speeds["before"])
            after = statistics.median(speeds["after"])
            print(
                f"{preset:<6} {name:<10} {size[0]}x{size[1]:<5} {before:>7.1f} {after:>7.1f} "
                f"{after / before:>7.2f}x",
                flush=True,
            )

    size = SIZES["reference"]
    job = {"size": size, "data": args.data, "threads": 1, "batches": [8, 32, 101]}
    evals = in_process(eval_speed, job)
    print(
        "evaluation images/s of nano at 120x160 by batch size (1 thread): "
        + ", ".join(f"batch {b}: {v:.1f}" for b, v in evals.items()),
        flush=True,
    )

    base = {"preset": "nano", "size": size, "variant": "after", "data": args.data}
    base["frames"] = args.frames
    one_job = in_process(epoch_speed, base | {"threads": 2})
    ctx = mp.get_context("spawn")
    with ctx.Pool(2) as pool:
        pair = pool.map(epoch_speed, [base | {"threads": 1}] * 2)
    print(
        f"threads per job, nano at 120x160: one job with 2 threads {one_job:.1f} images/s; "
        f"two jobs with 1 thread each {pair[0]:.1f} + {pair[1]:.1f} = {sum(pair):.1f} images/s",
        flush=True,
    )

    if not args.no_results:
        print(
            f"val mIoU of nano after {args.result_epochs} epochs at 96x128 on the whole "
            "training split (two seeds per variant):"
        )
        for variant in ("before", "after"):
            values = []
            for seed in (0, 1):
                job = {
                    "variant": variant,
                    "seed": seed,
                    "size": SIZES["rung 0"],
                    "data": args.data,
                    "threads": 2,
                    "epochs": args.result_epochs,
                }
                values.append(in_process(short_result, job))
            print(
                f"  {variant:<6} seed 0: {100 * values[0]:.1f}%  seed 1: {100 * values[1]:.1f}%",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
