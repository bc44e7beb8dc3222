"""Train the nano and agx presets on CamVid for a fixed time per run; print val mIoU per loss.

Every run trains one preset with one loss on the CamVid train split at 360x480 for the same
budget of training time (evaluation excluded), evaluates on the val split after every epoch, and
reports the best val mIoU, per-class IoU, training throughput, wall time and epochs. The table
says which machine produced it. Nothing here is asserted by the test suite.

Examples::

    python benchmarks/train_camvid.py                          # 2 presets x 3 losses x 40 min
    python benchmarks/train_camvid.py --minutes 0.5 --presets nano --losses jetloss
    python benchmarks/train_camvid.py --presets agx --json agx.json --out runs/bench
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from jetseg.config import load_config
from jetseg.data import CAMVID_CLASSES
from jetseg.loss import LOSS_NAMES
from jetseg.run import run_training
from jetseg.train_config import TrainConfig, resolve_device

DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "camvid"
DEFAULT_PRESETS = ("nano", "agx")
DEFAULT_LOSSES = ("jetloss", "ce", "jetloss+ce")


def parse_size(text: str) -> tuple[int, int]:
    try:
        height, width = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like HxW, got {text!r}") from None
    return height, width


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (the platform's name where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_description(device: torch.device) -> dict[str, Any]:
    """What produced the numbers: CPU, cores, torch threads and version, the device."""
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": str(torch.__version__),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "python": platform.python_version(),
    }


def run_one(preset: str, loss: str, args: argparse.Namespace, out_root: Path) -> dict[str, Any]:
    """Train one preset with one loss for the budget; returns one row of the table."""
    config = load_config(preset)
    train_cfg = TrainConfig(
        epochs=args.max_epochs,
        time_budget_s=args.minutes * 60.0,
        batch_size=args.batch_size,
        lr=args.lr,
        loss=loss,
        size=args.size,
        device=args.device,
        num_workers=args.workers,
        seed=args.seed,
        overlays=2,
        export_onnx=False,
        progress=not args.quiet,
    )
    out_dir = out_root / f"{preset}-{loss.replace('+', '_')}"
    started = time.perf_counter()
    result = run_training(
        config, data=args.data, out_dir=out_dir, train_cfg=train_cfg, resume=False
    )
    wall = time.perf_counter() - started
    summary = result.to_dict()  # NaN as None, so that the JSON stays valid
    return {
        "preset": preset,
        "loss": loss,
        "best_miou": summary["best_miou"],
        "best_epoch": result.best_epoch,
        "per_class_iou": dict(zip(result.class_names, summary["per_class_iou"], strict=True)),
        "pixel_accuracy": summary["pixel_accuracy"],
        "images_per_s": result.images_per_s,
        "train_time_s": result.train_time_s,
        "wall_s": wall,
        "epochs": result.epochs_done,
        "steps": result.steps,
        "stopped_reason": result.stopped_reason,
        "synthetic_data": result.synthetic_data,
        "data": result.data_description,
        "out_dir": str(out_dir),
    }


def _percent(value: float | None) -> str:
    return "-" if value is None or value != value else f"{100 * value:.1f}"


def print_table(rows: list[dict[str, Any]], machine: dict[str, Any], minutes: float) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:
        console = Console(width=220)
    table = Table(
        title=f"CamVid val after {minutes:g} min of training per run (IoU in %)",
        title_justify="left",
    )
    for column in ("preset", "loss", "val mIoU"):
        table.add_column(column, justify="left" if column != "val mIoU" else "right")
    for name in CAMVID_CLASSES:
        table.add_column(name, justify="right")
    for column in ("img/s", "wall", "epochs"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            row["preset"],
            row["loss"],
            f"[bold]{_percent(row['best_miou'])}",
            *(_percent(row["per_class_iou"].get(name)) for name in CAMVID_CLASSES),
            f"{row['images_per_s']:.1f}",
            f"{row['wall_s'] / 60:.1f} min",
            f"{row['epochs']}" + ("*" if row["stopped_reason"] == "time budget" else ""),
        )
    console.print(table)
    console.print(
        "epochs: * = the last epoch was cut by the time budget; img/s = training throughput; "
        "wall = training + evaluation + data loading"
    )
    console.print(
        f"machine: {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']} with "
        f"{machine['torch_threads']} threads, device {machine['device']}"
        + (f" ({machine['gpu']})" if machine["gpu"] else "")
    )
    if rows:
        console.print(f"data: {rows[0]['data']}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("Examples::", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="CamVid root")
    parser.add_argument("--minutes", type=float, default=40.0, help="training budget per run")
    parser.add_argument("--presets", nargs="+", default=list(DEFAULT_PRESETS))
    parser.add_argument("--losses", nargs="+", choices=LOSS_NAMES, default=list(DEFAULT_LOSSES))
    parser.add_argument("--size", type=parse_size, default=(360, 480), help="HxW (360x480)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=None, help="default: the optimizer's")
    parser.add_argument("--max-epochs", type=int, default=10_000, help="cap besides the budget")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=0, help="data loader processes")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="run folders (default: temp)")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE", help="write the table")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.data.is_dir():
        print(f"CamVid not found at {args.data}; pass --data", file=sys.stderr)
        return 2
    if args.minutes <= 0:
        print(f"--minutes must be > 0, got {args.minutes}", file=sys.stderr)
        return 2
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    out_root = args.out or Path(tempfile.mkdtemp(prefix="train_camvid-"))
    device = resolve_device(args.device)
    machine = machine_description(device)
    rows = []
    for preset in args.presets:
        for loss in args.losses:
            print(f"--- {preset} with {loss}: {args.minutes:g} min -> {out_root}", file=sys.stderr)
            rows.append(run_one(preset, loss, args, out_root))
    print_table(rows, machine, args.minutes)
    if args.json:
        payload = {
            "machine": machine,
            "settings": {
                "minutes": args.minutes,
                "size": list(args.size),
                "batch_size": args.batch_size,
                "lr": args.lr,
                "seed": args.seed,
                "data": str(args.data),
            },
            "runs": rows,
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
