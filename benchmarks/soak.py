"""Soak: a study killed at random moments loses nothing and leaves nothing RUNNING.

    python benchmarks/soak.py [--trials 30] [--kills 5] [--interrupts 2] \\
        [--storage journal|sqlite] [--seed 0] [--out runs/soak]

Runs the same small multi-fidelity study twice, each as ``jetsearch study`` in a child process,
exactly as a user would:

1. **undisturbed**: once, to the end, for the reference wall time;
2. **disturbed**: started, ``kill -9``-ed at a random moment (uniform in ``--delay`` seconds
   after the process started: while it imports, samples, trains, measures latency or writes),
   started again with the same command, and so on for ``--kills`` kills and ``--interrupts``
   Ctrl-Cs (SIGINT, in random order; a Ctrl-C-ed study must exit 130 within
   ``--interrupt-wait`` seconds), then left to finish.

After every kill the storage is read (with the process gone) and every COMPLETE trial's values
are remembered. At the end it prints, over all rungs:

* **completed**: COMPLETE (and PRUNED) trials per rung;
* **lost** (must be 0): a COMPLETE trial seen after some kill that later is missing or has other
  values; a network whose trial died (``owner died`` / ``interrupted``) and whose chain of
  retries (``retry_of``) ends in no finished trial, unless its retry died too and it was given
  up (the recovery's rule: a network whose process died twice is not tried a third time); a
  promotion that is due but was never made. A trial killed while it was still sampling had no
  network yet (``jetsearch.recovery.network_params``) and loses none;
* **stuck RUNNING** (must be 0) and WAITING trials left behind;
* **retried**: dead trials whose network was queued again (``retry_of``) and **given up**
  (``owner died twice``), **duplicated promotions** (must be 0);
* wall time of the disturbed run (every process, restarts included) against the undisturbed one.

The study is ``studies/local.yaml`` shrunk to trials of a few seconds (tiny space, synthetic
scenes, two rungs, eta 3), so the whole soak takes minutes on two cores. Exit status 1 when
anything was lost, left RUNNING or promoted twice, a Ctrl-C was not answered, or the study
ended before every kill landed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import describe  # noqa: E402
from _tiny_study import tiny_study  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NAME = "soak"
DEATHS = ("owner died", "interrupted", "owner died twice: given up")


def study_yaml(out: Path, storage: str) -> Path:
    study = tiny_study(
        out,
        train_images=16,
        val_images=8,
        epochs=1,
        description="soak benchmark: killed at random moments",
        rungs=[{"epochs": 1, "size": [48, 64]}, {"epochs": 2, "size": [64, 96]}],
        eta=3,
        storage=storage,
    )
    path = out / f"{NAME}.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def storage_url(out: Path, kind: str, run: str) -> str:
    if kind == "sqlite":
        return f"sqlite:///{out / run}.db"
    return str(out / f"{run}.log")


def command(study_file: Path, storage: str, trials: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "jetsearch.cli",
        "study",
        "--target",
        str(study_file),
        "--storage",
        storage,
        "--name",
        NAME,
        "--trials",
        str(trials),
        "--quiet",
    ]


def open_studies(storage: str) -> dict[str, object]:
    """Every rung study in ``storage``, by name (read only: nothing is created)."""
    import optuna

    from jetsearch.storage import open_storage

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    store = open_storage(storage)
    names = sorted(s.study_name for s in optuna.get_all_study_summaries(store))
    return {n: optuna.load_study(study_name=n, storage=store) for n in names}


def snapshot(storage: str) -> dict[tuple[str, int], tuple]:
    """(study, trial number) -> values, for every COMPLETE trial."""
    done = {}
    for name, study in open_studies(storage).items():
        for t in study.get_trials(deepcopy=False):
            if t.state.name == "COMPLETE":
                done[(name, t.number)] = tuple(t.values)
    return done


def phase_of(attrs: dict) -> str:
    """What a trial was doing, from the attributes it had stored."""
    if "val_miou" in attrs:
        return "writing results"
    if "latency_ms" in attrs:
        return "training"
    if "macs" in attrs:
        return "measuring latency"
    if "arch_hash" in attrs:
        return "exporting and profiling"
    return "sampling"


def hit_trial(storage: str, interrupted: bool, known: set) -> str:
    """The trial a kill hit: the one RUNNING, or (after Ctrl-C) one newly interrupted, i.e. not
    in ``known``; every interrupted trial is added to ``known``."""
    hit = None
    for name, study in open_studies(storage).items():
        for t in study.get_trials(deepcopy=False):
            label = f"{name} trial {t.number} ({phase_of(t.user_attrs)})"
            if not interrupted and t.state.name == "RUNNING":
                hit = hit or label
            if t.user_attrs.get("failure_reason") == "interrupted":
                if interrupted and (name, t.number) not in known:
                    hit = hit or label
                known.add((name, t.number))
    return hit or "no trial running (starting up, promoting or between trials)"


def _default_sigint() -> None:
    """In the child, before exec: SIGINT as in a terminal. A shell starts background jobs with
    SIGINT ignored, and Python keeps an ignored SIGINT ignored, so a soak started with ``&``
    would otherwise send Ctrl-Cs that nobody hears."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_to_end(cmd: list[str], log: Path, env: dict) -> float:
    """Run ``cmd`` until it exits 0 (a study run again resumes); returns the wall seconds."""
    start = time.monotonic()
    with log.open("a") as fh:
        for _ in range(5):
            if subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env).returncode == 0:
                return time.monotonic() - start
    raise SystemExit(f"the study did not finish; see {log}")


def disturbed(args, cmd: list[str], storage: str, log: Path, env: dict) -> tuple[float, list, dict]:
    """Start, kill at a random moment, start again...; then run to the end."""
    rng = random.Random(args.seed)
    lo, hi = args.delay
    signals = ["kill -9"] * args.kills + ["Ctrl-C"] * args.interrupts
    rng.shuffle(signals)
    kills: list[str] = []
    seen: dict[tuple[str, int], tuple] = {}
    known: set = set()  # interrupted trials already reported
    start = time.monotonic()
    with log.open("a") as fh:
        while len(kills) < len(signals):
            how = signals[len(kills)]
            proc = subprocess.Popen(
                cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, preexec_fn=_default_sigint
            )
            delay = rng.uniform(lo, hi)
            try:
                proc.wait(timeout=delay)
                print(
                    f"  run ended by itself (exit {proc.returncode}) before a kill at {delay:.1f} s"
                )
                if proc.returncode == 0:
                    break
                continue
            except subprocess.TimeoutExpired:
                pass
            note = ""
            if how == "kill -9":
                proc.send_signal(signal.SIGKILL)
                proc.wait()
            else:
                sent = time.monotonic()
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=args.interrupt_wait)
                    note = f", exit {proc.returncode} after {time.monotonic() - sent:.1f} s"
                except subprocess.TimeoutExpired:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                    note = f", Ctrl-C IGNORED for {args.interrupt_wait:g} s (then kill -9)"
            hit = hit_trial(storage, how == "Ctrl-C" and "IGNORED" not in note, known)
            kills.append(f"{how} at {delay:.1f} s: {hit}{note}")
            now = snapshot(storage)
            seen.update(now)
            done = sum(1 for k in now if k[0] == NAME)
            print(
                f"  {len(kills)}/{len(signals)} {kills[-1]}; {done} rung-0 trials complete",
                flush=True,
            )
    run_to_end(cmd, log, env)
    return time.monotonic() - start, kills, seen


def audit(storage: str, seen: dict, eta: int, budget_ms: float) -> dict:
    from jetsearch.recovery import network_params
    from jetsearch.rungs import RungLadder, promotions_due

    studies = open_studies(storage)
    names = sorted(studies, key=lambda n: (n != NAME, n))
    final = snapshot(storage)
    report: dict = {"completed": {}, "pruned": {}, "lost": [], "running": 0, "waiting": 0}
    report.update(retried=0, given_up=0, died=0, duplicated=0)
    for key, values in seen.items():
        if final.get(key) != values:
            report["lost"].append(
                f"{key[0]} trial {key[1]}: COMPLETE {values}, now {final.get(key)}"
            )
    for name in names:
        trials = studies[name].get_trials(deepcopy=False)
        states = Counter(t.state.name for t in trials)
        report["completed"][name] = states["COMPLETE"]
        report["pruned"][name] = states["PRUNED"]
        report["running"] += states["RUNNING"]
        report["waiting"] += states["WAITING"]
        finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
        report["retried"] += sum(1 for t in trials if "retry_of" in t.user_attrs)
        retry = {t.user_attrs["retry_of"]: t for t in trials if "retry_of" in t.user_attrs}
        for t in trials:
            reason = t.user_attrs.get("failure_reason")
            if t.state.name != "FAIL" or reason not in DEATHS:
                continue
            report["died"] += 1
            if reason == DEATHS[2]:
                report["given_up"] += 1
                continue
            if network_params(t) is None:
                continue  # died before (or while) sampling: no network existed yet
            last = t  # follow its retries (``retry_of``) to the last one
            while last.number in retry:
                last = retry[last.number]
            if last.state.name in ("COMPLETE", "PRUNED"):
                continue
            if last.user_attrs.get("failure_reason") == DEATHS[2]:
                continue  # its retry died too: given up, by the rule, and said so
            report["lost"].append(
                f"{name} trial {t.number}: died; its last retry, trial {last.number}, "
                f"ended {last.state.name}"
            )
        if name != NAME:  # a network finished twice at a promoted rung: a promotion done twice
            per_net = Counter(
                t.user_attrs.get("arch_hash")
                for t in finished
                if "promoted_from_trial" in t.user_attrs
            )
            report["duplicated"] += sum(n - 1 for n in per_net.values() if n > 1)
    ladder = RungLadder([studies[n] for n in names], eta, budget_ms)
    for rung in range(len(names) - 1):
        points, _ = ladder.points(rung)
        for key in promotions_due(points, ladder.present(rung + 1), eta):
            report["lost"].append(f"rung {rung} network {key}: promotion due, never made")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=30, help="rung-0 trials (default 30)")
    parser.add_argument("--kills", type=int, default=5, help="kill -9s (default 5)")
    parser.add_argument(
        "--interrupts", type=int, default=2, help="Ctrl-Cs (SIGINT) among them (default 2)"
    )
    parser.add_argument(
        "--interrupt-wait",
        type=float,
        default=30.0,
        help="seconds a Ctrl-C-ed study may take to exit before it is killed (default 30)",
    )
    parser.add_argument("--storage", choices=("journal", "sqlite"), default="journal")
    parser.add_argument(
        "--delay",
        type=float,
        nargs=2,
        default=(6.0, 18.0),
        metavar=("MIN", "MAX"),
        help="a kill comes uniformly MIN-MAX s after a start (default 6 18)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/soak")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    if args.trials < 1 or args.kills < 0 or not 0 < args.delay[0] <= args.delay[1]:
        parser.error("--trials >= 1, --kills >= 0 and 0 < MIN <= MAX are required")

    out = Path(args.out).resolve() / args.storage
    out.mkdir(parents=True, exist_ok=True)
    for old in out.iterdir():  # a soak starts from nothing: its figures are of one run
        if old.is_file():
            old.unlink()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    print(f"machine: {describe(1)}; load average {os.getloadavg()[0]:.2f} at start")
    print(
        f"study: studies/local.yaml shrunk (tiny space, synthetic), two rungs, eta 3, "
        f"{args.trials} rung-0 trials, {args.storage} storage; {args.kills} kill -9 and "
        f"{args.interrupts} Ctrl-C, each {args.delay[0]:g}-{args.delay[1]:g} s after a start "
        f"(seed {args.seed})",
        flush=True,
    )
    calm = storage_url(out, args.storage, "undisturbed")
    study_file = study_yaml(out, calm)
    spec = yaml.safe_load(study_file.read_text())
    undisturbed_s = run_to_end(command(study_file, calm, args.trials), out / "undisturbed.txt", env)
    print(f"undisturbed: {undisturbed_s:.1f} s", flush=True)

    storage = storage_url(out, args.storage, "disturbed")
    cmd = command(study_file, storage, args.trials)
    wall_s, kills, seen = disturbed(args, cmd, storage, out / "disturbed.txt", env)
    report = audit(storage, seen, spec["eta"], spec["latency"]["budget_ms"])
    calm_report = audit(calm, {}, spec["eta"], spec["latency"]["budget_ms"])

    print("\nrung study        completed  pruned   (undisturbed: completed  pruned)")
    for name in report["completed"]:
        print(
            f"{name:<16} {report['completed'][name]:>10} {report['pruned'][name]:>7}"
            f"   {calm_report['completed'].get(name, 0):>24}"
            f" {calm_report['pruned'].get(name, 0):>7}"
        )
    print(f"kills: {len(kills)}")
    for line in kills:
        print(f"  {line}")
    print(
        f"trials whose process died: {report['died']}; retried: {report['retried']}; "
        f"given up: {report['given_up']}"
    )
    print(f"lost: {len(report['lost'])}")
    for line in report["lost"]:
        print(f"  {line}")
    print(
        f"stuck RUNNING: {report['running']}; WAITING left: {report['waiting']}; "
        f"duplicated promotions: {report['duplicated']}"
    )
    print(
        f"wall: disturbed {wall_s:.1f} s ({len(kills)} kills, restarts included) against "
        f"undisturbed {undisturbed_s:.1f} s: x{wall_s / undisturbed_s:.2f}"
    )
    # -2: killed by the SIGINT itself (a Ctrl-C landing while Python exits), 130 to a shell.
    planned = args.kills + args.interrupts
    if len(kills) < planned:
        print(
            f"only {len(kills)} of {planned} kills landed before the study ended: "
            "use a shorter --delay"
        )
    slow = [k for k in kills if k.startswith("Ctrl-C") and not re.search(r", exit (130|-2) ", k)]
    if slow:
        print(f"Ctrl-C not answered by exit 130 in time: {len(slow)}")
    ok = not report["lost"] and report["running"] == 0 and not report["duplicated"] and not slow
    ok = ok and len(kills) == planned
    print("PASS: nothing lost, nothing stuck" if ok else "FAIL")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {**report, "kills": kills, "wall_s": wall_s, "undisturbed_s": undisturbed_s},
                indent=2,
            )
        )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
