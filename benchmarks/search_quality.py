"""Search quality: the study's sampler (TPE) against random sampling at an equal number of trials.

For every seed and each sampler (``tpe``, ``random``) the script runs a fresh study from
``studies/search_quality.yaml`` (target ``local``: latency measured by onnxruntime on this
machine at 360x480 against an 8 ms budget that cuts the space; the nano space; each trial
trained briefly on real CamVid) with no presets enqueued, so both samplers start from
nothing. After the first k finished trials (k = 5, 10, ..., N) it computes the hypervolume of
the feasible Pareto front in (val mIoU, maximised; latency, minimised) against the fixed
reference point (mIoU 0, latency = the study's budget, ``--budget`` or ``--ref-latency``).
The hypervolume is normalised by the reference box (mIoU 0..1 times latency 0..ref), so it
lies in 0..1 and the ratios do not depend on units.

It prints one row per seed and sampler (HV after k trials, best mIoU, trials pruned over the
budget, duplicates, failed trials, time), the mean HV per sampler, the ratio TPE / random at
every k, on how many seeds TPE was ahead after N trials, the machine, the training budget, the
data (real CamVid or the synthetic scenes, stated) and the wall time. ``--json FILE`` writes
all of it, every trial included. Nothing here is asserted by the test suite.

The training budget is work, not time (2 epochs over 192 frames at 120x160): a trial's mIoU
then depends on its architecture, the seed and its trial number only, never on the load of
the machine. With the same seed, TPE's first 10 trials (its random start-up trials, Optuna's
default) draw the same architectures as the random sampler, so HV@5 and HV@10 come out equal
for both (the ratio is 1.00: a check that the comparison is fair) and the samplers separate
from trial 11 on. ``--time-budget`` adds a cut in seconds, which makes the results
timing-dependent (a loaded machine trains fewer steps).

Studies live in ``--out`` (one journal file per seed and sampler, and one latency cache that
every run shares, so each architecture is timed once); running the same command again
continues them (``--fresh`` starts over; keep the cache only on the same machine). A study that
was interrupted and continued is no longer paired trial by trial with the other sampler's (a
continued sampler starts its random stream afresh), so prefer ``--fresh`` for figures.

Expected wall time on 2 idle CPU cores with the defaults (3 seeds x 2 samplers x 30 trials):
a trained trial takes about 5-15 s (48 training steps, two evaluations on the 101 val frames at
120x160, ONNX export, and a latency measurement the first time an architecture is seen), a
pruned or duplicate trial 1-3 s, so the whole run takes about 20-30 minutes. The machine must be
otherwise idle for the latency measurements (not for the mIoU, which is work-bound).

Examples::

    python benchmarks/search_quality.py                        # 3 seeds x 2 samplers x 30 trials
    python benchmarks/search_quality.py --seeds 1 --trials 6 --epochs 1 --train-images 16
    python benchmarks/search_quality.py --synthetic --trials 10 --json sq.json
    python benchmarks/search_quality.py --budget 50 --seeds 2       # a budget nothing reaches
    python benchmarks/search_quality.py --data /data/camvid --out runs/sq --fresh
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# The script's own folder is on sys.path when it runs as ``python benchmarks/search_quality.py``.
from _machine import describe

from jetsearch.report import TrialRow, trial_rows
from jetsearch.run import run_study
from jetsearch.spec import StudySpec, load_study_spec
from jetsearch.storage import open_storage
from jetseg.config import ConfigError

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = (REPO / ".." / "shared" / "camvid").resolve()
DEFAULT_OUT = REPO / "runs" / "search_quality"
DEFAULT_SPEC = REPO / "studies" / "search_quality.yaml"
SAMPLERS = ("tpe", "random")
FINISHED_STATES = ("COMPLETE", "PRUNED")


class BenchmarkError(RuntimeError):
    """A benchmark that cannot run as asked (reported in one line, exit code 2)."""


# ---------------------------------------------------------------------------------------------
# hypervolume


def hypervolume_2d(points: Sequence[tuple[float, float]], ref_latency: float) -> float:
    """Normalised area dominated by ``(miou, latency_ms)`` points, against (mIoU 0, ``ref``).

    mIoU is maximised and latency minimised; each point dominates the box
    ``[latency, ref] x [0, miou]``. Sweeping from the fastest point, each point adds the strip
    between the best mIoU seen so far and its own, from its latency to the reference. Points at
    or beyond the reference latency, or with no mIoU above 0, add nothing. The area is divided
    by ``ref_latency`` (the box of mIoU 0..1 and latency 0..ref), so the result lies in 0..1.
    This equals Optuna's ``compute_hypervolume`` on (-mIoU, latency) against (0, ref), scaled.
    """
    if not ref_latency > 0:
        raise ValueError(f"the reference latency must be > 0 ms, got {ref_latency}")
    inside = sorted((lat, miou) for miou, lat in points if lat < ref_latency and miou > 0)
    area, best_miou = 0.0, 0.0
    for latency, miou in inside:
        if miou > best_miou:
            area += (miou - best_miou) * (ref_latency - latency)
            best_miou = miou
    return area / ref_latency


def finished_rows(rows: Sequence[TrialRow]) -> list[TrialRow]:
    """Trials that count towards the budget (completed or pruned), in the order they ran."""
    return sorted((r for r in rows if r.state in FINISHED_STATES), key=lambda r: r.number)


def hypervolume_after(rows: Sequence[TrialRow], k: int, ref_latency: float) -> float:
    """Hypervolume of the feasible completed trials among the first ``k`` finished trials."""
    first = finished_rows(rows)[:k]
    points = [(r.miou, r.latency_ms) for r in first if r.complete and r.feasible]
    return hypervolume_2d(points, ref_latency)


def checkpoints(trials: int, every: int) -> list[int]:
    """k = every, 2 * every, ... and always ``trials`` itself."""
    ks = list(range(every, trials + 1, every))
    if not ks or ks[-1] != trials:
        ks.append(trials)
    return ks


# ---------------------------------------------------------------------------------------------
# runs


def _spec_as_json(spec: StudySpec) -> dict[str, Any]:
    # The same shape the study stores in its "spec" user attribute (tuples become lists).
    return json.loads(json.dumps(dataclasses.asdict(spec)))


def run_spec(spec: StudySpec, sampler: str, seed: int, data: str | None, out: Path) -> StudySpec:
    """The benchmark's study for one sampler and seed: no presets, the shared latency cache."""
    return dataclasses.replace(
        spec,
        sampler=sampler,
        seed=seed,
        data=data,
        enqueue_presets=(),
        latency=dataclasses.replace(spec.latency, cache=str(out / "latency.sqlite")),
    )


class TrialProgress:
    """One line on stderr per finished trial: a long benchmark shows that it is alive."""

    def __init__(self, label: str, trials: int) -> None:
        self.label = label
        self.trials = trials
        self.started = time.perf_counter()

    def __call__(self, study, trial) -> None:
        from jetsearch.storage import finished_count

        attrs = trial.user_attrs
        done = finished_count(study)
        state = trial.state.name.lower()
        line = f"[{self.label}] {done}/{self.trials}: trial {trial.number} {state}"
        if trial.values:
            line += f": mIoU {100 * trial.values[0]:.2f}%"
        if "latency_ms" in attrs:
            line += f", {attrs['latency_ms']:.1f} ms"
        if attrs.get("duplicate_of") is not None:
            line += f" (duplicate of trial {attrs['duplicate_of']})"
        elif "train_time_s" in attrs:
            line += f", trained {attrs['train_time_s']:.0f} s"
        reason = attrs.get("pruned_reason") or attrs.get("failure_reason")
        if reason:
            line += f" - {reason}"
        elapsed = (time.perf_counter() - self.started) / 60
        print(f"{line} [{elapsed:.1f} min]", file=sys.stderr, flush=True)


def run_one(
    spec: StudySpec, trials: int, out: Path, ks: Sequence[int], ref_latency: float
) -> dict[str, Any]:
    """Run (or continue) one sampler's study to ``trials`` finished trials; its HV curve."""
    import optuna

    name = f"{spec.name}-{spec.sampler}-seed{spec.seed}"
    storage = out / f"{spec.sampler}-seed{spec.seed}.log"
    if storage.exists():
        try:
            stored = optuna.load_study(study_name=name, storage=open_storage(str(storage)))
            stored_spec = stored.user_attrs.get("spec")
        except KeyError:  # the file holds other studies only
            stored_spec = None
        if stored_spec != _spec_as_json(spec):
            raise BenchmarkError(
                f"{storage} holds no study {name} with these settings (data, training budget, "
                "latency); pass --fresh to start over, or another --out"
            )
    label = f"{spec.sampler} seed {spec.seed}"
    print(f"--- {label}: {storage}", file=sys.stderr, flush=True)
    run = run_study(
        spec,
        trials=trials,
        storage=str(storage),
        name=name,
        callbacks=[TrialProgress(label, trials)],
    )
    if run.interrupted:  # Ctrl-C stops the whole benchmark; its studies stay to continue
        raise KeyboardInterrupt
    study = optuna.load_study(study_name=name, storage=open_storage(str(storage)))
    rows = trial_rows(study)
    finished = finished_rows(rows)
    if len(finished) < trials:
        raise BenchmarkError(f"study {name} in {storage} stopped after {len(finished)} trials")
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    durations = [
        (t.datetime_complete - t.datetime_start).total_seconds()
        for t in by_number.values()
        if t.datetime_complete is not None and t.datetime_start is not None
    ]
    trials_out = []
    for r in rows:
        attrs = by_number[r.number].user_attrs
        trials_out.append(
            {
                "number": r.number,
                "state": r.state,
                "miou": r.miou,
                "latency_ms": r.latency_ms,
                "feasible": r.feasible,
                "arch_hash": r.arch_hash,
                "params": r.params,
                "duplicate_of": r.duplicate_of,
                "train_time_s": attrs.get("train_time_s"),
                "epochs": attrs.get("epochs"),
                "reason": r.reason,
            }
        )
    return {
        "sampler": spec.sampler,
        "seed": spec.seed,
        "study": name,
        "storage": str(storage),
        "hv": {k: hypervolume_after(rows, k, ref_latency) for k in ks},
        "finished": len(finished),
        "complete": sum(r.state == "COMPLETE" for r in finished),
        "pruned": sum(r.state == "PRUNED" for r in finished),
        "duplicates": sum(r.duplicate_of is not None for r in finished),
        "failed": sum(r.state == "FAIL" for r in rows),
        "best_miou": max((r.miou for r in finished if r.complete and r.feasible), default=None),
        "trial_time_s": sum(durations),
        "wall_s": run.wall_s,
        "data": next((by_number[r.number].user_attrs.get("data") for r in finished), None),
        "synthetic": next((r.synthetic for r in finished if r.synthetic is not None), None),
        "latency_sources": run.latency_sources,
        "trials": trials_out,
    }


def summarise(runs: Sequence[dict[str, Any]], ks: Sequence[int]) -> dict[str, Any]:
    """Mean HV per sampler at every k, the ratio TPE / random, and the seeds TPE led at N."""
    mean = {}
    for sampler in SAMPLERS:
        mine = [r for r in runs if r["sampler"] == sampler]
        mean[sampler] = {k: sum(r["hv"][k] for r in mine) / len(mine) for k in ks} if mine else {}
    ratio = {
        k: (mean["tpe"][k] / mean["random"][k] if mean["random"].get(k) else None)
        for k in ks
        if mean["tpe"] and mean["random"]
    }
    n = ks[-1]
    seeds = sorted({r["seed"] for r in runs})
    pairs = []
    for seed in seeds:
        hv = {r["sampler"]: r["hv"][n] for r in runs if r["seed"] == seed}
        if set(hv) == set(SAMPLERS):
            pairs.append(hv["tpe"] > hv["random"])
    return {
        "mean_hv": mean,
        "ratio_tpe_over_random": ratio,
        "tpe_ahead_at_n": sum(pairs),
        "seeds_compared": len(pairs),
    }


# ---------------------------------------------------------------------------------------------
# output


def _console():
    from rich.console import Console

    console = Console()
    if not console.is_terminal:  # logs and pipes: wide enough that the tables never wrap
        console = Console(width=200)
    return console


def training_text(settings: dict[str, Any]) -> str:
    """The per-trial training budget in words."""
    frames = f"the first {settings['train_images']}" if settings["train_images"] else "all"
    val = f"the first {settings['val_images']}" if settings["val_images"] else "all"
    budget = settings["time_budget_s"]
    limit = f", cut at {budget:g} s of steps (timing-dependent)" if budget else ""
    return (
        f"{settings['epochs']} epoch(s) over {frames} train frames{limit}, at "
        f"{settings['size'][0]}x{settings['size'][1]}, batch {settings['batch_size']}, loss "
        f"{settings['loss']}; mIoU on {val} val frames"
    )


def tpe_startup_trials() -> int:
    """How many random start-up trials the study's TPE sampler runs (Optuna's default)."""
    import inspect

    import optuna

    return inspect.signature(optuna.samplers.TPESampler).parameters["n_startup_trials"].default


def _ratio_text(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def print_report(result: dict[str, Any]) -> None:
    from rich.table import Table

    console = _console()
    ks = result["ks"]
    table = Table(
        title=(
            f"hypervolume of the feasible front (val mIoU up, latency down; reference mIoU 0, "
            f"{result['ref_latency_ms']:g} ms; normalised to 0..1) after k trials"
        ),
        title_justify="left",
    )
    for column in ("seed", "sampler", *(f"HV@{k}" for k in ks)):
        table.add_column(column, justify="right" if column.startswith("HV") else "left")
    for column in ("best mIoU", "pruned", "dupl.", "failed", "trial time"):
        table.add_column(column, justify="right")
    for run in result["runs"]:
        best = run["best_miou"]
        table.add_row(
            str(run["seed"]),
            run["sampler"],
            *(f"{run['hv'][k]:.4f}" for k in ks),
            "-" if best is None else f"{100 * best:.2f}%",
            str(run["pruned"]),
            str(run["duplicates"]),
            str(run["failed"]),
            f"{run['trial_time_s'] / 60:.1f} min",
        )
    summary = result["summary"]
    for sampler in SAMPLERS:
        mean = summary["mean_hv"].get(sampler)
        if mean:
            table.add_row(
                "mean", f"[bold]{sampler}", *(f"[bold]{mean[k]:.4f}" for k in ks), end_section=False
            )
    if summary["ratio_tpe_over_random"]:
        ratio = summary["ratio_tpe_over_random"]
        table.add_row(
            "ratio", "[bold]tpe / random", *(f"[bold]{_ratio_text(ratio[k])}" for k in ks)
        )
    console.print(table)
    n = ks[-1]
    ratio_n = summary["ratio_tpe_over_random"].get(n) if summary["ratio_tpe_over_random"] else None
    startup = tpe_startup_trials()
    if ratio_n is not None:
        higher = "higher" if ratio_n > 1 else "NOT higher"
        console.print(
            f"[bold]after {n} trials the TPE front's hypervolume is {higher} than random "
            f"sampling's: mean HV ratio TPE / random {ratio_n:.2f}[/bold]; TPE ahead on "
            f"{summary['tpe_ahead_at_n']} of {summary['seeds_compared']} seed(s)"
        )
        if n <= startup:
            console.print(
                f"note: with {n} trials TPE never left its {startup} random start-up trials, "
                "which draw what the random sampler draws; run more trials to compare the two"
            )
    console.print(
        "pruned = over the latency budget, not trained; dupl. = an architecture already trained "
        f"in the study (not retrained, counts as a trial); TPE's first {startup} trials are "
        "random start-up trials that draw what the random sampler with the same seed draws"
    )
    settings = result["settings"]
    console.print(f"machine: {result['machine']}")
    console.print(f"training per trial: {training_text(settings)}")
    console.print(
        f"space {settings['space']}; latency {settings['latency_sources']} at "
        f"{settings['latency_input'][0]}x{settings['latency_input'][1]}, {settings['runs']} runs, "
        f"budget {settings['budget_ms']} ms; latency cache {settings['latency_cache']}"
    )
    data_line = result["data"] or "?"
    if result["synthetic"]:
        data_line = f"SYNTHETIC street scenes, not real images ({data_line})"
    console.print(f"data: {data_line}")
    console.print(f"wall time: {result['wall_s'] / 60:.1f} min")


# ---------------------------------------------------------------------------------------------
# command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Examples::" + __doc__.split("Examples::", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..S-1 (default 3)")
    parser.add_argument("--trials", type=int, default=30, help="trials per study (default 30)")
    parser.add_argument("--every", type=int, default=5, help="HV after every K trials (5)")
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help=f"CamVid root (default {DEFAULT_DATA})"
    )
    parser.add_argument(
        "--synthetic",
        action="store_true",
        help="train on the built-in synthetic street scenes instead of CamVid",
    )
    parser.add_argument(
        "--spec",
        default=str(DEFAULT_SPEC),
        help=f"study YAML or built-in study name (default {DEFAULT_SPEC})",
    )
    parser.add_argument("--epochs", type=int, default=None, help="training epochs per trial")
    parser.add_argument(
        "--train-images", type=int, default=None, metavar="N", help="train on the first N frames"
    )
    parser.add_argument(
        "--time-budget",
        type=float,
        default=None,
        metavar="S",
        help="also cut each trial's training at S seconds of steps (makes results timing-"
        "dependent)",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=None,
        metavar="MS",
        help="latency budget of the studies (default: the study file's latency.budget_ms)",
    )
    parser.add_argument(
        "--ref-latency",
        type=float,
        default=None,
        metavar="MS",
        help="reference latency of the hypervolume (default: the study's budget)",
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"studies and cache (default {DEFAULT_OUT})"
    )
    parser.add_argument("--fresh", action="store_true", help="delete this benchmark's studies")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE", help="write everything")
    return parser


def _fail(message: str) -> int:
    print(f"search_quality: {message}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for flag, value in (
        ("--seeds", args.seeds),
        ("--trials", args.trials),
        ("--every", args.every),
        ("--epochs", args.epochs),
        ("--train-images", args.train_images),
    ):
        if value is not None and value < 1:
            return _fail(f"{flag} must be >= 1, got {value}")
    if args.time_budget is not None and not args.time_budget > 0:
        return _fail(f"--time-budget must be > 0 seconds, got {args.time_budget}")
    if args.budget is not None and not args.budget > 0:
        return _fail(f"--budget must be > 0 ms, got {args.budget}")
    if args.synthetic:
        data = None
    elif args.data.is_dir():
        data = str(args.data.resolve())
    else:
        return _fail(
            f"CamVid not found at {args.data}: pass --data PATH (a CamVid root), or --synthetic "
            "to run on the built-in synthetic street scenes"
        )
    try:
        spec = load_study_spec(args.spec)
    except (FileNotFoundError, ConfigError) as err:
        return _fail(str(err))
    training = {
        "epochs": args.epochs,
        "train_images": args.train_images,
        "time_budget_s": args.time_budget,
    }
    training = {key: value for key, value in training.items() if value is not None}
    spec = dataclasses.replace(spec, train=dataclasses.replace(spec.train, **training))
    if args.budget is not None:
        spec = dataclasses.replace(
            spec, latency=dataclasses.replace(spec.latency, budget_ms=args.budget)
        )
    ref_latency = args.ref_latency if args.ref_latency is not None else spec.latency.budget_ms
    if ref_latency is None or not ref_latency > 0:
        return _fail(f"the study {args.spec} has no latency.budget_ms; pass --ref-latency MS (> 0)")
    ks = checkpoints(args.trials, args.every)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.fresh:
        for sampler in SAMPLERS:
            for seed in range(args.seeds):
                (out / f"{sampler}-seed{seed}.log").unlink(missing_ok=True)

    started = time.perf_counter()
    runs = []
    try:
        for seed in range(args.seeds):
            for sampler in SAMPLERS:
                one = run_spec(spec, sampler, seed, data, out)
                runs.append(run_one(one, args.trials, out, ks, ref_latency))
    except BenchmarkError as err:
        return _fail(str(err))
    except KeyboardInterrupt:
        print(
            f"search_quality: interrupted; the same command continues the studies in {out}",
            file=sys.stderr,
        )
        return 130
    wall = time.perf_counter() - started

    result = {
        "machine": describe(spec.train.threads),
        "settings": {
            "spec": args.spec,
            "space": spec.space,
            "trials": args.trials,
            "seeds": list(range(args.seeds)),
            "time_budget_s": spec.train.time_budget_s,
            "epochs": spec.train.epochs,
            "size": list(spec.train.size),
            "batch_size": spec.train.batch_size,
            "loss": spec.train.loss,
            "train_images": spec.train.train_images,
            "val_images": spec.train.val_images,
            "latency_input": list(spec.latency.input_size),
            "runs": spec.latency.runs,
            "budget_ms": spec.latency.budget_ms,
            "latency_sources": runs[0]["latency_sources"],
            "latency_cache": str(out / "latency.sqlite"),
            "data": data,
        },
        "ref_latency_ms": ref_latency,
        "ks": ks,
        "runs": runs,
        "summary": summarise(runs, ks),
        "data": next((r["data"] for r in runs if r["data"]), data),
        "synthetic": any(r["synthetic"] for r in runs) or data is None,
        "wall_s": wall,
    }
    print_report(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
