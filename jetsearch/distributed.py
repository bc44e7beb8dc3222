"""Ray backend: Ray places the trial processes of a study, on this machine or a Ray cluster.

:func:`run_study_ray` runs the same study as :func:`jetsearch.run.run_study` with ``--jobs N``:
it starts ``workers`` Ray tasks, each a trial process that runs the local backend's own loop
(:func:`jetsearch.run.run_worker`: promote, pick the next trial, optimise it, recover the
trials of dead processes), and the processes coordinate through the study's Optuna storage
alone. Rungs, promotions, presets, pruning, recovery and the stored attributes are therefore
those of a local study. Ray reserves each worker's CPUs and GPUs, starts a worker again when
its process or node died (its trial is then failed as ``owner died`` and its network queued
again, as after a ``kill -9`` of a local process), and runs one latency service per target.
The driver only watches the storage to report finished trials. The design, and what happens
when something fails: ``docs/scaling.md``, "Ray backend design".
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import os
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from jetsearch.budget import DEFAULT_MAX_REJECTED, TrialCount
from jetsearch.latency.chain import LatencyChain
from jetsearch.run import PreparedStudy, StudyRun, prepare_study, run_worker
from jetsearch.spec import StudyError, StudySpec

RAY_INSTALL_HINT = "pip install 'jetsearch[ray]'"
RAY_NAMESPACE = "jetsearch"
POLL_S = 1.0  # how often the driver reads the storage for finished trials
STOP_GRACE_S = 30.0  # how long stopped workers get to mark their trials interrupted


def import_ray() -> Any:
    """``ray``, or a :class:`StudyError` that says what to install."""
    try:
        import ray
    except ImportError as err:
        raise StudyError(
            f"the Ray backend needs Ray, which is not importable ({err}); "
            f"install it with: {RAY_INSTALL_HINT}"
        ) from err
    return ray


def _absolute(path: str) -> str:
    return str(Path(path).expanduser().resolve())


def portable_spec(spec: StudySpec) -> StudySpec:
    """The spec with its relative file paths made absolute (Ray runs workers elsewhere)."""
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


# ---------------------------------------------------------------------------------------------
# latency: one service per target


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
    """What the Objective needs of a LatencyChain, answered by the service (its exceptions
    too); closing it leaves the service, which the driver holds, running."""

    def __init__(self, service_name: str) -> None:
        ray = import_ray()
        self.ray = ray
        self.actor = ray.get_actor(service_name, namespace=RAY_NAMESPACE)

    def measure(self, onnx_bytes: bytes, config: Any) -> tuple[Any, list[str]]:
        return self.ray.get(self.actor.measure.remote(onnx_bytes, config))

    def close(self) -> None:
        pass


def start_latency_service(spec: StudySpec) -> Any:
    """The latency actor for ``spec``, shared by name; it lives as long as this handle.

    ``max_concurrency=1``: two networks timed at once on one board would measure the contention.
    Placed on the driver's node when it can be: that is the machine ``local`` measures.
    """
    ray = import_ray()
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    options: dict[str, Any] = {"name": latency_service_name(spec), "namespace": RAY_NAMESPACE}
    with contextlib.suppress(Exception):  # Ray Client drivers have no node of their own
        node = ray.get_runtime_context().get_node_id()
        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node, soft=True)
    # num_cpus=0: it waits on a board or times briefly; the trials own the CPUs.
    actor = ray.remote(LatencyService).options(
        get_if_exists=True, num_cpus=0, max_concurrency=1, max_restarts=3, **options
    )
    return actor.remote(spec)


# ---------------------------------------------------------------------------------------------
# the workers


@dataclasses.dataclass(frozen=True)
class WorkerSettings:
    """What every Ray worker of one run needs: the study (paths absolute), where it is, how far
    to run it (``trials`` counted trials, ``max_rejected`` rejections in a row at most), and the
    driver's ``JETSEARCH_*`` environment variables."""

    spec: StudySpec
    url: str
    name: str
    trials: int
    deadline: float | None  # epoch seconds: worker clocks differ from the driver's monotonic
    latency_service: str
    threads: int
    env: tuple[tuple[str, str], ...] = ()
    max_rejected: int = DEFAULT_MAX_REJECTED


def ray_worker(settings: WorkerSettings, job_index: int) -> None:
    """One Ray worker: the local backend's trial process, its latency from the service."""
    import torch

    os.environ.update(dict(settings.env))
    torch.set_num_threads(settings.threads)
    timeout_s = None if settings.deadline is None else max(0.0, settings.deadline - time.time())
    run_worker(
        settings.spec,
        settings.url,
        settings.name,
        settings.trials,
        timeout_s,
        job_index,
        latency=LatencyClient(settings.latency_service),
        max_rejected=settings.max_rejected,
    )


class TrialWatcher:
    """The driver's view of the workers' trials: calls ``callback(rung0_study, frozen_trial)``
    once for each trial that finished (any rung) since the watcher was made."""

    def __init__(self, studies: Sequence[Any], callbacks: Sequence[Callable]) -> None:
        self.studies = list(studies)
        self.callbacks = list(callbacks)
        self.seen = {(rung, t.number) for rung, t in self._finished()}

    def _finished(self) -> list[tuple[int, Any]]:
        return [
            (rung, trial)
            for rung, study in enumerate(self.studies)
            for trial in study.get_trials(deepcopy=False)
            if trial.state.is_finished()
        ]

    def poll(self) -> None:
        if not self.callbacks:
            return
        for rung, trial in self._finished():
            if (rung, trial.number) not in self.seen:
                self.seen.add((rung, trial.number))
                for callback in self.callbacks:
                    callback(self.studies[0], trial)


def _stop_workers(ray: Any, tasks: list) -> None:
    """Ask the workers to stop as on Ctrl-C (their trials marked interrupted, queued again),
    then force whatever still runs after :data:`STOP_GRACE_S`.

    Only unfinished tasks are cancelled: Ray 2.60's driver aborts the whole process ("Tried to
    complete task that was not pending") when a task it was told to cancel has its reply
    already on the way, as the worker that raised the StudyError has.
    """
    with contextlib.suppress(Exception):
        _, tasks = ray.wait(tasks, num_returns=len(tasks), timeout=0, fetch_local=False)
    for task in tasks:
        with contextlib.suppress(Exception):
            ray.cancel(task)
    running = list(tasks)
    with contextlib.suppress(Exception):
        _, running = ray.wait(tasks, num_returns=len(tasks), timeout=STOP_GRACE_S)
    for task in running:
        with contextlib.suppress(Exception):
            ray.cancel(task, force=True)


def shutdown_ray(ray: Any) -> None:
    """``ray.shutdown()`` once every Ray handle this process dropped has been let go (a cycle
    or a traceback can hold an actor handle or an object ref past its last use)."""
    gc.collect()
    ray.shutdown()


def _worker_error(err: Exception) -> StudyError:
    """A worker that raised (a study stopped by its failure guard or by too many rejected
    networks: its own message) or died on every retry."""
    cause = getattr(err, "cause", None)  # a RayTaskError's original exception
    if isinstance(cause, StudyError):
        return StudyError(str(cause))
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return StudyError(f"a Ray worker failed: {lines[-1] if lines else type(err).__name__}")


@dataclasses.dataclass(frozen=True)
class RayOptions:
    """How a study runs on Ray; checked on construction (every broken rule in one error).

    ``workers`` trial processes run at once, each with ``cpus_per_worker`` CPUs (its torch
    threads unless the study sets ``train.threads``) and ``gpus_per_worker`` GPUs (fractions
    share a GPU). ``address``: the Ray cluster (``auto``, ``ray://HOST:10001``), ``None`` to
    start Ray here (ignored when Ray is already initialised). ``max_failures``: how often a
    worker whose process or node died is started again. ``verbose`` 0 keeps the workers'
    output off the driver's console.
    """

    workers: int = 1
    address: str | None = None
    cpus_per_worker: float = 1
    gpus_per_worker: float = 0.0
    max_failures: int = 2
    verbose: int = 1

    def __post_init__(self) -> None:
        problems = [
            rule
            for ok, rule in (
                (self.workers >= 1, f"workers={self.workers} must be >= 1"),
                (self.cpus_per_worker > 0, f"cpus_per_worker={self.cpus_per_worker} must be > 0"),
                (
                    self.gpus_per_worker >= 0,
                    f"gpus_per_worker={self.gpus_per_worker} must be >= 0",
                ),
                (self.max_failures >= 0, f"max_failures={self.max_failures} must be >= 0"),
            )
            if not ok
        ]
        if problems:
            raise StudyError("Ray options: " + "; ".join(problems))


def run_prepared_ray(
    prepared: PreparedStudy,
    *,
    trials: int,
    options: RayOptions = RayOptions(),
    timeout_s: float | None = None,
    callbacks: Sequence[Callable] = (),
    max_rejected: int = DEFAULT_MAX_REJECTED,
) -> StudyRun:
    """Run a prepared study on Ray until it holds ``trials`` counted trials (see
    :func:`run_study_ray`); the workers read the budget the study stored when it started."""
    ray = import_ray()
    spec = portable_spec(prepared.spec)
    location = prepared.opened.location
    if options.address and not location.is_server:
        warnings.warn(
            f"storage {location.url} is a file: every node of the Ray cluster must see it at "
            "this path (a shared filesystem); otherwise use PostgreSQL "
            "(--storage postgresql://...)",
            stacklevel=2,
        )
    prepared.latency.close()  # the service measures for every worker
    before = TrialCount.of(prepared.opened.study)
    started_ray = not ray.is_initialized()
    if started_ray:
        local = {"include_dashboard": False} if options.address is None else {}
        ray.init(address=options.address, log_to_driver=options.verbose > 0, **local)
    start = time.time()
    interrupted, sources = False, ""
    tasks: list = []
    watcher = TrialWatcher(prepared.opened.studies, callbacks)
    try:
        service = start_latency_service(spec)  # held: the actor lives as long as this handle
        sources = ray.get(service.describe.remote())
        env = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("JETSEARCH_")))
        settings = WorkerSettings(
            spec,
            location.absolute().url,
            prepared.name,
            trials,
            None if timeout_s is None else start + timeout_s,
            latency_service_name(spec),
            spec.train.threads or max(1, int(options.cpus_per_worker)),
            env,
            max_rejected,
        )
        # max_retries: a worker whose process or node died is started again; its trial is
        # recovered by whichever worker looks first (jetsearch.recovery). One that raised (a
        # study stopped by its failure guard) is not.
        remote = ray.remote(ray_worker).options(
            num_cpus=options.cpus_per_worker,
            num_gpus=options.gpus_per_worker,
            max_retries=options.max_failures,
        )
        tasks = [remote.remote(settings, j) for j in range(options.workers)]
        pending = list(tasks)
        while pending:
            done, pending = ray.wait(pending, num_returns=len(pending), timeout=POLL_S)
            watcher.poll()
            for task in done:
                try:
                    ray.get(task)
                except Exception as err:
                    raise _worker_error(err) from err
        watcher.poll()
    except KeyboardInterrupt:
        interrupted = True
        _stop_workers(ray, tasks)
    except StudyError:
        _stop_workers(ray, tasks)
        raise
    finally:
        # The latency actor's handle and the task refs are let go while the driver is still
        # connected: a Ray driver that drops one after its core worker shut down can end the
        # whole process with status 1 (Ray quick-exits a call into a shut-down core worker).
        service = tasks = pending = done = None
        if started_ray:
            shutdown_ray(ray)
    after = TrialCount.of(prepared.opened.study)
    return StudyRun(
        prepared.name,
        location.url,
        before.counted,
        after.counted,
        time.time() - start,
        interrupted,
        sources,
        after.rejected - before.rejected,
    )


def run_study_ray(
    spec: StudySpec,
    *,
    trials: int,
    storage: str | None = None,
    name: str | None = None,
    options: RayOptions = RayOptions(),
    timeout_s: float | None = None,
    callbacks: Sequence[Callable] = (),
    max_rejected: int = DEFAULT_MAX_REJECTED,
) -> StudyRun:
    """Create or resume the study and run it on Ray until it holds ``trials`` counted trials
    (any process, any backend; :class:`jetsearch.budget.TrialCount`); the same call again
    continues it. ``max_rejected``: networks over the latency budget in a row that stop it.

    ``options`` say how many trial processes, with which resources, on which cluster
    (:class:`RayOptions`). ``timeout_s``: no trial starts after it. ``callbacks``:
    ``callback(rung0_study, frozen_trial)`` in the driver after each finished trial.
    ``storage`` and ``name`` override the spec's.
    """
    import_ray()
    if trials < 1:
        raise StudyError(f"trials={trials} must be >= 1")
    prepared = prepare_study(spec, storage=storage, name=name, processes=options.workers)
    return run_prepared_ray(
        prepared,
        trials=trials,
        options=options,
        timeout_s=timeout_s,
        callbacks=callbacks,
        max_rejected=max_rejected,
    )
