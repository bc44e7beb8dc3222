"""Multi-fidelity studies run as a user runs them: rungs, promotions, kills, the report."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from study_cases import check_promotions, write_study

from jetsearch.report import front_rows, rung_agreement, trial_rows
from jetsearch.rungs import RungLadder, rung_study_name
from jetsearch.spec import load_study_spec
from jetsearch.storage import open_storage
from jetseg.config import ConfigError

REPO = Path(__file__).resolve().parents[2]
COMPLETE = optuna.trial.TrialState.COMPLETE
RUNGS = [{"epochs": 1, "size": [32, 48]}, {"epochs": 1, "size": [48, 64]}]


def _jetsearch(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "jetsearch.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


def _ladder(storage: Path, name: str = "small", rungs: int = 2) -> list[optuna.Study]:
    st = open_storage(str(storage))
    return [
        optuna.load_study(study_name=rung_study_name(name, k), storage=st) for k in range(rungs)
    ]


def _hashes(study: optuna.Study, states=None) -> list[str]:
    return [t.user_attrs["arch_hash"] for t in study.get_trials(states=states)]


@pytest.mark.slow
def test_a_multi_fidelity_study_promotes_the_front_and_reports_the_highest_rung(tmp_path):
    spec = write_study(tmp_path, rungs=RUNGS, eta=2)
    storage = tmp_path / "s.log"
    out = _jetsearch("study", "--target", str(spec), "--trials", "4", "--storage", str(storage))
    assert out.returncode == 0, out.stdout + out.stderr
    check_promotions(storage, eta=2)
    rung0, rung1 = _ladder(storage)
    assert len(rung0.get_trials(states=(COMPLETE,))) == 4
    assert {t.state for t in rung1.trials} == {COMPLETE}
    assert rung1.metric_names == ["val_miou", "latency_ms"]

    rows = trial_rows(rung0, str(storage))
    by_hash = {r.arch_hash: r for r in rows}
    for t in rung1.get_trials(states=(COMPLETE,)):
        row = by_hash[t.user_attrs["arch_hash"]]
        assert row.rung == 1 and row.miou == t.values[0]
        assert row.number == t.user_attrs["promoted_from_trial"]
        assert dict(row.rung_mious)[0] == rung0.trials[row.number].values[0]
    assert all(r.rung == 0 for r in rows if r.arch_hash not in set(_hashes(rung1)))
    assert front_rows(rows)
    [agreement] = rung_agreement(rows)
    trained_twice = len(rung1.get_trials(states=(COMPLETE,)))
    assert agreement["from_rung"] == 0 and agreement["networks"] == trained_twice >= 2

    shown = _jetsearch("show", "--study", "small", "--storage", str(storage))
    assert shown.returncode == 0, shown.stderr
    assert f"rung 0 -> rung 1 on {trained_twice} networks: Kendall tau" in shown.stdout


@pytest.mark.slow
def test_a_budget_study_with_rungs_promotes_its_most_accurate_networks(tmp_path):
    spec = write_study(tmp_path, rungs=RUNGS, eta=2, mode="budget", pruner="none")
    storage = tmp_path / "s.log"
    out = _jetsearch("study", "--target", str(spec), "--trials", "4", "--storage", str(storage))
    assert out.returncode == 0, out.stdout + out.stderr
    check_promotions(storage, eta=2, mode="budget")
    rung0, rung1 = _ladder(storage)
    assert rung1.metric_names == ["val_miou"]
    best = sorted((t.values[0] for t in rung0.get_trials(states=(COMPLETE,))), reverse=True)
    promoted = [rung0.trials[t.user_attrs["promoted_from_trial"]] for t in rung1.trials]
    # eta 2 of 4 networks: the two most accurate, whatever their latency
    assert sorted((t.values[0] for t in promoted), reverse=True) == best[:2]
    shown = _jetsearch("show", "--study", "small", "--storage", str(storage))
    assert shown.returncode == 0 and "rung 0 -> rung 1 on 2 networks" in shown.stdout, shown


@pytest.mark.slow
def test_a_study_killed_between_promotions_neither_loses_nor_repeats_one(tmp_path):
    spec = write_study(tmp_path, rungs=RUNGS, eta=2)
    storage = tmp_path / "s.log"
    cmd = [sys.executable, "-m", "jetsearch.cli", "study", "--target", str(spec)]
    cmd += ["--trials", "6", "--storage", str(storage)]
    log = tmp_path / "log.txt"
    with log.open("w") as fh:
        process = subprocess.Popen(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline:
                assert process.poll() is None, log.read_text()
                try:
                    rung0, rung1 = _ladder(storage)
                    if rung1.trials and len(rung0.get_trials(states=(COMPLETE,))) >= 3:
                        break
                except (KeyError, ValueError):
                    pass
                time.sleep(0.2)
            else:
                raise AssertionError("no promotion within 240 s:\n" + log.read_text())
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
    complete_before = {
        t.number: t.values for t in _ladder(storage)[0].get_trials(states=(COMPLETE,))
    }
    out = _jetsearch("study", "--target", str(spec), "--trials", "6", "--storage", str(storage))
    assert out.returncode == 0, out.stdout + out.stderr
    rung0, rung1 = _ladder(storage)
    after = {t.number: t.values for t in rung0.get_trials(states=(COMPLETE,))}
    assert all(after[n] == v for n, v in complete_before.items())
    assert len(after) >= 6
    check_promotions(storage, eta=2)


def test_an_interrupted_promotion_step_is_completed_by_the_next_one(tmp_path):
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "s.log"))
    )
    studies = [
        optuna.create_study(
            storage=storage,
            study_name=rung_study_name("s", k),
            directions=["maximize", "minimize"],
        )
        for k in range(2)
    ]
    dist = optuna.distributions.IntDistribution(0, 9)
    for k, (miou, lat) in enumerate([(0.4, 5.0), (0.6, 12.0), (0.5, 8.0), (0.3, 6.0)]):
        studies[0].add_trial(
            optuna.trial.create_trial(
                params={"n": k},
                distributions={"n": dist},
                values=[miou, lat],
                user_attrs={"arch_hash": f"h{k}", "latency_ms": lat},
            )
        )

    class Crash(Exception):
        pass

    calls = []
    real = studies[1].enqueue_trial

    def enqueue_then_crash(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise Crash  # the process dies between the two promotions of one step
        return real(*args, **kwargs)

    studies[1].enqueue_trial = enqueue_then_crash
    with pytest.raises(Crash):
        RungLadder(studies, eta=2, budget_ms=None).promote()
    assert len(studies[1].trials) == 1
    fresh = [optuna.load_study(study_name=s.study_name, storage=storage) for s in studies]
    added = RungLadder(fresh, eta=2, budget_ms=None).promote()
    assert len(added) == 1
    promoted = sorted(t.user_attrs["arch_hash"] for t in fresh[1].trials)
    assert promoted == ["h0", "h1"]  # the two ends of the front {h0, h2, h1}
    assert RungLadder(fresh, eta=2, budget_ms=None).promote() == []


def test_rung_recipes_are_checked_with_the_study(tmp_path):
    bad = write_study(tmp_path, rungs=[{"epochs": 0}, {"size": [8, 8], "lr": -1}], eta=1)
    with pytest.raises(ConfigError) as err:
        load_study_spec(bad)
    text = str(err.value)
    for needle in ("rungs[0].epochs", "rungs[1].size", "rungs[1].lr", "eta"):
        assert needle in text, (needle, text)
    budget = write_study(tmp_path, name="budget", rungs=RUNGS, mode="budget")
    assert load_study_spec(budget).mode == "budget"  # rungs in budget mode: promote by mIoU
    heldout = write_study(tmp_path, name="heldout", objective="heldout")
    with pytest.raises(ConfigError, match="objective: heldout scores trials on held-out"):
        load_study_spec(heldout)
