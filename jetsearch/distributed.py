"""Ray Tune backend: a study's trials run as Ray Tune trials, on this machine or a Ray cluster.

:func:`run_study_ray` runs the same study as :func:`jetsearch.study.run_study`: the same space,
objective, latency providers, stored attributes and Optuna storage. Ray Tune only schedules::

    driver (jetsearch study --backend ray)            Ray workers, one process per trial
    ----------------------------------------------    ------------------------------------------
    StudySearch: Ray's OptunaSearch on the study's    ray_trial: opens the same storage, runs
      own storage and sampler; asks the Optuna    ->    jetsearch.study.Objective on that Optuna
      trial and hands its id to the Ray trial           trial, tells the result to the storage
    scheduler: FIFO (pareto mode), or ASHA on the     LatencyService: one Ray actor per target,
      per-epoch val mIoU (budget mode)                  every latency measurement one at a time
    StudyRecorder: what only the driver sees (a
      trial whose worker died, a scheduler stop)
      -> FAIL / PRUNED with the reason

Every Ray trial *is* an Optuna trial of the study, asked from the study's sampler and run by the
same ``Objective``, so optuna-dashboard and ``jetsearch show`` list Ray-run trials exactly like
local ones. A Ray-run trial stores three more user attributes (:data:`RAY_USER_ATTRS`): the Ray
trial id, the host that ran it and the attempt number.

When something fails:

* an exception inside a trial (a network that cannot train, a latency provider that refuses it)
  fails that Optuna trial with ``failure_reason`` and the study goes on, as in the local backend;
* a worker process or a node that dies mid-trial: Tune runs the trial again on the same Optuna
  trial, up to ``max_failures`` times, then it is failed with the Ray error as its reason;
* the driver dies or is interrupted: the trials it had in flight can no longer finish. The next
  run of the same experiment (same host and experiment directory) fails them with
  ``failure_reason`` and queues their parameters again (:func:`requeue_interrupted`), so each
  runs once more as a new trial; an interrupted driver does this itself before it returns.
  ``resume=True`` also restores Tune's own experiment (``Tuner.restore``: its trial history and
  the searcher's state); without it a new Tune experiment continues the study from its storage.
  On PostgreSQL, trials whose heartbeats stop are failed and queued again by any process of the
  study once the grace period is over, whichever backend it runs.

The run stops once the study holds ``trials`` finished (complete or pruned) trials, counting those
of every process; after ``timeout_s`` no new trial starts; a run whose failures outnumber the
trials it was asked for stops instead of failing forever.

``JETSEARCH_RAY_FAULTS`` injects failures to test all this: ``raise:N`` makes Optuna trial N raise
inside its Ray worker, ``exit:N`` kills the worker process of trial N on its first attempt (as a
dying node would), ``exit-always:N`` on every attempt. Comma-separate several; never set it in a
real study.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import math
import os
import socket
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import optuna

from jetsearch.study import (
    LatencyChain,
    Objective,
    StudyError,
    StudyRun,
    StudySpec,
    create_or_load_study,
    enqueue_presets,
    finished_count,
    load_data,
    make_sampler,
    open_storage,
    storage_url,
)

RAY_INSTALL_HINT = "pip install 'jetsearch[ray]'"
FAULTS_ENV = "JETSEARCH_RAY_FAULTS"
RAY_NAMESPACE = "jetsearch"
DEFAULT_RESULTS_DIR = "~/ray_results"
RAY_USER_ATTRS = ("ray_trial_id", "ray_node", "ray_attempt")
FAULT_KINDS = ("raise", "exit", "exit-always")
# Keys of the config the searcher hands each Ray trial, next to the sampled "params".
TRIAL_ID_KEY = "optuna_trial_id"
TRIAL_NUMBER_KEY = "optuna_trial_number"
# System attribute naming the Ray experiment (host and directory) whose driver asked a trial.
RAY_EXPERIMENT_ATTR = "jetsearch:ray_experiment"
_RAY_CLASSES = ("StudySearch", "StudyRecorder")


class InjectedFault(RuntimeError):
    """The failure ``JETSEARCH_RAY_FAULTS`` asked for."""


def import_ray() -> tuple[Any, Any]:
    """``ray`` and ``ray.tune``, or a :class:`StudyError` that says what to install."""
    try:
        import ray
        from ray import tune
        from ray.tune.search.optuna import OptunaSearch  # noqa: F401  (only in ray[tune])
    except ImportError as err:
        raise StudyError(
            f"the Ray backend needs Ray Tune, which is not importable ({err}); "
            f"install it with: {RAY_INSTALL_HINT}"
        ) from err
    return ray, tune


# ---------------------------------------------------------------------------------------------
# what travels to the workers


def parse_faults(text: str) -> dict[int, str]:
    """``"raise:1,exit:2"`` -> ``{1: "raise", 2: "exit"}`` (see the module docstring)."""
    faults: dict[int, str] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        kind, _, number = item.partition(":")
        if kind not in FAULT_KINDS or not number.isdigit():
            raise StudyError(
                f"{FAULTS_ENV}: {item!r} is not one of raise:N, exit:N, exit-always:N "
                "(N an Optuna trial number)"
            )
        faults[int(number)] = kind
    return faults


def _absolute(path: str) -> str:
    return str(Path(path).expanduser().resolve())


def portable_spec(spec: StudySpec) -> StudySpec:
    """The spec with every relative file path made absolute.

    Ray workers run in their own directories (Tune moves each trial into its trial directory),
    so a relative CamVid root, space file, latency cache or token file would point elsewhere.
    Built-in names (``space: tiny``) stay names.
    """
    latency = spec.latency
    latency = dataclasses.replace(
        latency,
        cache=_absolute(latency.cache) if latency.cache else None,
        token_file=_absolute(latency.token_file) if latency.token_file else None,
    )
    space = spec.space
    if Path(space).suffix in (".yaml", ".yml") or Path(space).exists():
        space = _absolute(space)
    data = _absolute(spec.data) if spec.data else None
    return dataclasses.replace(spec, data=data, space=space, latency=latency)


def portable_storage(url: str) -> str:
    """The storage URL with a relative journal or SQLite path made absolute."""
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        path = url.removeprefix("sqlite:///")
        return f"sqlite:///{_absolute(path)}" if path and path != ":memory:" else url
    if "://" not in url:
        prefix = "journal:" if url.startswith("journal:") else ""
        return prefix + _absolute(url.removeprefix("journal:"))
    return url


def is_server_storage(url: str) -> bool:
    """True for a database server every node can reach (PostgreSQL, MySQL)."""
    return "://" in url and not url.startswith("sqlite")


def latency_service_name(spec: StudySpec) -> str:
    """The Ray actor name of the latency service for this target and these latency settings."""
    digest = hashlib.sha256(repr((spec.target, spec.latency)).encode()).hexdigest()[:10]
    return f"jetsearch-latency-{spec.target}-{digest}"


@dataclass(frozen=True)
class RaySettings:
    """Everything a Ray worker needs to run trials of one study (sent with every trial)."""

    spec: StudySpec
    storage: str
    study_name: str
    latency_service: str
    threads: int = 1
    faults: tuple[tuple[int, str], ...] = ()
    env: tuple[tuple[str, str], ...] = ()


# ---------------------------------------------------------------------------------------------
# latency: one measurement at a time per target


class LatencyService:
    """The study's latency chain behind a Ray actor that measures one network at a time.

    Many trainers share one board (or one pool of boards, or this node's CPU); two networks
    timed at once on it would measure the contention, not the networks. ``run_study_ray``
    starts one actor per target and latency settings (:func:`latency_service_name`) with
    ``max_concurrency=1``, so calls from every trial queue up and run in turn. The actor is
    placed on the driver's node when it can be: that is the machine the ``local`` provider
    measures. ``intervals`` returns the (start, end) wall times of every measurement.
    """

    def __init__(self, spec: StudySpec) -> None:
        self._chain = LatencyChain(spec)
        self._intervals: list[tuple[float, float]] = []

    def describe(self) -> str:
        return self._chain.describe()

    def measure(self, onnx_bytes: bytes, config: Any, digest: str) -> tuple[Any, list[str]]:
        start = time.time()
        try:
            return self._chain.measure(onnx_bytes, config, digest)
        finally:
            self._intervals.append((start, time.time()))

    def intervals(self) -> list[tuple[float, float]]:
        return list(self._intervals)


class LatencyClient:
    """What :class:`jetsearch.study.Objective` needs of a LatencyChain, answered by the actor."""

    def __init__(self, service_name: str) -> None:
        import ray

        self._actor = ray.get_actor(service_name, namespace=RAY_NAMESPACE)

    def measure(self, onnx_bytes: bytes, config: Any, digest: str) -> tuple[Any, list[str]]:
        import ray

        # An exception raised in the actor comes back as an instance of its own class too
        # (StudyError when every provider failed), so the Objective handles it as usual.
        return ray.get(self._actor.measure.remote(onnx_bytes, config, digest))

    def describe(self) -> str:
        import ray

        return ray.get(self._actor.describe.remote())

    def close(self) -> None:
        """Nothing to close: the actor serves the next trials."""


def start_latency_service(spec: StudySpec) -> Any:
    """The running latency actor for ``spec`` (started on first use, shared afterwards)."""
    import ray

    options: dict[str, Any] = {
        "name": latency_service_name(spec),
        "namespace": RAY_NAMESPACE,
        "get_if_exists": True,
        "num_cpus": 0,  # it waits on a board or times briefly; trials own the CPUs
        "max_concurrency": 1,
        "max_restarts": 3,
    }
    with contextlib.suppress(Exception):  # Ray Client drivers have no node of their own
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        node = ray.get_runtime_context().get_node_id()
        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node, soft=True)
    return ray.remote(LatencyService).options(**options).remote(spec)


# ---------------------------------------------------------------------------------------------
# the Ray trial


class _EpochReportingTrial(optuna.trial.Trial):
    """An Optuna trial whose per-epoch reports also reach Ray Tune (for the ASHA scheduler)."""

    def report(self, value: float, step: int) -> None:
        super().report(value, step)
        from ray import tune

        latency_ms = float(self.user_attrs.get("latency_ms", math.nan))
        tune.report({"val_miou": float(value), "epoch": int(step), "latency_ms": latency_ms})


@dataclass
class _Worker:
    study: Any
    objective: Objective


_WORKERS: dict[str, _Worker] = {}  # one per process and study: data and space are built once


def _worker(settings: RaySettings) -> _Worker:
    key = repr((settings.storage, settings.study_name, settings.spec))
    if key not in _WORKERS:
        import torch

        from jetsearch.space import load_space

        torch.set_num_threads(settings.threads)
        spec = settings.spec
        # Every parameter was suggested by the driver's sampler; the worker only reads them.
        study = create_or_load_study(
            spec, settings.storage, settings.study_name, sampler=optuna.samplers.RandomSampler()
        )
        latency = LatencyClient(settings.latency_service)
        objective = Objective(spec, load_space(spec.space), latency, load_data(spec))
        _WORKERS[key] = _Worker(study, objective)
    return _WORKERS[key]


def _final_metrics(frozen: optuna.trial.FrozenTrial) -> dict[str, Any]:
    values = frozen.values or []
    return {
        "val_miou": float(values[0]) if values else math.nan,
        "latency_ms": float(frozen.user_attrs.get("latency_ms", math.nan)),
        TRIAL_NUMBER_KEY: frozen.number,
        "optuna_state": frozen.state.name,
    }


def ray_trial(config: dict[str, Any], settings: RaySettings) -> None:
    """One Ray Tune trial: the study's Objective on the Optuna trial the searcher asked for.

    ``config`` holds the Optuna trial id (:data:`TRIAL_ID_KEY`); the parameters are already in
    the storage, so ``space.sample`` on that trial reproduces the sampled network. The result
    (values, state, every user attribute) is written to the storage here, as ``study.optimize``
    would; Tune gets the same numbers for its own table. A trial that is no longer RUNNING
    (failed by a heartbeat check while this Ray trial waited for a retry) is left alone.
    """
    from ray import tune

    # The driver's JETSEARCH_* variables (heartbeat periods, ...) hold on every node.
    os.environ.update(dict(settings.env))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    worker = _worker(settings)
    study = worker.study
    trial_id = int(config[TRIAL_ID_KEY])
    frozen = study._storage.get_trial(trial_id)
    if frozen.state != optuna.trial.TrialState.RUNNING:
        tune.report(_final_metrics(frozen))
        return
    trial = _EpochReportingTrial(study, trial_id)
    attempt = int(frozen.user_attrs.get("ray_attempt", 0)) + 1
    trial.set_user_attr("ray_attempt", attempt)
    trial.set_user_attr("ray_trial_id", tune.get_context().get_trial_id())
    trial.set_user_attr("ray_node", socket.gethostname())
    fault = dict(settings.faults).get(trial.number)
    with _heartbeat(trial_id, study._storage):
        state, values = _run_objective(worker.objective, trial, fault, attempt)
    with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
        study.tell(trial, values, state=state)
    gc.collect()  # the process runs the next trial: free this one's model and tensors
    tune.report(_final_metrics(study._storage.get_trial(trial_id)))


def _heartbeat(trial_id: int, storage: Any) -> Any:
    from optuna.storages._heartbeat import get_heartbeat_thread

    return get_heartbeat_thread(trial_id, storage)


def _run_objective(
    objective: Objective, trial: optuna.trial.Trial, fault: str | None, attempt: int
) -> tuple[Any, Any]:
    """(state, values) of one run of the objective, as ``study.optimize`` with catch=Exception."""
    from optuna.trial import TrialState

    try:
        if fault == "exit-always" or (fault == "exit" and attempt == 1):
            os._exit(3)  # the process vanishes mid-trial, as on a node that dies
        if fault == "raise":
            raise InjectedFault(f"{FAULTS_ENV} asked trial {trial.number} to fail")
        values = objective(trial)
    except optuna.TrialPruned:
        return TrialState.PRUNED, None
    except Exception as err:
        if "failure_reason" not in trial.user_attrs:
            trial.set_user_attr("failure_reason", f"{type(err).__name__}: {err}")
        warnings.warn(
            f"trial {trial.number} failed: {type(err).__name__}: {err}\n{traceback.format_exc()}",
            stacklevel=1,
        )
        return TrialState.FAIL, None
    return TrialState.COMPLETE, values


def _trial_name(trial: Any) -> str:
    return f"optuna-{trial.config.get(TRIAL_NUMBER_KEY, '?')}"


def _trial_dirname(trial: Any) -> str:
    return f"optuna-{trial.config.get(TRIAL_NUMBER_KEY, 'x')}-{trial.trial_id}"


# ---------------------------------------------------------------------------------------------
# the driver side: searcher and recorder (Ray classes, defined when Ray is first needed)


@dataclass
class _RunControl:
    """Settings of the run in progress that a restored searcher must see (not pickled)."""

    target: int
    deadline: float | None
    callbacks: tuple[Callable, ...] = ()


_RUNS: dict[str, _RunControl] = {}  # "host:experiment dir" -> the run in this driver process


class _DefineByRun:
    """The study's space as OptunaSearch's define-by-run function (picklable; loads lazily)."""

    def __init__(self, space: str) -> None:
        self.space_name = space
        self._space = None

    def __call__(self, trial: Any) -> None:
        from jetsearch.space import load_space

        if self._space is None:
            self._space = load_space(self.space_name)
        self._space.sample(trial)  # OptunaSearch keeps what was suggested; the config is rebuilt
        return None

    def __getstate__(self) -> dict[str, Any]:
        return {"space_name": self.space_name, "_space": None}


def _ray_classes() -> tuple[type, type]:
    """:class:`StudySearch` and :class:`StudyRecorder`, defined on the first call.

    They subclass Ray classes, so they cannot exist before Ray is imported; they are still
    module-level names, which Tune needs to unpickle a saved experiment.
    """
    if "StudySearch" in globals():
        return globals()["StudySearch"], globals()["StudyRecorder"]
    import_ray()
    from optuna.storages._heartbeat import is_heartbeat_enabled
    from optuna.trial import TrialState
    from ray import tune
    from ray.tune.search import Searcher
    from ray.tune.search.optuna import OptunaSearch

    class StudySearch(OptunaSearch):
        """Ray's OptunaSearch on the study's own storage, sampler and define-by-run space.

        ``suggest`` asks the study for a trial (a queued one first: presets, retries of failed
        trials), samples the space on it and hands the Ray trial the Optuna trial id. Results
        are not told from here: the worker writes them to the storage itself, and
        :class:`StudyRecorder` writes what only the driver sees. The search finishes once the
        study holds the target of finished trials (every process counted), after the deadline,
        or when failures outnumber the target.
        """

        def __init__(
            self,
            spec: StudySpec,
            storage: str,
            study_name: str,
            run_key: str,
            target: int,
            deadline: float | None,
        ) -> None:
            if spec.mode == "pareto":
                metric, mode = ["val_miou", "latency_ms"], ["max", "min"]
            else:
                metric, mode = "val_miou", "max"
            super().__init__(
                space=_DefineByRun(spec.space),
                metric=metric,
                mode=mode,
                sampler=make_sampler(spec),  # the spec's sampler, as the local backend
                study_name=study_name,
                storage=open_storage(storage),
            )
            self._run_key = run_key
            self._target = target
            self._deadline = deadline
            self._in_flight: set[str] = set()
            self._failed = 0
            self._finished_seen = (0, 0.0)  # (count, when read): the storage is read at most 1/s

        def _control(self) -> _RunControl:
            return _RUNS.get(self._run_key) or _RunControl(self._target, self._deadline)

        def _finished(self) -> int:
            count, when = self._finished_seen
            if time.time() - when > 1.0:
                count = finished_count(self._ot_study)
                self._finished_seen = (count, time.time())
            return count

        def _may_start(self) -> bool | str | None:
            control = self._control()
            out_of_time = control.deadline is not None and time.time() >= control.deadline
            too_many_failures = self._failed > max(control.target, 1)
            if (
                out_of_time
                or too_many_failures
                or self._finished() + len(self._in_flight) >= control.target
            ):
                if self._in_flight:
                    return None  # wait: a trial in flight may fail and need a replacement
                return Searcher.FINISHED
            return True

        def suggest(self, trial_id: str) -> dict | str | None:
            if trial_id not in self._ot_trials:  # a new Ray trial (a restored one is known)
                verdict = self._may_start()
                if verdict is not True:
                    return verdict
                if is_heartbeat_enabled(self._ot_study._storage):
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                        optuna.storages.fail_stale_trials(self._ot_study)
            params = super().suggest(trial_id)
            ot_trial = self._ot_trials[trial_id]
            self._ot_study._storage.set_trial_system_attr(
                ot_trial._trial_id, RAY_EXPERIMENT_ATTR, self._run_key
            )
            self._in_flight.add(trial_id)
            return {
                "params": params,
                TRIAL_ID_KEY: ot_trial._trial_id,
                TRIAL_NUMBER_KEY: ot_trial.number,
            }

        def on_trial_result(self, trial_id: str, result: dict) -> None:
            """Nothing: the worker reports intermediate values to the storage itself."""

        def on_trial_complete(
            self, trial_id: str, result: dict | None = None, error: bool = False
        ) -> None:
            self._in_flight.discard(trial_id)
            self._finished_seen = (0, 0.0)
            self._completed_trials.add(trial_id)
            ot_trial = self._ot_trials.get(trial_id)
            if ot_trial is None:
                return
            state = self._ot_study._storage.get_trial(ot_trial._trial_id).state
            if error or state == TrialState.FAIL:
                self._failed += 1

    class StudyRecorder(tune.Callback):
        """Writes to the storage what only the driver sees, then calls the study callbacks.

        A Ray trial that errored (its worker died on every attempt) fails its Optuna trial
        with the Ray error as ``failure_reason``; one that a scheduler stopped between two
        epochs is pruned with ``pruned_reason``. The Optuna-style callbacks of the run
        (``callback(study, frozen_trial)``) see every finished trial.
        """

        def __init__(self, storage: str, study_name: str, run_key: str) -> None:
            self._storage_url = storage
            self._study_name = study_name
            self._run_key = run_key
            self._study = None

        def __getstate__(self) -> dict[str, Any]:
            return {**self.__dict__, "_study": None}

        def _load(self) -> Any:
            if self._study is None:
                self._study = optuna.load_study(
                    study_name=self._study_name,
                    storage=open_storage(self._storage_url),
                    sampler=optuna.samplers.RandomSampler(),
                )
            return self._study

        def _frozen(self, trial: Any) -> optuna.trial.FrozenTrial | None:
            trial_id = (trial.config or {}).get(TRIAL_ID_KEY)
            if trial_id is None:
                return None
            return self._load()._storage.get_trial(int(trial_id))

        def _finish(self, frozen: Any, state: Any, key: str, reason: str) -> None:
            study = self._load()
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError, RuntimeError):
                study._storage.set_trial_user_attr(frozen._trial_id, key, reason)
                study.tell(frozen.number, state=state)

        def _notify(self, frozen: Any) -> None:
            control = _RUNS.get(self._run_key)
            if frozen is None or control is None:
                return
            study = self._load()
            final = study._storage.get_trial(frozen._trial_id)
            for callback in control.callbacks:
                callback(study, final)

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info) -> None:
            frozen = self._frozen(trial)
            if frozen is not None and frozen.state == TrialState.RUNNING:
                last = trial.last_result or {}
                epoch = last.get("epoch", "?")
                miou = last.get("val_miou", math.nan)
                self._finish(
                    frozen,
                    TrialState.PRUNED,
                    "pruned_reason",
                    f"stopped by the ASHA scheduler after epoch {epoch} (val mIoU {miou:.4f})",
                )
            self._notify(frozen)

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info) -> None:
            frozen = self._frozen(trial)
            if frozen is not None and frozen.state == TrialState.RUNNING:
                self._finish(frozen, TrialState.FAIL, "failure_reason", _ray_error_text(trial))
            self._notify(frozen)

    for cls in (StudySearch, StudyRecorder):
        cls.__module__ = __name__
        cls.__qualname__ = cls.__name__
        globals()[cls.__name__] = cls
    return StudySearch, StudyRecorder


def __getattr__(name: str) -> Any:
    # StudySearch and StudyRecorder subclass Ray classes: defined on first use, so importing
    # this module never needs Ray, and found by name when Tune unpickles a saved experiment.
    if name in _RAY_CLASSES:
        return dict(zip(_RAY_CLASSES, _ray_classes(), strict=True))[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _stored_error(trial: Any) -> Any:
    """The last error Tune stored for a trial: the exception when it was picklable, else text.

    Read from the driver's staging copy first: the synced copy may not exist yet.
    """
    from ray import cloudpickle

    with contextlib.suppress(Exception):
        if trial.pickled_error_file and Path(trial.pickled_error_file).is_file():
            return cloudpickle.loads(Path(trial.pickled_error_file).read_bytes())
    with contextlib.suppress(Exception):
        if trial.error_file and Path(trial.error_file).is_file():
            # The file appends "Failure # N (occurred at ...)" and the error for every failure.
            return Path(trial.error_file).read_text().rsplit("Failure # ", 1)[-1].split("\n", 1)[-1]
    with contextlib.suppress(Exception):
        return trial.get_pickled_error() or trial.get_error()
    return None


def _ray_error_text(trial: Any) -> str:
    """One line saying why a Ray trial errored, from the error Tune stored for it."""
    error = _stored_error(trial)
    text = str(error) if error is not None else ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    attempts = getattr(getattr(trial, "run_metadata", None), "num_failures", None)
    head = f"the Ray trial {trial.trial_id} failed"
    if attempts:
        head += f" on each of its {attempts} attempt(s)"
    if not lines:
        return head + " (see error.txt in its trial directory)"
    # A RayActorError says the worker process (or its node) is gone in its first line; a
    # RayTaskError ends with the exception the trial raised.
    died = "died" in lines[0].lower()
    detail = f"its worker process died: {lines[0]}" if died else lines[-1]
    return f"{head}; {detail}"[:1000]


# ---------------------------------------------------------------------------------------------
# run


@dataclass
class RayStudyRun(StudyRun):
    """What one ``run_study_ray`` call did: a :class:`StudyRun`, where Tune kept its state, and
    the numbers of the interrupted trials it failed and queued again."""

    experiment_path: str = ""
    resumed: bool = False
    requeued: list[int] = dataclasses.field(default_factory=list)


def requeue_interrupted(study: optuna.Study, run_key: str) -> list[int]:
    """Fail the RUNNING trials an earlier driver of this experiment left behind; queue them again.

    A driver that dies (or is interrupted) leaves the Optuna trials it had asked RUNNING, and
    Tune's saved experiment may not even know the newest of them. Nothing runs them any more:
    the same experiment (``run_key``: host and experiment directory) can have only one driver.
    Each is failed with a ``failure_reason`` and queued again with its parameters (marked like
    Optuna's RetryFailedTrialCallback does: ``failed_trial`` and ``retry_history`` system
    attributes), so it runs once more as a new trial. Returns the numbers of the failed trials.
    """
    from optuna.trial import TrialState

    storage = study._storage
    requeued = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if trial.system_attrs.get(RAY_EXPERIMENT_ATTR) != run_key:
            continue
        try:
            storage.set_trial_user_attr(
                trial._trial_id,
                "failure_reason",
                "interrupted: the Ray driver that ran this trial stopped; queued again",
            )
            storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # it finished (or another process failed it) meanwhile
        history = [*trial.system_attrs.get("retry_history", []), trial.number]
        retry = {"failed_trial": trial.system_attrs.get("failed_trial", trial.number)}
        study.add_trial(
            optuna.trial.create_trial(
                state=TrialState.WAITING,
                params=trial.params,
                distributions=trial.distributions,
                system_attrs={**retry, "retry_history": history},
            )
        )
        requeued.append(trial.number)
    return requeued


def experiment_dir(study_name: str, storage_path: str | Path | None = None) -> Path:
    """Where Tune keeps the experiment of a study: ``<storage_path>/jetsearch-<study name>``."""
    root = Path(storage_path or DEFAULT_RESULTS_DIR).expanduser().resolve()
    return root / f"jetsearch-{study_name}"


def run_study_ray(
    spec: StudySpec,
    *,
    trials: int,
    storage: str | None = None,
    name: str | None = None,
    address: str | None = None,
    gpus_per_trial: float = 0.0,
    cpus_per_trial: float = 1,
    max_concurrent: int = 1,
    resume: bool = False,
    timeout_s: float | None = None,
    storage_path: str | Path | None = None,
    max_failures: int = 2,
    scheduler: Literal["auto", "fifo", "asha"] = "auto",
    callbacks: Sequence[Callable] = (),
    verbose: int = 1,
) -> RayStudyRun:
    """Create or resume the study and run it with Ray Tune until it holds ``trials`` finished.

    Args:
        spec: the study (see :mod:`jetsearch.study`).
        trials: run until the study holds this many finished trials (any process, any backend).
        storage: the Optuna storage (default: the spec's, else the journal file). Several
            machines need PostgreSQL (or a journal file on a filesystem every node mounts).
        name: the study name (default: the spec's).
        address: the Ray cluster: ``None`` starts Ray on this machine, ``"auto"`` joins the
            cluster this machine belongs to, ``"ray://HOST:10001"`` connects as a Ray Client.
            Ignored when Ray is already initialised in this process.
        gpus_per_trial, cpus_per_trial: resources Tune reserves for each trial (fractions allowed
            for GPUs: 0.5 runs two trials per GPU). Training threads follow ``cpus_per_trial``
            unless the spec sets ``train.threads``.
        max_concurrent: trials running at once (more only if the cluster has the resources).
        resume: restore the Tune experiment of an interrupted driver (``Tuner.restore``) and
            run its trials in flight again; without it a new experiment continues the study.
        timeout_s: start no trial after this many seconds (trials in flight finish).
        storage_path: root of Tune's experiment directories (default ``~/ray_results``); the
            experiment is ``<storage_path>/jetsearch-<study name>``. On a multi-node cluster use
            a path every node sees (a shared filesystem).
        max_failures: times a trial whose worker or node died is run again.
        scheduler: ``"auto"``: FIFO in pareto mode, ASHA on the per-epoch val mIoU in budget
            mode (ASHA then replaces the study's median pruner); ``"fifo"`` or ``"asha"`` force
            one (ASHA needs budget mode).
        callbacks: Optuna-style ``callback(study, frozen_trial)`` called in this process after
            each finished trial (not with a Ray Client driver, whose Tune loop runs remotely).
        verbose: Tune's console output, 0 (quiet) to 3.
    """
    ray, tune = import_ray()
    search_cls, recorder_cls = _ray_classes()
    problems = []
    if trials < 1:
        problems.append(f"trials={trials} must be >= 1")
    if not cpus_per_trial > 0:
        problems.append(f"cpus_per_trial={cpus_per_trial} must be > 0")
    if gpus_per_trial < 0:
        problems.append(f"gpus_per_trial={gpus_per_trial} must be >= 0")
    if max_concurrent < 1:
        problems.append(f"max_concurrent={max_concurrent} must be >= 1")
    if max_failures < 0:
        problems.append(f"max_failures={max_failures} must be >= 0")
    if scheduler not in ("auto", "fifo", "asha"):
        problems.append(f"scheduler={scheduler!r} must be auto, fifo or asha")
    if problems:
        raise StudyError("run_study_ray: " + "; ".join(problems))
    use_asha = scheduler == "asha" or (scheduler == "auto" and spec.mode == "budget")
    if use_asha and spec.mode != "budget":
        raise StudyError(
            "the ASHA scheduler stops trials on their per-epoch val mIoU, which only budget "
            "mode has; pareto mode runs every trial to the end (scheduler fifo)"
        )
    faults = parse_faults(os.environ.get(FAULTS_ENV, ""))

    spec = portable_spec(spec)
    if use_asha and spec.pruner != "none":
        spec = dataclasses.replace(spec, pruner="none")  # ASHA does the pruning
    url = portable_storage(storage_url(spec, storage))
    if url.startswith("sqlite") and max_concurrent > 1:
        raise StudyError(
            "SQLite storage cannot be shared safely by several trial processes (writers lock "
            "the whole file and fail under contention); use a journal file path on one "
            "machine, or PostgreSQL (--storage postgresql://...) on a cluster"
        )
    if address and not is_server_storage(url):
        warnings.warn(
            f"storage {url} is a file: every node of the Ray cluster must see it at this path "
            "(a shared filesystem); otherwise use PostgreSQL (--storage postgresql://...)",
            stacklevel=2,
        )

    from jetsearch.space import load_space

    study_name = name or spec.name
    space = load_space(spec.space)
    study = create_or_load_study(spec, url, study_name)
    if spec.enqueue_presets and not resume:
        enqueue_presets(study, spec, space)
    before = finished_count(study)
    check = LatencyChain(spec)  # fails here, with the reasons, when no provider is usable
    check.close()

    exp_dir = experiment_dir(study_name, storage_path)
    run_key = f"{socket.gethostname()}:{exp_dir}"
    if resume and not tune.Tuner.can_restore(str(exp_dir)):
        raise StudyError(
            f"nothing to resume: no Ray Tune experiment at {exp_dir} (run without --resume to "
            "continue the study in a new experiment, or pass the --ray-results it ran with)"
        )
    requeued = requeue_interrupted(study, run_key)
    started_ray = False
    if not ray.is_initialized():
        init_kwargs: dict[str, Any] = {"address": address, "log_to_driver": verbose > 0}
        if address is None:
            init_kwargs["include_dashboard"] = False
        ray.init(**init_kwargs)
        started_ray = True
    start = time.time()
    control = _RunControl(
        trials, start + timeout_s if timeout_s is not None else None, tuple(callbacks)
    )
    _RUNS[run_key] = control
    interrupted = False
    sources = ""
    try:
        service = start_latency_service(spec)
        sources = ray.get(service.describe.remote())
        env = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("JETSEARCH_")))
        settings = RaySettings(
            spec=spec,
            storage=url,
            study_name=study_name,
            latency_service=latency_service_name(spec),
            threads=spec.train.threads or max(1, int(cpus_per_trial)),
            faults=tuple(sorted(faults.items())),
            env=env,
        )
        trainable = tune.with_resources(
            tune.with_parameters(ray_trial, settings=settings),
            {"cpu": cpus_per_trial, "gpu": gpus_per_trial},
        )
        if resume:
            tuner = tune.Tuner.restore(str(exp_dir), trainable, resume_unfinished=True)
        else:
            searcher = search_cls(spec, url, study_name, run_key, trials, control.deadline)
            tuner = _new_tuner(
                tune,
                trainable,
                searcher,
                recorder_cls(url, study_name, run_key),
                exp_dir,
                epochs=spec.train.epochs,
                max_concurrent=max_concurrent,
                max_failures=max_failures,
                use_asha=use_asha,
                verbose=verbose,
            )
        results = tuner.fit()
        # Tune ends a run on Ctrl-C (saving its state) with trials neither finished nor errored.
        interrupted = results.num_terminated + results.num_errors < len(results)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        _RUNS.pop(run_key, None)
        if started_ray:
            ray.shutdown()
        # Tune has stopped every trial by now: any still RUNNING was cut off (Ctrl-C).
        cut_off = requeue_interrupted(create_or_load_study(spec, url, study_name), run_key)
        requeued += cut_off
    interrupted = interrupted or bool(cut_off)
    after = finished_count(create_or_load_study(spec, url, study_name))
    return RayStudyRun(
        study_name=study_name,
        storage=url,
        finished_before=before,
        finished_after=after,
        wall_s=time.time() - start,
        interrupted=interrupted,
        latency_sources=sources,
        experiment_path=str(exp_dir),
        resumed=resume,
        requeued=requeued,
    )


def _new_tuner(
    tune: Any,
    trainable: Any,
    searcher: Any,
    recorder: Any,
    exp_dir: Path,
    *,
    epochs: int,
    max_concurrent: int,
    max_failures: int,
    use_asha: bool,
    verbose: int,
) -> Any:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if use_asha:
        # max_t one past the last epoch: the final report (after the result is stored) must
        # not be the one that stops the trial.
        trial_scheduler = ASHAScheduler(
            metric="val_miou",
            mode="max",
            time_attr="training_iteration",
            max_t=epochs + 1,
            grace_period=1,
            reduction_factor=2,
        )
    else:
        trial_scheduler = FIFOScheduler()
    run_config_cls = getattr(tune, "RunConfig", None)
    failure_config_cls = getattr(tune, "FailureConfig", None)
    if run_config_cls is None or failure_config_cls is None:  # Ray < 2.40 keeps them in train
        from ray import train

        run_config_cls, failure_config_cls = train.RunConfig, train.FailureConfig
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=trial_scheduler,
            num_samples=-1,  # the searcher says when the study is done
            max_concurrent_trials=max_concurrent,
            # A worker process runs trial after trial: torch, the data and the space are loaded
            # once per process, not once per trial (a stopped trial's process is replaced).
            reuse_actors=True,
            trial_name_creator=_trial_name,
            trial_dirname_creator=_trial_dirname,
        ),
        run_config=run_config_cls(
            name=exp_dir.name,
            storage_path=str(exp_dir.parent),
            failure_config=failure_config_cls(max_failures=max_failures),
            callbacks=[recorder],
            verbose=verbose,
        ),
    )
