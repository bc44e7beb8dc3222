"""Stale-trial recovery: no trial stays RUNNING for ever after its process died.

A study process killed with ``kill -9`` (or by the OOM killer, a power cut, a lost board) leaves
its trial RUNNING in the storage. Optuna's own heartbeat fails such trials on RDB storages only,
and it sets FAIL before its callback runs, so nothing can write why into a trial it failed (a
finished trial's attributes are read-only); the journal file (our default) and SQLite never fail
them at all, so the network of a dead trial is never trained again. This module recovers them on
every storage (PostgreSQL included, which :func:`jetsearch.storage.open_storage` opens without
Optuna's heartbeat), on Optuna's public API:

* **Owner record** (:func:`record_owner`): when a trial starts, its system attributes name the
  process that runs it: ``owner_host`` (``socket.gethostname()``), ``owner_pid``,
  ``owner_start`` (``"<start ticks>@<boot id>"``: the process start time, field 22 of
  ``/proc/<pid>/stat`` in clock ticks since boot, and ``/proc/sys/kernel/random/boot_id``, so a
  pid reused by another process or after a reboot is recognised), ``owner_pidns`` (the pid
  namespace: two containers can share a host name but not their pids) and ``owner_trial`` (the
  trial number, written last: a record is valid only on the trial it was written for, because
  Optuna's ``RetryHeartbeatStaleTrialCallback`` copies a dead trial's attributes onto its
  retry). Where ``/proc`` is missing (macOS, Windows) ``owner_start`` is not written and only
  the heartbeat rule below applies.
* **Heartbeat** (:class:`TrialHeartbeat`): a daemon thread writes the system attribute
  ``heartbeat`` (epoch seconds) every ``interval_s`` while the trial runs, by the storage's
  heartbeat clock (:func:`jetsearch.storage.heartbeat_clock`): a PostgreSQL server's own clock,
  which recovery reads too, so hosts whose clocks disagree still judge each other's heartbeats
  right; this machine's clock on a file.
* **Where they live**: this bookkeeping is no result, so it stays out of the user attributes
  that optuna-dashboard lists on a trial's page (those start with what a person reads: the
  outcome, the network, its latency and mIoU). The storage's ``set_trial_system_attr`` writes
  each key as ``jetsearch:<key>`` (:func:`system_key`); :func:`recovery_attrs` reads them back,
  and reads the user attributes of a trial written by an older version, which kept the same
  keys there.
* **Recovery** (:func:`recover_stale_trials`): a RUNNING trial whose owner is *provably dead* is
  failed with ``failure_reason = "owner died"`` (and ``outcome = "failed: owner died"``, the
  first of its user attributes, which said ``running`` until then) and its network is
  enqueued again once
  (user attributes ``retry_of`` and ``retries``; :func:`network_params`: the whole network a
  queued trial was given, or what a sampled trial sampled once its ``arch_hash`` is written; a
  trial that died half-way through sampling had no network yet and is not enqueued); a
  network that died twice is failed with ``"owner died twice: given up"`` and not enqueued
  again, so a network that crashes its own process cannot loop. A trial whose owner is alive
  is never touched.
* **Interrupted** (:func:`mark_interrupted`, and :class:`TrialHeartbeat` itself on
  ``KeyboardInterrupt``): failed with ``failure_reason = "interrupted"`` (``outcome =
  "failed: interrupted"``) and enqueued again, which counts as a retry of the network.

When an owner is provably dead:

==========================================  =================================================
the trial's owner record                     dead when
==========================================  =================================================
same host and pid namespace, with           the boot id differs (the machine restarted), or
``owner_start``                              the pid does not exist (or is a zombie), or the
                                             pid's start time differs (reused pid). Otherwise
                                             the owner is alive, however old its heartbeat:
                                             a slow trial is not a dead one.
another host (or no ``/proc`` here or        no ``heartbeat`` for longer than ``grace_s``
there)                                       (by the heartbeat clock: on PostgreSQL the
                                             server's; else the hosts', so keep them in NTP
                                             sync)
no record of its own (written by an older    ``grace_s`` passed since ``datetime_start``. Such
version, or killed before the record was     a trial has no heartbeat to wait for, so the only
complete)                                    evidence is its age; a run of an older version
                                             still training it would lose it, so do not mix
                                             older and newer processes on one study.
==========================================  =================================================

A process that asks trials and runs them later (an ask-and-tell driver) must call
:func:`record_owner` right after ``ask`` (with ``clock=heartbeat_clock(storage)``): a trial it
holds without a record is, after ``grace_s``, indistinguishable from one of a dead
older-version process. The process that finally runs it writes its own record over the
driver's.

Thread safety of the heartbeat (read in Optuna 5.1's code). ``optuna.Trial`` has no
system-attribute setter, so the owner record and the beats go through the live trial's public
``trial.storage`` (``set_trial_system_attr``, on the trial id the storage gives for the study
name and trial number). Every ``JournalStorage`` method holds the storage's thread lock and its
writer id includes the thread id, so a write from the heartbeat thread is an ordinary journal
record; ``RDBStorage`` opens one SQLAlchemy session per thread (``scoped_session``), which is
how Optuna's own heartbeat thread writes too; ``_CachedStorage`` passes system-attribute writes
straight to its backend. Such a write leaves the live trial's cached attributes alone, so the
thread never touches a dict the trial's own thread reads. A write that lands after the trial
finished raises ``UpdateFinishedTrialError`` in the thread, which then stops; any other write
error is logged and retried at the next beat (a heartbeat must never fail its trial).

Writing to a trial this process does not own (the dead one) has no Study-level public API and
``optuna.trial.Trial(study, trial_id)`` calls the sampler's ``before_trial``; recovery therefore
uses the storage object's own public methods (``get_trial_id_from_study_id_trial_number``,
``set_trial_user_attr``, ``set_trial_state_values``), on the study and storage the caller
opened (no second handle), and ``Study.enqueue_trial``, which adds a waiting trial without
consulting the sampler: the caller's sampler and constraints never see a dead trial.
``set_trial_state_values`` accepts a RUNNING trial of another process on every storage and
writes FAIL (with ``datetime_complete``); when two processes recover the same trial at once
the storage rejects the second FAIL (``UpdateFinishedTrialError``), and only the process
whose FAIL was written enqueues the retry.

Optuna's heartbeat (an RDB storage opened with ``heartbeat_interval``: older versions of
jetsearch opened PostgreSQL so, and a caller may open one so): jetsearch no longer uses it,
because its ``fail_stale_trials`` writes FAIL before it calls any callback and the trial's
``outcome`` then reads ``running`` for ever. Recovery still works alongside it: whichever of
the two moves a trial from RUNNING to FAIL first is the only one that queues a retry (the
storage lets only one FAIL through), so a death is never retried twice. A retry queued by
Optuna's callback carries the dead trial's ``retries`` count (it copies the user and system
attributes, the owner record too, which ``owner_trial`` then shows is not the retry's own), and
a FAIL trial whose ``outcome`` still reads ``running`` (Optuna failed it) counts as a death of
its network, so the give-up rule still holds.

Example::

    storage = open_storage(url)
    study = optuna.load_study(study_name=name, storage=storage)
    recover_stale_trials(study, storage=storage, grace_s=60)          # at start
    clock = heartbeat_clock(storage)

    def objective(trial):
        with TrialHeartbeat(trial, interval_s=20, clock=clock):    # owner + heartbeat
            ...

    study.optimize(objective, callbacks=[StaleTrialRecovery(storage, grace_s=60)])
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from types import TracebackType
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from jetsearch.storage import DEFAULT_HEARTBEAT_GRACE_S, DEFAULT_HEARTBEAT_S, heartbeat_clock

_logger = logging.getLogger(__name__)

OWNER_DIED = "owner died"
GIVEN_UP = "owner died twice: given up"
INTERRUPTED = "interrupted"
# Reasons that count as one death of a network towards the give-up rule.
DEATH_REASONS = frozenset({OWNER_DIED, GIVEN_UP, INTERRUPTED})
# A network's second death gives it up.
MAX_DEATHS = 2

OWNER_KEYS = ("owner_host", "owner_pid", "owner_start", "owner_pidns", "owner_trial")
HEARTBEAT_KEY = "heartbeat"
# The owner record and the heartbeat are system attributes under this prefix; older versions
# wrote the bare keys as user attributes (recovery_attrs reads both).
SYSTEM_ATTR_PREFIX = "jetsearch:"
# Attributes a queued trial was given when it was enqueued (a preset, a promotion to a higher
# rung) and that its retry must keep, so the retry is the same network in the same place; in
# the order a person reads them (they are the first of the retry's user attributes).
CARRIED_ATTRS = ("rung", "preset", "arch_hash", "promoted_from_rung", "promoted_from_trial")


# ---------------------------------------------------------------------------------------------
# who runs a trial


@dataclass(frozen=True)
class ProcessIdentity:
    """A process as its owner record states it: host, pid, start time, pid namespace."""

    host: str
    pid: int
    start: str | None  # "<start ticks>@<boot id>", None without /proc
    pidns: str | None

    def is_process(self, other: ProcessIdentity) -> bool:
        """Whether both name the same process (host, pid and start time)."""
        return (self.host, self.pid, self.start) == (other.host, other.pid, other.start)


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


@lru_cache(maxsize=1)
def _boot_id() -> str | None:
    return _read("/proc/sys/kernel/random/boot_id")


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _start_ticks(pid: int) -> str | None:
    """Field 22 of ``/proc/<pid>/stat``; None when the process is gone or a zombie."""
    stat = _read(f"/proc/{pid}/stat")
    if stat is None:
        return None
    # The command name (field 2) is in parentheses and may hold spaces or ')': split after
    # the last ')'. What follows starts at field 3 (the state).
    fields = stat.rpartition(")")[2].split()
    if len(fields) < 20 or fields[0] in ("Z", "X"):  # exited, not yet reaped: dead all the same
        return None
    return fields[19]


def this_process() -> ProcessIdentity:
    """The identity this process writes into the trials it runs."""
    pid = os.getpid()
    ticks, boot = _start_ticks(pid), _boot_id()
    start = f"{ticks}@{boot}" if ticks and boot else None
    return ProcessIdentity(socket.gethostname(), pid, start, _pid_namespace())


def system_key(key: str) -> str:
    """The system attribute that holds recovery's ``key`` (``jetsearch:heartbeat``, ...)."""
    return SYSTEM_ATTR_PREFIX + key


def recovery_attrs(trial: FrozenTrial) -> dict[str, Any]:
    """The trial's owner record and heartbeat by their bare keys (``owner_pid``, ``heartbeat``).

    Read from its system attributes; a trial with none of them there was written by an older
    version, which kept the same keys among the user attributes, and those are read instead.
    Everything comes from one place, so a half-written record is never completed by another's.
    """
    keys = (*OWNER_KEYS, HEARTBEAT_KEY)
    system = trial.system_attrs
    if any(system_key(k) in system for k in keys):
        return {k: system[system_key(k)] for k in keys if system_key(k) in system}
    return {k: trial.user_attrs[k] for k in keys if k in trial.user_attrs}


def failure_attrs(reason: str) -> dict[str, str]:
    """The user attributes that say why a trial failed: ``failure_reason`` and the ``outcome``
    (which reads ``running`` while the trial runs), in the order they are written."""
    return {"failure_reason": reason, "outcome": f"failed: {reason}"}


def owner_of(trial: FrozenTrial) -> ProcessIdentity | None:
    """The owner record written for this very trial; None if it has none (or only a copy)."""
    attrs = recovery_attrs(trial)
    if attrs.get("owner_trial") != trial.number:
        return None
    try:
        return ProcessIdentity(
            str(attrs["owner_host"]),
            int(attrs["owner_pid"]),
            attrs.get("owner_start"),
            attrs.get("owner_pidns"),
        )
    except (KeyError, TypeError, ValueError):
        return None


def live_trial_id(trial: optuna.Trial) -> tuple[Any, int]:
    """The storage of a live trial and the trial's id in it."""
    storage = trial.storage
    study_id = storage.get_study_id_from_name(trial.study.study_name)
    return storage, storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)


def record_owner(
    trial: optuna.Trial, *, clock: Callable[[], float] | None = None
) -> ProcessIdentity:
    """Write this process's owner record and a first heartbeat into a trial that just started.

    Every key is written (None where this platform has no value), over the record of whoever
    held the trial before (an ask-and-tell driver that asked it). ``owner_trial`` goes last: a
    process killed half-way leaves no valid record, and the trial is then judged by its age like
    one without any record. ``clock`` times the heartbeat: the storage's
    (:func:`jetsearch.storage.heartbeat_clock`); None is this machine's (``time.time``).
    """
    me = this_process()
    storage, trial_id = live_trial_id(trial)
    record = {
        HEARTBEAT_KEY: round((clock or time.time)(), 3),
        "owner_host": me.host,
        "owner_pid": me.pid,
        "owner_start": me.start,
        "owner_pidns": me.pidns,
        "owner_trial": trial.number,
    }
    for key, value in record.items():
        storage.set_trial_system_attr(trial_id, system_key(key), value)
    return me


def _pid_rule_applies(owner: ProcessIdentity, me: ProcessIdentity) -> bool:
    """Whether this process can see the owner's process table (same host, same pid space)."""
    return (
        owner.host == me.host
        and owner.pidns == me.pidns
        and owner.start is not None
        and me.start is not None
    )


def death_cause(
    trial: FrozenTrial,
    *,
    grace_s: float,
    now: float | None = None,
    me: ProcessIdentity | None = None,
    beat_now: float | None = None,
) -> str | None:
    """Why the RUNNING ``trial``'s owner is provably dead, or None while it may be alive.

    The rules are in the module docstring. ``now`` (epoch seconds, this machine's clock: the
    trial's start was written by the clock of the process that asked it) and ``me`` (this
    process) default to the present and this process; ``beat_now`` is the present by the
    storage's heartbeat clock (:func:`jetsearch.storage.heartbeat_clock`), which heartbeats
    are compared with (default ``now``).
    """
    now = time.time() if now is None else now
    beat_now = now if beat_now is None else beat_now
    me = me or this_process()
    owner = owner_of(trial)
    if owner is None:
        started = trial.datetime_start.timestamp() if trial.datetime_start else now
        if now - started > grace_s:
            return f"no owner record and started {now - started:.1f} s ago (grace {grace_s:g} s)"
        return None
    where = f"process {owner.pid} on {owner.host}"
    if _pid_rule_applies(owner, me):
        ticks, _, boot = str(owner.start).partition("@")
        if boot != _boot_id():
            return f"{owner.host} restarted since {where} started"
        current = _start_ticks(owner.pid)
        if current is None:
            return f"{where} is gone"
        if current != ticks:
            return f"pid {owner.pid} on {owner.host} now belongs to another process"
        return None
    beat = recovery_attrs(trial).get(HEARTBEAT_KEY)
    if isinstance(beat, (int, float)):
        age = beat_now - beat
    else:  # a record without a beat: judged by its start, on the clock that wrote it
        age = now - (trial.datetime_start.timestamp() if trial.datetime_start else now)
    if age > grace_s:
        return f"no heartbeat from {where} for {age:.1f} s (grace {grace_s:g} s)"
    return None


# ---------------------------------------------------------------------------------------------
# heartbeat


class TrialHeartbeat:
    """Owner record and heartbeat of a running trial, as a context manager around its work.

    ``__enter__`` writes the owner record (:func:`record_owner`) and starts a daemon thread that
    writes the ``heartbeat`` system attribute every ``interval_s``; ``__exit__`` stops it and
    waits for it, so no beat lands after the trial is told. On ``KeyboardInterrupt`` it also
    writes ``failure_reason = "interrupted"`` (and the outcome) while the trial is still RUNNING
    and queues the network again (:func:`mark_interrupted`'s rule); Optuna's ``optimize`` then
    fails the trial and re-raises. Thread safety: see the module docstring.

    Args:
        trial: the live trial (``study.ask()`` or the objective's argument).
        interval_s: seconds between beats; keep recovery's ``grace_s`` at three or more.
        clock: what times the beats: ``heartbeat_clock(storage)`` for the storage the study was
            opened on (the trial's own storage handle does not tell it), so that recovery,
            which reads that clock, compares like with like. None: this machine's clock
            (``time.time``), right for a file.
    """

    def __init__(
        self,
        trial: optuna.Trial,
        interval_s: float = DEFAULT_HEARTBEAT_S,
        *,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if not interval_s > 0:
            raise ValueError(f"interval_s > 0 must hold, got interval_s={interval_s}")
        self.trial = trial
        self.interval_s = float(interval_s)
        self.clock = clock or time.time
        self.beats = 0
        self.last_error: BaseException | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._target: tuple[Any, int] | None = None  # (storage, trial id), set on entry

    def __enter__(self) -> TrialHeartbeat:
        record_owner(self.trial, clock=self.clock)
        self._target = live_trial_id(self.trial)
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._beat, name=f"jetsearch-heartbeat-{self.trial.number}", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            try:
                _interrupt_live_trial(self.trial)
            except Exception as err:  # the interrupt, not this, is what the caller must see
                _logger.warning("could not mark trial %d interrupted: %r", self.trial.number, err)

    def stop(self) -> None:
        """Stop beating and wait for the thread (bounded: a hung write never blocks a trial)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval_s + 30.0)
            self._thread = None

    @property
    def alive(self) -> bool:
        """Whether the heartbeat thread is running."""
        return self._thread is not None and self._thread.is_alive()

    def _beat(self) -> None:
        storage, trial_id = self._target
        while not self._stop.wait(self.interval_s):
            try:
                storage.set_trial_system_attr(
                    trial_id, system_key(HEARTBEAT_KEY), round(self.clock(), 3)
                )
                self.beats += 1
            except UpdateFinishedTrialError:
                return  # told meanwhile: nothing left to keep alive
            except Exception as err:  # a flaky database must not fail the trial; beat again
                if self.last_error is None:
                    _logger.warning("heartbeat of trial %d failed: %r", self.trial.number, err)
                self.last_error = err


def _interrupt_live_trial(trial: optuna.Trial) -> None:
    """Ctrl-C inside a trial: reason first (still RUNNING), then the retry; Optuna tells FAIL."""
    try:
        for key, value in failure_attrs(INTERRUPTED).items():
            trial.set_user_attr(key, value)
    except UpdateFinishedTrialError:
        return
    # A fresh read: the live trial's cached params are complete, its other attrs may not be.
    study = trial.study
    frozen = _trial_by_number(study, trial.number)
    if frozen is not None:
        _requeue(study, frozen, retries=_deaths_before(study, frozen) + 1)


# ---------------------------------------------------------------------------------------------
# recovery


@dataclass(frozen=True)
class Recovered:
    """One trial failed by recovery (or by :func:`mark_interrupted`)."""

    number: int
    reason: str  # the failure_reason written: "owner died", "... given up", "interrupted"
    cause: str  # the evidence: "process 4242 on jetson-1 is gone", ...
    requeued: bool  # its network was enqueued again
    params: dict[str, Any] = field(default_factory=dict)


def _study_id(study: optuna.Study, storage: Any) -> int:
    """The study's id in ``storage``, which must be the storage the study was opened on."""
    try:
        return storage.get_study_id_from_name(study.study_name)
    except KeyError:
        raise ValueError(
            f"study {study.study_name!r} is not in the storage given; pass the storage the "
            "study was opened on"
        ) from None


def _trial_by_number(study: optuna.Study, number: int) -> FrozenTrial | None:
    for t in study.get_trials(deepcopy=False):
        if t.number == number:
            return t
    return None


def network_params(trial: FrozenTrial) -> dict[str, Any] | None:
    """The parameters of the network ``trial`` was to train, or None when it had none yet.

    A trial can die half-way through sampling its architecture (``trial.params`` then holds
    the first few parameters only): queueing those would train another network under the dead
    one's name. A queued trial (a preset, a promotion, a retry) was given its whole network when
    it was enqueued (Optuna's ``fixed_params``); a sampled trial has one once the objective has
    written its ``arch_hash``, which it does right after sampling.
    """
    fixed = trial.system_attrs.get("fixed_params")
    if fixed:
        return dict(fixed)
    if trial.params and "arch_hash" in trial.user_attrs:
        return dict(trial.params)
    return None


def _same_network(a: FrozenTrial, b: FrozenTrial) -> bool:
    """By ``arch_hash`` when both have one, else by identical (non-empty) parameters."""
    ha, hb = a.user_attrs.get("arch_hash"), b.user_attrs.get("arch_hash")
    if ha is not None and hb is not None:
        return ha == hb
    pa, pb = network_params(a), network_params(b)
    return pa is not None and pa == pb


def _died(trial: FrozenTrial) -> bool:
    """Whether a FAIL trial died: failed by recovery or an interrupt, or failed from outside
    while its ``outcome`` still read ``running`` (Optuna's heartbeat, which older versions used
    on PostgreSQL, writes no reason)."""
    reason = trial.user_attrs.get("failure_reason")
    if reason is None:
        return trial.user_attrs.get("outcome") == "running"
    return reason in DEATH_REASONS


def _deaths_before(study: optuna.Study, trial: FrozenTrial) -> int:
    """How often ``trial``'s network died before: its retry count, or its failed twins."""
    chain = int(trial.user_attrs.get("retries", 0) or 0)
    twins = sum(
        1
        for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
        if t.number != trial.number and _died(t) and _same_network(t, trial)
    )
    return max(chain, twins)


def _requeue(study: optuna.Study, trial: FrozenTrial, *, retries: int) -> bool:
    """Enqueue ``trial``'s network once (never twice for one dead trial); True if enqueued."""
    params = network_params(trial)
    if params is None:
        return False  # died before its network was sampled: no network to train again
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("retry_of") == trial.number:
            return False
    attrs = {k: trial.user_attrs[k] for k in CARRIED_ATTRS if k in trial.user_attrs}
    study.enqueue_trial(params, user_attrs={**attrs, "retry_of": trial.number, "retries": retries})
    return True


def _fail(storage: Any, study_id: int, trial: FrozenTrial, reason: str, cause: str) -> bool:
    """Reason (and outcome) first, then FAIL; False when the trial finished meanwhile or another
    process won."""
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
    try:
        for key, value in {**failure_attrs(reason), "failure_detail": cause}.items():
            storage.set_trial_user_attr(trial_id, key, value)
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
    except (UpdateFinishedTrialError, ValueError):
        return False
    return True


def recover_stale_trials(
    study: optuna.Study,
    *,
    storage: Any,
    grace_s: float = DEFAULT_HEARTBEAT_GRACE_S,
    requeue: bool = True,
) -> list[Recovered]:
    """Fail the RUNNING trials whose owner is provably dead; queue each network again once.

    Call it when a study process starts and after every trial (:class:`StaleTrialRecovery`),
    on any storage. The rules, the attributes written and how it lives beside Optuna's own RDB
    heartbeat are in the module docstring. A network that died before (``retries`` along the
    chain of retries, or failed trials of the same ``arch_hash`` / parameters) is given up:
    ``failure_reason = "owner died twice: given up"``, nothing enqueued.

    Args:
        study: the study to clean (its name is what is used).
        storage: the Optuna storage object the study lives in (what ``open_storage`` returned):
            its public per-trial methods write to a trial this process does not own, and its
            heartbeat clock (:func:`jetsearch.storage.heartbeat_clock`) ages the heartbeats.
        grace_s: how long a heartbeat (or, without an owner record, the trial's start) may be
            old before its owner counts as dead; not used for same-host owners, whose process
            is checked directly.
        requeue: enqueue the dead trials' networks again.

    Returns:
        The trials this call failed, in trial order. A trial that another process recovered
        at the same moment is in that process's list only.
    """
    if not grace_s > 0:
        raise ValueError(f"grace_s > 0 must hold, got grace_s={grace_s}")
    study_id = _study_id(study, storage)
    me = this_process()
    # The present, read before the trials: a heartbeat is never judged older than it is.
    beat_now = heartbeat_clock(storage)()
    recovered: list[Recovered] = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        cause = death_cause(trial, grace_s=grace_s, me=me, beat_now=beat_now)
        if cause is None:
            continue
        deaths = _deaths_before(study, trial) + 1
        reason = GIVEN_UP if deaths >= MAX_DEATHS else OWNER_DIED
        if trial.user_attrs.get("failure_reason") == INTERRUPTED:
            reason = INTERRUPTED  # a Ctrl-C whose process died before Optuna told the trial
        if not _fail(storage, study_id, trial, reason, cause):
            continue
        queued = requeue and reason != GIVEN_UP and _requeue(study, trial, retries=deaths)
        _logger.warning(
            "trial %d of %s: %s (%s)%s",
            trial.number,
            study.study_name,
            reason,
            cause,
            "; queued again" if queued else "",
        )
        recovered.append(Recovered(trial.number, reason, cause, queued, dict(trial.params)))
    return recovered


def mark_interrupted(study: optuna.Study, trial_number: int, *, storage: Any) -> Recovered | None:
    """Ctrl-C: fail trial ``trial_number`` with ``failure_reason = "interrupted"``, queue it again.

    Call it from the process that ran the trial, after catching ``KeyboardInterrupt``. A RUNNING
    trial gets the reason and FAIL; a trial Optuna's ``optimize`` already failed on the
    interrupt (so read-only now) is only queued again, and nothing is queued twice, so calling
    this after :class:`TrialHeartbeat` handled the interrupt is harmless. An interrupt counts as
    one death of the network (its retry carries ``retries`` + 1) but never gives it up: a person
    stopping a study is not a network crashing its process. Returns None when there was nothing
    to do (the trial finished, or failed for another reason).

    Raises:
        ValueError: the trial is RUNNING in another process that is alive.
    """
    study_id = _study_id(study, storage)
    trial = _trial_by_number(study, trial_number)
    if trial is None:
        raise ValueError(f"study {study.study_name!r} has no trial {trial_number}")
    retries = _deaths_before(study, trial) + 1
    if trial.state == TrialState.RUNNING:
        owner, me = owner_of(trial), this_process()
        if owner is not None and not owner.is_process(me):
            beat_now = heartbeat_clock(storage)()
            if (
                death_cause(trial, grace_s=DEFAULT_HEARTBEAT_GRACE_S, me=me, beat_now=beat_now)
                is None
            ):
                raise ValueError(
                    f"trial {trial_number} is running in process {owner.pid} on {owner.host}, "
                    "which is alive; only its own process marks it interrupted"
                )
        if not _fail(storage, study_id, trial, INTERRUPTED, "KeyboardInterrupt"):
            return None
    elif trial.state != TrialState.FAIL or trial.user_attrs.get("failure_reason") not in (
        None,
        INTERRUPTED,
    ):
        return None
    queued = _requeue(study, trial, retries=retries)
    return Recovered(trial_number, INTERRUPTED, "KeyboardInterrupt", queued, dict(trial.params))


def interrupt_own_trials(studies: Sequence, storage: Any) -> list[int]:
    """After a Ctrl-C: mark this process's trials still RUNNING interrupted, queued again.

    The trial's own heartbeat does this when the interrupt lands in the objective; this
    covers one that lands in Optuna's code around it (sampling, ``tell``, the callbacks), so
    the trial is not left RUNNING for the next start to count as a death. Returns their numbers.
    """
    me, marked = this_process(), []
    for rung_study in studies:
        try:
            running = rung_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            for trial in running:
                owner = owner_of(trial)
                if owner is None or not owner.is_process(me):
                    continue
                if mark_interrupted(rung_study, trial.number, storage=storage) is not None:
                    marked.append(trial.number)
        except Exception as err:  # the interrupt, not this, is what the caller must see
            _logger.warning("could not mark the interrupted trials: %r", err)
    return marked


class StaleTrialRecovery:
    """An ``optimize`` callback: :func:`recover_stale_trials` after every trial of this process.

    So a process that died while others go on has its trial failed and its network queued
    again within one trial of the survivors. ``recovered`` lists everything this callback
    failed.
    """

    def __init__(
        self, storage: Any, grace_s: float = DEFAULT_HEARTBEAT_GRACE_S, *, requeue: bool = True
    ) -> None:
        self.storage = storage
        self.grace_s = grace_s
        self.requeue = requeue
        self.recovered: list[Recovered] = []

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        try:
            self.recovered += recover_stale_trials(
                study, storage=self.storage, grace_s=self.grace_s, requeue=self.requeue
            )
        except Exception as err:  # a storage hiccup must not stop the study: retried next trial
            _logger.warning("stale-trial recovery of %s failed: %r", study.study_name, err)
