"""``jetsearch study``, ``show``, ``export`` and ``dashboard``: a search and what it found.

``study`` runs or resumes a study (the same command again continues it). On a terminal a live
panel (:class:`LiveView`) shows the clock, the ETA, what the running trial is doing and the
front; where output goes to a file or a pipe, one line per finished trial (:class:`TrialLines`)
and the front at the end. Ctrl-C stops it with one line and exit code 130. ``show`` prints a
stored study (a table, JSON or CSV) and ``export`` writes a trial's config; ``dashboard``
opens the storage in optuna-dashboard. None of them creates a storage or a study on bad input.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import shlex
import sys
from pathlib import Path
from typing import Any

from jetsearch.budget import DEFAULT_MAX_REJECTED
from jetsearch.cli import (
    EXIT_OK,
    STORAGE_HELP,
    TerminateAsInterrupt,
    UsageError,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    require_storage,
    storage_option,
    study_parent,
)
from jetsearch.cli import console as make_console
from jetsearch.cli.study_views import (
    LiveView,
    TrialLines,
    _optuna_logs,
    _rejected_text,
)

# ---------------------------------------------------------------------------------------------
# jetsearch study


def _load_spec(args: argparse.Namespace):
    from jetsearch.spec import load_study_spec
    from jetseg.config import ConfigError

    workers = [w for w in (args.workers or "").split(",") if w]
    try:
        return load_study_spec(args.target, data=args.data, mode=args.mode, workers=workers)
    except (FileNotFoundError, ConfigError) as err:
        raise UsageError(str(err)) from None


def _processes(args: argparse.Namespace) -> int:
    """Trial processes the study runs at once: ``--jobs``, or ``--max-concurrent`` on Ray."""
    return args.max_concurrent if args.backend == "ray" else args.jobs


def _check_before_creating(spec, url: str, args: argparse.Namespace) -> None:
    """Every input a study needs, checked before its storage or study is created: a command
    that fails on bad input leaves no storage file and no new study behind."""
    from jetsearch.cli import check_data_root
    from jetsearch.space import load_space
    from jetsearch.spec import StudyError
    from jetsearch.storage import locate_storage

    try:
        locate_storage(url).check_processes(_processes(args))
    except StudyError as err:
        flag = "--max-concurrent" if args.backend == "ray" else "--jobs"
        raise UsageError(f"{flag} {_processes(args)} with {url}: {err}") from None
    if args.backend == "ray":
        from jetsearch.distributed import import_ray

        try:
            import_ray()
        except StudyError as err:
            raise UsageError(str(err)) from None
    check_data_root(spec.data, "--data" if args.data else f"data of {args.target}:")
    try:
        load_space(spec.space)
    except (FileNotFoundError, ValueError) as err:
        raise UsageError(f"space {spec.space}: {err}") from None


def _finished_so_far(url: str, name: str) -> int:
    """Counted trials of study ``name`` in ``url``, reading only: 0 where there is none yet."""
    from jetsearch.budget import TrialCount
    from jetsearch.report import ReportError, load_study
    from jetsearch.storage import locate_storage

    path = locate_storage(url).file
    if path is not None and not path.is_file():
        return 0  # opening it would create the file
    try:
        return TrialCount.of(load_study(name, url)).counted
    except ReportError:
        return 0


def _run_backend(args, prepared, callbacks: list, progress, quiet: bool):
    """Run the prepared study on the backend asked for."""
    if args.backend == "ray":
        from jetsearch.distributed import RayOptions, run_prepared_ray

        options = RayOptions(
            workers=args.max_concurrent,
            address=args.address,
            cpus_per_worker=args.cpus_per_trial,
            gpus_per_worker=args.gpus_per_trial,
            max_failures=args.max_failures,
            verbose=1 if quiet else 0,
        )
        return run_prepared_ray(
            prepared,
            trials=args.trials,
            options=options,
            timeout_s=args.timeout,
            callbacks=callbacks,
            max_rejected=args.max_rejected,
        )
    from jetsearch.run import run_prepared

    return run_prepared(
        prepared,
        trials=args.trials,
        timeout_s=args.timeout,
        jobs=args.jobs,
        callbacks=callbacks,
        progress=progress,
        max_rejected=args.max_rejected,
    )


def cmd_study(args: argparse.Namespace) -> int:
    """Run or resume a study with the local or the Ray backend; 130 when interrupted."""
    from rich.markup import escape

    from jetsearch.budget import TrialCount
    from jetsearch.progress import StudyProgress
    from jetsearch.report import count_lines, front_table, study_notes, trial_rows
    from jetsearch.run import prepare_study
    from jetsearch.spec import StudyError
    from jetsearch.storage import storage_url

    if args.backend == "ray" and args.jobs > 1:
        raise UsageError("--jobs is for the local backend; with --backend ray use --max-concurrent")
    ray_only = [
        flag
        for flag, used in (
            ("--address", args.address is not None),
            ("--max-concurrent", args.max_concurrent != 1),
            ("--cpus-per-trial", args.cpus_per_trial != 1),
            ("--gpus-per-trial", args.gpus_per_trial != 0),
            ("--max-failures", args.max_failures != 2),
        )
        if used
    ]
    if args.backend == "local" and ray_only:
        raise UsageError(f"{', '.join(ray_only)}: only with --backend ray")
    spec = _load_spec(args)
    url = storage_url(spec, storage_option(args.storage))
    name = args.name or spec.name
    _check_before_creating(spec, url, args)
    console = make_console()
    prepared = None
    run = None
    stop = TerminateAsInterrupt()
    try:
        with stop:
            # The storage and the rung studies are opened here, once, and passed down.
            prepared = prepare_study(spec, storage=url, name=name, processes=_processes(args))
            count = TrialCount.of(prepared.opened.study)
            before = count.counted
            data_note = spec.data or "built-in SYNTHETIC street scenes (not real data)"
            console.print(
                f"study [bold]{name}[/bold] ({spec.mode}) target {spec.target}, space "
                f"{spec.space}, data {data_note}\nlatency budget: "
                f"{escape(prepared.budget.describe())}\nstorage {url} | {before} trials trained"
                f"{_rejected_text(count.rejected)}, running to {args.trials} trained (networks "
                "over the budget are rejected before training and not counted)",
                soft_wrap=True,
            )
            # Trials of the Ray backend run in other processes: no phase to show from here.
            progress = StudyProgress() if args.backend == "local" else None
            view: LiveView | TrialLines | None = None
            if not args.quiet:
                rungs = prepared.opened.studies
                view = (
                    LiveView(console, name, args.trials, before, progress=progress, rungs=rungs)
                    if console.is_terminal
                    else TrialLines(console, name, args.trials, before)
                )
            callbacks = [view] if view else []
            live = view if isinstance(view, LiveView) else contextlib.nullcontext()
            with live, _optuna_logs():
                run = _run_backend(args, prepared, callbacks, progress, view is None)
    except StudyError as err:
        raise UsageError(str(err)) from None
    except KeyboardInterrupt:
        run = None  # interrupted outside the trials (starting up, between them)
    if run is None or run.interrupted:
        if run is not None:
            finished = run.finished_after
        elif prepared is not None:
            finished = TrialCount.of(prepared.opened.study).counted
        else:
            finished = _finished_so_far(url, name)
        how = "stopped by SIGTERM" if stop.signalled else "interrupted"
        console.print(
            f"{how}: {finished} trials trained, resume with the same command", soft_wrap=True
        )
        return stop.exit_code
    study = prepared.opened.study
    rows = trial_rows(study, prepared.opened.studies)
    if not isinstance(view, LiveView):  # the live panel already shows the final front
        console.print(front_table(study, rows))
    console.print(f"latency from: {run.latency_sources}", markup=False, soft_wrap=True)
    for line in count_lines(prepared.opened.studies):
        console.print(line, markup=False, soft_wrap=True)
    for note in study_notes(rows, prepared.spec):
        console.print(f"note: {note}", soft_wrap=True)
    rejected = f", {run.rejected} networks rejected over the budget" if run.rejected else ""
    console.print(
        f"done: {run.finished_after - run.finished_before} new trials trained in "
        f"{run.wall_s / 60:.1f} min{rejected} "
        f"({run.finished_after} trained in the study). Run the same command again to continue.",
        soft_wrap=True,
    )
    return EXIT_OK


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
        "--trials",
        type=positive_int,
        default=20,
        metavar="N",
        help="run until the study holds N trained trials (networks over the latency budget are "
        "rejected before training: stored, not counted)",
    )
    p.add_argument(
        "--max-rejected",
        type=positive_int,
        default=DEFAULT_MAX_REJECTED,
        metavar="N",
        help="stop with a message after N networks in a row over the latency budget (a space "
        f"with nothing under the budget; default {DEFAULT_MAX_REJECTED})",
    )
    p.add_argument(
        "--timeout",
        type=positive_float,
        default=None,
        metavar="S",
        help="stop starting trials after S seconds",
    )
    p.add_argument(
        "--storage",
        help=STORAGE_HELP.format(fallback="the study file's, else jetsearch-studies.log"),
    )
    p.add_argument("--name", help="study name (default: the study file's name)")
    p.add_argument("--mode", choices=("pareto", "budget"), help="override the study file's mode")
    p.add_argument("--data", help="CamVid root (overrides the study file)")
    p.add_argument("--workers", help="comma-separated latency worker URLs for the target")
    p.add_argument(
        "--jobs",
        type=positive_int,
        default=1,
        metavar="N",
        help="parallel trial processes sharing the storage",
    )
    p.add_argument(
        "--quiet",
        action="store_true",
        help="no live view (on a terminal) and no line per trial (elsewhere); print the front "
        "at the end",
    )
    p.add_argument(
        "--backend",
        choices=("local", "ray"),
        default="local",
        help="local: Optuna in this process (and --jobs); ray: trial processes placed by Ray, "
        "here or on a cluster (pip install 'jetsearch[ray]')",
    )
    ray = p.add_argument_group("Ray backend (--backend ray)")
    ray.add_argument(
        "--address",
        help="Ray cluster: auto (the cluster of this machine) or ray://HOST:10001; "
        "default: start Ray on this machine",
    )
    ray.add_argument(
        "--max-concurrent",
        type=positive_int,
        default=1,
        metavar="N",
        help="trial processes running at once (Ray workers)",
    )
    ray.add_argument(
        "--cpus-per-trial",
        type=positive_float,
        default=1,
        metavar="N",
        help="CPUs reserved per trial process (also its training threads unless train.threads "
        "is set)",
    )
    ray.add_argument(
        "--gpus-per-trial",
        type=non_negative_float,
        default=0.0,
        metavar="F",
        help="GPUs per trial process; fractions share a GPU (0.5: two processes per GPU)",
    )
    ray.add_argument(
        "--max-failures",
        type=non_negative_int,
        default=2,
        metavar="N",
        help="times a trial process whose process or node died is started again (its trial "
        "is failed as 'owner died' and its network queued again)",
    )
    p.set_defaults(func=cmd_study)


def _storage(args: argparse.Namespace) -> str:
    from jetsearch.storage import DEFAULT_STORAGE

    return storage_option(args.storage) or DEFAULT_STORAGE


def _open_study(args: argparse.Namespace):
    from jetsearch.report import ReportError, load_study

    storage = _storage(args)
    require_storage(storage)  # opening a journal path that is not there would create it
    try:
        return load_study(args.study, storage)
    except ReportError as err:
        raise UsageError(str(err)) from None


def _finite(value: Any) -> Any:
    """``value`` with every NaN or infinity (anywhere inside it) as ``None``: strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def study_record(study, rows) -> dict[str, Any]:
    """A stored study as plain data: every trial (number, state, values, parameters, user
    attributes, whether it is on the front) and the front; what ``show --format json`` prints.
    """
    from jetsearch.report import front_rows, study_notes

    front = {r.number for r in front_rows(rows)}
    feasible = {r.number: r.feasible for r in rows}
    trials = []
    for t in study.get_trials(deepcopy=False):
        trials.append(
            {
                "number": t.number,
                "state": t.state.name,
                "values": None if t.values is None else list(t.values),
                "params": dict(t.params),
                "user_attrs": dict(t.user_attrs),
                "feasible": feasible.get(t.number),
                "on_front": t.number in front,
                "datetime_start": t.datetime_start and t.datetime_start.isoformat(),
                "datetime_complete": t.datetime_complete and t.datetime_complete.isoformat(),
            }
        )
    return _finite(
        {
            "study": study.study_name,
            "directions": [d.name.lower() for d in study.directions],
            "metric_names": study.metric_names,
            "user_attrs": dict(study.user_attrs),
            "trials": trials,
            "front": [r.number for r in front_rows(rows)],
            "notes": study_notes(rows),
        }
    )


def _is_scalar(value: Any) -> bool:
    if isinstance(value, str):
        return "\n" not in value  # multi-line text (the config YAML) is for the JSON form
    return value is None or isinstance(value, (bool, int, float))


def write_csv(record: dict[str, Any], out) -> None:
    """One row per trial of a :func:`study_record`: number, state, one column per objective,
    feasibility, front membership, then every single-line attribute (the rest: JSON form)."""
    names = record["metric_names"] or [f"value_{i}" for i in range(len(record["directions"]))]
    attrs: dict[str, None] = {}
    for trial in record["trials"]:
        for key, value in trial["user_attrs"].items():
            if _is_scalar(value):
                attrs.setdefault(key)
    nested = {
        key
        for trial in record["trials"]
        for key, value in trial["user_attrs"].items()
        if not _is_scalar(value)
    }
    columns = sorted(k for k in attrs if k not in nested)  # mixed keys: the JSON form only
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["number", "state", *names, "feasible", "on_front", *columns])
    for trial in record["trials"]:
        values = trial["values"] or [None] * len(names)
        writer.writerow(
            [
                trial["number"],
                trial["state"],
                *("" if v is None else v for v in values),
                trial["feasible"],
                trial["on_front"],
                *(
                    "" if trial["user_attrs"].get(k) is None else trial["user_attrs"][k]
                    for k in columns
                ),
            ]
        )


def cmd_show(args: argparse.Namespace) -> int:
    """A stored study: its front as a table (its budget, counts and notes), or every trial as
    JSON or CSV."""
    from jetsearch.report import (
        count_lines,
        front_table,
        plot_front,
        rung_studies,
        study_notes,
        trial_rows,
    )
    from jetsearch.spec import stored_spec

    study = _open_study(args)
    ladder = rung_studies(study, _storage(args))
    rows = trial_rows(study, ladder)
    if args.format == "table":
        console = make_console()
        console.print(front_table(study, rows))
        for line in count_lines(ladder):
            console.print(line, markup=False, highlight=False, soft_wrap=True)
        for note in study_notes(rows, stored_spec(study)):
            console.print(f"note: {note}")
    elif args.format == "json":
        json.dump(study_record(study, rows), sys.stdout, indent=2, allow_nan=False)
        sys.stdout.write("\n")
    else:
        write_csv(study_record(study, rows), sys.stdout)
    if args.plot:
        from jetsearch.report import ReportError, pick

        try:  # the network `export --pick knee` would write, marked on the plot
            picked = pick(rows, "knee")
        except ReportError:
            picked = None
        path = plot_front(study, rows, args.plot, picked=picked)
        # JSON and CSV keep stdout to themselves, for a pipe or a file.
        print(f"wrote {path}", file=sys.stdout if args.format == "table" else sys.stderr)
    return EXIT_OK


def _add_show(sub, study: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "show",
        parents=[study],
        help="the Pareto front of a study as a table (and a plot), or every trial as JSON/CSV",
        epilog="examples:\n  jetsearch show --study agx --plot front.png\n"
        "  jetsearch show --study agx --format json > agx.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--format",
        choices=("table", "json", "csv"),
        default="table",
        help="table: the front and notes; json: every trial (values, parameters, attributes) "
        "and the front; csv: one row per trial with its single-line attributes",
    )
    p.add_argument("--plot", metavar="PNG", help="also draw every trial and the front")
    p.set_defaults(func=cmd_show)


def train_hint(path: Path, study) -> str:
    """The ``jetsearch train`` command for an exported config, on the data the study used."""
    data = (study.user_attrs.get("spec") or {}).get("data")
    command = f"jetsearch train --config {shlex.quote(str(path))}"
    if data and str(data) != "synthetic":
        return f"{command} --data {shlex.quote(str(data))}"
    return f"{command} (the study trained on synthetic scenes; add --data PATH/TO/CamVid)"


def cmd_export(args: argparse.Namespace) -> int:
    """Write a trial (given or picked from the front) as a config YAML."""
    from jetsearch.report import ReportError, export_trial, pick, trial_rows

    study = _open_study(args)
    try:
        number = args.trial
        if number is None:
            number = pick(trial_rows(study, _storage(args)), args.pick, args.max_latency).number
        path, info = export_trial(study, number, args.output, _storage(args))
    except ReportError as err:
        raise UsageError(str(err)) from None
    miou = info.get("val_miou")
    lat = info.get("latency_ms")
    make_console().print(
        f"wrote {path}: trial {number}, val mIoU "
        f"{f'{100 * miou:.2f}%' if miou is not None else '?'}, latency "
        f"{f'{lat:.2f} ms' if lat is not None else '?'}; train it with: {train_hint(path, study)}",
        markup=False,
        soft_wrap=True,
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
    which.add_argument("--trial", type=non_negative_int, help="trial number")
    which.add_argument(
        "--pick", choices=("max-miou", "knee", "fastest"), help="pick from the front"
    )
    p.add_argument(
        "--max-latency",
        type=positive_float,
        metavar="MS",
        help="with --pick: only trials under MS",
    )
    p.add_argument("-o", "--output", required=True, help="config YAML to write")
    p.set_defaults(func=cmd_export)


def cmd_dashboard(args: argparse.Namespace) -> int:
    """Start optuna-dashboard on the storage; its exit code is the command's."""
    import shutil
    import subprocess

    storage = _storage(args)
    exe = shutil.which("optuna-dashboard")
    if exe is None:
        raise UsageError(
            "optuna-dashboard is not installed: pip install 'jetsearch[dashboard]' "
            f"(then: optuna-dashboard {storage})"
        )
    require_storage(storage)
    from jetsearch.artifacts import ArtifactStoreError, dashboard_command
    from jetsearch.storage import open_storage

    setting = None
    names = []
    try:
        import optuna

        opened = open_storage(storage)
        names = optuna.get_all_study_names(opened)
    except Exception as err:  # an unreadable storage: optuna-dashboard will say it too
        raise UsageError(f"cannot read the storage {storage}: {err}") from None
    if args.study is not None and args.study not in names:
        raise UsageError(
            f"no study {args.study!r} in {storage}; it holds: {', '.join(names) or 'no studies'}"
        )
    if names:
        first = optuna.load_study(study_name=args.study or names[0], storage=opened)
        setting = (first.user_attrs.get("spec") or {}).get("artifact_store")
    try:
        cmd = dashboard_command(storage, setting, host=args.host, port=args.port)
    except ArtifactStoreError:
        # No artifact folder for this storage (a database server without a setting).
        cmd = ["optuna-dashboard", storage, "--host", args.host, "--port", str(args.port)]
    cmd[0] = exe
    url = f"http://{args.host}:{args.port}/dashboard/"
    if args.study is not None:
        study_id = opened.get_study_id_from_name(args.study)
        url += f"studies/{study_id}"
    print(" ".join(cmd))
    print(f"open {url}", flush=True)
    return subprocess.call(cmd)


def _add_dashboard(sub) -> None:
    p = sub.add_parser("dashboard", help="open a study's storage in optuna-dashboard")
    p.add_argument("--study", help="study name (the dashboard lists every study in the storage)")
    p.add_argument("--storage", help=STORAGE_HELP.format(fallback="jetsearch-studies.log"))
    p.add_argument("--port", type=positive_int, default=8080)
    p.add_argument("--host", default="127.0.0.1")
    p.set_defaults(func=cmd_dashboard)


def add_parsers(subparsers) -> None:
    """Register ``study``, ``show``, ``export`` and ``dashboard``."""
    _add_study(subparsers)
    study = study_parent()
    _add_show(subparsers, study)
    _add_export(subparsers, study)
    _add_dashboard(subparsers)
