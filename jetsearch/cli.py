"""The ``jetsearch`` console script: one small function per subcommand.

Examples::

    jetsearch model show nano --size 360x480
    jetsearch model count agx --size 512x512 --layers
    jetsearch model export nano -o nano.onnx
    jetsearch train --config nano --epochs 5 --out runs/nano
    jetsearch eval --checkpoint runs/nano/best.pt --data ../shared/camvid
    jetsearch predict --checkpoint runs/nano/best.pt frame.png -o predictions/
    jetsearch worker --target agx --port 8765 --token-file token.txt

Exit codes: 0 success, 1 the work failed, 2 bad arguments or bad input files.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad arguments or input files: reported in one line, exit code 2."""


def parse_size(text: str) -> tuple[int, int]:
    """``HxW`` (e.g. ``360x480``) as a pair of positive ints."""
    parts = text.lower().replace("*", "x").split("x")
    try:
        h, w = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"size must look like HxW (e.g. 360x480), got {text!r}"
        ) from None
    if h < 16 or w < 16 or h > 8192 or w > 8192:
        raise argparse.ArgumentTypeError(f"size {h}x{w} is out of range (16 to 8192 per side)")
    return h, w


def _console():
    from rich.console import Console

    console = Console()
    if not console.is_terminal:  # pipes and logs: wide enough that tables never wrap
        console = Console(width=140)
    return console


def _load_config(name_or_path: str):
    from jetseg.config import ConfigError, load_config

    try:
        return load_config(name_or_path)
    except FileNotFoundError as err:
        raise UsageError(str(err)) from None
    except ConfigError as err:
        raise UsageError(str(err)) from None


# ---------------------------------------------------------------------------------------------
# jetsearch model show|count|export


def _fmt_int(n: int) -> str:
    return f"{n:,}"


def _fmt_g(n: float) -> str:
    return f"{n / 1e9:.3f} G" if n >= 1e9 else f"{n / 1e6:.1f} M"


def cmd_model(args: argparse.Namespace) -> int:
    import rich.table

    from jetseg.complexity import profile
    from jetseg.config import arch_hash
    from jetseg.model import build_model

    config = _load_config(args.config)
    model = build_model(config)
    console = _console()
    if args.action == "export":
        from jetseg.export import check_parity, export_onnx

        out = Path(args.output or f"{config.name}.onnx")
        data = export_onnx(model, out, input_size=args.size, opset=args.opset)
        size_kb = len(data) / 1e3
        console.print(f"wrote {out} ({size_kb:.0f} kB, opset {args.opset}, dynamic batch/H/W)")
        if not args.no_check:
            h, w = args.size
            diffs = check_parity(model, data, sizes=[(h, w), (h - 1 + h % 2, w - 1 + w % 2)])
            worst = max(diffs.values())
            console.print(f"onnxruntime parity: max |diff| {worst:.1e} at {len(diffs)} sizes")
        return EXIT_OK
    report = profile(model, args.size)
    h, w = args.size
    console.print(
        f"[bold]{config.name}[/bold]  arch_hash {arch_hash(config)}  input {h}x{w}  "
        f"classes {config.num_classes}"
    )
    table = rich.table.Table(title="per stage", title_justify="left")
    for col in (
        "stage",
        "blocks",
        "width",
        "stride",
        "expansion",
        "attention",
        "act",
        "params",
        "MACs",
    ):
        table.add_column(
            col, justify="right" if col not in ("stage", "attention", "act") else "left"
        )
    info = model.encoder.feature_info
    stem = config.stem
    totals = report.by_prefix("encoder.stem")
    table.add_row(
        "S0 stem",
        "1",
        str(stem.width),
        str(info[0].stride),
        "-",
        stem.kind,
        stem.activation,
        _fmt_int(totals["params"]),
        _fmt_g(totals["macs"]),
    )
    for i, sc in enumerate(config.stages):
        t = report.by_prefix(f"encoder.stages.{i}")
        table.add_row(
            f"S{i + 1}",
            str(sc.depth),
            str(sc.width),
            str(info[i + 1].stride),
            str(sc.expansion),
            sc.attention,
            sc.activation,
            _fmt_int(t["params"]),
            _fmt_g(t["macs"]),
        )
    t = report.by_prefix("decoder")
    dec = config.decoder
    table.add_row(
        "decoder",
        "-",
        f"{dec.low_width}/{dec.head_width}",
        "4",
        "-",
        f"taps {list(dec.taps)}",
        dec.activation,
        _fmt_int(t["params"]),
        _fmt_g(t["macs"]),
    )
    table.add_row(
        "[bold]total",
        "",
        "",
        "",
        "",
        "",
        "",
        f"[bold]{_fmt_int(report.params)}",
        f"[bold]{_fmt_g(report.macs)}",
    )
    console.print(table)
    console.print(
        f"params {_fmt_int(report.params)} | MACs {_fmt_g(report.macs)} | "
        f"paper FLOPs (eq. 2) {_fmt_g(report.flops)} | activation traffic "
        f"{report.act_bytes / 1e6:.1f} MB | eager kernels {report.kernels}"
    )
    if args.layers or args.action == "count" and args.layers:
        lt = rich.table.Table(title="per layer", title_justify="left")
        for col in ("layer", "type", "output", "params", "MACs", "FLOPs", "MB moved", "kernels"):
            lt.add_column(col, justify="left" if col in ("layer", "type", "output") else "right")
        for row in report.layers:
            lt.add_row(
                row.name or "(model)",
                row.kind,
                "x".join(map(str, row.out_shape)),
                _fmt_int(row.params),
                _fmt_int(row.macs),
                _fmt_int(row.flops),
                f"{row.act_bytes / 1e6:.2f}",
                str(row.kernels),
            )
        console.print(lt)
    if args.json:
        import json

        payload = {"name": config.name, "arch_hash": arch_hash(config), **report.to_dict()}
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
    return EXIT_OK


def _add_model(sub) -> None:
    p = sub.add_parser(
        "model",
        help="summarise, count or export one JetSeg network",
        description="Summarise, count or export one JetSeg network.",
    )
    p.add_argument("action", choices=("show", "count", "export"))
    p.add_argument("config", help="preset name (nano, agx, workstation) or a config YAML path")
    p.add_argument(
        "--size", type=parse_size, default=(360, 480), help="input HxW (default 360x480)"
    )
    p.add_argument("--layers", action="store_true", help="also print the per-layer table")
    p.add_argument("--json", metavar="FILE", help="also write the counts as JSON")
    p.add_argument("-o", "--output", metavar="FILE", help="export: ONNX file (default NAME.onnx)")
    p.add_argument("--opset", type=int, default=17, help="export: ONNX opset (17 or newer)")
    p.add_argument(
        "--no-check", action="store_true", help="export: skip the onnxruntime parity check"
    )
    p.set_defaults(func=cmd_model)


# ---------------------------------------------------------------------------------------------
# jetsearch train / eval / predict


def cmd_train(args: argparse.Namespace) -> int:
    from jetseg.train import TrainConfig, run_training

    config = _load_config(args.config)
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
        config, data=args.data, out_dir=out, train_cfg=train_cfg, resume=not args.restart
    )
    _console().print(result.summary())
    return EXIT_OK


def _add_train(sub) -> None:
    from jetseg.loss import LOSS_NAMES

    p = sub.add_parser("train", help="train one network (synthetic data unless --data is given)")
    p.add_argument("--config", required=True, help="preset name or config YAML path")
    p.add_argument("--data", help="CamVid root (default: the built-in synthetic street scenes)")
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


def cmd_eval(args: argparse.Namespace) -> int:
    from jetseg.train import evaluate_checkpoint, metrics_table

    metrics = evaluate_checkpoint(args.checkpoint, data=args.data, split=args.split, size=args.size)
    _console().print(metrics_table(metrics, title=f"{args.checkpoint} on {args.split}"))
    return EXIT_OK


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="per-class IoU and mIoU of a checkpoint on a split")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", help="CamVid root (default: the built-in synthetic street scenes)")
    p.add_argument("--split", default="val")
    p.add_argument("--size", type=parse_size, default=None)
    p.set_defaults(func=cmd_eval)


def cmd_predict(args: argparse.Namespace) -> int:
    from jetseg.train import predict_images

    written = predict_images(args.checkpoint, args.images, out_dir=args.output, size=args.size)
    _console().print(f"wrote {len(written)} files to {args.output}")
    return EXIT_OK


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="colour masks and overlays for images")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("images", nargs="+")
    p.add_argument("-o", "--output", default="predictions")
    p.add_argument("--size", type=parse_size, default=None)
    p.set_defaults(func=cmd_predict)


# ---------------------------------------------------------------------------------------------
# jetsearch worker


def cmd_worker(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from jetsearch.latency import worker

    if args.print_path:
        print(worker.worker_path())
        return EXIT_OK
    return worker.run_worker(list(extra))


def _add_worker(sub) -> None:
    p = sub.add_parser(
        "worker",
        help="serve latency measurements on this machine (the board worker)",
        description="Start the standalone board worker here. Every option after 'worker' is "
        "passed to it; on a board, copy the file that --print-path names and run python3 on it.",
        add_help=False,
    )
    p.add_argument(
        "--print-path", action="store_true", help="print the worker file's path and exit"
    )
    p.set_defaults(func=cmd_worker, passthrough=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jetsearch",
        description="Hardware-aware architecture search for JetSeg segmentation networks.",
        epilog=__doc__.split("Examples::", 1)[1].split("Exit codes")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_model(sub)
    _add_train(sub)
    _add_eval(sub)
    _add_predict(sub)
    _add_worker(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "passthrough", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        if getattr(args, "passthrough", False):
            return args.func(args, extra)
        return args.func(args)
    except UsageError as err:
        print(f"jetsearch {args.command}: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"jetsearch {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
