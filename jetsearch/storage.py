"""The Optuna storage of a study: the one place that opens one, and the rung studies in it.

A storage is named by a path or a URL (``--storage``, the study's ``storage:``, else
:data:`DEFAULT_STORAGE`), and is one of three kinds, decided once by :func:`locate_storage`:

* ``journal``: a path (or ``journal:PATH``), Optuna's journal file: safe for several processes
  on one machine (or on a filesystem they all mount), and ``optuna-dashboard FILE`` opens it;
* ``sqlite``: ``sqlite:///FILE``, one process at a time (writers lock the whole file);
* ``server``: any other URL (``postgresql://...``, ``mysql://...``), a database server.

On every kind, jetsearch's own owner records and heartbeats (:mod:`jetsearch.recovery`) fail the
trials of a crashed process (writing why, in their ``outcome``) and queue them again; a server is
opened without Optuna's heartbeat, which would fail them first and leave no way to say why (see
docs/scaling.md). Heartbeats on a PostgreSQL server are timed by the server's clock
(:func:`heartbeat_clock`), so the hosts that share it need not agree on the time. A process opens
its storage once and every rung study once (:func:`open_rung_studies`), and passes them down.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from jetsearch.rungs import rung_study_name
from jetsearch.spec import StudyError, StudySpec
from jetseg.config import config_to_dict

if TYPE_CHECKING:
    import optuna

DEFAULT_STORAGE = "jetsearch-studies.log"
# jetsearch's heartbeats (jetsearch.recovery), on every kind of storage: a trial whose process
# stopped beating for the grace period is failed and queued again by the next process that looks.
HEARTBEAT_ENV = "JETSEARCH_HEARTBEAT_S"
HEARTBEAT_GRACE_ENV = "JETSEARCH_HEARTBEAT_GRACE_S"
DEFAULT_HEARTBEAT_S = 20
DEFAULT_HEARTBEAT_GRACE_S = 60

StorageKind = Literal["journal", "sqlite", "server"]
JOURNAL_PREFIX = "journal:"
SQLITE_PREFIX = "sqlite:///"


@dataclass(frozen=True)
class StorageLocation:
    """What a storage URL names: its ``kind`` and, for a journal or SQLite file, the ``file``
    (None for a database server or an in-memory SQLite database)."""

    url: str
    kind: StorageKind
    file: Path | None

    @property
    def is_server(self) -> bool:
        """A database server: it has no folder beside it, and every machine reaches it by the
        same URL."""
        return self.kind == "server"

    @property
    def dashboard_arg(self) -> str:
        """The storage as optuna-dashboard takes it on its command line."""
        return str(self.file) if self.kind == "journal" else self.url

    def check_processes(self, processes: int) -> None:
        """Refuse SQLite for several processes (writers lock the whole file and fail)."""
        if processes > 1 and self.kind == "sqlite":
            raise StudyError(
                "SQLite storage cannot be shared safely by several processes (writers lock the "
                "whole file and fail under contention); use the default journal file, a journal "
                "path (e.g. --storage studies.log) or PostgreSQL (--storage postgresql://...)"
            )

    def absolute(self) -> StorageLocation:
        """The same storage with a relative file path made absolute, for processes elsewhere."""
        if self.file is None or self.file.is_absolute():
            return self
        path = self.file.expanduser().resolve()
        if self.kind == "journal":
            prefix = JOURNAL_PREFIX if self.url.startswith(JOURNAL_PREFIX) else ""
            return replace(self, url=f"{prefix}{path}", file=path)
        query = self.url.partition("?")[1:]
        return replace(self, url=f"{SQLITE_PREFIX}{path}{''.join(query)}", file=path)


def locate_storage(url: str) -> StorageLocation:
    """The kind and file of a storage URL: the one place that tells a file from a server."""
    if url.startswith("sqlite:"):
        path = url.removeprefix(SQLITE_PREFIX).partition("?")[0]
        named = url.startswith(SQLITE_PREFIX) and path and path != ":memory:"
        return StorageLocation(url, "sqlite", Path(path) if named else None)
    if url.startswith(JOURNAL_PREFIX):
        # journal:PATH, and journal:///abs/path as a URL spells it
        path = url.removeprefix(JOURNAL_PREFIX)
        return StorageLocation(url, "journal", Path(path[2:] if path.startswith("//") else path))
    if "://" in url:
        return StorageLocation(url, "server", None)
    return StorageLocation(url, "journal", Path(url))


def storage_url(spec: StudySpec, override: str | None = None) -> str:
    """The storage a study runs in: ``override``, else the study's, else the default file."""
    return override or spec.storage or DEFAULT_STORAGE


def heartbeat_settings() -> tuple[int, int]:
    """Heartbeat interval and grace period (whole seconds), for every kind of storage.

    ``JETSEARCH_HEARTBEAT_S`` sets the interval (default 20) and ``JETSEARCH_HEARTBEAT_GRACE_S``
    the grace period (default 60, or three intervals when only the interval is set). Short values
    make a crashed process's trial fail sooner, at the cost of more writes to the storage.
    """
    values = {}
    for key, default in ((HEARTBEAT_ENV, DEFAULT_HEARTBEAT_S), (HEARTBEAT_GRACE_ENV, None)):
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


def open_storage(url: str) -> Any:
    """The Optuna storage a URL or a path names (the kinds are in the module docstring).

    A journal file's folder is created. No kind gets Optuna's heartbeat: jetsearch's own
    (:mod:`jetsearch.recovery`, with :func:`heartbeat_settings`) recovers the trials of a dead
    process on every kind, and Optuna's would fail them on a server before anything could write
    why (its ``fail_stale_trials`` sets FAIL first and calls its callback after).
    """
    import optuna

    location = locate_storage(url)
    if location.kind == "journal":
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        assert location.file is not None
        location.file.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(location.file)))
    kwargs: dict[str, Any] = {}
    if location.kind == "sqlite":
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    import sqlalchemy.exc

    try:
        return optuna.storages.RDBStorage(url, **kwargs)
    except (sqlalchemy.exc.NoSuchModuleError, sqlalchemy.exc.ArgumentError, ImportError) as err:
        scheme = url.partition("://")[0]
        raise StudyError(
            f"storage {url!r}: no database driver for {scheme!r} here ({err}); give a journal "
            "file path, sqlite:///FILE, or a database server URL such as "
            "postgresql://USER@HOST/DB (pip install 'jetsearch[postgres]')"
        ) from None


def heartbeat_clock(storage: Any) -> Callable[[], float]:
    """The clock (epoch seconds) that heartbeats in ``storage`` are written and judged by.

    A PostgreSQL server's own clock for a storage on one (``SELECT now()``, a fresh connection
    from the storage's pool each time), so that a trial's heartbeat, written on one host, and
    the present, read on another, come from one clock: hosts whose clocks disagree never see a
    live trial as dead (nor a dead one as alive for longer than the grace period). This
    machine's clock (``time.time``) for anything else: a journal or SQLite file (the processes
    of one machine, or hosts that mount it) and another database server, whose hosts must then
    keep their clocks in sync (NTP). ``storage`` is what :func:`open_storage` returned.
    """
    import optuna

    if not isinstance(storage, optuna.storages.RDBStorage):
        return time.time
    engine = storage.engine
    if engine.dialect.name != "postgresql":
        return time.time

    import sqlalchemy

    def server_now() -> float:
        with engine.connect() as connection:
            now = connection.execute(sqlalchemy.select(sqlalchemy.func.now())).scalar_one()
        return now.timestamp()  # timestamptz: an aware datetime, whatever the zones

    return server_now


def study_artifact_store(url: str, spec: StudySpec) -> Any:
    """The study's artifact store, or None for a database server with no store configured.

    A journal or SQLite file gets a folder beside it; a PostgreSQL study needs
    ``artifact_store:`` (a shared folder or ``s3://...``) to keep artifacts, and without one
    its trials store none (their attributes are all there still).
    """
    from jetsearch.artifacts import artifact_store_for

    if spec.artifact_store is None and locate_storage(url).is_server:
        return None
    try:
        return artifact_store_for(url, spec.artifact_store)
    except Exception as err:
        raise StudyError(f"artifact_store: {err}") from err


# ---------------------------------------------------------------------------------------------
# the rung studies


def make_sampler(spec: StudySpec, seed_offset: int = 0) -> Any:
    """The spec's sampler, seeded with the study's seed plus ``seed_offset`` (each process
    of a study, and each start of it, samples its own stream)."""
    import optuna

    seed = spec.seed + seed_offset
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def create_or_load_study(
    spec: StudySpec, storage: Any, name: str, *, url: str = "the storage"
) -> optuna.Study:
    """The Optuna study ``name`` for a spec in an open ``storage``: created on first use,
    loaded (resumed) afterwards; ``url`` names the storage in errors."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    directions = ["maximize", "minimize"] if spec.mode == "pareto" else ["maximize"]
    pruner = None
    if spec.mode == "budget" and spec.pruner == "median":
        pruner = optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=0)
    study = optuna.create_study(
        storage=storage,
        study_name=name,
        directions=directions,
        sampler=make_sampler(spec),
        pruner=pruner or optuna.pruners.NopPruner(),
        load_if_exists=True,
    )
    existing = [d.name.lower() for d in study.directions]
    if existing != directions:
        raise StudyError(
            f"study {name!r} in {url} was created with other objectives ({existing}); use "
            "another --name"
        )
    if study.metric_names is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(spec.objective_names)
    if "spec" not in study.user_attrs:
        study.set_user_attr("spec", config_to_dict(spec))  # spec_from_dict reads it back
        study.set_user_attr("target", spec.target)
        study.set_user_attr("mode", spec.mode)
    return study


@dataclass
class StudyStorage:
    """A study's storage as this process opened it, and its rung studies (rung 0 first, named
    by :func:`jetsearch.rungs.rung_study_name`); what the run loop passes down."""

    location: StorageLocation
    storage: Any
    studies: list[optuna.Study]

    @property
    def study(self) -> optuna.Study:
        """Rung 0: the study every trial starts in, and whose name is the study's."""
        return self.studies[0]


def open_rung_studies(spec: StudySpec, url: str, name: str | None = None) -> StudyStorage:
    """Open the storage once and create or load every rung study of ``spec`` in it.

    ``name`` is rung 0's study name (default: the spec's).
    """
    location = locate_storage(url)
    storage = open_storage(url)
    base = name or spec.name
    studies = [
        create_or_load_study(spec, storage, rung_study_name(base, rung), url=url)
        for rung in range(spec.rung_count)
    ]
    return StudyStorage(location, storage, studies)


def finished_count(study: optuna.Study) -> int:
    """Trials of ``study`` that finished (complete or pruned): what ``--trials`` counts."""
    import optuna

    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return len(study.get_trials(deepcopy=False, states=states))
