"""The ``jetsearch`` console script: one small function per subcommand.

Examples::

    jetsearch model show nano --size 360x480
    jetsearch model count agx --size 512x512 --layers
    jetsearch model export nano -o nano.onnx
    jetsearch train --config nano --epochs 5 --out runs/nano
    jetsearch eval --checkpoint runs/nano/best.pt --data ../shared/camvid
    jetsearch predict --checkpoint runs/nano/best.pt frame.png -o predictions/
    jetsearch worker --target agx --port 8765 --token-file token.txt

Exit codes: 0 success, 1 the work failed, 2 bad arguments or bad input files, 130 interrupted.
Set JETSEARCH_DEBUG=1 to see tracebacks for input errors.
"""

from __future__ import annotations

import argparse
import os
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
    from jetseg.predict import evaluate_checkpoint
    from jetseg.train import metrics_table

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
    from jetseg.predict import predict_images

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
# jetsearch study / show / export / dashboard


class LiveView:
    """Rich live panel for a running study: trials done, the current front, an ETA."""

    def __init__(self, console, study_name: str, total: int, start_count: int) -> None:
        from rich.live import Live

        self.console = console
        self.study_name = study_name
        self.total = total
        self.start_count = start_count
        self.t0 = None
        self.live = Live(console=console, refresh_per_second=2, transient=False)

    def __enter__(self):
        import time

        self.t0 = time.time()
        self.live.__enter__()
        self.live.update(f"study {self.study_name}: starting...")
        return self

    def __exit__(self, *exc):
        self.live.__exit__(*exc)

    def __call__(self, study, trial) -> None:
        import time

        from rich.console import Group

        from jetsearch.report import front_table, trial_rows
        from jetsearch.study import finished_count

        rows = trial_rows(study)
        done = finished_count(study)
        new = max(0, done - self.start_count)
        elapsed = time.time() - self.t0
        remaining = max(0, self.total - done)
        eta = f"{elapsed / new * remaining / 60:.1f} min" if new else "?"
        last = f"trial {trial.number} {trial.state.name.lower()}"
        if trial.values:
            last += f": mIoU {100 * trial.values[0]:.2f}%"
        if "latency_ms" in trial.user_attrs:
            attrs = trial.user_attrs
            last += f", {attrs['latency_ms']:.2f} ms ({attrs.get('latency_provenance')})"
        reason = trial.user_attrs.get("pruned_reason") or trial.user_attrs.get("failure_reason")
        if reason:
            last += f" - {reason}"
        head = (
            f"[bold]{done}/{self.total}[/bold] trials finished | {elapsed / 60:.1f} min | "
            f"ETA {eta} | {last}"
        )
        self.live.update(Group(head, front_table(study, rows)))


def cmd_study(args: argparse.Namespace) -> int:
    from jetsearch.report import front_table, study_notes, trial_rows
    from jetsearch.study import (
        StudyError,
        create_or_load_study,
        finished_count,
        load_study_spec,
        run_study,
        storage_url,
    )

    if args.backend == "ray" and args.jobs > 1:
        raise UsageError("--jobs is for the local backend; with --backend ray use --max-concurrent")
    ray_only = [
        flag
        for flag, used in (
            ("--address", args.address is not None),
            ("--resume", args.resume),
            ("--ray-results", args.ray_results is not None),
            ("--max-concurrent", args.max_concurrent != 1),
            ("--cpus-per-trial", args.cpus_per_trial != 1),
            ("--gpus-per-trial", args.gpus_per_trial != 0),
            ("--max-failures", args.max_failures != 2),
        )
        if used
    ]
    if args.backend == "local" and ray_only:
        raise UsageError(f"{', '.join(ray_only)}: only with --backend ray")
    workers = [w for w in (args.workers or "").split(",") if w]
    try:
        spec = load_study_spec(args.target, data=args.data, mode=args.mode, workers=workers)
    except FileNotFoundError as err:
        raise UsageError(str(err)) from None
    except Exception as err:
        from jetseg.config import ConfigError

        if isinstance(err, ConfigError):
            raise UsageError(str(err)) from None
        raise
    console = _console()
    url = storage_url(spec, args.storage)
    name = args.name or spec.name
    try:
        study = create_or_load_study(spec, url, name)
    except StudyError as err:
        raise UsageError(str(err)) from None
    before = finished_count(study)
    data_note = spec.data or "built-in SYNTHETIC street scenes (not real data)"
    console.print(
        f"study [bold]{name}[/bold] ({spec.mode}) target {spec.target}, space {spec.space}, "
        f"data {data_note}\nstorage {url} | {before} trials finished, running to {args.trials}"
    )
    view = LiveView(console, name, args.trials, before) if not args.quiet else None
    callbacks = [view] if view else []

    def run_backend():
        if args.backend == "ray":
            from jetsearch.distributed import run_study_ray

            return run_study_ray(
                spec,
                trials=args.trials,
                storage=url,
                name=name,
                address=args.address,
                gpus_per_trial=args.gpus_per_trial,
                cpus_per_trial=args.cpus_per_trial,
                max_concurrent=args.max_concurrent,
                resume=args.resume,
                timeout_s=args.timeout,
                storage_path=args.ray_results,
                max_failures=args.max_failures,
                callbacks=callbacks,
                verbose=0 if view else 1,
            )
        return run_study(
            spec,
            trials=args.trials,
            storage=url,
            name=name,
            timeout_s=args.timeout,
            jobs=args.jobs,
            callbacks=callbacks,
        )

    try:
        if view:
            with view:
                run = run_backend()
        else:
            run = run_backend()
    except StudyError as err:
        raise UsageError(str(err)) from None
    study = create_or_load_study(spec, url, name)
    rows = trial_rows(study)
    if args.quiet:
        console.print(front_table(study, rows))
    console.print(f"latency from: {run.latency_sources}")
    for note in study_notes(rows):
        console.print(f"note: {note}")
    if getattr(run, "requeued", None):
        console.print(f"queued again (interrupted earlier): trials {run.requeued}")
    if args.backend == "ray" and run.interrupted:
        console.print("note: add --resume to the same command to restore the Ray experiment")
    word = "interrupted" if run.interrupted else "done"
    console.print(
        f"{word}: {run.finished_after - run.finished_before} new trials in "
        f"{run.wall_s / 60:.1f} min "
        f"({run.finished_after} finished in the study). Run the same command again to continue."
    )
    return 130 if run.interrupted else EXIT_OK


def _add_study(sub) -> None:
    p = sub.add_parser(
        "study",
        help="run (or resume) a hardware-aware search",
        description="Run or resume a study: the same command again continues it.",
        epilog="example: jetsearch study --target agx --trials 200 --workers http://agx:8765",
    )
    p.add_argument(
        "--target",
        required=True,
        help="built-in study (local, nano, agx, workstation) or a study YAML",
    )
    p.add_argument(
        "--trials", type=int, default=20, help="run until the study holds N finished trials"
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="S",
        help="stop starting trials after S seconds",
    )
    p.add_argument(
        "--storage",
        help="journal file path (default jetsearch-studies.log), sqlite:/// or postgresql:// URL",
    )
    p.add_argument("--name", help="study name (default: the study file's name)")
    p.add_argument("--mode", choices=("pareto", "budget"), help="override the study file's mode")
    p.add_argument("--data", help="CamVid root (overrides the study file)")
    p.add_argument("--workers", help="comma-separated latency worker URLs for the target")
    p.add_argument(
        "--jobs", type=int, default=1, help="parallel trial processes sharing the storage"
    )
    p.add_argument("--quiet", action="store_true", help="no live view; print the front at the end")
    p.add_argument(
        "--backend",
        choices=("local", "ray"),
        default="local",
        help="local: Optuna in this process (and --jobs); ray: Ray Tune trials "
        "(pip install 'jetsearch[ray]')",
    )
    ray = p.add_argument_group("Ray backend (--backend ray)")
    ray.add_argument(
        "--address",
        help="Ray cluster: auto (the cluster of this machine) or ray://HOST:10001; "
        "default: start Ray on this machine",
    )
    ray.add_argument(
        "--max-concurrent", type=int, default=1, metavar="N", help="trials running at once"
    )
    ray.add_argument(
        "--cpus-per-trial",
        type=float,
        default=1,
        metavar="N",
        help="CPUs reserved per trial (also its training threads unless train.threads is set)",
    )
    ray.add_argument(
        "--gpus-per-trial",
        type=float,
        default=0.0,
        metavar="F",
        help="GPUs per trial; fractions share a GPU (0.5: two trials per GPU)",
    )
    ray.add_argument(
        "--max-failures",
        type=int,
        default=2,
        metavar="N",
        help="times a trial whose worker process or node died is run again",
    )
    ray.add_argument(
        "--resume", action="store_true", help="restore the Ray Tune experiment of a stopped driver"
    )
    ray.add_argument(
        "--ray-results",
        metavar="DIR",
        help="where Tune keeps its experiment, DIR/jetsearch-<study> (default ~/ray_results)",
    )
    p.set_defaults(func=cmd_study)


def _open_study(args):
    from jetsearch.report import ReportError, load_study
    from jetsearch.study import DEFAULT_STORAGE

    try:
        return load_study(args.study, args.storage or DEFAULT_STORAGE)
    except ReportError as err:
        raise UsageError(str(err)) from None


def _study_args(p) -> None:
    p.add_argument("--study", required=True, help="study name")
    p.add_argument("--storage", help="storage of the study (default jetsearch-studies.log)")


def cmd_show(args: argparse.Namespace) -> int:
    from jetsearch.report import front_table, plot_front, study_notes, trial_rows

    study = _open_study(args)
    rows = trial_rows(study)
    console = _console()
    console.print(front_table(study, rows))
    for note in study_notes(rows):
        console.print(f"note: {note}")
    if args.plot:
        path = plot_front(study, rows, args.plot)
        console.print(f"wrote {path}")
    return EXIT_OK


def _add_show(sub) -> None:
    p = sub.add_parser("show", help="the Pareto front of a study as a table (and a plot)")
    _study_args(p)
    p.add_argument("--plot", metavar="PNG", help="also draw every trial and the front")
    p.set_defaults(func=cmd_show)


def cmd_export(args: argparse.Namespace) -> int:
    from jetsearch.report import ReportError, export_trial, pick, trial_rows

    study = _open_study(args)
    try:
        number = args.trial
        if number is None:
            number = pick(trial_rows(study), args.pick, args.max_latency).number
        path, info = export_trial(study, number, args.output)
    except ReportError as err:
        raise UsageError(str(err)) from None
    miou = info.get("val_miou")
    lat = info.get("latency_ms")
    _console().print(
        f"wrote {path}: trial {number}, val mIoU "
        f"{f'{100 * miou:.2f}%' if miou is not None else '?'}, latency "
        f"{f'{lat:.2f} ms' if lat is not None else '?'}; train it with: "
        f"jetsearch train --config {path}"
    )
    return EXIT_OK


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="write a trial's network as a config YAML")
    _study_args(p)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--trial", type=int, help="trial number")
    which.add_argument(
        "--pick", choices=("max-miou", "knee", "fastest"), help="pick from the front"
    )
    p.add_argument(
        "--max-latency", type=float, metavar="MS", help="with --pick: only trials under MS"
    )
    p.add_argument("-o", "--output", required=True, help="config YAML to write")
    p.set_defaults(func=cmd_export)


def cmd_dashboard(args: argparse.Namespace) -> int:
    import shutil
    import subprocess

    from jetsearch.study import DEFAULT_STORAGE

    storage = args.storage or DEFAULT_STORAGE
    exe = shutil.which("optuna-dashboard")
    if exe is None:
        raise UsageError(
            "optuna-dashboard is not installed: pip install 'jetsearch[dashboard]' "
            f"(then: optuna-dashboard {storage})"
        )
    if "://" not in storage and not Path(storage).exists():
        raise UsageError(f"storage {storage} does not exist yet; run jetsearch study first")
    cmd = [exe, storage, "--port", str(args.port), "--host", args.host]
    print(" ".join(cmd), f"  (study {args.study})" if args.study else "")
    return subprocess.call(cmd)


def _add_dashboard(sub) -> None:
    p = sub.add_parser("dashboard", help="open a study's storage in optuna-dashboard")
    p.add_argument("--study", help="study name (the dashboard lists every study in the storage)")
    p.add_argument("--storage", help="storage (default jetsearch-studies.log)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--host", default="127.0.0.1")
    p.set_defaults(func=cmd_dashboard)


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
    _add_study(sub)
    _add_show(sub)
    _add_export(sub)
    _add_dashboard(sub)
    _add_worker(sub)
    from jetsearch.latency.commands import add_latency_parser

    add_latency_parser(sub)
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
    except (FileNotFoundError, ValueError) as err:
        # Bad input (a config, a data folder, an image, a checkpoint): one clear message, no
        # traceback; JETSEARCH_DEBUG=1 shows the traceback.
        if os.environ.get("JETSEARCH_DEBUG"):
            raise
        print(f"jetsearch {args.command}: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"jetsearch {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        from jetsearch.latency.base import LatencyError

        if not isinstance(err, LatencyError) or os.environ.get("JETSEARCH_DEBUG"):
            raise
        print(f"jetsearch {args.command}: latency measurement failed: {err}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
