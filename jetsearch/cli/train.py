"""``jetsearch train``, ``eval`` and ``predict``: one network trained, scored, applied."""

from __future__ import annotations

import argparse
from pathlib import Path

from jetsearch.cli import (
    EXIT_OK,
    UsageError,
    check_data_root,
    checkpoint_parent,
    console,
    data_parent,
    load_network_config,
    non_negative_int,
    parse_size,
    positive_float,
    positive_int,
)


def _dirs_to_create(out: Path) -> list[Path]:
    """The folders ``out`` needs that do not exist yet, deepest first; a file in the way is a
    :class:`UsageError` naming it (``--out`` must be a run directory)."""
    missing = []
    for path in (out, *out.parents):
        if path.is_dir():
            return missing
        if path.exists():
            if path == out:
                raise UsageError(f"--out {out} is a file, not a run directory")
            raise UsageError(f"--out {out}: {path} is a file, not a directory")
        missing.append(path)
    return missing


def _remove_if_empty(folders: list[Path]) -> None:
    """Remove the folders a failed command created, deepest first, while they are empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty (something was written) or already gone
            return


def cmd_train(args: argparse.Namespace) -> int:
    """Train one network into a run directory (resuming one that is there) with the display."""
    from jetseg.progress import TrainingDisplay
    from jetseg.run import run_training
    from jetseg.train_config import TrainConfig

    config = load_network_config(args.config)
    # Every input is checked before the run directory exists: a command that fails on bad
    # input leaves nothing behind.
    out = Path(args.out or f"runs/{config.name}")
    created = _dirs_to_create(out)
    check_data_root(args.data)
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
        holdout=tuple(args.holdout or ()),
    )
    try:
        result = run_training(
            config,
            data=args.data,
            out_dir=out,
            train_cfg=train_cfg,
            resume=not args.restart,
            hooks=[TrainingDisplay()],  # progress bar on a terminal, epoch lines on stderr
        )
    except BaseException:
        # Data that fails while it is read (a corrupt frame), an interrupt before the first
        # checkpoint: the folders this command made go again if nothing was written to them.
        _remove_if_empty(created)
        raise
    console().print(result.summary())
    return EXIT_OK


def cmd_eval(args: argparse.Namespace) -> int:
    """Per-class IoU and mIoU of a checkpoint on a split, as a table."""
    from jetseg.predict import evaluate_checkpoint
    from jetseg.results import metrics_table

    holdout = tuple(args.holdout or ())
    metrics = evaluate_checkpoint(
        args.checkpoint, data=args.data, split=args.split, size=args.size, holdout=holdout
    )
    where = f"held-out sequences {', '.join(holdout)}" if holdout else args.split
    console().print(metrics_table(metrics, title=f"{args.checkpoint} on {where}"))
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
    p.add_argument("--epochs", type=positive_int, default=50)
    p.add_argument(
        "--time-budget", type=positive_float, default=None, metavar="S", help="stop after S seconds"
    )
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument(
        "--lr", type=positive_float, default=None, help="learning rate (default per optimizer)"
    )
    p.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw")
    p.add_argument("--schedule", choices=("poly", "cosine"), default="poly")
    p.add_argument("--loss", choices=LOSS_NAMES, default="jetloss")
    p.add_argument(
        "--size", type=parse_size, default=None, help="train/eval HxW (default: data size)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument(
        "--workers", type=non_negative_int, default=0, help="data loader worker processes"
    )
    p.add_argument(
        "--holdout",
        nargs="+",
        metavar="SEQUENCE",
        help="CamVid sequences kept out of training and evaluated beside val (e.g. 0001TP)",
    )
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
        "--holdout",
        nargs="+",
        metavar="SEQUENCE",
        help="evaluate on every frame of these CamVid sequences instead of --split",
    )
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
