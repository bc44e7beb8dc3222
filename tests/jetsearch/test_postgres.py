"""Studies shared by several ``jetsearch study`` processes through a real PostgreSQL server.

The server comes from ``JETSEARCH_TEST_POSTGRES_URL``; ``source .ci/postgres.sh`` starts a
throwaway one on loopback and sets it. Without it these tests skip and say so; under CI
(``CI=true``) they fail instead, so a CI run can never pass without them. Every test works in its
own study (a fresh name), so the database can be reused.

The studies are ``studies/local.yaml`` made tiny (tiny space, 8 synthetic training and 4
validation frames at 48x64, latency measured here at 64x64 with 5 runs). Heartbeats are shortened
to 1 s with a 2 s grace period (``JETSEARCH_HEARTBEAT_S``, ``JETSEARCH_HEARTBEAT_GRACE_S``).
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from study_cases import write_study

from jetsearch.cli import main
from jetsearch.spec import StudyError
from jetsearch.storage import heartbeat_settings, open_storage

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
    # A's trial was failed once its heartbeats had been missing for the grace period ...
    failed = final[a_trial]
    assert failed.state == State.FAIL
    assert failed.datetime_complete.timestamp() >= killed_at + 0.9
    # ... and queued again (RetryFailedTrialCallback), with the same parameters.
    retries = [t for t in final.values() if t.system_attrs.get("failed_trial") == a_trial]
    assert len(retries) == 1
    assert retries[0].params == failed.params
    assert retries[0].state in (State.COMPLETE, State.PRUNED, State.WAITING)
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


@pytest.mark.slow
def test_heartbeat_settings_reach_the_postgres_storage(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in HEARTBEAT_ENV.items():
        monkeypatch.setenv(key, value)
    storage = open_storage(postgres_url)
    assert (storage.heartbeat_interval, storage.grace_period) == (1, 2)
    assert open_storage(postgres_url, heartbeat=False).heartbeat_interval is None
    monkeypatch.delenv("JETSEARCH_HEARTBEAT_S")
    monkeypatch.delenv("JETSEARCH_HEARTBEAT_GRACE_S")
    assert open_storage(postgres_url).heartbeat_interval == 20


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
