"""Studies shared by several ``jetsearch study`` processes through a real PostgreSQL server.

The server comes from ``JETSEARCH_TEST_POSTGRES_URL``; ``source .ci/postgres.sh`` starts a
throwaway one on loopback and sets it. Without it these tests skip and say so; under CI
(``CI=true``) they fail instead, so a CI run can never pass without them. Every test works in its
own study (a fresh name), so the database can be reused.

The studies are ``studies/local.yaml`` made tiny (tiny space, 8 synthetic training and 4
validation frames at 48x64, latency measured here at 64x64 with 5 runs). Heartbeats are shortened
to 1 s with a 2 s grace period (``JETSEARCH_HEARTBEAT_S``, ``JETSEARCH_HEARTBEAT_GRACE_S``).

Recovery on a server is jetsearch's own (``jetsearch.recovery``), as on a file: a dead trial is
failed with its ``outcome`` naming why and its network queued again once. Owners on another
host are simulated by owner records naming one, their heartbeats timed by the server's clock.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import types
import uuid
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from study_cases import write_study

import jetsearch.recovery
from jetsearch.cli import main
from jetsearch.recovery import (
    OWNER_DIED,
    TrialHeartbeat,
    live_trial_id,
    owner_of,
    recover_stale_trials,
    recovery_attrs,
    system_key,
)
from jetsearch.spec import StudyError
from jetsearch.storage import heartbeat_clock, heartbeat_settings, open_storage

REPO = Path(__file__).resolve().parents[2]
POSTGRES_ENV = "JETSEARCH_TEST_POSTGRES_URL"
HEARTBEAT_ENV = {"JETSEARCH_HEARTBEAT_S": "1", "JETSEARCH_HEARTBEAT_GRACE_S": "2"}
State = optuna.trial.TrialState


@pytest.fixture(scope="module")
def postgres_url() -> str:
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        reason = (
            f"{POSTGRES_ENV} is not set; `source .ci/postgres.sh` starts a throwaway PostgreSQL "
            "server on loopback and sets it"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and {reason}: the PostgreSQL tests must run under CI")
        pytest.skip(reason)
    try:
        import sqlalchemy

        engine = sqlalchemy.create_engine(url)
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text("SELECT 1"))
        engine.dispose()
    except Exception as err:  # set but unusable: a broken setup, never a reason to skip
        pytest.fail(f"{POSTGRES_ENV}={url} is set but the server does not answer: {err}")
    return url


def _study_process(study_file: Path, url: str, name: str, trials: int, log: Path):
    env = {**os.environ, **HEARTBEAT_ENV}
    command = [sys.executable, "-m", "jetsearch.cli", "study", "--target", str(study_file)]
    command += ["--storage", url, "--name", name, "--trials", str(trials), "--quiet"]
    return subprocess.Popen(
        command, cwd=REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT
    )


def _wait_for(condition: Callable[[], bool], timeout: float, what: str, *alive) -> None:
    deadline = time.time() + timeout
    while not condition():
        for process, log in alive:
            if process.poll() is not None:
                raise AssertionError(f"study process ended early:\n{log.read_text()[-3000:]}")
        if time.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


@pytest.mark.slow
def test_a_killed_process_fails_its_trial_and_the_other_finishes_the_study(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in HEARTBEAT_ENV.items():
        monkeypatch.setenv(key, value)
    name = f"shared-{uuid.uuid4().hex[:12]}"
    total = 6
    # Process A trains for up to two minutes per trial, so it is certainly mid-trial when it is
    # killed; process B trains one short epoch per trial.
    slow = write_study(tmp_path, "slow", train={"epochs": 1000, "time_budget_s": 120})
    fast = write_study(tmp_path, "fast")
    storage = open_storage(postgres_url)

    def trials() -> list[optuna.trial.FrozenTrial]:
        return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)

    def count(state: State) -> int:
        try:
            return sum(t.state == state for t in trials())
        except KeyError:  # the study does not exist yet
            return 0

    a_log, b_log = tmp_path / "a.log", tmp_path / "b.log"
    a = _study_process(slow, postgres_url, name, total, a_log)
    b = None
    try:
        _wait_for(lambda: count(State.RUNNING) == 1, 120, "process A's first trial", (a, a_log))
        (a_trial,) = (t.number for t in trials() if t.state == State.RUNNING)
        b = _study_process(fast, postgres_url, name, total, b_log)
        # Both processes share the study: B completes trials while A's trial is in flight.
        _wait_for(
            lambda: count(State.COMPLETE) >= 1,
            120,
            "process B's first trial",
            (a, a_log),
            (b, b_log),
        )
        before_kill = {
            t.number: (tuple(t.values), dict(t.user_attrs))
            for t in trials()
            if t.state == State.COMPLETE
        }
        states = {t.number: t.state for t in trials()}
        assert states[a_trial] == State.RUNNING
        # jetsearch's owner record and heartbeat, not Optuna's heartbeat, keep A's trial.
        assert owner_of(next(t for t in trials() if t.number == a_trial)).pid == a.pid
        a.send_signal(signal.SIGKILL)
        a.wait(timeout=30)
        killed_at = time.time()
        assert b.wait(timeout=240) == 0, b_log.read_text()[-3000:]
    finally:
        for process in (a, b):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()

    final = {t.number: t for t in trials()}
    # B failed A's trial after its next trial, by the pid rule (same host: A's pid is gone), and
    # the trial says so to whoever opens the dashboard, exactly as on a journal file ...
    failed = final[a_trial]
    assert failed.state == State.FAIL
    assert failed.datetime_complete.timestamp() >= killed_at - 1.0
    assert failed.user_attrs["failure_reason"] == OWNER_DIED
    assert failed.user_attrs["outcome"] == f"failed: {OWNER_DIED}"
    assert (
        failed.user_attrs["failure_detail"] == f"process {a.pid} on {socket.gethostname()} is gone"
    )
    # ... and queued its network again once, with the same parameters (no second retry by
    # Optuna's heartbeat callback, which the server storage no longer has).
    retries = [t for t in final.values() if t.user_attrs.get("retry_of") == a_trial]
    assert len(retries) == 1
    assert retries[0].user_attrs["retries"] == 1
    assert retries[0].system_attrs["fixed_params"] == failed.params
    assert retries[0].state in (State.COMPLETE, State.PRUNED, State.WAITING)
    if retries[0].state != State.WAITING:
        assert retries[0].params == failed.params
    assert not any("failed_trial" in t.system_attrs for t in final.values())
    # Nothing is left running, nothing else failed, and B stopped at the target exactly.
    assert [t.number for t in final.values() if t.state in (State.RUNNING, State.FAIL)] == [a_trial]
    finished = [t for t in final.values() if t.state in (State.COMPLETE, State.PRUNED)]
    assert len(finished) == total
    # Every completed value is intact: what was complete before the kill is unchanged, and every
    # complete trial holds its two objectives and the attributes they came from.
    for number, (values, attrs) in before_kill.items():
        assert final[number].state == State.COMPLETE
        assert tuple(final[number].values) == values
        assert final[number].user_attrs == attrs
    for trial in finished:
        if trial.state != State.COMPLETE:
            continue
        assert len(trial.values) == 2 and all(math.isfinite(v) for v in trial.values)
        assert trial.values[0] == trial.user_attrs["val_miou"]
        assert trial.values[1] == trial.user_attrs["latency_ms"]
        for key in (
            "arch_hash",
            "config_yaml",
            "params",
            "latency_median_ms",
            "latency_samples_ms",
            "per_class_iou",
        ):
            assert key in trial.user_attrs, (trial.number, key)
    optuna.delete_study(study_name=name, storage=storage)


def _remote_trial(study: optuna.Study, storage, beat: float) -> optuna.Trial:
    """A RUNNING trial with a network, whose owner record names a process on another host that
    last beat at ``beat`` (the server's clock), as a study process there writes it."""
    trial = study.ask()
    x = trial.suggest_float("x", 0.0, 1.0)
    trial.set_user_attr("outcome", "running")
    trial.set_user_attr("arch_hash", f"x={x}")
    _, trial_id = live_trial_id(trial)
    record = {
        "heartbeat": beat,
        "owner_host": f"not-{socket.gethostname()}",
        "owner_pid": 4242,
        "owner_start": "1@another-boot",
        "owner_pidns": None,
        "owner_trial": trial.number,
    }
    for key, value in record.items():
        storage.set_trial_system_attr(trial_id, system_key(key), value)
    return trial


@pytest.mark.slow
def test_a_postgres_storage_has_no_optuna_heartbeat_and_beats_by_the_servers_clock(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in HEARTBEAT_ENV.items():
        monkeypatch.setenv(key, value)
    storage = open_storage(postgres_url)
    # No Optuna heartbeat, whatever the settings: it would fail dead trials before jetsearch's
    # recovery could write why. The settings are jetsearch's heartbeat's.
    assert storage.heartbeat_interval is None and storage.grace_period is None
    assert heartbeat_settings() == (1, 2)
    clock = heartbeat_clock(storage)
    assert clock is not time.time and abs(clock() - time.time()) < 5  # the server's epoch s
    assert heartbeat_clock(open_storage(f"sqlite:///{tmp_path / 's.db'}")) is time.time
    assert heartbeat_clock(open_storage(str(tmp_path / "s.log"))) is time.time

    name = f"clock-{uuid.uuid4().hex[:12]}"
    study = optuna.create_study(storage=storage, study_name=name, direction="maximize")
    # This machine's clock an hour ahead of the server's: heartbeats are written and aged by
    # the server's clock, so a live owner elsewhere is still alive and a silent one is dead.
    real_time = time.time
    monkeypatch.setattr(
        jetsearch.recovery, "time", types.SimpleNamespace(time=lambda: real_time() + 3600)
    )
    beating = _remote_trial(study, storage, clock())
    silent = _remote_trial(study, storage, clock() - 60)
    mine = study.ask()
    with TrialHeartbeat(mine, interval_s=0.2, clock=clock) as heartbeat:
        recovered = recover_stale_trials(study, storage=storage, grace_s=30)
        time.sleep(0.5)
        beat = recovery_attrs(study.get_trials()[mine.number])["heartbeat"]
    assert heartbeat.beats >= 1 and heartbeat.last_error is None
    assert abs(beat - real_time()) < 5  # the server's time, not this machine's
    study.tell(mine, 1.0)

    assert [(r.number, r.reason, r.requeued) for r in recovered] == [
        (silent.number, OWNER_DIED, True)
    ]
    trials = {t.number: t for t in study.get_trials()}
    assert trials[beating.number].state == State.RUNNING
    assert trials[silent.number].state == State.FAIL
    assert trials[silent.number].user_attrs["outcome"] == f"failed: {OWNER_DIED}"
    assert "no heartbeat" in trials[silent.number].user_attrs["failure_detail"]
    [retry] = [t for t in trials.values() if t.state == State.WAITING]
    assert retry.user_attrs["retry_of"] == silent.number and retry.user_attrs["retries"] == 1
    assert retry.system_attrs["fixed_params"] == trials[silent.number].params
    assert recover_stale_trials(study, storage=storage, grace_s=30) == []
    optuna.delete_study(study_name=name, storage=storage)


@pytest.mark.slow
def test_processes_recovering_the_same_dead_trials_at_once_retry_each_once(
    postgres_url: str,
) -> None:
    storage = open_storage(postgres_url)
    clock = heartbeat_clock(storage)
    name = f"race-{uuid.uuid4().hex[:12]}"
    study = optuna.create_study(storage=storage, study_name=name, direction="maximize")
    dead = [_remote_trial(study, storage, clock() - 60).number for _ in range(4)]
    recoverers = 4
    barrier = threading.Barrier(recoverers)
    results: list[list] = [[] for _ in range(recoverers)]
    errors: list[BaseException] = []

    def recover(index: int) -> None:
        try:  # a storage of its own: its own connections, as another process has
            own = open_storage(postgres_url)
            own_study = optuna.load_study(study_name=name, storage=own)
            barrier.wait(timeout=60)
            results[index] = recover_stale_trials(own_study, storage=own, grace_s=30)
        except BaseException as err:  # reported below, in the test's thread
            errors.append(err)

    threads = [threading.Thread(target=recover, args=(i,)) for i in range(recoverers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors

    # Every dead trial failed by exactly one of them, and queued again exactly once.
    assert sorted(r.number for found in results for r in found) == dead
    trials = study.get_trials()
    for number in dead:
        assert trials[number].state == State.FAIL
        assert trials[number].user_attrs["outcome"] == f"failed: {OWNER_DIED}"
        retries = [t for t in trials if t.user_attrs.get("retry_of") == number]
        assert len(retries) == 1 and retries[0].state == State.WAITING
    assert len(trials) == 2 * len(dead)
    optuna.delete_study(study_name=name, storage=storage)


# ---------------------------------------------------------------------------------------------
# no server needed


def test_heartbeat_variables_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JETSEARCH_HEARTBEAT_S", raising=False)
    monkeypatch.delenv("JETSEARCH_HEARTBEAT_GRACE_S", raising=False)
    assert heartbeat_settings() == (20, 60)
    monkeypatch.setenv("JETSEARCH_HEARTBEAT_S", "5")
    assert heartbeat_settings() == (5, 15)
    monkeypatch.setenv("JETSEARCH_HEARTBEAT_S", "soon")
    with pytest.raises(StudyError, match=r"JETSEARCH_HEARTBEAT_S='soon': expected a whole"):
        heartbeat_settings()
    monkeypatch.setenv("JETSEARCH_HEARTBEAT_S", "5")
    monkeypatch.setenv("JETSEARCH_HEARTBEAT_GRACE_S", "5")
    with pytest.raises(StudyError, match="must be longer than JETSEARCH_HEARTBEAT_S=5"):
        heartbeat_settings()


def test_cli_refuses_several_processes_on_sqlite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    study_file = write_study(tmp_path, "sqlite-jobs")
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    args = ["study", "--target", str(study_file), "--storage", url, "--jobs", "2", "--quiet"]
    assert main(args) == 2
    message = capsys.readouterr().err
    assert "SQLite storage cannot be shared safely by several processes" in message
    assert "PostgreSQL" in message
