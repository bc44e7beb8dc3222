"""Trials per hour of the local and the Ray backend, with 1 and 2 trial processes, on this machine.

    python benchmarks/scale.py [--trials 6] [--epochs 1] [--backends local,ray] [--parallel 1,2]

Every configuration runs a fresh study of the same tiny workload: ``studies/local.yaml`` with the
tiny space, built-in synthetic scenes (``--train-images`` / ``--val-images`` at 48x64),
``--epochs`` of training and latency measured here at 64x64, one torch thread per trial. The
local backend runs ``--jobs P`` processes sharing a journal file; the Ray backend runs
``workers=P`` trial processes (Ray tasks running the same loop) on a Ray instance started once
on this machine (its start-up time is printed apart). The table gives the wall time to ``--trials``
finished trials, trials per hour, the process time per trial (wall time x P / trials), the
median trial duration as the storage records it (from ask to tell, in the trial's process) and
the overhead per trial: process time per trial minus the median trial duration of the local
backend with one process, which is the objective alone. That is what each backend adds around
a trial (process start, imports, data, scheduling, contention). Raw numbers go to ``--json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import describe  # noqa: E402
from _tiny_study import tiny_study  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def write_study(directory: Path, args: argparse.Namespace) -> Path:
    study = tiny_study(
        directory, train_images=args.train_images, val_images=args.val_images, epochs=args.epochs
    )
    path = directory / "scale.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def trial_seconds(storage: str, name: str) -> list[float]:
    import optuna

    from jetsearch.storage import open_storage

    study = optuna.load_study(study_name=name, storage=open_storage(storage))
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return [t.duration.total_seconds() for t in study.get_trials(states=states) if t.duration]


def run_one(backend: str, parallel: int, spec, workdir: Path, args) -> dict:
    from jetsearch.run import run_study

    name = f"scale-{backend}-{parallel}"
    storage = str(workdir / f"{name}.log")
    # A latency cache per row: the rows sample the same networks (same seed), and a row that
    # finds them cached would skip the measurements the others pay for.
    latency = dataclasses.replace(spec.latency, cache=str(workdir / f"{name}-latency.sqlite"))
    spec = dataclasses.replace(spec, latency=latency)
    start = time.perf_counter()
    if backend == "local":
        run = run_study(spec, trials=args.trials, storage=storage, name=name, jobs=parallel)
    else:
        from jetsearch.distributed import RayOptions, run_study_ray

        options = RayOptions(workers=parallel, cpus_per_worker=1, verbose=0)
        run = run_study_ray(spec, trials=args.trials, storage=storage, name=name, options=options)
    wall = time.perf_counter() - start
    inside = trial_seconds(storage, name)
    finished = run.finished_after - run.finished_before
    median_trial = statistics.median(inside) if inside else float("nan")
    return {
        "backend": backend,
        "parallel": parallel,
        "trials": finished,
        "wall_s": wall,
        "trials_per_hour": finished / wall * 3600 if wall > 0 else float("nan"),
        "median_trial_s": median_trial,
        "process_s_per_trial": wall * parallel / max(finished, 1),
        "trial_s": inside,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=6, help="finished trials per configuration")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--train-images", type=int, default=16)
    parser.add_argument("--val-images", type=int, default=8)
    parser.add_argument("--backends", default="local,ray")
    parser.add_argument("--parallel", default="1,2", help="trial processes to compare")
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args()
    backends = [b for b in args.backends.split(",") if b]
    parallels = [int(p) for p in args.parallel.split(",") if p]
    unknown = set(backends) - {"local", "ray"}
    if unknown:
        parser.error(f"--backends: {', '.join(sorted(unknown))} not one of local, ray")

    import optuna

    from jetsearch.spec import load_study_spec

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning)
    print(f"machine: {describe(threads=1)}")
    print(
        f"workload: tiny space, {args.train_images}+{args.val_images} synthetic frames at 48x64, "
        f"{args.epochs} epoch(s), latency at 64x64 (5 runs), {args.trials} trials per row"
    )
    rows = []
    ray_start_s = None
    with tempfile.TemporaryDirectory(prefix="jetsearch-scale-") as tmp:
        workdir = Path(tmp)
        spec = load_study_spec(write_study(workdir, args))
        for backend in backends:
            if backend == "ray":
                from jetsearch.distributed import import_ray

                ray = import_ray()
                start = time.perf_counter()
                ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
                ray_start_s = time.perf_counter() - start
            try:
                for parallel in parallels:
                    rows.append(run_one(backend, parallel, spec, workdir, args))
                    row = rows[-1]
                    print(
                        f"  {backend} x{parallel}: {row['trials']} trials in {row['wall_s']:.1f} s",
                        flush=True,
                    )
            finally:
                if backend == "ray":
                    ray.shutdown()

    baseline = next(
        (r["median_trial_s"] for r in rows if (r["backend"], r["parallel"]) == ("local", 1)),
        float("nan"),
    )
    for row in rows:
        row["overhead_per_trial_s"] = row["process_s_per_trial"] - baseline
    print()
    header = (
        f"{'backend':<8} {'parallel':>8} {'trials':>6} {'wall s':>8} {'trials/h':>9} "
        f"{'process s/trial':>16} {'median trial s':>15} {'overhead/trial s':>17}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row['backend']:<8} {row['parallel']:>8} {row['trials']:>6} {row['wall_s']:>8.1f} "
            f"{row['trials_per_hour']:>9.0f} {row['process_s_per_trial']:>16.2f} "
            f"{row['median_trial_s']:>15.2f} {row['overhead_per_trial_s']:>17.2f}"
        )
    print(f"(overhead: process s/trial minus {baseline:.2f} s, the local x1 median trial)")
    if ray_start_s is not None:
        print(f"(starting the local Ray instance took {ray_start_s:.1f} s, not counted above)")
    if args.json:
        args.json.write_text(
            json.dumps(
                {"machine": describe(threads=1), "ray_start_s": ray_start_s, "rows": rows},
                indent=2,
            )
        )
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
