"""Ray Tune backend: a study's trials run as Ray Tune trials, on this machine or a Ray cluster.

:func:`run_study_ray` runs the same study as :func:`jetsearch.study.run_study` (same space,
objective, latency providers, stored attributes and Optuna storage); Ray Tune only schedules::

    driver (jetsearch study --backend ray)          Ray workers, one process per running trial
    StudySearcher: study.ask() with the study's     run_ray_trial: reopens that Optuna trial,
      sampler, samples the space on it, hands   ->    runs jetsearch.objective.Objective on it and
      the trial number to a new Ray trial             study.tell()s the result
    scheduler: FIFO (pareto), ASHA (budget mode)    LatencyService: one Ray actor per target,
    StudyRecorder: a worker that died, ASHA stops     measuring one network at a time

Why a Tune ``Searcher`` over Optuna's ask-and-tell rather than Ray tasks each running the
study's worker loop: Tune keeps doing what it is for (per-trial CPU/GPU reservations, rerunning a
dead worker's trial on the *same* Optuna trial, ASHA between epochs, ``Tuner.restore`` for
``--resume``) and one sampler in the driver sees every trial as it is asked, as in the local
backend; worker loops would each sample alone and need hand-made retries and scheduling. Only
public APIs are used: ``study.ask`` / ``study.tell``, ``optuna.trial.Trial(study, trial_id)``
(how ``ask`` builds a trial; the worker reopens the asked one), the storage's own methods for
trial ids, attributes and heartbeats, a pruner (consulted after each ``trial.report``) that
forwards every epoch to ``tune.report``; Ray's ``Searcher``, ``Callback``, ``Tuner``.

A Ray-run trial stores three more user attributes than a local one (:data:`RAY_USER_ATTRS`).
When something fails: a trial that raises is FAILED with ``failure_reason`` and the study goes
on; a worker process or node that dies is rerun on the same Optuna trial up to ``max_failures``
times, then FAILED with the Ray error; the trials in flight of a driver that died or was stopped
are FAILED and queued again by the next run of the same experiment, or by the driver itself
(:func:`requeue_interrupted`). On PostgreSQL workers beat a heartbeat, so any process of the
study recovers the trials of a dead one. The run stops once the study holds ``trials`` finished
trials (every process counted), starts none after ``timeout_s``, and stops when its failures
outnumber ``trials``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import json
import math
import os
import socket
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import optuna
from optuna.trial import TrialState

from jetsearch.latency.chain import LatencyChain
from jetsearch.objective import Objective, load_data
from jetsearch.recovery import record_owner
from jetsearch.study import (
    StudyError,
    StudyRun,
    StudySpec,
    create_or_load_study,
    enqueue_presets,
    finished_count,
    heartbeat_settings,
    make_sampler,
    open_storage,
    storage_url,
)

try:  # the [ray] extra: without it this module still imports, and run_study_ray says so
    import ray
    from ray import cloudpickle, tune
    from ray.tune import Callback as TuneCallback
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import Searcher
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
except ImportError:
    TuneCallback = Searcher = object

RAY_INSTALL_HINT = "pip install 'jetsearch[ray]'"
RAY_NAMESPACE = "jetsearch"
DEFAULT_RESULTS_DIR = "~/ray_results"
RAY_USER_ATTRS = ("ray_trial_id", "ray_node", "ray_attempt")
TRIAL_NUMBER_KEY = "optuna_trial_number"  # in the config the searcher hands each Ray trial
# System attribute naming the Ray experiment (host and directory) whose driver asked a trial.
RAY_EXPERIMENT_ATTR = "jetsearch:ray_experiment"
ObjectiveWrapper = Callable[[Objective], Callable[[optuna.trial.Trial], Any]]


def import_ray() -> tuple[Any, Any]:
    """``ray`` and ``ray.tune``, or a :class:`StudyError` that says what to install."""
    try:
        import ray
        from ray import tune
    except ImportError as err:
        raise StudyError(
            f"the Ray backend needs Ray Tune, which is not importable ({err}); "
            f"install it with: {RAY_INSTALL_HINT}"
        ) from err
    return ray, tune


def _absolute(path: str) -> str:
    return str(Path(path).expanduser().resolve())


def portable_spec(spec: StudySpec) -> StudySpec:
    """The spec with its relative file paths made absolute (Tune runs trials elsewhere)."""
    latency = dataclasses.replace(
        spec.latency,
        cache=_absolute(spec.latency.cache) if spec.latency.cache else None,
        token_file=_absolute(spec.latency.token_file) if spec.latency.token_file else None,
    )
    space = spec.space  # a built-in name (space: tiny) stays a name
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


def trial_id_of(storage: Any, study_name: str, number: int) -> int:
    """The storage's id of trial ``number`` (what its per-trial methods take)."""
    study_id = storage.get_study_id_from_name(study_name)
    return storage.get_trial_id_from_study_id_trial_number(study_id, number)


# ---------------------------------------------------------------------------------------------
# latency: one measurement at a time per target


def latency_service_name(spec: StudySpec) -> str:
    """The Ray actor name of the latency service for this target and these latency settings."""
    digest = hashlib.sha256(repr((spec.target, spec.latency)).encode()).hexdigest()[:10]
    return f"jetsearch-latency-{spec.target}-{digest}"


class LatencyService:
    """The study's latency chain in a Ray actor that measures one network at a time.

    Two networks timed at once on one board (or CPU) would measure the contention: the actor
    runs with ``max_concurrency=1``, so every trial's calls run in turn. ``intervals`` returns
    the (start, end) wall times of every measurement.
    """

    def __init__(self, spec: StudySpec) -> None:
        self.chain = LatencyChain(spec)
        self.times: list[tuple[float, float]] = []

    def describe(self) -> str:
        return self.chain.describe()

    def measure(self, onnx_bytes: bytes, config: Any) -> tuple[Any, list[str]]:
        start = time.time()
        try:
            return self.chain.measure(onnx_bytes, config)
        finally:
            self.times.append((start, time.time()))

    def intervals(self) -> list[tuple[float, float]]:
        return list(self.times)


class LatencyClient:
    """What the Objective needs of a LatencyChain, answered by the actor (its exceptions too)."""

    def __init__(self, service_name: str) -> None:
        self.actor = ray.get_actor(service_name, namespace=RAY_NAMESPACE)

    def measure(self, onnx_bytes: bytes, config: Any) -> tuple[Any, list[str]]:
        return ray.get(self.actor.measure.remote(onnx_bytes, config))

    def describe(self) -> str:
        return ray.get(self.actor.describe.remote())

    def close(self) -> None:
        """Nothing to close: the actor serves the next trials."""


def start_latency_service(spec: StudySpec) -> Any:
    """The latency actor for ``spec`` (shared by name; it lives as long as this handle).

    Placed on the driver's node when it can be: that is the machine ``local`` measures.
    """
    options: dict[str, Any] = {
        "name": latency_service_name(spec),
        "namespace": RAY_NAMESPACE,
        "get_if_exists": True,
        "num_cpus": 0,  # it waits on a board or times briefly; trials own the CPUs
        "max_concurrency": 1,
        "max_restarts": 3,
    }
    with contextlib.suppress(Exception):  # Ray Client drivers have no node of their own
        node = ray.get_runtime_context().get_node_id()
        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node, soft=True)
    return ray.remote(LatencyService).options(**options).remote(spec)


# ---------------------------------------------------------------------------------------------
# the Ray trial, in a Ray worker process


@dataclass(frozen=True)
class RaySettings:
    """What a Ray worker needs to run trials of one study; ``objective_wrapper`` (picklable)
    wraps the Objective once per worker process (logging, or the tests' injected failures)."""

    spec: StudySpec
    storage: str
    study_name: str
    latency_service: str
    threads: int = 1
    env: tuple[tuple[str, str], ...] = ()
    objective_wrapper: ObjectiveWrapper | None = None


class EpochsToTune(optuna.pruners.BasePruner):
    """The study's pruner, after reporting the epoch's val mIoU to Tune (for ASHA)."""

    def __init__(self, inner: optuna.pruners.BasePruner) -> None:
        self.inner = inner

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        if trial.last_step is not None:
            tune.report(
                {
                    "val_miou": float(trial.intermediate_values[trial.last_step]),
                    "epoch": trial.last_step,
                    "latency_ms": float(trial.user_attrs.get("latency_ms", math.nan)),
                }
            )
        return self.inner.prune(study, trial)


@contextlib.contextmanager
def heartbeat(storage: Any, trial_id: int) -> Any:
    """Beat the trial's heartbeat while it runs, on storages that have one (RDB with a period)."""
    is_rdb = isinstance(storage, optuna.storages.RDBStorage)
    interval = storage.get_heartbeat_interval() if is_rdb else None
    stop = threading.Event()

    def beat() -> None:
        while not stop.is_set():
            with contextlib.suppress(Exception):  # a missed beat is retried next period
                storage.record_heartbeat(trial_id)
            stop.wait(interval)

    thread = threading.Thread(target=beat, daemon=True)
    if interval:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        if interval:
            thread.join()


_WORKERS: dict[str, tuple[Any, optuna.Study, Callable]] = {}  # data and space built once


def trial_worker(settings: RaySettings) -> tuple[Any, optuna.Study, Callable]:
    """(storage, study, objective) of this worker process for ``settings``."""
    key = repr((settings.storage, settings.study_name, settings.spec))
    if key not in _WORKERS:
        import torch

        from jetsearch.space import load_space

        torch.set_num_threads(settings.threads)
        spec = settings.spec
        # Every parameter was suggested by the driver's sampler; the worker only reads them.
        random = optuna.samplers.RandomSampler()
        study = create_or_load_study(spec, settings.storage, settings.study_name, sampler=random)
        study.pruner = EpochsToTune(study.pruner)
        latency = LatencyClient(settings.latency_service)
        # Owner record and heartbeat as in a local study, so a process that shares the storage
        # can tell a live Ray trial from a dead one (jetsearch.recovery).
        interval_s, _ = heartbeat_settings()
        server = "://" in settings.storage and not settings.storage.startswith("sqlite")
        objective = Objective(
            spec,
            load_space(spec.space),
            latency,
            load_data(spec),
            heartbeat_s=None if server else interval_s,  # servers keep Optuna's heartbeat
        )
        if settings.objective_wrapper is not None:
            objective = settings.objective_wrapper(objective)
        _WORKERS[key] = (open_storage(settings.storage), study, objective)
    return _WORKERS[key]


def run_ray_trial(config: dict[str, Any], settings: RaySettings) -> None:
    """One Ray Tune trial: the study's Objective on the Optuna trial the searcher asked.

    The parameters are in the storage already, so ``space.sample`` on the reopened trial
    reproduces the network; the result is told to the study here. A trial no longer RUNNING
    (failed by a heartbeat check while this Ray trial waited for a retry) is left alone.
    """
    os.environ.update(dict(settings.env))  # the driver's JETSEARCH_* variables hold here too
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage, study, objective = trial_worker(settings)
    trial_id = trial_id_of(storage, settings.study_name, int(config[TRIAL_NUMBER_KEY]))
    frozen = storage.get_trial(trial_id)
    if frozen.state == TrialState.RUNNING:
        trial = optuna.trial.Trial(study, trial_id)
        trial.set_user_attr("ray_attempt", int(frozen.user_attrs.get("ray_attempt", 0)) + 1)
        trial.set_user_attr("ray_trial_id", tune.get_context().get_trial_id())
        trial.set_user_attr("ray_node", socket.gethostname())
        with heartbeat(storage, trial_id):
            state, values = run_objective(objective, trial)
        study.tell(trial, values, state=state, skip_if_finished=True)
        gc.collect()  # the process runs the next trial: free this one's model and tensors
    frozen = storage.get_trial(trial_id)  # Tune's own table shows its last report
    values = frozen.values or [math.nan]
    latency_ms = float(frozen.user_attrs.get("latency_ms", math.nan))
    tune.report(
        {"val_miou": float(values[0]), "latency_ms": latency_ms, "optuna_state": frozen.state.name}
    )


def run_objective(objective: Callable, trial: optuna.trial.Trial) -> tuple[TrialState, Any]:
    """(state, values) of one run of the objective, as ``study.optimize`` with catch=Exception."""
    try:
        return TrialState.COMPLETE, objective(trial)
    except optuna.TrialPruned:
        return TrialState.PRUNED, None
    except Exception as err:
        if "failure_reason" not in trial.user_attrs:
            trial.set_user_attr("failure_reason", f"{type(err).__name__}: {err}")
        warnings.warn(f"trial {trial.number} failed: {traceback.format_exc()}", stacklevel=1)
        return TrialState.FAIL, None


def _trial_name(trial: Any) -> str:
    return f"optuna-{trial.config.get(TRIAL_NUMBER_KEY, '?')}"


def _trial_dirname(trial: Any) -> str:
    return f"optuna-{trial.config.get(TRIAL_NUMBER_KEY, 'x')}-{trial.trial_id}"


# ---------------------------------------------------------------------------------------------
# the driver side


@dataclass
class RunControl:
    """One run as the driver's searcher and recorder see it; pickled with the Tune experiment.

    A restored experiment unpickles the searcher and recorder of the run that started it: they
    use the live run of their experiment (:meth:`live`) for its target, deadline and callbacks,
    or the pickled copy (no callbacks) where there is none, as in a Ray Client driver.
    """

    spec: StudySpec
    storage: str
    study_name: str
    run_key: str  # "host:experiment dir": one driver at a time per experiment
    target: int
    deadline: float | None
    callbacks: tuple[Callable, ...] = ()
    opened: tuple[optuna.Study, Any, Any] | None = None

    def __getstate__(self) -> dict[str, Any]:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return fields | {"callbacks": (), "opened": None}

    def live(self) -> RunControl:
        return _RUNS.get(self.run_key, self)

    def open(self) -> tuple[optuna.Study, Any, Any]:
        """(study with the spec's sampler, its storage, the space), opened on first use."""
        if self.opened is None:
            from jetsearch.space import load_space

            storage = open_storage(self.storage)
            study = optuna.load_study(study_name=self.study_name, storage=storage)
            # As run_worker_process: a continued study must not replay the seeded stream.
            study.sampler = make_sampler(self.spec, 1000 * len(study.get_trials(deepcopy=False)))
            self.opened = (study, storage, load_space(self.spec.space))
        return self.opened


_RUNS: dict[str, RunControl] = {}  # run_key -> the run in progress in this driver process


class StudySearcher(Searcher):
    """Asks the study for each new Ray trial (a queued one first: presets, requeued trials) and
    samples the space on it, so the study's sampler picks every parameter; finishes once the
    study holds the target (every process counted), after the deadline, or when failures
    outnumber the target."""

    def __init__(self, control: RunControl) -> None:
        super().__init__()
        self.control = control
        self.in_flight: set[str] = set()
        self.failed = 0
        self.finished_seen = (0, 0.0)  # (count, when read): the storage is read at most 1/s

    def suggest(self, ray_trial_id: str) -> dict | str | None:
        live = self.control.live()
        study, storage, space = self.control.open()
        if time.time() - self.finished_seen[1] > 1.0:
            self.finished_seen = (finished_count(study), time.time())
        if (
            (live.deadline is not None and time.time() >= live.deadline)
            or self.failed > max(live.target, 1)
            or self.finished_seen[0] + len(self.in_flight) >= live.target
        ):
            # Wait while trials are in flight: one may fail and need a replacement.
            return None if self.in_flight else Searcher.FINISHED
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            # The worker beats the heartbeat of an asked trial (Optuna warns it would not).
            warnings.filterwarnings("ignore", "Heartbeat of storage is supposed to be used")
            optuna.storages.fail_stale_trials(study)  # no-op without heartbeats
            trial = study.ask()
            record_owner(trial)  # the driver owns it until a worker takes it over
        space.sample(trial)
        trial_id = trial_id_of(storage, live.study_name, trial.number)
        storage.set_trial_system_attr(trial_id, RAY_EXPERIMENT_ATTR, live.run_key)
        self.in_flight.add(ray_trial_id)
        return {"params": trial.params, TRIAL_NUMBER_KEY: trial.number}

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        self.in_flight.discard(trial_id)
        self.finished_seen = (0, 0.0)
        if error or (result or {}).get("optuna_state") == TrialState.FAIL.name:
            self.failed += 1

    def save(self, checkpoint_path: str) -> None:
        # The study's storage holds the search state; this is only the failure count.
        Path(checkpoint_path).write_text(json.dumps({"failed": self.failed}))

    def restore(self, checkpoint_path: str) -> None:
        self.failed = int(json.loads(Path(checkpoint_path).read_text())["failed"])


class StudyRecorder(TuneCallback):
    """Writes what only the driver sees, then calls the run's ``callback(study, frozen_trial)``.

    A Ray trial that errored (its worker died on every attempt) fails its Optuna trial with the
    Ray error as ``failure_reason``; one ASHA stopped between two epochs is PRUNED with
    ``pruned_reason``.
    """

    def __init__(self, control: RunControl) -> None:
        self.control = control

    def finish(self, trial: Any, state: TrialState, key: str, reason: str) -> None:
        study, storage, _ = self.control.open()
        if (number := (trial.config or {}).get(TRIAL_NUMBER_KEY)) is None:
            return
        trial_id = trial_id_of(storage, self.control.study_name, int(number))
        if storage.get_trial(trial_id).state == TrialState.RUNNING:
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                storage.set_trial_user_attr(trial_id, key, reason)
                study.tell(int(number), state=state, skip_if_finished=True)
        for callback in self.control.live().callbacks:
            callback(study, storage.get_trial(trial_id))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        last = trial.last_result or {}
        reason = (
            f"stopped by the ASHA scheduler after epoch {last.get('epoch', '?')} "
            f"(val mIoU {last.get('val_miou', math.nan):.4f})"
        )
        self.finish(trial, TrialState.PRUNED, "pruned_reason", reason)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.finish(trial, TrialState.FAIL, "failure_reason", ray_error_text(trial))


def ray_error_text(trial: Any) -> str:
    """One line saying why a Ray trial errored, from the last error Tune stored for it."""
    error: Any = None
    for read in (  # the driver's own copy first: the synced one may not exist yet
        lambda: cloudpickle.loads(Path(trial.pickled_error_file).read_bytes()),
        trial.get_pickled_error,
        trial.get_error,
    ):
        with contextlib.suppress(Exception):
            error = error or read()
    lines = [line.strip() for line in str(error or "").splitlines() if line.strip()]
    head = f"the Ray trial {trial.trial_id} failed"
    if getattr(trial, "num_failures", None):
        head += f" on each of its {trial.num_failures} attempt(s)"
    if not lines:
        return head + " (see error.txt in its trial directory)"
    # A RayActorError says in its first line that the worker (or its node) died; a RayTaskError
    # ends with the exception the trial raised.
    died = "died" in lines[0].lower()
    return f"{head}; {f'its worker process died: {lines[0]}' if died else lines[-1]}"[:1000]


# ---------------------------------------------------------------------------------------------
# run


@dataclass
class RayStudyRun(StudyRun):
    """A :class:`StudyRun`, where Tune kept its state, and the trials failed and queued again."""

    experiment_path: str = ""
    resumed: bool = False
    requeued: list[int] = dataclasses.field(default_factory=list)


def requeue_interrupted(storage: Any, study_name: str, run_key: str) -> list[int]:
    """Fail the RUNNING trials an earlier driver of this experiment left behind; queue them again.

    Nothing runs them any more: one experiment (``run_key``: host and experiment directory) has
    one driver at a time. Each is failed with a ``failure_reason`` and queued again with its
    parameters, marked as Optuna's RetryFailedTrialCallback does (``failed_trial``,
    ``retry_history``). ``storage`` is an Optuna storage. Returns the failed trials' numbers.
    """
    study = optuna.load_study(study_name=study_name, storage=storage)
    requeued = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if trial.system_attrs.get(RAY_EXPERIMENT_ATTR) != run_key:
            continue
        trial_id = trial_id_of(storage, study_name, trial.number)
        reason = "interrupted: the Ray driver that ran this trial stopped; queued again"
        try:
            storage.set_trial_user_attr(trial_id, "failure_reason", reason)
            storage.set_trial_state_values(trial_id, TrialState.FAIL)
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
    objective_wrapper: ObjectiveWrapper | None = None,
) -> RayStudyRun:
    """Create or resume the study and run it with Ray Tune until it holds ``trials`` finished.

    Args:
        spec: the study; ``storage``, ``name``: override the spec's (default journal file).
            Several machines need PostgreSQL, or a journal file every node mounts.
        trials: run until the study holds this many finished trials (any process, any backend).
        address: ``None`` starts Ray on this machine, ``"auto"`` joins this machine's cluster,
            ``"ray://HOST:10001"`` connects as a Ray Client; ignored when Ray is initialised.
        gpus_per_trial, cpus_per_trial: what Tune reserves per trial (0.5 GPU: two trials per
            GPU); training threads follow ``cpus_per_trial`` unless the spec sets them.
        max_concurrent: trials running at once (as the cluster's resources allow).
        resume: restore the Tune experiment of an interrupted driver (``Tuner.restore``);
            without it a new experiment continues the study.
        timeout_s: start no trial after this many seconds (trials in flight finish).
        storage_path: root of Tune's experiments (default ``~/ray_results``; on a cluster a
            path every node sees); the experiment is ``<storage_path>/jetsearch-<study name>``.
        max_failures: times a trial whose worker or node died is run again.
        scheduler: ``"auto"``: FIFO in pareto mode, ASHA on the per-epoch val mIoU (in place of
            the median pruner) in budget mode; ``"fifo"`` or ``"asha"`` (budget mode) force one.
        callbacks: ``callback(study, frozen_trial)`` called here after each finished trial (not
            with a Ray Client driver, whose Tune loop runs remotely).
        verbose: Tune's console output, 0 (quiet) to 3.
        objective_wrapper: a picklable ``wrapper(objective) -> objective`` for every worker.
    """
    import_ray()
    problems = [
        rule
        for ok, rule in (
            (trials >= 1, f"trials={trials} must be >= 1"),
            (cpus_per_trial > 0, f"cpus_per_trial={cpus_per_trial} must be > 0"),
            (gpus_per_trial >= 0, f"gpus_per_trial={gpus_per_trial} must be >= 0"),
            (max_concurrent >= 1, f"max_concurrent={max_concurrent} must be >= 1"),
            (max_failures >= 0, f"max_failures={max_failures} must be >= 0"),
            (scheduler in ("auto", "fifo", "asha"), f"scheduler={scheduler!r}: auto, fifo, asha"),
        )
        if not ok
    ]
    if problems:
        raise StudyError("run_study_ray: " + "; ".join(problems))
    if spec.rungs:
        raise StudyError(
            "multi-fidelity rungs run on the local backend (jetsearch study without --backend "
            "ray, --jobs N for several processes); for Ray, remove rungs from the study"
        )
    use_asha = scheduler == "asha" or (scheduler == "auto" and spec.mode == "budget")
    if use_asha and spec.mode != "budget":
        raise StudyError(
            "the ASHA scheduler stops trials on their per-epoch val mIoU, which only budget "
            "mode has; pareto mode runs every trial to the end (scheduler fifo)"
        )
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
    if address and ("://" not in url or url.startswith("sqlite")):
        warnings.warn(
            f"storage {url} is a file: every node of the Ray cluster must see it at this path "
            "(a shared filesystem); otherwise use PostgreSQL (--storage postgresql://...)",
            stacklevel=2,
        )
    from jetsearch.space import load_space

    study_name = name or spec.name
    study = create_or_load_study(spec, url, study_name)
    if spec.enqueue_presets and not resume:
        enqueue_presets(study, spec, load_space(spec.space))
    before = finished_count(study)
    LatencyChain(spec).close()  # fails here, with the reasons, when no provider is usable
    exp_dir = experiment_dir(study_name, storage_path)
    run_key = f"{socket.gethostname()}:{exp_dir}"
    if resume and not tune.Tuner.can_restore(str(exp_dir)):
        raise StudyError(
            f"nothing to resume: no Ray Tune experiment at {exp_dir} (run without --resume to "
            "continue the study in a new experiment, or pass the --ray-results it ran with)"
        )
    requeued = requeue_interrupted(open_storage(url), study_name, run_key)
    started_ray = not ray.is_initialized()
    if started_ray:
        local = {"include_dashboard": False} if address is None else {}
        ray.init(address=address, log_to_driver=verbose > 0, **local)
    start = time.time()
    deadline = start + timeout_s if timeout_s is not None else None
    control = RunControl(spec, url, study_name, run_key, trials, deadline, tuple(callbacks))
    _RUNS[run_key] = control
    interrupted, sources, cut_off = False, "", []
    try:
        service = start_latency_service(spec)  # held: the actor lives as long as this handle
        sources = ray.get(service.describe.remote())
        settings = RaySettings(
            spec=spec,
            storage=url,
            study_name=study_name,
            latency_service=latency_service_name(spec),
            threads=spec.train.threads or max(1, int(cpus_per_trial)),
            env=tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("JETSEARCH_"))),
            objective_wrapper=objective_wrapper,
        )
        trainable = tune.with_resources(
            tune.with_parameters(run_ray_trial, settings=settings),
            {"cpu": cpus_per_trial, "gpu": gpus_per_trial},
        )
        if resume:
            tuner = tune.Tuner.restore(str(exp_dir), trainable, resume_unfinished=True)
        else:
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(
                    search_alg=StudySearcher(control),
                    scheduler=new_scheduler(use_asha, spec.train.epochs),
                    num_samples=-1,  # the searcher says when the study is done
                    max_concurrent_trials=max_concurrent,
                    # A worker process runs trial after trial: torch, the data and the space
                    # load once per process (a stopped trial's process is replaced).
                    reuse_actors=True,
                    trial_name_creator=_trial_name,
                    trial_dirname_creator=_trial_dirname,
                ),
                run_config=tune.RunConfig(
                    name=exp_dir.name,
                    storage_path=str(exp_dir.parent),
                    failure_config=tune.FailureConfig(max_failures=max_failures),
                    callbacks=[StudyRecorder(control)],
                    verbose=verbose,
                ),
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
        cut_off = requeue_interrupted(open_storage(url), study_name, run_key)
    return RayStudyRun(
        study_name=study_name,
        storage=url,
        finished_before=before,
        finished_after=finished_count(create_or_load_study(spec, url, study_name)),
        wall_s=time.time() - start,
        interrupted=interrupted or bool(cut_off),
        latency_sources=sources,
        experiment_path=str(exp_dir),
        resumed=resume,
        requeued=requeued + cut_off,
    )


def new_scheduler(use_asha: bool, epochs: int) -> Any:
    """ASHA on the per-epoch val mIoU, or FIFO (every trial to the end)."""
    if not use_asha:
        return FIFOScheduler()
    # max_t one past the last epoch: the final report (after the result is told) must not be
    # the one that stops the trial.
    return ASHAScheduler(
        metric="val_miou",
        mode="max",
        time_attr="training_iteration",
        max_t=epochs + 1,
        grace_period=1,
        reduction_factor=2,
    )
