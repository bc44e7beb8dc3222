"""The run loop of a study: prepare it once, then run trials in one or more processes.

:func:`prepare_study` checks what can be checked without touching the storage (the space, the
latency providers, the artifact store), then opens the storage and the rung studies once and
queues the presets. :func:`run_worker_process` is the loop every trial process runs, whichever
backend started it (this process, a ``--jobs`` child, a Ray worker): promote, pick the next
trial, optimise it, recover the trials of dead processes. The processes of a study coordinate
through its storage only: the latency budget it resolved when it started
(:mod:`jetsearch.budget`) and what ``--trials`` counts are read from there.
"""

from __future__ import annotations

import contextlib
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from jetsearch.budget import (
    DEFAULT_MAX_REJECTED,
    TrialCount,
    resolve_budget,
    running_budget,
)
from jetsearch.latency.chain import LatencyChain
from jetsearch.objective import Objective, load_data
from jetsearch.spec import StudyBudget, StudyError, StudySpec
from jetsearch.storage import (
    StudyStorage,
    heartbeat_clock,
    heartbeat_settings,
    locate_storage,
    make_sampler,
    open_rung_studies,
    storage_url,
    study_artifact_store,
)


@dataclass
class StudyRun:
    """What one run of a study did (any backend). ``finished_before`` and ``finished_after``
    count what ``--trials`` counts (:class:`TrialCount`); ``rejected`` is the candidates this
    run rejected before training for their latency."""

    study_name: str
    storage: str
    finished_before: int
    finished_after: int
    wall_s: float
    interrupted: bool = False
    latency_sources: str = ""
    rejected: int = 0


@dataclass
class PreparedStudy:
    """A study ready to run in this process: its spec, its storage and rung studies (opened
    once, :class:`jetsearch.storage.StudyStorage`), its space, its latency chain and the
    latency budget it runs under (resolved once, stored in the study)."""

    spec: StudySpec
    opened: StudyStorage
    space: Any
    latency: LatencyChain
    budget: StudyBudget

    @property
    def url(self) -> str:
        return self.opened.location.url

    @property
    def name(self) -> str:
        return self.opened.study.study_name


def enqueue_presets(study: Any, spec: StudySpec, space: Any) -> list[str]:
    """Enqueue the spec's presets that lie in the space, once, on a new study."""
    from jetseg.config import load_config

    if study.get_trials(deepcopy=False):
        return []
    queued = []
    for name in spec.enqueue_presets:
        try:
            params = space.params_for(load_config(name))
        except Exception as err:  # a preset outside this space is skipped, with the reason
            warnings.warn(f"preset {name} is not in space {spec.space}: {err}", stacklevel=2)
            continue
        study.enqueue_trial(params, user_attrs={"preset": name}, skip_if_exists=True)
        queued.append(name)
    return queued


def prepare_study(
    spec: StudySpec, *, storage: str | None = None, name: str | None = None, processes: int = 1
) -> PreparedStudy:
    """Check the study, then open its storage and rung studies, fix its latency budget
    (:func:`resolve_budget`) and queue its presets.

    Every check that needs no storage comes first (SQLite for ``processes`` > 1, the space, a
    latency provider that is usable, the artifact store), so a study that cannot run creates
    no storage file and no study. ``storage`` and ``name`` override the spec's.
    """
    from jetsearch.artifacts import study_feasibility_note
    from jetsearch.space import load_space

    url = storage_url(spec, storage)
    locate_storage(url).check_processes(processes)
    space = load_space(spec.space)
    latency = LatencyChain(spec)  # fails here, with the reasons, when no provider is usable
    try:
        study_artifact_store(url, spec)  # a bad setting fails before any trial runs
        opened = open_rung_studies(spec, url, name)
        study = opened.study
        budget = resolve_budget(study, spec, latency)
        if budget.budget_ms is not None and "feasibility" not in study.user_attrs:
            study_feasibility_note(study, budget.budget_ms)
        if spec.enqueue_presets:
            enqueue_presets(study, spec, space)
    except BaseException:
        latency.close()
        raise
    return PreparedStudy(spec, opened, space, latency, budget)


def run_worker_process(
    spec: StudySpec,
    opened: StudyStorage,
    total_trials: int,
    timeout_s: float | None,
    job_index: int,
    callbacks: Sequence[Callable] = (),
    space: Any = None,
    latency: Any = None,
    progress: Any = None,
    max_rejected: int = DEFAULT_MAX_REJECTED,
) -> None:
    """Run trials until rung 0 holds ``total_trials`` counted trials (any process).

    What counts is :class:`TrialCount`'s rule: a network rejected before training for its
    latency does not; after ``max_rejected`` of those in a row the study stops with a
    :class:`StudyError` that says what to change. The latency budget is the one the study
    stored when it started (:func:`resolve_budget`). With rungs, every trial first runs the
    promotion step (:class:`jetsearch.rungs.RungLadder`) and trains the highest rung that has
    a promoted network waiting before asking rung 0's sampler for a new network; when rung 0
    is full the process still trains what is waiting.
    ``opened`` is this process's storage and rung studies; ``latency`` anything with a
    LatencyChain's ``measure`` and ``close`` (the study's chain by default).
    ``callbacks`` are called as ``callback(rung0_study, trial)`` after every trial, any rung.
    """
    import optuna
    import torch

    from jetsearch.recovery import (
        StaleTrialRecovery,
        interrupt_own_trials,
        recover_stale_trials,
    )
    from jetsearch.rungs import RungLadder
    from jetsearch.space import load_space

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    budget_ms = running_budget(opened.study, spec)  # the study's, never this spec's
    if spec.train.threads:
        torch.set_num_threads(spec.train.threads)
    space = space or load_space(spec.space)
    latency = latency or LatencyChain(spec)
    artifacts = study_artifact_store(opened.location.url, spec)
    studies, study = opened.studies, opened.study
    for rung_study in studies:  # each process samples its own stream
        rung_study.sampler = make_sampler(spec, job_index)
    # A resumed study must not replay the seeded sampler's stream from the start (it would
    # propose the same architectures again): offset the seed by the trials already there.
    already = len(study.get_trials(deepcopy=False))
    if already:
        study.sampler = make_sampler(spec, job_index + 1000 * already)
    ladder = RungLadder(studies, spec.eta, budget_ms, spec.mode) if len(studies) > 1 else None
    interval_s, grace_s = heartbeat_settings()
    # jetsearch's owner records and heartbeats on every storage, a database server included
    # (opened without Optuna's heartbeat, which would fail a dead trial before its outcome could
    # say why): trials whose process died are failed, their networks queued again.
    clock = heartbeat_clock(opened.storage)
    for rung_study in studies:
        recover_stale_trials(rung_study, storage=opened.storage, grace_s=grace_s)
    objectives: dict[int, Objective] = {}

    def objective(rung: int) -> Objective:
        if rung not in objectives:  # each rung's data is built once per process
            objectives[rung] = Objective(
                spec,
                space,
                latency,
                load_data(spec, rung),
                budget_ms=budget_ms,
                rung=rung,
                progress=progress,
                artifacts=artifacts,
                heartbeat_s=interval_s,
                heartbeat_clock=clock,
            )
        return objectives[rung]

    guard = FailureGuard()
    hooks = [
        guard,
        StaleTrialRecovery(opened.storage, grace_s=grace_s),
        *(_on_rung0(cb, study) for cb in callbacks),
    ]
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    try:
        while not guard.stopped_reason:
            if deadline is not None and time.monotonic() >= deadline:
                break
            rung = 0
            if ladder is not None:
                ladder.promote()
                rung = ladder.waiting_rung() or 0
            if rung == 0 and TrialCount.of(study).reached(total_trials, max_rejected, budget_ms):
                break
            optimize_one(studies[rung], objective(rung), hooks)
        if ladder is not None:
            ladder.promote()  # what the last trial made due is enqueued, not lost
    except KeyboardInterrupt:
        interrupt_own_trials(studies, opened.storage)
        raise
    finally:
        latency.close()
    if guard.stopped_reason:
        raise StudyError(f"study stopped: {guard.stopped_reason}")


def optimize_one(study: Any, objective: Callable, callbacks: list) -> None:
    """One trial of ``study.optimize``; a Ctrl-C always comes out as KeyboardInterrupt.

    Optuna 5.0's ``_run_trial`` loses a Ctrl-C that lands inside its own ``tell``: its
    ``finally`` block then raises ``UnboundLocalError`` (and a journal lock interrupted in its
    release raises ``FileNotFoundError``). An error raised while a Ctrl-C was being handled is
    that Ctrl-C.
    """
    try:
        study.optimize(
            objective, n_trials=1, callbacks=callbacks, catch=(Exception,), gc_after_trial=True
        )
    except Exception as err:
        if isinstance(err.__context__, KeyboardInterrupt):
            raise KeyboardInterrupt from err
        raise


def _on_rung0(callback: Callable, study: Any) -> Callable:
    """A trial callback that always hears the rung-0 study (which holds the whole front)."""

    def call(_rung_study: Any, trial: Any) -> None:
        callback(study, trial)

    return call


class FailureGuard:
    """Stops a study after ``limit`` failed trials in a row in this process (a broken setup).

    Without it a study whose every trial fails (no data, a latency worker that refuses every
    model) would run forever, since failed trials never count towards the target.
    """

    def __init__(self, limit: int = 5) -> None:
        self.limit = limit
        self.in_a_row = 0
        self.stopped_reason: str | None = None

    def __call__(self, study: Any, trial: Any) -> None:
        import optuna

        if trial.state == optuna.trial.TrialState.FAIL:
            self.in_a_row += 1
        else:
            self.in_a_row = 0
        if self.in_a_row >= self.limit:
            reason = trial.user_attrs.get("failure_reason", "see the trial's failure_reason")
            self.stopped_reason = f"{self.limit} trials failed in a row; the last: {reason}"
            study.stop()


def run_worker(
    spec: StudySpec,
    url: str,
    name: str,
    total_trials: int,
    timeout_s: float | None,
    job_index: int,
    latency: Any = None,
    max_rejected: int = DEFAULT_MAX_REJECTED,
) -> None:
    """A trial process of its own (a ``--jobs`` child, a Ray worker): opens the storage and the
    rung studies once, then runs :func:`run_worker_process` (under the budget the study
    stored when it started)."""
    opened = open_rung_studies(spec, url, name)
    run_worker_process(
        spec,
        opened,
        total_trials,
        timeout_s,
        job_index,
        latency=latency,
        max_rejected=max_rejected,
    )


def _spawn_entry(args: tuple) -> None:  # runs in a --jobs child process
    import signal

    def stop(signum: int, frame: Any) -> None:  # SIGTERM from the parent: stop as on Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    with contextlib.suppress(KeyboardInterrupt):
        try:
            run_worker(*args)
        except StudyError as err:  # the parent stops for the same reason: one line, no trace
            print(f"trial process {args[5]}: {err}", file=sys.stderr)
            sys.exit(1)


def run_prepared(
    prepared: PreparedStudy,
    *,
    trials: int,
    timeout_s: float | None = None,
    jobs: int = 1,
    callbacks: Sequence[Callable] = (),
    progress: Any = None,
    max_rejected: int = DEFAULT_MAX_REJECTED,
) -> StudyRun:
    """Run a prepared study here until it holds ``trials`` counted trials (see
    :func:`run_study`); ``jobs`` > 1 starts more processes that share the storage."""
    import multiprocessing as mp

    spec, opened = prepared.spec, prepared.opened
    before = TrialCount.of(opened.study)
    start = time.time()
    interrupted = False
    children = []
    try:
        if jobs > 1:
            ctx = mp.get_context("spawn")
            for j in range(1, jobs):
                args = (spec, prepared.url, prepared.name, trials, timeout_s, j, None, max_rejected)
                p = ctx.Process(target=_spawn_entry, args=(args,), daemon=False)
                p.start()
                children.append(p)
        run_worker_process(
            spec,
            opened,
            trials,
            timeout_s,
            0,
            callbacks,
            space=prepared.space,
            latency=prepared.latency,
            progress=progress,
            max_rejected=max_rejected,
        )
        for p in children:
            p.join()
    except KeyboardInterrupt:
        interrupted = True
        # Ctrl-C reached the whole process group; a SIGTERM only this process: pass it on.
        _stop_children(children, wait_s=5)
    except StudyError:
        _stop_children(children, wait_s=0)  # their trials interrupted and queued, not lost
        raise
    finally:
        for p in children:
            if p.is_alive():
                p.kill()
    after = TrialCount.of(opened.study)
    return StudyRun(
        prepared.name,
        prepared.url,
        before.counted,
        after.counted,
        time.time() - start,
        interrupted,
        prepared.latency.describe(),
        after.rejected - before.rejected,
    )


def _stop_children(children: list, wait_s: float) -> None:
    """Give the ``--jobs`` children ``wait_s`` to stop, then SIGTERM them: each marks its trial
    interrupted (queued again) and stops."""
    for p in children:
        p.join(timeout=wait_s)
        if p.is_alive():
            p.terminate()
    for p in children:
        p.join(timeout=30)


def run_study(
    spec: StudySpec,
    *,
    trials: int,
    storage: str | None = None,
    name: str | None = None,
    timeout_s: float | None = None,
    jobs: int = 1,
    callbacks: Sequence[Callable] = (),
    progress: Any = None,
    max_rejected: int = DEFAULT_MAX_REJECTED,
) -> StudyRun:
    """Create or resume the study and run it until it holds ``trials`` counted trials.

    Running the same call again continues the same study (nothing is repeated); a larger
    ``trials`` adds trials. Networks rejected before training for their latency are stored
    but not counted (:class:`TrialCount`); ``max_rejected`` of them in a row stop the study
    with a :class:`StudyError`. ``jobs`` > 1 starts more processes that share the storage.
    KeyboardInterrupt stops cleanly: the trial in flight is marked failed, every completed trial
    stays in the storage. ``progress`` (a :class:`jetsearch.progress.StudyProgress`) hears this
    process's trial phases. With rungs, ``trials`` counts rung-0 trials; the rung studies
    (``NAME:rung1``, ...) are created with the study.
    """
    prepared = prepare_study(spec, storage=storage, name=name, processes=jobs)
    return run_prepared(
        prepared,
        trials=trials,
        timeout_s=timeout_s,
        jobs=jobs,
        callbacks=callbacks,
        progress=progress,
        max_rejected=max_rejected,
    )
