"""Studies: a study YAML becomes a :class:`StudySpec`; ``run_study`` creates or resumes it.

Each trial is a :class:`jetsearch.objective.Objective`: it samples, counts, exports and measures
a network, prunes it when over the latency budget, otherwise trains it and returns its scores.

Study files (``studies/*.yaml``) look like::

    name: local
    target: local                 # device the latency is for (a device profile name)
    space: tiny                   # a built-in space name or a YAML path
    data: null                    # a CamVid root, or null for the built-in synthetic scenes
    mode: pareto                  # pareto (mIoU vs latency) or budget (mIoU under a budget)
    train: {epochs: 2, size: [96, 128], loss: jetloss, batch_size: 8}   # TrainConfig fields
    latency: {input_size: [360, 480], budget_ms: 40, providers: [local]}
    rungs:                        # multi-fidelity (pareto mode): each rung overrides train:
      - {epochs: 2, size: [96, 128], train_images: 128}
      - {epochs: 4, size: [128, 160]}
    eta: 3                        # promote the best third of each rung (jetsearch.rungs)

With ``train: {holdout: [0001TP]}`` the trials never train on that CamVid sequence and store its
mIoU beside val's (``heldout_miou``); ``objective: heldout`` makes it the trial's score.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import os
import time
import typing
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from jetsearch.latency.chain import LatencyChain
from jetsearch.objective import Objective, load_data
from jetseg.config import (
    ConfigError,
    read_yaml_mapping,
    resolve_named_file,
    yaml_names,
)
from jetseg.train_config import TrainConfig
from jetseg.validation import Problem, field_types, known, parse, validate

STUDIES_DIR_ENV = "JETSEARCH_STUDIES_DIR"
DEFAULT_STORAGE = "jetsearch-studies.log"
ProviderKind = Literal["workers", "local", "estimate"]
PROVIDER_KINDS: tuple[str, ...] = typing.get_args(ProviderKind)
OBJECTIVE_NAMES = {"pareto": ["val_miou", "latency_ms"], "budget": ["val_miou"]}
SCORE_NAMES = {"val": "val_miou", "heldout": "heldout_miou"}
# Heartbeats of RDB storages (PostgreSQL, MySQL): a trial whose process stopped beating for the
# grace period is failed and re-queued by the next process that starts a trial.
HEARTBEAT_ENV = "JETSEARCH_HEARTBEAT_S"
HEARTBEAT_GRACE_ENV = "JETSEARCH_HEARTBEAT_GRACE_S"
DEFAULT_HEARTBEAT_S = 20
DEFAULT_HEARTBEAT_GRACE_S = 60


class StudyError(RuntimeError):
    """A study that cannot run as asked (bad storage, no latency provider, ...)."""


# TrainConfig fields that a trial sets itself, so a study's train: block cannot: the seed (the
# study's seed plus the trial number) and what only a run directory has (a trial writes none).
TRIAL_SET_FIELDS = ("seed", "overlays", "export_onnx", "progress")


def _trial_budget_fields() -> list[tuple[str, Any, dataclasses.Field]]:
    """TrainConfig's fields by name (a study's defaults where it has its own), then its own."""
    hints = field_types(TrainConfig)
    fields = []
    for f in dataclasses.fields(TrainConfig):
        if f.name in TRIAL_SET_FIELDS:
            continue
        tp, default, meta = hints[f.name], f.default, f.metadata
        if f.name == "epochs":
            default = 3  # short, comparable runs
        elif f.name == "size":
            # Every trial trains at one size, so that trials compare: it cannot be left out.
            tp, default, meta = tuple[int, int], (360, 480), {"min": 16, "max": 8192}
        fields.append((f.name, tp, field(default=default, metadata=meta)))
    return [
        *fields,
        ("train_images", int | None, field(default=None)),
        ("val_images", int | None, field(default=None)),
        ("threads", int | None, field(default=None)),
    ]


def _trial_train_config(self: Any, seed: int) -> TrainConfig:
    """The TrainConfig of one trial: this block's TrainConfig fields, and what a trial sets."""
    shared = {
        f.name: getattr(self, f.name)
        for f in dataclasses.fields(TrainConfig)
        if f.name not in TRIAL_SET_FIELDS
    }
    return TrainConfig(**shared, seed=seed, overlays=0, export_onnx=False, progress=False)


TrialBudget = dataclasses.make_dataclass(
    "TrialBudget",
    _trial_budget_fields(),
    frozen=True,
    namespace={
        "__module__": __name__,
        "__doc__": """How each trial is trained: a study's ``train:`` block.

    Any :class:`jetseg.train_config.TrainConfig` field is set by its name (``epochs``, ``lr``,
    ``schedule``, ``random_scale``...), with TrainConfig's defaults and rules, except the
    fields a trial sets itself (:data:`TRIAL_SET_FIELDS`). A study's own defaults: 3 epochs and
    ``size`` 360x480, which a trial cannot leave out. Keys of the study only:
    ``train_images`` / ``val_images`` (the first N frames of each split) and ``threads``
    (torch threads of each trial process). ``train_config(seed)`` is one trial's TrainConfig.
    """,
        "cross_field_problems": staticmethod(TrainConfig.cross_field_problems),
        "train_config": _trial_train_config,
    },
)


Rung = dataclasses.make_dataclass(
    "Rung",
    [
        (f.name, f.type | None, field(default=None, metadata=f.metadata))
        for f in dataclasses.fields(TrialBudget)
    ],
    frozen=True,
    namespace={
        "__module__": __name__,
        "__doc__": """One rung of a multi-fidelity study: the ``train:`` fields it changes.

    Every key is a ``train:`` key; a key left out (None) keeps the ``train:`` value. Rung 0 is
    what every trial trains with; see :mod:`jetsearch.rungs`.
    """,
        "overrides": lambda self: {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if getattr(self, f.name) is not None
        },
    },
)


@dataclass(frozen=True)
class SyntheticData:
    """Size of the built-in synthetic dataset when the study has no ``data`` path."""

    train_images: int = field(default=64, metadata={"min": 1, "max": 100000})
    val_images: int = field(default=16, metadata={"min": 1, "max": 100000})


@dataclass(frozen=True)
class LatencySpec:
    """Where latency comes from and what budget it must meet."""

    input_size: tuple[int, int] = field(default=(360, 480), metadata={"min": 16, "max": 8192})
    budget_ms: float | None = field(default=None, metadata={"gt": 0})
    providers: tuple[ProviderKind, ...] = ("workers", "estimate")
    workers: tuple[str, ...] = ()
    token_file: str | None = None
    precision: Literal["fp32", "fp16"] = "fp16"
    execution_provider: Literal["cpu", "cuda", "tensorrt"] = "cpu"
    threads: int = field(default=2, metadata={"min": 1, "max": 256})
    warmup_s: float = 1.0
    runs: int = field(default=50, metadata={"min": 3, "max": 100000})
    cache: str | None = "jetsearch-latency.sqlite"
    device_profile: str | None = None

    @staticmethod
    def cross_field_problems(values: Any) -> list[Problem]:
        """At least one provider (each is a Literal, so checked per key)."""
        if known(values.providers) and not values.providers:
            return [("providers", "name at least one latency provider")]
        return []


@dataclass(frozen=True)
class StudySpec:
    """A whole study: target, space, data, per-trial budget, objectives, latency, storage.

    Checked on construction like every config (:func:`jetseg.validation.validate`): a spec
    changed with ``dataclasses.replace`` is checked again.
    """

    name: str
    target: str
    space: str = "jetseg"
    data: str | None = None
    synthetic: SyntheticData = SyntheticData()
    mode: Literal["pareto", "budget"] = "pareto"
    train: TrialBudget = TrialBudget()
    latency: LatencySpec = LatencySpec()
    storage: str | None = None
    seed: int = 0
    enqueue_presets: tuple[str, ...] = ("nano", "agx", "workstation")
    pruner: Literal["median", "none"] = "median"
    sampler: Literal["tpe", "random"] = "tpe"
    description: str = ""
    rungs: tuple[Rung, ...] = ()
    eta: int = field(default=3, metadata={"min": 2})
    objective: Literal["val", "heldout"] = "val"
    artifact_store: str | None = None

    def __post_init__(self) -> None:
        validate(self, what="study")

    @staticmethod
    def cross_field_problems(values: Any) -> list[Problem]:
        """Budget needs a budget; rungs need pareto mode and valid recipes; heldout a holdout."""
        problems: list[Problem] = []
        if values.mode == "budget" and values.latency.budget_ms is None:
            problems.append(("latency.budget_ms", "budget mode needs a latency budget"))
        if values.mode == "budget" and known(values.rungs) and values.rungs:
            problems.append(
                (
                    "rungs",
                    "rungs apply to pareto mode; budget mode prunes with Optuna's pruner "
                    "(remove rungs or set mode: pareto)",
                )
            )
        if known(values.train, values.rungs):
            for index in range(len(values.rungs)):
                try:
                    _rung_budget(values.train, values.rungs, index).train_config(seed=0)
                except ConfigError as err:
                    problems += [(f"rungs[{index}].{key}", msg) for key, msg in err.problems]
        if values.objective == "heldout" and known(values.train) and not values.train.holdout:
            problems.append(
                (
                    "objective",
                    "heldout scores trials on held-out sequences: set train.holdout "
                    "(e.g. [0001TP])",
                )
            )
        return problems

    @property
    def objective_names(self) -> list[str]:
        names = list(OBJECTIVE_NAMES[self.mode])
        names[0] = SCORE_NAMES[self.objective]
        return names

    @property
    def rung_count(self) -> int:
        """1 for a study without rungs."""
        return max(1, len(self.rungs))

    def rung_budget(self, rung: int) -> Any:
        """The ``train:`` block of ``rung`` (the block itself for a study without rungs)."""
        return _rung_budget(self.train, self.rungs, rung)


def _rung_budget(train: Any, rungs: Sequence[Any], rung: int) -> Any:
    if not rungs:
        if rung != 0:
            raise IndexError(f"a study without rungs has rung 0 only, not {rung}")
        return train
    return dataclasses.replace(train, **rungs[rung].overrides())


def spec_from_dict(data: dict[str, Any], source: str | None = None) -> StudySpec:
    """A StudySpec from plain data (a study's stored ``spec`` attribute, a parsed YAML)."""
    return parse(StudySpec, data, source=source, what="study")


def studies_dir() -> Path:
    """Where the built-in study files live (a checkout, an editable or a wheel install)."""
    env = os.environ.get(STUDIES_DIR_ENV)
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[1] / "studies"
    if repo.is_dir():
        return repo
    from importlib.resources import files

    return Path(str(files("jetsearch") / "builtin" / "studies"))


def study_names() -> list[str]:
    """Names of the built-in studies."""
    return yaml_names(studies_dir())


def merge_mappings(base: dict, changes: dict) -> dict:
    """A copy of a study's YAML mapping ``base`` with ``changes`` merged in, key by key.

    Nested mappings are merged recursively; any other value in ``changes`` replaces the one in
    ``base``. Used to derive a study file from a built-in one.
    """
    merged = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_mappings(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_study_spec(name_or_path: str | Path, **overrides: Any) -> StudySpec:
    """A StudySpec from a built-in name (``agx``, ``local``, ...) or a YAML path.

    Names resolve as presets and spaces do (:func:`jetseg.config.resolve_named_file`).
    ``overrides`` replace top-level keys (``data``, ``storage``, ``mode``) or, for ``workers``,
    the latency worker list. Every problem of the file, per key and across keys, comes in one
    :class:`~jetseg.config.ConfigError`.
    """
    path = resolve_named_file(name_or_path, studies_dir(), "study", "study")
    data = read_yaml_mapping(path, functools.partial(ConfigError, what="study"))
    data = {"name": path.stem, **data}
    workers = overrides.pop("workers", None)
    for key, value in overrides.items():
        if value is not None:
            data[key] = value
    if workers:
        data.setdefault("latency", {})
        data["latency"] = {**data["latency"], "workers": list(workers)}
        if "workers" not in data["latency"].get("providers", ["workers"]):
            data["latency"]["providers"] = ["workers", *data["latency"].get("providers", [])]
    return parse(StudySpec, data, source=str(path), what="study")


# ---------------------------------------------------------------------------------------------
# storage


def storage_url(spec: StudySpec, override: str | None = None) -> str:
    return override or spec.storage or DEFAULT_STORAGE


def heartbeat_settings() -> tuple[int, int]:
    """Heartbeat interval and grace period (whole seconds) for RDB storages.

    ``JETSEARCH_HEARTBEAT_S`` sets the interval (default 20) and ``JETSEARCH_HEARTBEAT_GRACE_S``
    the grace period (default 60, or three intervals when only the interval is set). Short values
    make a crashed process's trial fail sooner, at the cost of more writes to the database.
    """
    values = {}
    for key, default in (
        (HEARTBEAT_ENV, DEFAULT_HEARTBEAT_S),
        (HEARTBEAT_GRACE_ENV, None),
    ):
        raw = os.environ.get(key, "").strip()
        if not raw:
            values[key] = default
            continue
        try:
            values[key] = int(raw)
        except ValueError:
            raise StudyError(f"{key}={raw!r}: expected a whole number of seconds >= 1") from None
        if values[key] < 1:
            raise StudyError(f"{key}={raw!r}: expected a whole number of seconds >= 1")
    interval = values[HEARTBEAT_ENV]
    grace = values[HEARTBEAT_GRACE_ENV]
    if grace is None:
        grace = DEFAULT_HEARTBEAT_GRACE_S if HEARTBEAT_ENV not in os.environ else 3 * interval
    if grace <= interval:
        raise StudyError(
            f"{HEARTBEAT_GRACE_ENV}={grace} must be longer than {HEARTBEAT_ENV}={interval}, or "
            "live trials are failed between two heartbeats"
        )
    return interval, grace


def open_storage(url: str, *, heartbeat: bool = True):
    """An Optuna storage for a URL or a path.

    * ``postgresql://...`` / ``mysql://...``: RDB storage with heartbeats, so the trials of a
      crashed process are failed and re-queued once their grace period is over;
    * ``sqlite:///file.db``: RDB storage on one file (one process at a time);
    * anything else is a journal file path: safe for several processes on one machine, and
      ``optuna-dashboard FILE`` opens it.
    """
    import optuna

    if "://" in url:
        kwargs: dict[str, Any] = {}
        if heartbeat and not url.startswith("sqlite"):
            interval_s, grace_s = heartbeat_settings()
            kwargs = {"heartbeat_interval": interval_s, "grace_period": grace_s}
            if hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback"):  # Optuna >= 4.9
                kwargs["heartbeat_stale_trial_callback"] = (
                    optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)
                )
            else:
                kwargs["failed_trial_callback"] = optuna.storages.RetryFailedTrialCallback(
                    max_retry=1
                )
        if url.startswith("sqlite"):
            kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
        return optuna.storages.RDBStorage(url, **kwargs)
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    path = Path(url.removeprefix("journal:"))
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


# ---------------------------------------------------------------------------------------------
# create / resume / run


def make_sampler(spec: StudySpec, job_index: int = 0):
    """The spec's sampler; each parallel process gets its own seed."""
    import optuna

    seed = spec.seed + job_index
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def create_or_load_study(spec: StudySpec, storage: str, name: str | None = None, sampler=None):
    """The Optuna study for a spec: created on first use, loaded (resumed) afterwards."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    study_name = name or spec.name
    directions = ["maximize", "minimize"] if spec.mode == "pareto" else ["maximize"]
    pruner = None
    if spec.mode == "budget" and spec.pruner == "median":
        pruner = optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=0)
    study = optuna.create_study(
        storage=open_storage(storage),
        study_name=study_name,
        directions=directions,
        sampler=sampler or make_sampler(spec),
        pruner=pruner or optuna.pruners.NopPruner(),
        load_if_exists=True,
    )
    existing = [d.name.lower() for d in study.directions]
    if existing != directions:
        raise StudyError(
            f"study {study_name!r} in {storage} was created with other objectives "
            f"({existing}); use another --name"
        )
    if study.metric_names is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(spec.objective_names)
    if "spec" not in study.user_attrs:
        study.set_user_attr("spec", _spec_dict(spec))
        study.set_user_attr("target", spec.target)
        study.set_user_attr("mode", spec.mode)
    return study


def _spec_dict(spec: StudySpec) -> dict:
    def convert(obj):
        if dataclasses.is_dataclass(obj):
            return {f.name: convert(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        if isinstance(obj, tuple):
            return [convert(v) for v in obj]
        return obj

    return convert(spec)


def enqueue_presets(study, spec: StudySpec, space) -> list[str]:
    """Enqueue the spec's presets that lie in the space, once, on a new study."""
    import optuna

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
    del optuna
    return queued


def finished_count(study) -> int:
    import optuna

    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return len(study.get_trials(deepcopy=False, states=states))


@dataclass
class StudyRun:
    """What one ``run_study`` call did."""

    study_name: str
    storage: str
    finished_before: int
    finished_after: int
    wall_s: float
    interrupted: bool = False
    latency_sources: str = ""


def run_worker_process(
    spec: StudySpec,
    storage: str,
    study_name: str,
    total_trials: int,
    timeout_s: float | None,
    job_index: int,
    callbacks: Sequence[Callable] = (),
    space=None,
    latency: LatencyChain | None = None,
    progress: Any = None,
) -> None:
    """Run trials until rung 0 holds ``total_trials`` finished trials (any process).

    With rungs, every trial first runs the promotion step (:class:`jetsearch.rungs.RungLadder`)
    and trains the highest rung that has a promoted network waiting before asking rung 0's
    sampler for a new network; when rung 0 is full the process still trains what is waiting.
    ``callbacks`` are called as ``callback(rung0_study, trial)`` after every trial, any rung.
    """
    import optuna
    import torch

    from jetsearch.rungs import RungLadder, rung_study_name
    from jetsearch.space import load_space

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if spec.train.threads:
        torch.set_num_threads(spec.train.threads)
    space = space or load_space(spec.space)
    latency = latency or LatencyChain(spec)
    artifacts = study_artifact_store(storage, spec)
    studies = [
        create_or_load_study(
            spec, storage, rung_study_name(study_name, rung), sampler=make_sampler(spec, job_index)
        )
        for rung in range(spec.rung_count)
    ]
    study = studies[0]
    # A resumed study must not replay the seeded sampler's stream from the start (it would
    # propose the same architectures again): offset the seed by the trials already there.
    already = len(study.get_trials(deepcopy=False))
    if already:
        study.sampler = make_sampler(spec, job_index + 1000 * already)
    ladder = RungLadder(studies, spec.eta, spec.latency.budget_ms) if len(studies) > 1 else None
    from jetsearch.recovery import StaleTrialRecovery, recover_stale_trials

    interval_s, grace_s = heartbeat_settings()
    storage_obj = open_storage(storage)
    # RDB servers (PostgreSQL, MySQL) keep Optuna's own heartbeat and retry; journal files and
    # SQLite have none, and get jetsearch's owner-record recovery instead.
    own_recovery = "://" not in storage or storage.startswith("sqlite")
    if own_recovery:
        for rung_study in studies:  # trials whose process died: failed, network queued again
            recover_stale_trials(rung_study, storage=storage_obj, grace_s=grace_s)
    objectives: dict[int, Objective] = {}

    def objective(rung: int) -> Objective:
        if rung not in objectives:  # each rung's data is built once per process
            objectives[rung] = Objective(
                spec,
                space,
                latency,
                load_data(spec, rung),
                rung=rung,
                progress=progress,
                artifacts=artifacts,
                heartbeat_s=interval_s if own_recovery else None,
            )
        return objectives[rung]

    guard = FailureGuard()
    hooks = [
        guard,
        *([StaleTrialRecovery(storage_obj, grace_s=grace_s)] if own_recovery else []),
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
            if rung == 0 and finished_count(study) >= total_trials:
                break
            optimize_one(studies[rung], objective(rung), hooks)
        if ladder is not None:
            ladder.promote()  # what the last trial made due is enqueued, not lost
    except KeyboardInterrupt:
        from jetsearch.recovery import interrupt_own_trials

        interrupt_own_trials(studies, storage_obj)
        raise
    finally:
        latency.close()
    if guard.stopped_reason:
        raise StudyError(f"study stopped: {guard.stopped_reason}")


def optimize_one(study, objective: Callable, callbacks: list) -> None:
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


def study_artifact_store(storage: str, spec: StudySpec) -> Any:
    """The study's artifact store, or None for a database server with no store configured.

    A journal or SQLite file gets a folder beside it; a PostgreSQL study needs
    ``artifact_store:`` (a shared folder or ``s3://...``) to keep artifacts, and without one
    its trials store none (their attributes are all there still).
    """
    from jetsearch.artifacts import artifact_store_for

    if spec.artifact_store is None and "://" in storage and not storage.startswith("sqlite"):
        return None
    try:
        return artifact_store_for(storage, spec.artifact_store)
    except Exception as err:
        raise StudyError(f"artifact_store: {err}") from err


def _on_rung0(callback: Callable, study) -> Callable:
    """A trial callback that always hears the rung-0 study (which holds the whole front)."""

    def call(_rung_study, trial) -> None:
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

    def __call__(self, study, trial) -> None:
        import optuna

        if trial.state == optuna.trial.TrialState.FAIL:
            self.in_a_row += 1
        else:
            self.in_a_row = 0
        if self.in_a_row >= self.limit:
            reason = trial.user_attrs.get("failure_reason", "see the trial's failure_reason")
            self.stopped_reason = f"{self.limit} trials failed in a row; the last: {reason}"
            study.stop()


def _spawn_entry(args) -> None:  # runs in a child process
    import signal

    def stop(signum, frame):  # SIGTERM from the parent: stop as on Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    with contextlib.suppress(KeyboardInterrupt):
        run_worker_process(*args)


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
) -> StudyRun:
    """Create or resume the study and run it until it holds ``trials`` finished trials.

    Running the same call again continues the same study (nothing is repeated); a larger
    ``trials`` adds trials. ``jobs`` > 1 starts more processes that share the storage.
    KeyboardInterrupt stops cleanly: the trial in flight is marked failed, every completed trial
    stays in the storage. ``progress`` (a :class:`jetsearch.progress.StudyProgress`) hears this
    process's trial phases. With rungs, ``trials`` counts rung-0 trials; the rung studies
    (``NAME:rung1``, ...) are created with the study.
    """
    import multiprocessing as mp

    from jetsearch.space import load_space

    url = storage_url(spec, storage)
    if jobs > 1 and url.startswith("sqlite"):
        raise StudyError(
            "SQLite storage cannot be shared safely by several processes (writers lock the "
            "whole file and fail under contention); use the default journal file, a journal "
            "path (e.g. --storage studies.log) or PostgreSQL"
        )
    space = load_space(spec.space)
    latency = LatencyChain(spec)
    study_name = name or spec.name
    from jetsearch.artifacts import study_feasibility_note
    from jetsearch.rungs import rung_study_name

    study_artifact_store(url, spec)  # a bad setting fails before any trial runs
    study = create_or_load_study(spec, url, study_name)
    for rung in range(1, spec.rung_count):
        create_or_load_study(spec, url, rung_study_name(study_name, rung))
    if spec.latency.budget_ms is not None and "feasibility" not in study.user_attrs:
        study_feasibility_note(study, spec.latency.budget_ms)
    if spec.enqueue_presets:
        enqueue_presets(study, spec, space)
    before = finished_count(study)
    start = time.time()
    interrupted = False
    children = []
    try:
        if jobs > 1:
            ctx = mp.get_context("spawn")
            for j in range(1, jobs):
                args = (spec, url, study_name, trials, timeout_s, j)
                p = ctx.Process(target=_spawn_entry, args=(args,), daemon=False)
                p.start()
                children.append(p)
        run_worker_process(
            spec,
            url,
            study_name,
            trials,
            timeout_s,
            0,
            callbacks,
            space=space,
            latency=latency,
            progress=progress,
        )
        for p in children:
            p.join()
    except KeyboardInterrupt:
        interrupted = True
        # Ctrl-C reached the whole process group; a SIGTERM only this process: pass it on.
        for p in children:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()  # SIGTERM: the child marks its trial interrupted and stops
        for p in children:
            p.join(timeout=30)
    finally:
        for p in children:
            if p.is_alive():
                p.kill()
    after = finished_count(create_or_load_study(spec, url, study_name))
    return StudyRun(
        study_name, url, before, after, time.time() - start, interrupted, latency.describe()
    )
