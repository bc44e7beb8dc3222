"""A tiny study process for the recovery tests: killed, interrupted and restarted for real.

    python tests/jetsearch/recovery_driver.py STORAGE --study NAME --trials N [options]

``STORAGE`` is a journal file path or an RDB URL (``sqlite:///x.db``). The process recovers the
study's stale trials first (printing ``RECOVERED <json>``), then runs trials until the study
holds ``N`` COMPLETE ones (every process counted). Each trial samples ``x`` in [0, 100] inside a
:class:`TrialHeartbeat` and waits ``--sleep`` seconds, so the tests can kill it mid-trial:

* ``--bomb X``: a new study is given the network ``x = X`` first, and a trial of that network
  ``kill -9``s its own process, as a network that crashes its process would;
* ``--hold FILE``: the first trial of this process waits until ``FILE`` exists;
* ``--optuna-heartbeat S``: an RDB storage with Optuna's own heartbeat (S s, grace 2 S) and its
  retry callback, as a caller may open one (and as older versions opened PostgreSQL; today's
  ``jetsearch.storage.open_storage`` opens every storage without it).

Ctrl-C (SIGINT) marks the trial in flight interrupted (printing ``MARKED <json>``: what
:func:`mark_interrupted` did) and exits with 130.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import time
import warnings
from pathlib import Path

import optuna
from optuna.trial import TrialState

from jetsearch.recovery import (
    StaleTrialRecovery,
    TrialHeartbeat,
    mark_interrupted,
    recover_stale_trials,
)


def open_storage(url: str, optuna_heartbeat: int | None):
    if "://" not in url:
        from optuna.storages.journal import (
            JournalFileBackend,
            JournalFileSymlinkLock,
            JournalStorage,
        )

        # A process killed while it appends leaves the journal's lock behind; the others break
        # it after the lock's grace period, 30 s by default: 3 s keeps the tests short.
        lock = JournalFileSymlinkLock(url, grace_period=3)
        return JournalStorage(JournalFileBackend(url, lock_obj=lock))
    kwargs = {"engine_kwargs": {"connect_args": {"timeout": 60}}}
    with warnings.catch_warnings():  # Optuna's heartbeat and retry callback are experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if optuna_heartbeat:
            kwargs.update(
                heartbeat_interval=optuna_heartbeat,
                grace_period=2 * optuna_heartbeat,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(1),
            )
        return optuna.storages.RDBStorage(url, **kwargs)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("storage")
    parser.add_argument("--study", default="recovery")
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--sleep", type=float, default=0.3)
    parser.add_argument("--interval", type=float, default=0.2)
    parser.add_argument("--grace", type=float, default=1.0)
    parser.add_argument("--bomb", type=float, default=None)
    parser.add_argument("--hold", default=None)
    parser.add_argument("--optuna-heartbeat", type=int, default=None)
    args = parser.parse_args()

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = open_storage(args.storage, args.optuna_heartbeat)
    study = optuna.create_study(
        storage=storage,
        study_name=args.study,
        direction="maximize",
        sampler=optuna.samplers.RandomSampler(),
        load_if_exists=True,
    )
    recovered = recover_stale_trials(study, storage=storage, grace_s=args.grace)
    print("RECOVERED", json.dumps([dataclasses.asdict(r) for r in recovered]), flush=True)
    if args.bomb is not None and not study.get_trials(deepcopy=False):
        study.enqueue_trial({"x": args.bomb})

    in_flight: dict[str, int] = {}
    held = {"done": args.hold is None}

    def objective(trial: optuna.Trial) -> float:
        in_flight["number"] = trial.number
        with TrialHeartbeat(trial, interval_s=args.interval):
            x = trial.suggest_float("x", 0.0, 100.0)
            trial.set_user_attr("arch_hash", f"x={x}")  # as the objective: the network is known
            if args.bomb is not None and x == args.bomb:
                os.kill(os.getpid(), signal.SIGKILL)
            if not held["done"]:
                while not Path(args.hold).exists():
                    time.sleep(0.02)
                held["done"] = True
            end = time.monotonic() + args.sleep
            while time.monotonic() < end:
                time.sleep(0.02)
            return x

    def complete() -> int:
        return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))

    if complete() >= args.trials:
        return 0
    try:
        study.optimize(
            objective,
            callbacks=[
                optuna.study.MaxTrialsCallback(args.trials, states=(TrialState.COMPLETE,)),
                StaleTrialRecovery(storage, grace_s=args.grace),
            ],
        )
    except KeyboardInterrupt:
        if "number" in in_flight:
            marked = mark_interrupted(study, in_flight["number"], storage=storage)
            print("MARKED", json.dumps(marked and dataclasses.asdict(marked)), flush=True)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
