"""The Ray Tune backend on a local Ray instance with 2 CPUs, running tiny trials.

The study is ``studies/local.yaml`` made tiny (tiny space, 8 synthetic training and 4 validation
frames at 48x64, one epoch, latency measured on this machine at 64x64 with 5 runs), stored in a
journal file in ``tmp_path``. Failures are injected by an objective wrapper (``ray_faults.py``).
"""

from __future__ import annotations

import dataclasses
import sys
import threading
import time
import warnings
from pathlib import Path

import optuna
import pytest
import study_cases
from ray_faults import InjectFaults

from jetsearch.distributed import (
    RAY_EXPERIMENT_ATTR,
    RAY_NAMESPACE,
    RAY_USER_ATTRS,
    experiment_dir,
    heartbeat,
    import_ray,
    latency_service_name,
    portable_spec,
    portable_storage,
    requeue_interrupted,
    run_study_ray,
    start_latency_service,
    trial_id_of,
)
from jetsearch.study import StudyError, load_study_spec, open_storage, run_study
from jetseg.config import dump_config

REPO = Path(__file__).resolve().parents[2]
COMPLETE = optuna.trial.TrialState.COMPLETE
PRUNED = optuna.trial.TrialState.PRUNED
FAIL = optuna.trial.TrialState.FAIL

try:
    import_ray()
    RAY_MISSING = None
except StudyError as err:
    RAY_MISSING = str(err)
needs_ray = pytest.mark.skipif(RAY_MISSING is not None, reason=RAY_MISSING or "")


def write_study(directory: Path, name: str = "tiny-ray", **changes) -> Path:
    return study_cases.write_study(directory, name, **changes)


@pytest.fixture(scope="module")
def local_ray():
    ray, _ = import_ray()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _trials(storage: Path, name: str) -> dict[int, optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=name, storage=open_storage(str(storage)))
    return {t.number: t for t in study.get_trials(deepcopy=False)}


# ---------------------------------------------------------------------------------------------
# a whole study on Ray


@needs_ray
def test_ray_study_stores_local_attributes_and_survives_failures(local_ray, tmp_path: Path) -> None:
    spec = load_study_spec(write_study(tmp_path))
    storage = tmp_path / "studies.log"
    # Trial 1 raises in its worker; trial 2's worker process dies on its first attempt (Tune
    # retries it); trial 3's dies on every attempt (retries exhausted).
    faults = InjectFaults({1: "raise", 2: "exit", 3: "exit-always"})
    seen: list[tuple[int, str]] = []
    run = run_study_ray(
        spec,
        trials=3,
        storage=str(storage),
        max_concurrent=2,
        cpus_per_trial=1,
        max_failures=1,
        storage_path=tmp_path / "ray",
        callbacks=[lambda study, trial: seen.append((trial.number, trial.state.name))],
        verbose=0,
        objective_wrapper=faults,
    )
    assert (run.finished_before, run.finished_after, run.interrupted) == (0, 3, False)
    assert run.latency_sources == "local"
    assert Path(run.experiment_path) == tmp_path / "ray" / "jetsearch-tiny-ray"

    trials = _trials(storage, "tiny-ray")
    assert sorted(trials) == [0, 1, 2, 3, 4]
    states = {n: t.state for n, t in trials.items()}
    assert states == {0: COMPLETE, 1: FAIL, 2: COMPLETE, 3: FAIL, 4: COMPLETE}
    assert trials[1].user_attrs["failure_reason"].startswith("InjectedFault: ")
    assert "died" in trials[3].user_attrs["failure_reason"]
    assert trials[3].user_attrs["ray_attempt"] == 2  # the first run and its one retry
    assert trials[2].user_attrs["ray_attempt"] == 2  # retried after its process died
    assert trials[0].user_attrs["ray_attempt"] == 1
    # The study callbacks saw every trial once, in its final state.
    assert sorted(seen) == sorted((n, t.state.name) for n, t in trials.items())

    from jetsearch.space import load_space

    space = load_space(spec.space)
    for number in (0, 2, 4):
        trial = trials[number]
        assert len(trial.values) == 2
        assert trial.values[0] == trial.user_attrs["val_miou"]
        assert trial.values[1] == trial.user_attrs["latency_ms"]
        assert trial.user_attrs["latency_source"] == "measured-local"
        assert trial.constraints == {"latency_ms": trial.values[1] - 1000}
        # The stored params rebuild exactly the network the worker trained.
        rebuilt = space.sample(optuna.trial.FixedTrial(trial.params, number=number))
        assert dump_config(rebuilt) == trial.user_attrs["config_yaml"]

    # A local run of the same spec stores the same attributes, less the three Ray ones.
    run_study(spec, trials=1, storage=str(storage), name="tiny-local")
    (local,) = _trials(storage, "tiny-local").values()
    assert local.state == COMPLETE
    ray_keys = set(trials[0].user_attrs)
    assert set(local.user_attrs) <= ray_keys
    assert ray_keys - set(local.user_attrs) == set(RAY_USER_ATTRS)

    # The same call again finds the study complete and adds nothing.
    again = run_study_ray(
        spec,
        trials=3,
        storage=str(storage),
        storage_path=tmp_path / "ray",
        verbose=0,
    )
    assert (again.finished_before, again.finished_after) == (3, 3)
    assert sorted(_trials(storage, "tiny-ray")) == [0, 1, 2, 3, 4]
    # Restoring the saved Tune experiment (searcher and recorder unpickled) with a larger target
    # runs exactly the missing trial.
    resumed = run_study_ray(
        spec,
        trials=4,
        storage=str(storage),
        storage_path=tmp_path / "ray",
        resume=True,
        verbose=0,
    )
    assert (resumed.resumed, resumed.finished_before, resumed.finished_after) == (True, 3, 4)
    trials = _trials(storage, "tiny-ray")
    assert sorted(trials) == [0, 1, 2, 3, 4, 5]
    assert trials[5].state == COMPLETE and trials[5].user_attrs["ray_attempt"] == 1


@needs_ray
def test_budget_mode_runs_asha_on_per_epoch_miou(local_ray, tmp_path: Path) -> None:
    spec = load_study_spec(write_study(tmp_path, "tiny-budget", mode="budget", train={"epochs": 2}))
    storage = tmp_path / "studies.log"
    run = run_study_ray(
        spec,
        trials=2,
        storage=str(storage),
        max_concurrent=2,
        storage_path=tmp_path / "ray",
        verbose=0,
    )
    assert run.finished_after == 2
    trials = _trials(storage, "tiny-budget")
    assert {t.state for t in trials.values()} <= {COMPLETE, PRUNED}
    for trial in trials.values():
        # Every evaluated epoch reached the storage as an intermediate value.
        assert sorted(trial.intermediate_values) in ([1], [1, 2])
        if trial.state == COMPLETE:
            assert sorted(trial.intermediate_values) == [1, 2]
            assert trial.values[0] == max(trial.intermediate_values.values())
        else:
            assert "ASHA" in trial.user_attrs["pruned_reason"]


@needs_ray
def test_latency_service_measures_one_network_at_a_time(local_ray, tmp_path: Path) -> None:
    import torch

    from jetseg.export import export_onnx
    from jetseg.model import build_model

    spec = portable_spec(load_study_spec(write_study(tmp_path, "tiny-latency")))
    service = start_latency_service(spec)
    config = load_space_config(spec)
    torch.manual_seed(0)
    onnx_bytes = export_onnx(build_model(config), input_size=(64, 64))
    # Four measurements asked at once, from the driver: the actor must run them in turn.
    answers = local_ray.get([service.measure.remote(onnx_bytes, config) for _ in range(4)])
    assert all(result.median_ms > 0 for result, _ in answers)
    intervals = sorted(local_ray.get(service.intervals.remote()))
    assert len(intervals) == 4
    for (_, end), (start, _) in zip(intervals, intervals[1:], strict=False):
        assert start >= end
    # Trials reach the same actor by name.
    same = local_ray.get_actor(latency_service_name(spec), namespace=RAY_NAMESPACE)
    assert len(local_ray.get(same.intervals.remote())) == 4


def load_space_config(spec):
    from jetsearch.space import load_space

    return load_space(spec.space).random_configs(1, seed=0)[0]


# ---------------------------------------------------------------------------------------------
# refusals and path handling (no Ray instance needed)


@needs_ray
def test_resume_without_an_experiment_says_where_it_looked(tmp_path: Path) -> None:
    spec = load_study_spec(write_study(tmp_path))
    with pytest.raises(StudyError, match="nothing to resume") as err:
        run_study_ray(
            spec,
            trials=1,
            storage=str(tmp_path / "s.log"),
            resume=True,
            storage_path=tmp_path / "ray",
        )
    assert str(experiment_dir("tiny-ray", tmp_path / "ray")) in str(err.value)


@needs_ray
def test_bad_arguments_are_refused_with_the_rule(tmp_path: Path) -> None:
    spec = load_study_spec(write_study(tmp_path))
    with pytest.raises(StudyError, match=r"cpus_per_trial=0 must be > 0.*max_concurrent=0"):
        run_study_ray(spec, trials=1, cpus_per_trial=0, max_concurrent=0)
    with pytest.raises(StudyError, match="SQLite storage cannot be shared"):
        run_study_ray(spec, trials=1, storage=f"sqlite:///{tmp_path}/s.db", max_concurrent=2)
    with pytest.raises(StudyError, match="only budget mode has"):
        run_study_ray(spec, trials=1, storage=str(tmp_path / "s.log"), scheduler="asha")


def test_trials_of_a_stopped_driver_are_failed_and_queued_again(tmp_path: Path) -> None:
    storage = open_storage(str(tmp_path / "s.log"))
    study = optuna.create_study(storage=storage, study_name="orphans")
    distributions = {"x": optuna.distributions.FloatDistribution(0, 1)}
    ours, other, done = study.ask(distributions), study.ask(distributions), study.ask(distributions)
    for trial, key in ((ours, "host:/ray/a"), (other, "host:/ray/b"), (done, "host:/ray/a")):
        trial_id = trial_id_of(storage, "orphans", trial.number)
        storage.set_trial_system_attr(trial_id, RAY_EXPERIMENT_ATTR, key)
    study.tell(done, 0.5)

    assert requeue_interrupted(storage, "orphans", "host:/ray/a") == [ours.number]
    trials = {t.number: t for t in study.get_trials()}
    assert trials[ours.number].state == FAIL
    assert "queued again" in trials[ours.number].user_attrs["failure_reason"]
    assert trials[other.number].state == optuna.trial.TrialState.RUNNING  # another experiment's
    assert trials[done.number].state == COMPLETE
    (retry,) = [t for t in trials.values() if t.state == optuna.trial.TrialState.WAITING]
    assert retry.params == trials[ours.number].params
    assert retry.system_attrs["failed_trial"] == ours.number
    assert retry.system_attrs["retry_history"] == [ours.number]
    # The queued copy is what the next ask() runs, with the same parameters.
    assert study.ask(distributions).params == retry.params
    assert requeue_interrupted(storage, "orphans", "host:/ray/a") == []


def test_heartbeat_beats_while_the_trial_runs_and_stops_after(tmp_path: Path) -> None:
    # A real RDB storage with a 1 s heartbeat: a beating trial is live; once the beats stop,
    # the grace period over, any process of the study fails it.
    url = f"sqlite:///{tmp_path / 'beats.db'}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", "Heartbeat of storage is supposed to be used")
        storage = optuna.storages.RDBStorage(url, heartbeat_interval=1, grace_period=2)
        study = optuna.create_study(storage=storage, study_name="beats")
        trial_id = trial_id_of(storage, "beats", study.ask().number)
        with heartbeat(storage, trial_id):
            time.sleep(3.5)
            optuna.storages.fail_stale_trials(study)
            assert study.trials[0].state == optuna.trial.TrialState.RUNNING
        time.sleep(3.5)
        optuna.storages.fail_stale_trials(study)
    assert study.trials[0].state == FAIL
    # A journal file has no heartbeat: nothing beats, nothing fails.
    journal = open_storage(str(tmp_path / "s.log"))
    study = optuna.create_study(storage=journal, study_name="quiet")
    threads = threading.active_count()
    with heartbeat(journal, trial_id_of(journal, "quiet", study.ask().number)):
        assert threading.active_count() == threads


def test_fault_injection_rejects_unknown_kinds() -> None:
    faults = {1: "raise", 2: "exit", 13: "exit-always"}
    assert InjectFaults(faults).faults == faults
    assert InjectFaults({}).faults == {}
    with pytest.raises(ValueError, match=r"'explode' must be .* one of raise, exit, exit-always"):
        InjectFaults({1: "raise", 2: "explode"})
    with pytest.raises(ValueError, match=r"fault 'x'"):
        InjectFaults({"x": "raise"})


def test_paths_become_absolute_for_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "myspace.yaml").write_text((REPO / "space" / "tiny.yaml").read_text())
    spec = load_study_spec(write_study(tmp_path))
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
    assert portable_storage("studies.log") == str(tmp_path / "studies.log")
    assert portable_storage("sqlite:///s.db") == f"sqlite:///{tmp_path / 's.db'}"
    assert portable_storage("sqlite:////abs/s.db") == "sqlite:////abs/s.db"
    url = "postgresql+psycopg2://u@db:5432/studies"
    assert portable_storage(url) == url


def test_missing_ray_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # what an environment without Ray looks like
    with pytest.raises(StudyError, match=r"pip install 'jetsearch\[ray\]'"):
        import_ray()
