"""The soak benchmark's audit: what it counts as lost, stuck and duplicated."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def soak():
    sys.path.insert(0, str(BENCHMARKS))  # the script imports its sibling _machine
    try:
        spec = importlib.util.spec_from_file_location("soak", BENCHMARKS / "soak.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(BENCHMARKS))


def _trial(study, x, state, *, values=(0.5, 10.0), **attrs):
    study.enqueue_trial({"x": x})  # the ask gets exactly x
    trial = study.ask({"x": optuna.distributions.IntDistribution(0, 100)})
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    if state == TrialState.COMPLETE:
        study.tell(trial, list(values))
    elif state != TrialState.RUNNING:
        study.tell(trial, state=state)
    return trial.number


def _study(tmp_path, name="soak"):
    storage = str(tmp_path / "s.log")
    from jetsearch.storage import open_storage

    study = optuna.create_study(
        study_name=name, storage=open_storage(storage), directions=["maximize", "minimize"]
    )
    return storage, study


def test_a_dead_network_trained_again_is_not_lost(soak, tmp_path):
    storage, study = _study(tmp_path)
    _trial(study, 1, TrialState.FAIL, failure_reason="owner died")
    _trial(study, 1, TrialState.COMPLETE, retry_of=0, arch_hash="a")
    report = soak.audit(storage, soak.snapshot(storage), eta=3, budget_ms=1000)
    assert report["lost"] == [] and report["running"] == 0
    assert (report["died"], report["retried"], report["completed"]["soak"]) == (1, 1, 1)


def test_lost_stuck_and_changed_are_all_caught(soak, tmp_path):
    storage, study = _study(tmp_path)
    _trial(study, 1, TrialState.COMPLETE, arch_hash="a")
    seen = soak.snapshot(storage)
    seen[("soak", 0)] = (0.9, 1.0)  # a value the storage no longer holds
    _trial(study, 2, TrialState.FAIL, failure_reason="owner died")  # never trained again
    _trial(study, 3, TrialState.FAIL, failure_reason="owner died")  # then its retry died
    _trial(study, 3, TrialState.FAIL, failure_reason="owner died twice: given up", retry_of=2)
    _trial(study, 4, TrialState.RUNNING)
    report = soak.audit(storage, seen, eta=3, budget_ms=1000)
    assert report["running"] == 1 and report["given_up"] == 1 and report["died"] == 3
    assert len(report["lost"]) == 2
    assert "soak trial 0: COMPLETE (0.9, 1.0)" in report["lost"][0]
    assert report["lost"][1] == "soak trial 1: died; its last retry, trial 1, ended FAIL"


def test_a_trial_killed_while_sampling_had_no_network_to_lose(soak, tmp_path):
    storage, study = _study(tmp_path)
    for named in (False, True):  # sampled, not queued; the second finished sampling
        trial = study.ask()
        trial.suggest_int("x", 0, 100)
        if named:
            trial.set_user_attr("arch_hash", "b")
        trial.set_user_attr("failure_reason", "owner died")
        study.tell(trial, state=TrialState.FAIL)
    report = soak.audit(storage, {}, eta=3, budget_ms=1000)
    assert report["died"] == 2
    assert report["lost"] == ["soak trial 1: died; its last retry, trial 1, ended FAIL"]


def test_a_promotion_trained_twice_is_duplicated(soak, tmp_path):
    storage, study = _study(tmp_path)
    _trial(study, 1, TrialState.COMPLETE, arch_hash="a", latency_ms=5.0)
    _, upper = _study(tmp_path, "soak:rung1")
    for _ in range(2):
        _trial(upper, 1, TrialState.COMPLETE, arch_hash="a", promoted_from_trial=0)
    report = soak.audit(storage, {}, eta=3, budget_ms=1000)
    assert report["duplicated"] == 1
    assert report["completed"] == {"soak": 1, "soak:rung1": 2}
