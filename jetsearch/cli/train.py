"""``jetsearch train``, ``eval`` and ``predict``: one network trained, scored, applied."""

from __future__ import annotations

import argparse
from pathlib import Path

from jetsearch.cli import (
    EXIT_OK,
    checkpoint_parent,
    console,
    data_parent,
    load_network_config,
    parse_size,
)


def cmd_train(args: argparse.Namespace) -> int:
    """Train one network into a run directory (resuming one that is there) with the display."""
    from jetseg.progress import TrainingDisplay
    from jetseg.run import run_training
    from jetseg.train_config import TrainConfig

    config = load_network_config(args.config)
    train_cfg = TrainConfig(
        epochs=args.epochs,
        time_budget_s=args.time_budget,
        batch_size=args.batch_size,
        lr=args.lr,
        optimizer=args.optimizer,
        schedule=args.schedule,
        loss=args.loss,
        size=args.size,
        seed=args.seed,
        device=args.device,
        num_workers=args.workers,
    )
    out = Path(args.out or f"runs/{config.name}")
    result = run_training(
        config,
        data=args.data,
        out_dir=out,
        train_cfg=train_cfg,
        resume=not args.restart,
        hooks=[TrainingDisplay()],  # progress bar on a terminal, epoch lines on stderr
    )
    console().print(result.summary())
    return EXIT_OK


def cmd_eval(args: argparse.Namespace) -> int:
    """Per-class IoU and mIoU of a checkpoint on a split, as a table."""
    from jetseg.predict import evaluate_checkpoint
    from jetseg.results import metrics_table

    metrics = evaluate_checkpoint(args.checkpoint, data=args.data, split=args.split, size=args.size)
    console().print(metrics_table(metrics, title=f"{args.checkpoint} on {args.split}"))
    return EXIT_OK


def cmd_predict(args: argparse.Namespace) -> int:
    """Colour masks and overlays of images."""
    from jetseg.predict import predict_images

    written = predict_images(args.checkpoint, args.images, out_dir=args.output, size=args.size)
    console().print(f"wrote {len(written)} files to {args.output}")
    return EXIT_OK


def add_parsers(subparsers) -> None:
    """Register ``train``, ``eval`` and ``predict``."""
    from jetseg.loss import LOSS_NAMES

    data = data_parent()
    checkpoint = checkpoint_parent()

    p = subparsers.add_parser(
        "train",
        parents=[data],
        help="train one network (synthetic data unless --data is given)",
        epilog="example:\n  jetsearch train --config nano --epochs 5 --out runs/nano",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", required=True, help="preset name or config YAML path")
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument(
        "--time-budget", type=float, default=None, metavar="S", help="stop after S seconds"
    )
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=None, help="learning rate (default per optimizer)")
    p.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw")
    p.add_argument("--schedule", choices=("poly", "cosine"), default="poly")
    p.add_argument("--loss", choices=LOSS_NAMES, default="jetloss")
    p.add_argument(
        "--size", type=parse_size, default=None, help="train/eval HxW (default: data size)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--workers", type=int, default=0, help="data loader worker processes")
    p.add_argument("--out", help="run directory (default runs/NAME); an existing run resumes")
    p.add_argument("--restart", action="store_true", help="start over instead of resuming")
    p.set_defaults(func=cmd_train)

    p = subparsers.add_parser(
        "eval",
        parents=[checkpoint, data],
        help="per-class IoU and mIoU of a checkpoint on a split",
        epilog="example:\n  jetsearch eval --checkpoint runs/nano/best.pt --data ../shared/camvid",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--split", default="val")
    p.add_argument(
        "--size",
        type=parse_size,
        default=None,
        help="HxW (default: the size the checkpoint was trained at)",
    )
    p.set_defaults(func=cmd_eval)

    p = subparsers.add_parser(
        "predict",
        parents=[checkpoint],
        help="colour masks and overlays for images",
        epilog="example:\n"
        "  jetsearch predict --checkpoint runs/nano/best.pt frame.png -o predictions/",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("images", nargs="+")
    p.add_argument("-o", "--output", default="predictions")
    p.add_argument(
        "--size",
        type=parse_size,
        default=None,
        help="HxW fed to the network (default: each image's own size)",
    )
    p.set_defaults(func=cmd_predict)
