"""``jetsearch study``, ``show``, ``export`` and ``dashboard``: a search and what it found.

``study`` runs or resumes a study (the same command again continues it) with a live view of
the front; ``show`` and ``export`` read a stored study; ``dashboard`` opens its storage in
optuna-dashboard.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from jetsearch.cli import EXIT_INTERRUPTED, EXIT_OK, UsageError, study_parent
from jetsearch.cli import console as make_console


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
    """Run or resume a study with the local or the Ray backend; 130 when interrupted."""
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
    console = make_console()
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
    return EXIT_INTERRUPTED if run.interrupted else EXIT_OK


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


def cmd_show(args: argparse.Namespace) -> int:
    """The front of a stored study as a table, its notes, and a plot with ``--plot``."""
    from jetsearch.report import front_table, plot_front, study_notes, trial_rows

    study = _open_study(args)
    rows = trial_rows(study)
    console = make_console()
    console.print(front_table(study, rows))
    for note in study_notes(rows):
        console.print(f"note: {note}")
    if args.plot:
        path = plot_front(study, rows, args.plot)
        console.print(f"wrote {path}")
    return EXIT_OK


def _add_show(sub, study: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "show",
        parents=[study],
        help="the Pareto front of a study as a table (and a plot)",
        epilog="example:\n  jetsearch show --study agx --plot front.png",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--plot", metavar="PNG", help="also draw every trial and the front")
    p.set_defaults(func=cmd_show)


def cmd_export(args: argparse.Namespace) -> int:
    """Write a trial (given or picked from the front) as a config YAML."""
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
    make_console().print(
        f"wrote {path}: trial {number}, val mIoU "
        f"{f'{100 * miou:.2f}%' if miou is not None else '?'}, latency "
        f"{f'{lat:.2f} ms' if lat is not None else '?'}; train it with: "
        f"jetsearch train --config {path}"
    )
    return EXIT_OK


def _add_export(sub, study: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "export",
        parents=[study],
        help="write a trial's network as a config YAML",
        epilog="example:\n  jetsearch export --study agx --pick knee -o agx-knee.yaml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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
    """Start optuna-dashboard on the storage; its exit code is the command's."""
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


def add_parsers(subparsers) -> None:
    """Register ``study``, ``show``, ``export`` and ``dashboard``."""
    _add_study(subparsers)
    study = study_parent()
    _add_show(subparsers, study)
    _add_export(subparsers, study)
    _add_dashboard(subparsers)
