"""Ray Tune backend: a study's trials run as Ray Tune trials, on this machine or a Ray cluster.

:func:`run_study_ray` runs the same study as :func:`jetsearch.study.run_study` (same space,
objective, latency providers, stored attributes and Optuna storage); Ray Tune only schedules.
The driver's :class:`StudySearcher` asks each trial (``study.ask``), a Ray worker runs the
Objective on it and tells the result (:func:`run_ray_trial`). Public Optuna and Ray APIs only.
The design, and what happens when something fails: ``docs/scaling.md``, "Ray backend design".
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
import torch
from optuna.trial import TrialState

from jetsearch.latency.chain import LatencyChain
from jetsearch.objective import Objective, load_data
from jetsearch.recovery import failure_attrs, record_owner
from jetsearch.space import load_space
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
    cache, token = spec.latency.cache, spec.latency.token_file
    latency = dataclasses.replace(
        spec.latency,
        cache=_absolute(cache) if cache else None,
        token_file=_absolute(token) if token else None,
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


def latency_service_name(spec: StudySpec) -> str:
    """The Ray actor name of the latency service for this target and these latency settings."""
    digest = hashlib.sha256(repr((spec.target, spec.latency)).encode()).hexdigest()[:10]
    return f"jetsearch-latency-{spec.target}-{digest}"


class LatencyService(LatencyChain):
    """The study's latency chain as a Ray actor that measures one network at a time (see
    :func:`start_latency_service`); ``intervals`` returns each measurement's (start, end)."""

    def __init__(self, spec: StudySpec) -> None:
        super().__init__(spec)
        self.times: list[tuple[float, float]] = []

    def measure(self, onnx_model: Any, config: Any) -> tuple[Any, list[str]]:
        start = time.time()
        try:
            return super().measure(onnx_model, config)
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


def start_latency_service(spec: StudySpec) -> Any:
    """The latency actor for ``spec``, shared by name; it lives as long as this handle.

    ``max_concurrency=1``: two networks timed at once on one board would measure the contention.
    Placed on the driver's node when it can be: that is the machine ``local`` measures.
    """
    options: dict[str, Any] = {"name": latency_service_name(spec), "namespace": RAY_NAMESPACE}
    with contextlib.suppress(Exception):  # Ray Client drivers have no node of their own
        node = ray.get_runtime_context().get_node_id()
        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node, soft=True)
    # num_cpus=0: it waits on a board or times briefly; the trials own the CPUs.
    actor = ray.remote(LatencyService).options(
        get_if_exists=True, num_cpus=0, max_concurrency=1, max_restarts=3, **options
    )
    return actor.remote(spec)


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
            value = float(trial.intermediate_values[trial.last_step])
            latency_ms = float(trial.user_attrs.get("latency_ms", math.nan))
            tune.report({"val_miou": value, "epoch": trial.last_step, "latency_ms": latency_ms})
        return self.inner.prune(study, trial)


@contextlib.contextmanager
def heartbeat(storage: Any, trial_id: int) -> Any:
    """Beat the trial's heartbeat while it runs, on storages that have one (RDB with a period)."""
    is_rdb = isinstance(storage, optuna.storages.RDBStorage)
    if not (interval := storage.get_heartbeat_interval() if is_rdb else None):
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while not stop.is_set():
            with contextlib.suppress(Exception):  # a missed beat is retried next period
                storage.record_heartbeat(trial_id)
            stop.wait(interval)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


_WORKERS: dict[str, tuple[Any, optuna.Study, Callable]] = {}  # data and space built once


def trial_worker(settings: RaySettings) -> tuple[Any, optuna.Study, Callable]:
    """(storage, study, objective) of this worker process for ``settings``."""
    key = repr((settings.storage, settings.study_name, settings.spec))
    if key not in _WORKERS:
        torch.set_num_threads(settings.threads)
        spec, url = settings.spec, settings.storage
        # Every parameter was suggested by the driver's sampler; the worker only reads them.
        random = optuna.samplers.RandomSampler()
        study = create_or_load_study(spec, url, settings.study_name, sampler=random)
        study.pruner = EpochsToTune(study.pruner)
        # On file storages, owner record and heartbeat as in a local study, so a process that
        # shares the storage can tell a live Ray trial from a dead one (jetsearch.recovery);
        # database servers keep Optuna's heartbeat.
        server = "://" in url and not url.startswith("sqlite")
        heartbeat_s = None if server else heartbeat_settings()[0]
        latency = LatencyClient(settings.latency_service)
        objective = Objective(
            spec, load_space(spec.space), latency, load_data(spec), heartbeat_s=heartbeat_s
        )
        if settings.objective_wrapper is not None:
            objective = settings.objective_wrapper(objective)
        _WORKERS[key] = (open_storage(url), study, objective)
    return _WORKERS[key]


def run_ray_trial(config: dict[str, Any], settings: RaySettings) -> None:
    """One Ray Tune trial: the study's Objective on the Optuna trial the searcher asked (whose
    parameters the storage holds), told here; one no longer RUNNING is left alone."""
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
        state, values = TrialState.FAIL, None
        with heartbeat(storage, trial_id):
            try:  # as study.optimize with catch=Exception
                state, values = TrialState.COMPLETE, objective(trial)
            except optuna.TrialPruned:
                state = TrialState.PRUNED
            except Exception as err:
                if "failure_reason" not in trial.user_attrs:  # raised outside the Objective
                    reason = f"{type(err).__name__}: {err}"
                    for key, value in failure_attrs(reason).items():
                        trial.set_user_attr(key, value)
                warnings.warn(
                    f"trial {trial.number} failed: {traceback.format_exc()}", stacklevel=1
                )
        study.tell(trial, values, state=state, skip_if_finished=True)
        gc.collect()  # the process runs the next trial: free this one's model and tensors
    frozen = storage.get_trial(trial_id)  # Tune's own table shows its last report
    values = frozen.values or [math.nan]
    latency_ms = float(frozen.user_attrs.get("latency_ms", math.nan))
    tune.report(
        {"val_miou": float(values[0]), "latency_ms": latency_ms, "optuna_state": frozen.state.name}
    )


@dataclass
class RunControl:
    """One run as the driver's searcher and recorder see it; pickled with the Tune experiment,
    less callbacks and open handles (:meth:`live` is the run in progress, when there is one)."""

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
    """Writes what only the driver sees, then calls the run's ``callback(study, frozen_trial)``:
    a Ray trial that errored (its worker died on every attempt) is FAILED with the Ray error as
    ``failure_reason``; one ASHA stopped between two epochs is PRUNED with ``pruned_reason``."""

    def __init__(self, control: RunControl) -> None:
        self.control = control

    def finish(self, trial: Any, state: TrialState, key: str, reason: str) -> None:
        study, storage, _ = self.control.open()
        if (number := (trial.config or {}).get(TRIAL_NUMBER_KEY)) is None:
            return
        trial_id = trial_id_of(storage, self.control.study_name, int(number))
        if storage.get_trial(trial_id).state == TrialState.RUNNING:
            attrs = (
                failure_attrs(reason)
                if state == TrialState.FAIL
                else {key: reason, "outcome": f"pruned: {reason}"}
            )
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                for name, value in attrs.items():
                    storage.set_trial_user_attr(trial_id, name, value)
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


@dataclass
class RayStudyRun(StudyRun):
    """A :class:`StudyRun`, where Tune kept its state, and the trials failed and queued again."""

    experiment_path: str = ""
    resumed: bool = False
    requeued: list[int] = dataclasses.field(default_factory=list)


def requeue_interrupted(storage: Any, study_name: str, run_key: str) -> list[int]:
    """Fail the RUNNING trials an earlier driver of experiment ``run_key`` (host and experiment
    directory: one driver at a time) left behind, with a ``failure_reason``, and queue each again
    as Optuna's RetryFailedTrialCallback does (``failed_trial``, ``retry_history``). Returns
    the failed trials' numbers."""
    study = optuna.load_study(study_name=study_name, storage=storage)
    reason = "interrupted: the Ray driver that ran this trial stopped; queued again"
    requeued = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if trial.system_attrs.get(RAY_EXPERIMENT_ATTR) != run_key:
            continue
        trial_id = trial_id_of(storage, study_name, trial.number)
        try:
            for key, value in failure_attrs(reason).items():
                storage.set_trial_user_attr(trial_id, key, value)
            storage.set_trial_state_values(trial_id, TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # it finished (or another process failed it) meanwhile
        retry = {
            "failed_trial": trial.system_attrs.get("failed_trial", trial.number),
            "retry_history": [*trial.system_attrs.get("retry_history", []), trial.number],
        }
        study.add_trial(
            optuna.trial.create_trial(
                state=TrialState.WAITING,
                params=trial.params,
                distributions=trial.distributions,
                system_attrs=retry,
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
    """Create or resume the study and run it with Ray Tune until it holds ``trials`` finished
    (any process, any backend). The arguments are described in ``docs/scaling.md``, "Ray
    backend design"; ``storage`` and ``name`` override the spec's."""
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
    interrupted, sources = False, ""
    try:
        service = start_latency_service(spec)  # held: the actor lives as long as this handle
        sources = ray.get(service.describe.remote())
        threads = spec.train.threads or max(1, int(cpus_per_trial))
        env = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("JETSEARCH_")))
        settings = RaySettings(
            spec, url, study_name, latency_service_name(spec), threads, env, objective_wrapper
        )
        trainable = tune.with_resources(
            tune.with_parameters(run_ray_trial, settings=settings),
            {"cpu": cpus_per_trial, "gpu": gpus_per_trial},
        )
        if resume:
            tuner = tune.Tuner.restore(str(exp_dir), trainable, resume_unfinished=True)
        else:
            # ASHA's max_t is one past the last epoch: the final report (after the result is
            # told) must not be the one that stops the trial. FIFO runs every trial to the end.
            max_t = spec.train.epochs + 1
            asha = ASHAScheduler(metric="val_miou", mode="max", max_t=max_t, reduction_factor=2)
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(
                    search_alg=StudySearcher(control),
                    scheduler=asha if use_asha else FIFOScheduler(),
                    num_samples=-1,  # the searcher says when the study is done
                    max_concurrent_trials=max_concurrent,
                    # A worker process runs trial after trial: torch, the data and the space
                    # load once per process (a stopped trial's process is replaced).
                    reuse_actors=True,
                    trial_name_creator=lambda t: f"optuna-{t.config.get(TRIAL_NUMBER_KEY, '?')}",
                    trial_dirname_creator=lambda t: (
                        f"optuna-{t.config.get(TRIAL_NUMBER_KEY, 'x')}-{t.trial_id}"
                    ),
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
    after = finished_count(create_or_load_study(spec, url, study_name))
    interrupted, requeued = interrupted or bool(cut_off), requeued + cut_off
    wall_s = time.time() - start
    return RayStudyRun(
        study_name, url, before, after, wall_s, interrupted, sources, str(exp_dir), resume, requeued
    )
