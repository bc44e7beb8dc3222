"""Ray Tune backend: a study's trials run as Ray Tune trials, on this machine or a Ray cluster.

:func:`run_study_ray` runs the same study as :func:`jetsearch.study.run_study`: the same space,
objective, latency providers, stored attributes and Optuna storage. Ray Tune only schedules::

    driver (jetsearch study --backend ray)           Ray workers, one process per running trial
    ---------------------------------------------    -------------------------------------------
    StudySearcher: study.ask() on the study's own    run_ray_trial: reopens that Optuna trial,
      sampler, samples the space on it, hands the  ->  runs jetsearch.study.Objective on it,
      trial number to a new Ray trial                  study.tell()s the result
    scheduler: FIFO (pareto mode), or ASHA on the    LatencyService: one Ray actor per target,
      per-epoch val mIoU (budget mode)                 every latency measurement one at a time
    StudyRecorder: what only the driver sees (a
      trial whose worker died, an ASHA stop)

Why a Searcher over ask-and-tell, not Ray tasks each running the study's worker loop: Tune keeps
doing what it is for (per-trial CPU and GPU reservations, retrying the trial of a dead worker on
the *same* Optuna trial, ASHA stopping weak trials between epochs, ``Tuner.restore`` for
``--resume``), and one sampler in the driver sees every trial as it is asked, as with the local
backend; worker loops would each sample on their own and need hand-made retries and scheduling.
Only public APIs are used: ``study.ask`` / ``study.tell``, ``optuna.trial.Trial(study, id)`` (how
``ask`` builds a trial; the worker reopens the asked trial with it), the storage's own methods
for trial ids and attributes, a pruner (Optuna's per-epoch hook) that forwards each epoch to
``tune.report``; Ray's ``Searcher``, ``Callback``, ``tune.report`` and ``Tuner``.

Every Ray trial *is* an Optuna trial of the study, so optuna-dashboard and ``jetsearch show``
list Ray-run trials exactly like local ones. A Ray-run trial stores three more user attributes
(:data:`RAY_USER_ATTRS`): the Ray trial id, the host that ran it and the attempt number.

When something fails:

* an exception inside a trial fails that Optuna trial with ``failure_reason`` and the study goes
  on, as in the local backend;
* a worker process or a node that dies mid-trial: Tune runs the trial again on the same Optuna
  trial, up to ``max_failures`` times, then it is failed with the Ray error as its reason;
* the driver dies or is interrupted: its trials in flight can no longer finish. The next run of
  the same experiment (same host and experiment directory) fails them with ``failure_reason``
  and queues their parameters again (:func:`requeue_interrupted`); an interrupted driver does
  this itself before it returns. ``resume=True`` also restores Tune's own experiment; without it
  a new Tune experiment continues the study from its storage. On PostgreSQL the workers beat a
  heartbeat, so any process of the study fails and requeues trials whose heartbeat stopped.

The run stops once the study holds ``trials`` finished (complete or pruned) trials, counting those
of every process; after ``timeout_s`` no new trial starts; a run whose failures outnumber the
trials it was asked for stops instead of failing forever.
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

try:  # the [ray] extra: without it this module still imports, and run_study_ray says so
    from ray.tune import Callback as TuneCallback
    from ray.tune.search import Searcher
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
    """The spec with every relative file path made absolute (Tune runs trials elsewhere).

    Built-in names (``space: tiny``) stay names.
    """
    latency = dataclasses.replace(
        spec.latency,
        cache=_absolute(spec.latency.cache) if spec.latency.cache else None,
        token_file=_absolute(spec.latency.token_file) if spec.latency.token_file else None,
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
    """The study's latency chain behind a Ray actor that measures one network at a time.

    Two networks timed at once on one board (or this node's CPU) would measure the contention,
    not the networks: :func:`start_latency_service` starts one actor per target and latency
    settings with ``max_concurrency=1``, so calls from every trial run in turn. ``intervals``
    returns the (start, end) wall times of every measurement.
    """

    def __init__(self, spec: StudySpec) -> None:
        self.chain = LatencyChain(spec)
        self.times: list[tuple[float, float]] = []

    def describe(self) -> str:
        return self.chain.describe()

    def measure(self, onnx_bytes: bytes, config: Any, digest: str) -> tuple[Any, list[str]]:
        start = time.time()
        try:
            return self.chain.measure(onnx_bytes, config, digest)
        finally:
            self.times.append((start, time.time()))

    def intervals(self) -> list[tuple[float, float]]:
        return list(self.times)


class LatencyClient:
    """What :class:`jetsearch.study.Objective` needs of a LatencyChain, answered by the actor."""

    def __init__(self, service_name: str) -> None:
        import ray

        self.actor = ray.get_actor(service_name, namespace=RAY_NAMESPACE)

    def measure(self, onnx_bytes: bytes, config: Any, digest: str) -> tuple[Any, list[str]]:
        import ray

        # An exception raised in the actor comes back as an instance of its own class too
        # (StudyError when every provider failed), so the Objective handles it as usual.
        return ray.get(self.actor.measure.remote(onnx_bytes, config, digest))

    def describe(self) -> str:
        import ray

        return ray.get(self.actor.describe.remote())

    def close(self) -> None:
        """Nothing to close: the actor serves the next trials."""


def start_latency_service(spec: StudySpec) -> Any:
    """The running latency actor for ``spec`` (started on first use, shared afterwards).

    Placed on the driver's node when it can be: that is the machine ``local`` measures.
    """
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
# the Ray trial (runs in a Ray worker process)


@dataclass(frozen=True)
class RaySettings:
    """Everything a Ray worker needs to run trials of one study (sent with every trial).

    ``objective_wrapper`` (picklable) wraps the Objective once per worker process, e.g. to
    add logging or, in the tests, to inject failures.
    """

    spec: StudySpec
    storage: str
    study_name: str
    latency_service: str
    threads: int = 1
    env: tuple[tuple[str, str], ...] = ()
    objective_wrapper: ObjectiveWrapper | None = None


class EpochsToTune(optuna.pruners.BasePruner):
    """The study's pruner, after reporting each epoch's val mIoU to Ray Tune (for ASHA).

    Optuna consults the pruner after every ``trial.report``, which the Objective makes once
    per epoch in budget mode: the one public hook on each intermediate value.
    """

    def __init__(self, inner: optuna.pruners.BasePruner) -> None:
        self.inner = inner

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        from ray import tune

        if trial.last_step is not None:
            latency_ms = float(trial.user_attrs.get("latency_ms", math.nan))
            value = float(trial.intermediate_values[trial.last_step])
            tune.report({"val_miou": value, "epoch": trial.last_step, "latency_ms": latency_ms})
        return self.inner.prune(study, trial)


@contextlib.contextmanager
def heartbeat(storage: Any, trial_id: int) -> Any:
    """Beat the trial's heartbeat while it runs, on storages that have one (RDB with a period)."""
    interval = None
    if isinstance(storage, optuna.storages.RDBStorage):
        interval = storage.get_heartbeat_interval()
    if not interval:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while True:
            with contextlib.suppress(Exception):  # a missed beat is retried next period
                storage.record_heartbeat(trial_id)
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@dataclass
class TrialWorker:
    """What one worker process keeps between trials: data and space are built once."""

    storage: Any
    study: optuna.Study
    objective: Callable[[optuna.trial.Trial], Any]


_WORKERS: dict[str, TrialWorker] = {}  # one per process and study


def trial_worker(settings: RaySettings) -> TrialWorker:
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
        study.pruner = EpochsToTune(study.pruner)
        latency = LatencyClient(settings.latency_service)
        objective = Objective(spec, load_space(spec.space), latency, load_data(spec))
        wrapped = settings.objective_wrapper(objective) if settings.objective_wrapper else objective
        _WORKERS[key] = TrialWorker(open_storage(settings.storage), study, wrapped)
    return _WORKERS[key]


def final_metrics(frozen: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """What the last ``tune.report`` of a trial says (Tune's own table shows it)."""
    values = frozen.values or []
    return {
        "val_miou": float(values[0]) if values else math.nan,
        "latency_ms": float(frozen.user_attrs.get("latency_ms", math.nan)),
        TRIAL_NUMBER_KEY: frozen.number,
        "optuna_state": frozen.state.name,
    }


def run_ray_trial(config: dict[str, Any], settings: RaySettings) -> None:
    """One Ray Tune trial: the study's Objective on the Optuna trial the searcher asked.

    The parameters are already in the storage, so ``space.sample`` on the reopened trial
    reproduces the sampled network. The result is told to the study here, as
    ``study.optimize`` would; Tune gets the same numbers. A trial no longer RUNNING (failed by
    a heartbeat check while this Ray trial waited for a retry) is left alone.
    """
    from ray import tune

    os.environ.update(dict(settings.env))  # the driver's JETSEARCH_* variables hold here too
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    worker = trial_worker(settings)
    trial_id = trial_id_of(worker.storage, settings.study_name, int(config[TRIAL_NUMBER_KEY]))
    frozen = worker.storage.get_trial(trial_id)
    if frozen.state != TrialState.RUNNING:
        tune.report(final_metrics(frozen))
        return
    trial = optuna.trial.Trial(worker.study, trial_id)
    trial.set_user_attr("ray_attempt", int(frozen.user_attrs.get("ray_attempt", 0)) + 1)
    trial.set_user_attr("ray_trial_id", tune.get_context().get_trial_id())
    trial.set_user_attr("ray_node", socket.gethostname())
    with heartbeat(worker.storage, trial_id):
        state, values = run_objective(worker.objective, trial)
    worker.study.tell(trial, values, state=state, skip_if_finished=True)
    gc.collect()  # the process runs the next trial: free this one's model and tensors
    tune.report(final_metrics(worker.storage.get_trial(trial_id)))


def run_objective(objective: Callable, trial: optuna.trial.Trial) -> tuple[TrialState, Any]:
    """(state, values) of one run of the objective, as ``study.optimize`` with catch=Exception."""
    try:
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
# the driver side


@dataclass
class RunControl:
    """One run as the driver's searcher and recorder see it (pickled with the Tune experiment).

    A restored experiment unpickles the searcher and recorder of the run that started it: they
    look up the live run of their experiment (:data:`_RUNS`) for its target, deadline and study
    callbacks, and fall back on the pickled copy (no callbacks) where there is none, as in a
    Ray Client driver whose Tune loop runs on the cluster.
    """

    spec: StudySpec
    storage: str
    study_name: str
    run_key: str  # "host:experiment dir": one driver at a time per experiment
    target: int
    deadline: float | None
    callbacks: tuple[Callable, ...] = ()

    def live(self) -> RunControl:
        return _RUNS.get(self.run_key, self)

    def __getstate__(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)} | {"callbacks": ()}


_RUNS: dict[str, RunControl] = {}  # run_key -> the run in progress in this driver process


class StudyHandle:
    """The study a driver-side Tune object works on, opened on first use (never pickled)."""

    def __init__(self, control: RunControl) -> None:
        self.control = control
        self.opened: tuple[optuna.Study, Any, Any] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"control": self.control}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.control, self.opened = state["control"], None

    def open(self) -> tuple[optuna.Study, Any, Any]:
        """(study, its storage, the space); the study has the spec's sampler."""
        if self.opened is None:
            from jetsearch.space import load_space

            c = self.control
            storage = open_storage(c.storage)
            study = optuna.load_study(study_name=c.study_name, storage=storage)
            # As run_worker_process: a continued study must not replay the seeded stream.
            study.sampler = make_sampler(c.spec, 1000 * len(study.get_trials(deepcopy=False)))
            self.opened = (study, storage, load_space(c.spec.space))
        return self.opened


class StudySearcher(Searcher):
    """Asks the study for each new Ray trial; finishes once the study holds the target.

    ``suggest`` asks the study (a queued trial first: presets, requeued trials), samples the
    space on it, so the study's sampler picks every parameter here, and hands the Ray trial the
    Optuna trial number. Results are told by the worker, and what only the driver sees by
    :class:`StudyRecorder`. The search finishes once the study holds the target of finished
    trials (every process counted), after the deadline, or when failures outnumber the target.
    """

    def __init__(self, control: RunControl) -> None:
        super().__init__()
        self.handle = StudyHandle(control)
        self.in_flight: set[str] = set()
        self.failed = 0
        self.finished_seen = (0, 0.0)  # (count, when read): the storage is read at most 1/s

    def finished(self) -> int:
        count, when = self.finished_seen
        if time.time() - when > 1.0:
            count = finished_count(self.handle.open()[0])
            self.finished_seen = (count, time.time())
        return count

    def suggest(self, ray_trial_id: str) -> dict | str | None:
        control = self.handle.control.live()
        out_of_time = control.deadline is not None and time.time() >= control.deadline
        if (
            out_of_time
            or self.failed > max(control.target, 1)
            or self.finished() + len(self.in_flight) >= control.target
        ):
            # Wait while trials are in flight: one may fail and need a replacement.
            return None if self.in_flight else Searcher.FINISHED
        study, storage, space = self.handle.open()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)  # no-op without heartbeats
        trial = study.ask()
        space.sample(trial)
        trial_id = trial_id_of(storage, control.study_name, trial.number)
        storage.set_trial_system_attr(trial_id, RAY_EXPERIMENT_ATTR, control.run_key)
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
    """Writes to the storage what only the driver sees, then calls the study callbacks.

    A Ray trial that errored (its worker died on every attempt) fails its Optuna trial with the
    Ray error as ``failure_reason``; one that ASHA stopped between two epochs is pruned with
    ``pruned_reason``. The run's ``callback(study, frozen_trial)`` see every finished trial.
    """

    def __init__(self, control: RunControl) -> None:
        self.handle = StudyHandle(control)

    def finish(self, trial: Any, state: TrialState, key: str, reason: str) -> None:
        """Finish the Optuna trial of a Ray trial with a reason, if it is still RUNNING."""
        study, storage, _ = self.handle.open()
        number = (trial.config or {}).get(TRIAL_NUMBER_KEY)
        if number is None:
            return
        trial_id = trial_id_of(storage, self.handle.control.study_name, int(number))
        if storage.get_trial(trial_id).state == TrialState.RUNNING:
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                storage.set_trial_user_attr(trial_id, key, reason)
                study.tell(int(number), state=state, skip_if_finished=True)
        for callback in self.handle.control.live().callbacks:
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
    from ray import cloudpickle

    error: Any = None
    # The driver's local copy first (the synced one may not exist yet), pickled before text.
    for read in (
        lambda: cloudpickle.loads(Path(trial.pickled_error_file).read_bytes()),
        trial.get_pickled_error,
        lambda: Path(trial.error_file).read_text().rsplit("Failure # ", 1)[-1].split("\n", 1)[-1],
        trial.get_error,
    ):
        with contextlib.suppress(Exception):
            error = read()
        if error:
            break
    lines = [line.strip() for line in str(error or "").splitlines() if line.strip()]
    attempts = getattr(trial, "num_failures", None)
    head = f"the Ray trial {trial.trial_id} failed"
    head += f" on each of its {attempts} attempt(s)" if attempts else ""
    if not lines:
        return head + " (see error.txt in its trial directory)"
    # A RayActorError says the worker process (or its node) is gone in its first line; a
    # RayTaskError ends with the exception the trial raised.
    died = "died" in lines[0].lower()
    return f"{head}; {f'its worker process died: {lines[0]}' if died else lines[-1]}"[:1000]


# ---------------------------------------------------------------------------------------------
# run


@dataclass
class RayStudyRun(StudyRun):
    """What one ``run_study_ray`` call did: a :class:`StudyRun`, where Tune kept its state, and
    the numbers of the interrupted trials it failed and queued again."""

    experiment_path: str = ""
    resumed: bool = False
    requeued: list[int] = dataclasses.field(default_factory=list)


def requeue_interrupted(storage: Any, study_name: str, run_key: str) -> list[int]:
    """Fail the RUNNING trials an earlier driver of this experiment left behind; queue them again.

    A driver that dies (or is interrupted) leaves the Optuna trials it had asked RUNNING, and
    nothing runs them any more: one experiment (``run_key``: host and experiment directory) has
    one driver at a time. Each is failed with a ``failure_reason`` and queued again with its
    parameters (marked as Optuna's RetryFailedTrialCallback does: ``failed_trial`` and
    ``retry_history`` system attributes). ``storage`` is an Optuna storage object. Returns the
    numbers of the failed trials.
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
        resume: restore the Tune experiment of an interrupted driver (``Tuner.restore``);
            without it a new experiment continues the study.
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
        objective_wrapper: a picklable ``wrapper(objective) -> objective`` applied in each
            worker process (see :class:`RaySettings`).
    """
    ray, tune = import_ray()
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
    if address and not is_server_storage(url):
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
        init_kwargs: dict[str, Any] = {"address": address, "log_to_driver": verbose > 0}
        if address is None:
            init_kwargs["include_dashboard"] = False
        ray.init(**init_kwargs)
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
            tuner = new_tuner(
                tune, trainable, control, exp_dir, max_concurrent, max_failures, use_asha, verbose
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
    after = finished_count(create_or_load_study(spec, url, study_name))
    return RayStudyRun(
        study_name=study_name,
        storage=url,
        finished_before=before,
        finished_after=after,
        wall_s=time.time() - start,
        interrupted=interrupted or bool(cut_off),
        latency_sources=sources,
        experiment_path=str(exp_dir),
        resumed=resume,
        requeued=requeued + cut_off,
    )


def new_tuner(
    tune: Any,
    trainable: Any,
    control: RunControl,
    exp_dir: Path,
    max_concurrent: int,
    max_failures: int,
    use_asha: bool,
    verbose: int,
) -> Any:
    """A new Tune experiment of the study: our searcher and recorder, FIFO or ASHA."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    # max_t one past the last epoch: the final report (after the result is stored) must not be
    # the one that stops the trial.
    epochs = control.spec.train.epochs
    trial_scheduler = (
        ASHAScheduler(
            metric="val_miou",
            mode="max",
            time_attr="training_iteration",
            max_t=epochs + 1,
            grace_period=1,
            reduction_factor=2,
        )
        if use_asha
        else FIFOScheduler()
    )
    if hasattr(tune, "RunConfig"):
        run_config_cls, failure_config_cls = tune.RunConfig, tune.FailureConfig
    else:  # Ray < 2.40 keeps them in ray.train
        from ray import train

        run_config_cls, failure_config_cls = train.RunConfig, train.FailureConfig
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=StudySearcher(control),
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
            callbacks=[StudyRecorder(control)],
            verbose=verbose,
        ),
    )
