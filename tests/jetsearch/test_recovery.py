"""Stale-trial recovery with real processes on real storages: no trial stays RUNNING for ever.

Study processes are ``recovery_driver.py`` (beside this file), started, ``kill -9``ed,
interrupted with SIGINT and started again on a journal file or a SQLite file in ``tmp_path``;
the storage is read back from this process. Heartbeats beat every 0.2 s, the grace is 1 s.
Owner records and heartbeats are system attributes; a study written by an older version, with
them among the user attributes, is recovered too.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState
from recovery_driver import open_storage

from jetsearch.recovery import (
    GIVEN_UP,
    HEARTBEAT_KEY,
    INTERRUPTED,
    OWNER_DIED,
    OWNER_KEYS,
    TrialHeartbeat,
    death_cause,
    live_trial_id,
    mark_interrupted,
    owner_of,
    recover_stale_trials,
    recovery_attrs,
    system_key,
)

REPO = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).with_name("recovery_driver.py")
STUDY = "recovery"
HAS_PROC = Path("/proc/self/stat").exists() and Path("/proc/sys/kernel/random/boot_id").exists()
needs_proc = pytest.mark.skipif(not HAS_PROC, reason="the pid rule needs Linux's /proc")


def storage_url(tmp_path: Path, kind: str) -> str:
    """A new storage; a SQLite schema is made here, so no reader races a driver making it."""
    if kind == "journal":
        return str(tmp_path / "study.log")
    url = f"sqlite:///{tmp_path}/study.db"
    open_storage(url, None).remove_session()
    return url


def start(url: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, str(DRIVER), url, "--study", STUDY, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Ctrl-C as a terminal delivers it, also when the suite itself runs as a background job
        # (which starts its children with SIGINT ignored).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def finish(proc: subprocess.Popen, timeout: float = 60) -> tuple[int, list[dict]]:
    """Wait for a driver; its return code and the trials it recovered at start."""
    code, lines = finish_lines(proc, timeout)
    return code, lines["RECOVERED"]


def finish_lines(proc: subprocess.Popen, timeout: float = 60) -> tuple[int, dict[str, object]]:
    """Wait for a driver; its return code and its ``RECOVERED`` / ``MARKED`` lines, decoded."""
    out, err = proc.communicate(timeout=timeout)
    lines = {}
    for line in out.splitlines():
        key, _, value = line.partition(" ")
        if key in ("RECOVERED", "MARKED"):
            lines[key] = json.loads(value)
    assert "RECOVERED" in lines, f"no RECOVERED line (exit {proc.returncode}):\n{err}"
    assert proc.returncode in (0, 130, -signal.SIGKILL), f"exit {proc.returncode}:\n{err}"
    return proc.returncode, lines


def run(url: str, *args: str) -> list[dict]:
    """Run a driver to the end; what it recovered at start."""
    code, recovered = finish(start(url, *args))
    assert code == 0
    return recovered


def read(url: str) -> dict[int, FrozenTrial]:
    study = optuna.load_study(study_name=STUDY, storage=open_storage(url, None))
    return {t.number: t for t in study.get_trials()}


def wait_for(
    url: str,
    proc: subprocess.Popen,
    ready: Callable[[dict[int, FrozenTrial]], bool],
    timeout: float = 60,
) -> dict[int, FrozenTrial]:
    """Poll the storage until ``ready(trials)``; fail if the driver exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            trials = read(url)
        except KeyError:  # the driver has not created the study yet
            trials = {}
        if trials and ready(trials):
            return trials
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"driver exited with {proc.returncode} first:\n{out}\n{err}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail("timed out waiting for the study to get there")


def owned_running(trials: dict[int, FrozenTrial]) -> list[FrozenTrial]:
    """RUNNING trials with their own owner record and a whole network (parameters sampled and
    ``arch_hash`` written: a kill before that leaves no network to queue again)."""
    return [
        t
        for t in trials.values()
        if t.state == TrialState.RUNNING
        and owner_of(t) is not None
        and t.params
        and "arch_hash" in t.user_attrs
    ]


def kill_when(url: str, proc: subprocess.Popen, ready, settle_s: float = 0.0) -> FrozenTrial:
    """``kill -9`` the driver ``settle_s`` after ``ready``; the one trial it left RUNNING."""
    wait_for(url, proc, ready)
    time.sleep(settle_s)
    proc.kill()
    proc.wait()  # reaped: the pid is gone, not a zombie
    proc.stdout.close()
    proc.stderr.close()
    left = [t for t in read(url).values() if t.state == TrialState.RUNNING]
    assert len(left) == 1 and left[0].params, f"expected one sampled RUNNING trial, got {left}"
    return left[0]


def stat_fields(pid: int | str) -> list[str]:
    """``/proc/<pid>/stat`` from field 3 (the state) on; field 22, the start time, is [19]."""
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()


def sample(trial: optuna.Trial) -> float:
    """Sample the trial's one-parameter "network" and name it, as the study objective does."""
    x = trial.suggest_float("x", 0.0, 1.0)
    trial.set_user_attr("arch_hash", f"x={x}")
    return x


def by_state(trials: dict[int, FrozenTrial], state: TrialState) -> list[FrozenTrial]:
    return [t for t in trials.values() if t.state == state]


def write_record(trial: optuna.Trial, record: dict[str, object], *, legacy: bool = False) -> None:
    """An owner record (and heartbeat) with the given values, where this version writes them
    (system attributes) or, ``legacy``, where older versions did (user attributes)."""
    storage, trial_id = live_trial_id(trial)
    for key, value in record.items():
        if legacy:
            trial.set_user_attr(key, value)
        else:
            storage.set_trial_system_attr(trial_id, system_key(key), value)


def assert_failed(trial: FrozenTrial, reason: str) -> None:
    """FAIL with ``reason``, which its outcome names too; no bookkeeping among what a user reads."""
    assert trial.state == TrialState.FAIL
    assert trial.user_attrs["failure_reason"] == reason
    assert trial.user_attrs["outcome"] == f"failed: {reason}"
    assert not {*OWNER_KEYS, HEARTBEAT_KEY} & set(trial.user_attrs)


# ---------------------------------------------------------------------------------------------
# kill -9, then run again


@needs_proc
@pytest.mark.parametrize("kind", ["journal", "sqlite"])
@pytest.mark.slow
def test_a_killed_trial_is_failed_and_its_network_trained_again(tmp_path, kind):
    url = storage_url(tmp_path, kind)
    first = start(url, "--trials", "4", "--sleep", "1.0")
    dead = kill_when(
        url,
        first,
        lambda ts: len(by_state(ts, TrialState.COMPLETE)) >= 1 and owned_running(ts),
    )
    before = {
        t.number: (t.params, t.values, t.datetime_complete)
        for t in by_state(read(url), TrialState.COMPLETE)
    }

    recovered = run(url, "--trials", "4", "--sleep", "0.05")

    assert [(r["number"], r["reason"], r["requeued"]) for r in recovered] == [
        (dead.number, OWNER_DIED, True)
    ]
    assert "is gone" in recovered[0]["cause"]
    after = read(url)
    assert not by_state(after, TrialState.RUNNING) and not by_state(after, TrialState.WAITING)
    assert_failed(after[dead.number], OWNER_DIED)
    assert after[dead.number].user_attrs["failure_detail"] == recovered[0]["cause"]
    retries = [t for t in after.values() if t.user_attrs.get("retry_of") == dead.number]
    assert len(retries) == 1
    retry = retries[0]
    assert retry.state == TrialState.COMPLETE and retry.params == dead.params
    assert retry.user_attrs["retries"] == 1 and retry.values == [dead.params["x"]]
    for number, (params, values, completed) in before.items():
        t = after[number]
        assert (t.state, t.params, t.values, t.datetime_complete) == (
            TrialState.COMPLETE,
            params,
            values,
            completed,
        )
    assert len(by_state(after, TrialState.COMPLETE)) == 4


@needs_proc
@pytest.mark.slow
def test_a_network_that_kills_its_process_twice_is_given_up(tmp_path):
    url = storage_url(tmp_path, "journal")
    bomb = "13.0"
    # 1st run: the bomb (enqueued first) kills its own process. 2nd: recovered, queued again,
    # run again, kills the process again. 3rd: given up, and the study runs to its end.
    for _ in range(2):
        code, _ = finish(start(url, "--trials", "2", "--sleep", "0.05", "--bomb", bomb))
        assert code == -signal.SIGKILL
    recovered = run(url, "--trials", "2", "--sleep", "0.05", "--bomb", bomb)

    trials = read(url)
    assert_failed(trials[0], OWNER_DIED)
    assert_failed(trials[1], GIVEN_UP)
    assert trials[1].user_attrs["retry_of"] == 0 and trials[1].user_attrs["retries"] == 1
    assert [(r["number"], r["reason"], r["requeued"]) for r in recovered] == [(1, GIVEN_UP, False)]
    assert [t.number for t in trials.values() if t.params.get("x") == float(bomb)] == [0, 1]
    assert not by_state(trials, TrialState.RUNNING) and not by_state(trials, TrialState.WAITING)
    assert len(by_state(trials, TrialState.COMPLETE)) == 2


@needs_proc
@pytest.mark.slow
def test_a_process_sharing_the_study_recovers_a_killed_one_while_it_runs(tmp_path):
    url = storage_url(tmp_path, "journal")
    doomed = start(url, "--trials", "8", "--sleep", "2.0")
    survivor = start(url, "--trials", "8", "--sleep", "0.3")

    def both_running(trials: dict[int, FrozenTrial]) -> bool:
        return {owner_of(t).pid for t in owned_running(trials)} == {doomed.pid, survivor.pid}

    wait_for(url, survivor, both_running)
    trials = read(url)
    [dead] = [t for t in owned_running(trials) if owner_of(t).pid == doomed.pid]
    doomed.kill()
    doomed.wait()
    doomed.stdout.close()
    doomed.stderr.close()
    code, _ = finish(survivor)  # recovers after each of its trials (StaleTrialRecovery)

    assert code == 0
    after = read(url)
    assert_failed(after[dead.number], OWNER_DIED)
    [retry] = [t for t in after.values() if t.user_attrs.get("retry_of") == dead.number]
    assert retry.state == TrialState.COMPLETE and retry.params == dead.params
    assert owner_of(retry).pid == survivor.pid
    assert not by_state(after, TrialState.RUNNING) and not by_state(after, TrialState.WAITING)
    assert len(by_state(after, TrialState.COMPLETE)) == 8


@needs_proc
@pytest.mark.slow
def test_a_live_owner_is_never_recovered_by_another_process(tmp_path):
    url = storage_url(tmp_path, "journal")
    release = tmp_path / "release"
    holder = start(url, "--trials", "3", "--sleep", "0", "--hold", str(release))
    trials = wait_for(url, holder, owned_running)
    held = owned_running(trials)[0]
    # Older than the grace period before the second process looks at it.
    time.sleep(max(0.0, 1.2 - (time.time() - held.datetime_start.timestamp())))

    recovered = run(url, "--trials", "2", "--sleep", "0.1")  # recovers at start and per trial

    assert recovered == []
    now = read(url)[held.number]
    assert now.state == TrialState.RUNNING and "failure_reason" not in now.user_attrs
    assert time.time() - now.system_attrs[system_key(HEARTBEAT_KEY)] < 1.0  # still beating
    release.touch()
    code, _ = finish(holder)
    assert code == 0
    done = read(url)[held.number]
    assert done.state == TrialState.COMPLETE and "failure_reason" not in done.user_attrs
    assert len(by_state(read(url), TrialState.COMPLETE)) == 3


@pytest.mark.slow
def test_ctrl_c_fails_the_trial_as_interrupted_and_queues_it_once(tmp_path):
    url = storage_url(tmp_path, "journal")
    proc = start(url, "--trials", "3", "--sleep", "5")
    wait_for(url, proc, owned_running)
    # Let its last write finish: Optuna 5.0's journal lock turns a Ctrl-C landing inside its
    # release() into a FileNotFoundError; after the sampling the trial only sleeps.
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    code, lines = finish_lines(proc)
    assert code == 130

    trials = read(url)
    [stopped] = [t for t in trials.values() if t.user_attrs.get("failure_reason") == INTERRUPTED]
    assert_failed(stopped, INTERRUPTED)
    # TrialHeartbeat queued it on the interrupt; mark_interrupted, called after optimize
    # re-raised, found it failed and queued already.
    assert lines["MARKED"]["number"] == stopped.number and not lines["MARKED"]["requeued"]
    [waiting] = by_state(trials, TrialState.WAITING)
    assert waiting.user_attrs == {
        "arch_hash": stopped.user_attrs["arch_hash"],
        "retry_of": stopped.number,
        "retries": 1,
    }

    assert run(url, "--trials", "3", "--sleep", "0.05") == []
    after = read(url)
    [retry] = [t for t in after.values() if t.user_attrs.get("retry_of") == stopped.number]
    assert retry.state == TrialState.COMPLETE and retry.params == stopped.params


# ---------------------------------------------------------------------------------------------
# Optuna's own heartbeat on an RDB storage, alongside (as a caller may open one, and as older
# versions opened PostgreSQL)


@needs_proc
@pytest.mark.parametrize("first", ["recovery", "optuna"])
@pytest.mark.slow
def test_optuna_heartbeat_and_recovery_retry_a_death_once(tmp_path, first):
    url = storage_url(tmp_path, "sqlite")
    proc = start(url, "--trials", "2", "--sleep", "5", "--optuna-heartbeat", "1")
    # Optuna never fails a trial that died before its first beat: let it beat (every 1 s).
    dead = kill_when(url, proc, owned_running, settle_s=1.5)
    storage = open_storage(url, 1)
    study = optuna.load_study(study_name=STUDY, storage=storage)

    with warnings.catch_warnings():  # experimental; ask() beside Optuna's heartbeat warns
        warnings.simplefilter("ignore")
        if first == "recovery":
            assert [r.number for r in recover_stale_trials(study, storage=storage, grace_s=1)] == [
                dead.number
            ]
            # Past Optuna's grace (2 s, measured in SQLite's whole seconds): it would be stale.
            time.sleep(3.5)
            optuna.storages.fail_stale_trials(study)
        else:
            deadline = time.monotonic() + 10
            while study.get_trials()[dead.number].state == TrialState.RUNNING:
                assert time.monotonic() < deadline, "Optuna never failed the stale trial"
                time.sleep(0.2)
                optuna.storages.fail_stale_trials(study)
            assert recover_stale_trials(study, storage=storage, grace_s=1) == []
        trials = {t.number: t for t in study.get_trials()}
        assert trials[dead.number].state == TrialState.FAIL
        [waiting] = by_state(trials, TrialState.WAITING)
        assert waiting.system_attrs.get("fixed_params", waiting.params) == dead.params
        # Optuna's retry copies the dead trial's system attributes, owner record included: once
        # that copy runs, the copied record is not its own and it is not judged by it.
        trial = study.ask()
    assert trial.number == waiting.number
    copied = study.get_trials()[trial.number]
    if first == "optuna":  # recovery's retry is a plain enqueue, with no record to copy
        assert copied.system_attrs[system_key("owner_trial")] == dead.number
    assert owner_of(copied) is None
    assert recover_stale_trials(study, storage=storage, grace_s=1) == []
    assert study.get_trials()[trial.number].state == TrialState.RUNNING
    study.tell(trial, 1.0)


# ---------------------------------------------------------------------------------------------
# the rules, on real storages in this process


@pytest.fixture(params=["journal", "sqlite"])
def storage_and_study(tmp_path, request):
    storage = open_storage(storage_url(tmp_path, request.param), None)
    study = optuna.create_study(storage=storage, study_name=STUDY, direction="maximize")
    return storage, study


def _remote_trial(study: optuna.Study, heartbeat_age_s: float) -> optuna.Trial:
    """A sampled trial whose owner record names a process on another host."""
    trial = study.ask()
    sample(trial)
    return _owned_elsewhere(trial, heartbeat_age_s)


def _owned_elsewhere(
    trial: optuna.Trial, heartbeat_age_s: float, *, legacy: bool = False
) -> optuna.Trial:
    record = {
        "heartbeat": time.time() - heartbeat_age_s,
        "owner_host": f"not-{socket.gethostname()}",
        "owner_pid": os.getpid(),
        "owner_start": "1@another-boot",
        "owner_trial": trial.number,
    }
    write_record(trial, record, legacy=legacy)
    return trial


def test_an_owner_on_another_host_is_judged_by_its_heartbeat(storage_and_study):
    storage, study = storage_and_study
    beating = _remote_trial(study, heartbeat_age_s=0.1)
    silent = _remote_trial(study, heartbeat_age_s=60.0)

    # A grace of 30 s: the beating owner's heartbeat stays fresh however slow this machine is.
    recovered = recover_stale_trials(study, storage=storage, grace_s=30)

    assert [(r.number, r.reason, r.requeued) for r in recovered] == [
        (silent.number, OWNER_DIED, True)
    ]
    assert "no heartbeat" in recovered[0].cause
    trials = study.get_trials()
    assert trials[beating.number].state == TrialState.RUNNING
    assert_failed(trials[silent.number], OWNER_DIED)
    [waiting] = by_state({t.number: t for t in trials}, TrialState.WAITING)
    assert waiting.user_attrs == {
        "arch_hash": trials[silent.number].user_attrs["arch_hash"],
        "retry_of": silent.number,
        "retries": 1,
    }
    assert waiting.system_attrs["fixed_params"] == trials[silent.number].params
    # Recovering again finds nothing new and queues nothing twice.
    assert recover_stale_trials(study, storage=storage, grace_s=30) == []
    assert len(study.get_trials(states=(TrialState.WAITING,))) == 1


def test_a_trial_without_its_own_owner_record_is_recovered_only_after_the_grace(
    storage_and_study,
):
    storage, study = storage_and_study
    older = study.ask()  # as an older version wrote it: no owner record at all
    copied = study.ask()  # a record copied from another trial is not its own
    write_record(
        copied, {"owner_host": socket.gethostname(), "owner_pid": 0, "owner_trial": older.number}
    )

    assert recover_stale_trials(study, storage=storage, grace_s=0.5) == []
    time.sleep(0.6)
    recovered = recover_stale_trials(study, storage=storage, grace_s=0.5)

    assert [r.number for r in recovered] == [older.number, copied.number]
    assert all("no owner record" in r.cause for r in recovered)
    assert not any(r.requeued for r in recovered)  # died before any parameter was sampled
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))


@needs_proc
def test_same_host_owners_are_judged_by_their_process(storage_and_study):
    storage, study = storage_and_study
    ticks = stat_fields("self")[19]
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    gone = subprocess.Popen(["true"])
    gone.wait()
    zombie = subprocess.Popen(["true"])  # exits, and stays a zombie until waited for
    deadline = time.monotonic() + 10
    while stat_fields(zombie.pid)[0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    zombie_ticks = stat_fields(zombie.pid)[19]

    def owned(pid: int, start: str) -> optuna.Trial:
        trial = study.ask()
        sample(trial)
        record = {
            "heartbeat": time.time() - 3600,  # old: the pid rule decides
            "owner_host": socket.gethostname(),
            "owner_pid": pid,
            "owner_start": start,
            "owner_pidns": os.readlink("/proc/self/ns/pid"),
            "owner_trial": trial.number,
        }
        write_record(trial, record)
        return trial

    alive = owned(os.getpid(), f"{ticks}@{boot}")
    reused = owned(os.getpid(), f"{int(ticks) - 1}@{boot}")
    rebooted = owned(os.getpid(), f"{ticks}@not-this-boot")
    exited = owned(gone.pid, f"{ticks}@{boot}")
    unreaped = owned(zombie.pid, f"{zombie_ticks}@{boot}")

    causes = {r.number: r.cause for r in recover_stale_trials(study, storage=storage, grace_s=1)}
    zombie.wait()

    assert set(causes) == {reused.number, rebooted.number, exited.number, unreaped.number}
    assert "is gone" in causes[unreaped.number]
    assert "another process" in causes[reused.number]
    assert "restarted" in causes[rebooted.number]
    assert "is gone" in causes[exited.number]
    assert study.get_trials()[alive.number].state == TrialState.RUNNING
    frozen = study.get_trials()[alive.number]
    assert death_cause(frozen, grace_s=1e-3) is None


@needs_proc
def test_a_study_written_by_an_older_version_is_recovered_by_its_user_attributes(
    storage_and_study,
):
    """Older versions kept owner records and heartbeats among the user attributes: they are
    still read there, and a process of this version writes its own record in the new place."""
    storage, study = storage_and_study
    ticks = stat_fields("self")[19]
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    gone = subprocess.Popen(["true"])
    gone.wait()

    def owned(pid: int) -> optuna.Trial:
        trial = study.ask()
        sample(trial)
        record = {
            "heartbeat": time.time() - 3600,
            "owner_host": socket.gethostname(),
            "owner_pid": pid,
            "owner_start": f"{ticks}@{boot}",
            "owner_pidns": os.readlink("/proc/self/ns/pid"),
            "owner_trial": trial.number,
        }
        write_record(trial, record, legacy=True)
        return trial

    alive, dead = owned(os.getpid()), owned(gone.pid)
    beating = _owned_elsewhere(study.ask(), heartbeat_age_s=0.1, legacy=True)
    silent = _owned_elsewhere(study.ask(), heartbeat_age_s=60.0, legacy=True)
    # An Optuna retry of an older trial carries its user attributes (a record not its own),
    # and then this version's process writes its own record.
    retried = study.ask()
    write_record(
        retried, {"owner_host": "elsewhere", "owner_pid": 1, "owner_trial": 0}, legacy=True
    )
    with TrialHeartbeat(retried, interval_s=30):
        assert owner_of(study.get_trials()[retried.number]).pid == os.getpid()

    # A grace of 30 s: the beating owner's heartbeat stays fresh however slow this machine is.
    recovered = {r.number: r for r in recover_stale_trials(study, storage=storage, grace_s=30)}

    assert sorted(recovered) == [dead.number, silent.number]
    assert "is gone" in recovered[dead.number].cause
    assert "no heartbeat" in recovered[silent.number].cause
    trials = study.get_trials()
    assert owner_of(trials[alive.number]).pid == os.getpid()
    for trial in (alive, beating, retried):
        assert trials[trial.number].state == TrialState.RUNNING
    for trial in (dead, silent):
        frozen = trials[trial.number]
        assert frozen.state == TrialState.FAIL
        assert frozen.user_attrs["outcome"] == f"failed: {OWNER_DIED}"
        assert not any(k.startswith("jetsearch:owner") for k in frozen.system_attrs)
    assert recover_stale_trials(study, storage=storage, grace_s=30) == []


# ---------------------------------------------------------------------------------------------
# the heartbeat and mark_interrupted


@needs_proc
def test_the_heartbeat_records_the_owner_and_beats_until_the_trial_ends(storage_and_study):
    storage, study = storage_and_study
    trial = study.ask()
    reader = optuna.load_study(study_name=STUDY, storage=storage)

    def beat_of(frozen: FrozenTrial) -> float:
        return frozen.system_attrs[system_key(HEARTBEAT_KEY)]

    with TrialHeartbeat(trial, interval_s=0.05) as heartbeat:
        time.sleep(0.3)
        first = beat_of(reader.get_trials()[trial.number])
        time.sleep(0.3)
        frozen = reader.get_trials()[trial.number]
        assert heartbeat.alive
    assert not heartbeat.alive and heartbeat.beats >= 4 and heartbeat.last_error is None
    assert beat_of(frozen) > first
    ticks = stat_fields("self")[19]
    record = {k: frozen.system_attrs[system_key(k)] for k in OWNER_KEYS}
    assert record["owner_host"] == socket.gethostname()
    assert record["owner_pid"] == os.getpid()
    assert record["owner_start"].partition("@")[0] == ticks
    assert record["owner_pidns"] == os.readlink("/proc/self/ns/pid")
    assert record["owner_trial"] == trial.number
    assert recovery_attrs(frozen) == {**record, HEARTBEAT_KEY: beat_of(frozen)}
    assert frozen.user_attrs == {}  # none of it among the attributes a user reads
    stopped_at = beat_of(reader.get_trials()[trial.number])
    study.tell(trial, 1.0)
    time.sleep(0.15)
    assert beat_of(reader.get_trials()[trial.number]) == stopped_at


def test_heartbeats_are_aged_by_the_storage_clock_and_starts_by_this_machines():
    """On PostgreSQL the heartbeat is written and aged by the server's clock (``beat_now``);
    this machine's clock, however far off, only ages a record's start."""
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    sample(trial)
    server_beat = 1_000_000.0  # the server's clock: far from this machine's
    _owned_elsewhere(trial, heartbeat_age_s=0)
    write_record(trial, {"heartbeat": server_beat})
    frozen = study.get_trials()[trial.number]

    assert death_cause(frozen, grace_s=30, beat_now=server_beat + 1) is None
    assert "no heartbeat" in death_cause(frozen, grace_s=30, beat_now=server_beat + 31)
    # Without beat_now the heartbeat is aged by ``now``: the two clocks disagree.
    assert death_cause(frozen, grace_s=30) is not None
    # A record without a heartbeat is aged from the trial's start, by this machine's clock.
    write_record(trial, {"heartbeat": None})
    frozen = study.get_trials()[trial.number]
    assert death_cause(frozen, grace_s=30, beat_now=server_beat + 3600) is None
    assert death_cause(frozen, grace_s=30, now=time.time() + 31) is not None


def test_a_trial_failed_by_optunas_heartbeat_counts_as_a_death_of_its_network(storage_and_study):
    """Optuna's heartbeat (older versions on PostgreSQL) failed a dead trial with no reason, its
    ``outcome`` still ``running``, and its retry callback queued a copy: that copy dying too is
    the network's second death, so it is given up."""
    storage, study = storage_and_study
    first = study.ask()
    sample(first)
    first.set_user_attr("outcome", "running")
    _, first_id = live_trial_id(first)
    storage.set_trial_state_values(first_id, TrialState.FAIL)  # as fail_stale_trials does
    failed = study.get_trials()[first.number]
    study.enqueue_trial(failed.params, user_attrs=dict(failed.user_attrs))  # Optuna's retry
    retry = study.ask()
    sample(retry)
    _owned_elsewhere(retry, heartbeat_age_s=60.0)

    recovered = recover_stale_trials(study, storage=storage, grace_s=30)

    assert [(r.number, r.reason, r.requeued) for r in recovered] == [
        (retry.number, GIVEN_UP, False)
    ]
    assert_failed(study.get_trials()[retry.number], GIVEN_UP)
    assert not study.get_trials(states=(TrialState.WAITING,))


def test_mark_interrupted_fails_a_running_trial_and_queues_it_once(storage_and_study):
    storage, study = storage_and_study
    trial = study.ask()
    sample(trial)

    marked = mark_interrupted(study, trial.number, storage=storage)
    again = mark_interrupted(study, trial.number, storage=storage)

    assert marked is not None and marked.reason == INTERRUPTED and marked.requeued
    assert again is not None and not again.requeued
    frozen = study.get_trials()[trial.number]
    assert_failed(frozen, INTERRUPTED)
    [waiting] = study.get_trials(states=(TrialState.WAITING,))
    assert waiting.user_attrs == {
        "arch_hash": frozen.user_attrs["arch_hash"],
        "retry_of": trial.number,
        "retries": 1,
    }
    done = study.ask()
    study.tell(done, 2.0)
    assert mark_interrupted(study, done.number, storage=storage) is None  # finished: left alone


def test_mark_interrupted_refuses_a_trial_of_another_live_process(storage_and_study):
    storage, study = storage_and_study
    remote = _remote_trial(study, heartbeat_age_s=0.0)
    with pytest.raises(ValueError, match="alive"):
        mark_interrupted(study, remote.number, storage=storage)
    assert study.get_trials()[remote.number].state == TrialState.RUNNING


def test_a_storage_without_the_study_is_refused(tmp_path):
    storage = open_storage(str(tmp_path / "a.log"), None)
    other = optuna.create_study(storage=open_storage(str(tmp_path / "b.log"), None))
    with pytest.raises(ValueError, match="not in the storage"):
        recover_stale_trials(other, storage=storage, grace_s=1)
    with pytest.raises(ValueError, match="grace_s > 0"):
        recover_stale_trials(other, storage=storage, grace_s=0)


# ---------------------------------------------------------------------------------------------
# a Ctrl-C landing in Optuna's code around the objective


def test_an_error_raised_while_a_ctrl_c_is_handled_is_that_ctrl_c():
    from jetsearch.run import optimize_one

    def lost_interrupt(study, trial):  # as Optuna 5.0's _run_trial when a Ctrl-C hits its tell
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise UnboundLocalError("updated_state") from None

    def plain_error(study, trial):
        raise RuntimeError("a bug, not an interrupt")

    study = optuna.create_study(direction="maximize")
    with pytest.raises(KeyboardInterrupt):
        optimize_one(study, lambda t: t.suggest_float("x", 0, 1), [lost_interrupt])
    with pytest.raises(RuntimeError, match="a bug"):
        optimize_one(study, lambda t: t.suggest_float("x", 0, 1), [plain_error])


def test_an_interrupt_outside_the_objective_marks_only_this_processes_trials(storage_and_study):
    from jetsearch.recovery import interrupt_own_trials, record_owner

    storage, study = storage_and_study
    mine = study.ask()
    sample(mine)
    record_owner(mine)
    theirs = _remote_trial(study, heartbeat_age_s=0)  # alive elsewhere: not ours to mark

    assert interrupt_own_trials([study], storage) == [mine.number]
    trials = {t.number: t for t in study.get_trials()}
    assert_failed(trials[mine.number], INTERRUPTED)
    assert trials[theirs.number].state == TrialState.RUNNING
    [retry] = by_state(trials, TrialState.WAITING)
    assert retry.user_attrs["retry_of"] == mine.number
    assert interrupt_own_trials([study], storage) == []  # nothing twice


def test_a_trial_killed_half_way_through_sampling_queues_no_other_network(storage_and_study):
    """Its first parameters are not a network: queueing them would train a different one."""
    storage, study = storage_and_study
    half = study.ask()
    half.suggest_float("x", 0.0, 1.0)  # sampling had begun; no arch_hash was written yet
    _owned_elsewhere(half, heartbeat_age_s=5.0)
    study.enqueue_trial({"x": 0.25, "width": 16, "depth": 3}, user_attrs={"arch_hash": "n1"})
    queued = study.ask()  # a queued network (a promotion, a preset) killed after one parameter
    queued.suggest_float("x", 0.0, 1.0)
    _owned_elsewhere(queued, heartbeat_age_s=5.0)

    recovered = {r.number: r for r in recover_stale_trials(study, storage=storage, grace_s=1.0)}

    assert sorted(recovered) == [half.number, queued.number]
    assert not recovered[half.number].requeued
    assert recovered[queued.number].requeued
    [waiting] = study.get_trials(states=(TrialState.WAITING,))
    assert waiting.user_attrs["retry_of"] == queued.number
    # The retry is the whole network that was queued, under the name it was queued as.
    assert waiting.system_attrs["fixed_params"] == {"x": 0.25, "width": 16, "depth": 3}
    assert waiting.user_attrs["arch_hash"] == "n1"
