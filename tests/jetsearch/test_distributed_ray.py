"""The Ray backend on a local Ray instance with 2 CPUs, running tiny trials.

The study is ``studies/local.yaml`` made tiny (``study_cases.write_study``: tiny space, 8
synthetic training and 4 validation frames at 48x64, one epoch, latency measured on this
machine at 64x64 with 5 runs) with two rungs, stored in a journal file in ``tmp_path``. Ray
places the trial processes; they coordinate through the storage as ``--jobs`` processes do.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
from study_cases import (
    check_promotions,
    needs_ray,
    write_study,
)

from jetsearch.cli import EXIT_OK, main
from jetsearch.distributed import (
    RAY_NAMESPACE,
    RayOptions,
    import_ray,
    latency_service_name,
    portable_spec,
    run_study_ray,
    start_latency_service,
)
from jetsearch.recovery import OWNER_DIED, owner_of
from jetsearch.rungs import rung_study_name
from jetsearch.spec import StudyError, load_study_spec
from jetsearch.storage import open_storage

REPO = Path(__file__).resolve().parents[2]
RUNGS = [{"epochs": 1, "size": [32, 48]}, {"epochs": 1, "size": [48, 64]}]
RUNNING = optuna.trial.TrialState.RUNNING
COMPLETE = optuna.trial.TrialState.COMPLETE
FAIL = optuna.trial.TrialState.FAIL
PRUNED = optuna.trial.TrialState.PRUNED


def _ladder(storage: Path, name: str) -> list[optuna.Study]:
    opened = open_storage(str(storage))
    return [optuna.load_study(study_name=rung_study_name(name, k), storage=opened) for k in (0, 1)]


def _kill_a_trial_mid_training(storage: Path, name: str, driver: threading.Thread):
    """SIGKILL the worker process of the first rung-0 trial that has sampled its network (so
    it has one to train again) while it runs; returns that trial."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and driver.is_alive():
        time.sleep(0.02)
        try:
            running = _ladder(storage, name)[0].get_trials(states=(RUNNING,))
        except KeyError:  # the rung studies are not created yet
            continue
        with_network = [t for t in running if "arch_hash" in t.user_attrs and owner_of(t)]
        for trial in with_network:
            owner = owner_of(trial)
            assert owner is not None and owner.pid != os.getpid()  # a Ray worker's trial
            os.kill(owner.pid, signal.SIGKILL)
            return trial
    raise AssertionError("no trial was seen running with its network sampled")


@pytest.mark.slow
@needs_ray
def test_a_ray_study_with_rungs_promotes_and_recovers_a_killed_worker(
    local_ray, tmp_path: Path
) -> None:
    spec = load_study_spec(write_study(tmp_path, "tiny-ray", rungs=RUNGS, eta=2))
    storage = tmp_path / "studies.log"
    seen: list[tuple[int, str]] = []
    runs: list = []
    errors: list[BaseException] = []

    def drive() -> None:
        try:
            runs.append(
                run_study_ray(
                    spec,
                    trials=4,
                    storage=str(storage),
                    options=RayOptions(workers=2, cpus_per_worker=1, verbose=0),
                    callbacks=[lambda study, trial: seen.append((trial.number, trial.state.name))],
                )
            )
        except BaseException as err:  # reported by the test, not lost in the thread
            errors.append(err)

    driver = threading.Thread(target=drive, daemon=True)
    driver.start()
    killed = _kill_a_trial_mid_training(storage, "tiny-ray", driver)
    driver.join(timeout=600)
    assert not driver.is_alive() and not errors, errors
    (run,) = runs
    assert (run.finished_before, run.interrupted, run.latency_sources) == (0, False, "local")
    assert run.finished_after >= 4

    rung0, rung1 = _ladder(storage, "tiny-ray")
    trials = rung0.get_trials() + rung1.get_trials()
    assert not [t.number for t in trials if t.state == RUNNING]  # nothing left stuck
    # The killed trial failed as its owner died, and a retry trained the same network.
    dead = rung0.trials[killed.number]
    assert dead.state == FAIL and dead.user_attrs["failure_reason"] == OWNER_DIED
    (retry,) = [t for t in rung0.trials if t.user_attrs.get("retry_of") == killed.number]
    assert retry.state == COMPLETE and retry.params == dead.params
    assert retry.user_attrs["arch_hash"] == dead.user_attrs["arch_hash"]
    # Promotions as a local study makes them: rung-1 trials of rung-0 networks, none twice.
    assert rung1.get_trials(states=(COMPLETE,))
    check_promotions(storage, eta=2, name="tiny-ray")
    # The driver heard every finished trial of both rungs once.
    assert len(seen) == len([t for t in trials if t.state.is_finished()])

    # The same call again finds the study complete and adds nothing.
    again = run_study_ray(spec, trials=4, storage=str(storage), options=RayOptions(workers=2))
    assert (again.finished_before, again.finished_after) == (run.finished_after,) * 2
    assert len(_ladder(storage, "tiny-ray")[0].trials) == len(rung0.trials)


@pytest.mark.slow
@needs_ray
def test_the_cli_runs_a_study_with_rungs_on_ray(
    local_ray, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    study_file = write_study(tmp_path, "tiny-cli", rungs=RUNGS, eta=2)
    storage = tmp_path / "studies.log"
    argv = ["study", "--target", str(study_file), "--trials", "2", "--storage", str(storage)]
    assert main([*argv, "--backend", "ray", "--max-concurrent", "2"]) == EXIT_OK
    out = capsys.readouterr().out
    rung0, rung1 = _ladder(storage, "tiny-cli")
    # Two processes may finish a trial each at the same moment: a third can be under way.
    assert len(rung0.get_trials(states=(COMPLETE,))) >= 2
    # Every promotion is trained. Two processes that saw one promotion waiting both open a
    # rung-1 trial; the one that finds it taken prunes its own (jetsearch.objective).
    states = [(t.number, t.state.name, t.user_attrs.get("outcome")) for t in rung1.trials]
    promoted = [t for t in rung1.trials if "promoted_from_trial" in t.user_attrs]
    assert promoted and {t.state for t in promoted} == {COMPLETE}, states
    for t in rung1.trials:
        if t not in promoted:
            assert t.state == PRUNED, states
            assert t.user_attrs["pruned_reason"] == "no promoted network was waiting at this rung"
    finished = len(rung0.trials) + len(rung1.trials)
    assert out.count(" trained, ETA ") == finished, out  # the driver's line per trial
    assert "latency from: local" in out and "rung 1" in out


@pytest.mark.slow
@needs_ray
def test_latency_service_measures_one_network_at_a_time(local_ray, tmp_path: Path) -> None:
    import torch

    from jetsearch.space import load_space
    from jetseg.export import export_onnx
    from jetseg.model import build_model

    spec = portable_spec(load_study_spec(write_study(tmp_path, "tiny-latency")))
    service = start_latency_service(spec)
    config = load_space(spec.space).random_configs(1, seed=0)[0]
    torch.manual_seed(0)
    onnx_bytes = export_onnx(build_model(config), input_size=(64, 64))
    # Four measurements asked at once, from the driver: the actor must run them in turn.
    answers = local_ray.get([service.measure.remote(onnx_bytes, config) for _ in range(4)])
    assert all(result.median_ms > 0 for result, _ in answers)
    intervals = sorted(local_ray.get(service.intervals.remote()))
    assert len(intervals) == 4
    for (_, end), (start, _) in zip(intervals, intervals[1:], strict=False):
        assert start >= end
    # Workers reach the same actor by name.
    same = local_ray.get_actor(latency_service_name(spec), namespace=RAY_NAMESPACE)
    assert len(local_ray.get(same.intervals.remote())) == 4


# ---------------------------------------------------------------------------------------------
# refusals and path handling (no Ray instance needed)


@needs_ray
def test_bad_arguments_are_refused_with_the_rule(tmp_path: Path) -> None:
    spec = load_study_spec(write_study(tmp_path, "tiny-ray"))
    storage = tmp_path / "s.log"
    with pytest.raises(StudyError, match=r"workers=0 must be >= 1; cpus_per_worker=0 must be"):
        RayOptions(workers=0, cpus_per_worker=0)
    with pytest.raises(StudyError, match=r"trials=0 must be >= 1"):
        run_study_ray(spec, trials=0, storage=str(storage))
    with pytest.raises(StudyError, match="SQLite storage cannot be shared"):
        run_study_ray(spec, trials=1, storage=f"sqlite:///{tmp_path}/s.db", options=RayOptions(2))
    assert not storage.exists() and not (tmp_path / "s.db").exists()  # refused before opening


def test_paths_become_absolute_for_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "myspace.yaml").write_text((REPO / "space" / "tiny.yaml").read_text())
    spec = load_study_spec(write_study(tmp_path, "tiny-ray"))
    spec = dataclasses.replace(
        spec,
        space="myspace.yaml",
        data="camvid",
        latency=dataclasses.replace(spec.latency, cache="cache/lat.sqlite", token_file="tok"),
    )
    portable = portable_spec(spec)
    assert portable.space == str(tmp_path / "myspace.yaml")
    assert portable.data == str(tmp_path / "camvid")
    assert portable.latency.cache == str(tmp_path / "cache" / "lat.sqlite")
    assert portable.latency.token_file == str(tmp_path / "tok")
    assert portable_spec(dataclasses.replace(spec, space="tiny")).space == "tiny"  # a name


def test_missing_ray_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # what an environment without Ray looks like
    with pytest.raises(StudyError, match=r"pip install 'jetsearch\[ray\]'"):
        import_ray()
