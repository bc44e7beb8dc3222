"""A SQLite latency cache shared by every study and process, so a network is measured once.

Results are keyed by (arch_hash, input_shape, target key, provenance): the same network on the
same target is measured once, and an estimate never stands in for a measurement (it lives under
its own provenance and ``get`` returns measurements unless asked otherwise). Beside the results
the cache keeps the config of every network it answered for (:meth:`LatencyCache.record_config`),
so that calibration can recompute their layer costs. The file is in WAL mode, so several study
processes can read and write it at once. This module owns the file's schema: everything else
reads and writes it through :class:`LatencyCache`.

    cache = LatencyCache("runs/latency.sqlite")
    provider = CachedProvider(RemotePool([...], token, "agx"), cache)
    result = provider.measure(onnx_bytes, (1, 3, 360, 480), config=config)
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jetsearch.latency.base import (
    FROM_CACHE_FLAG,
    MEASURED,
    LatencyProvider,
    LatencyResult,
    Provenance,
)

if TYPE_CHECKING:
    from jetseg.config import JetSegConfig

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS latency (
    arch_hash   TEXT NOT NULL,
    input_shape TEXT NOT NULL,
    target_key  TEXT NOT NULL,
    provenance  TEXT NOT NULL,
    median_ms   REAL NOT NULL,
    result_json TEXT NOT NULL,
    extra_json  TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (arch_hash, input_shape, target_key, provenance)
);
CREATE INDEX IF NOT EXISTS latency_by_target ON latency (target_key, provenance);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jetseg_configs (
    arch_hash   TEXT PRIMARY KEY,
    config_yaml TEXT NOT NULL,
    created_at  TEXT NOT NULL
);
"""

CachedEntry = tuple[str, tuple[int, ...], LatencyResult, dict[str, Any]]


def _shape_text(input_shape: Iterable[int]) -> str:
    shape = tuple(int(value) for value in input_shape)
    if not shape or any(value <= 0 for value in shape):
        raise ValueError(f"input_shape must be positive integers, got {shape}")
    return "x".join(str(value) for value in shape)


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _provenances(provenance: Provenance | str | Iterable[Provenance | str] | None) -> list[str]:
    if provenance is None:
        return [item.value for item in MEASURED]
    if isinstance(provenance, Provenance | str):
        return [Provenance(provenance).value]
    return [Provenance(item).value for item in provenance]


class LatencyCache:
    """Latency results in a SQLite file, keyed by (arch_hash, input_shape, target key).

    ``provenance`` filters of :meth:`get` and :meth:`all_results`: None (the default) means
    measurements only (measured-local or measured-remote); pass ``Provenance.ESTIMATED`` (or a
    list) to read estimates. A newer ``put`` of the same key and provenance replaces the older.
    Each call opens its own short connection, so one cache object can serve many threads.
    """

    def __init__(self, path: str | Path, *, timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        self.timeout_s = timeout_s
        if self.path.parent and not self.path.parent.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self._connect() as connection:
                connection.execute("PRAGMA journal_mode=WAL")
                connection.executescript(_SCHEMA)
                row = connection.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
                if row is None:
                    connection.execute(
                        "INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),)
                    )
                elif int(row[0]) != SCHEMA_VERSION:
                    raise ValueError(
                        f"latency cache {self.path} has schema {row[0]}, this version reads "
                        f"{SCHEMA_VERSION}"
                    )
        except sqlite3.DatabaseError as error:
            raise ValueError(
                f"latency cache {self.path} is not a usable SQLite file: {error}"
            ) from None

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        connection = sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None)
        try:
            connection.execute(f"PRAGMA busy_timeout={int(self.timeout_s * 1000)}")
            yield connection
        finally:
            connection.close()

    @property
    def journal_mode(self) -> str:
        with self._connect() as connection:
            return connection.execute("PRAGMA journal_mode").fetchone()[0]

    def get(
        self,
        arch_hash: str,
        input_shape: Iterable[int],
        target_key: str,
        *,
        provenance: Provenance | str | Iterable[Provenance | str] | None = None,
    ) -> LatencyResult | None:
        """The newest stored result for the key with one of the given provenances, or None."""
        kinds = _provenances(provenance)
        marks = ",".join("?" * len(kinds))
        with self._connect() as connection:
            row = connection.execute(
                "SELECT result_json FROM latency WHERE arch_hash=? AND input_shape=? "
                f"AND target_key=? AND provenance IN ({marks}) ORDER BY created_at DESC LIMIT 1",
                (arch_hash, _shape_text(input_shape), target_key, *kinds),
            ).fetchone()
        return None if row is None else LatencyResult.from_dict(json.loads(row[0]))

    def put(
        self,
        arch_hash: str,
        input_shape: Iterable[int],
        target_key: str,
        result: LatencyResult,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        """Store `result` (under its own provenance) with optional JSON-safe `extra` data."""
        if not arch_hash or not target_key:
            raise ValueError("arch_hash and target_key must be non-empty strings")
        with self._connect() as connection:
            connection.execute(
                "INSERT OR REPLACE INTO latency VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    arch_hash,
                    _shape_text(input_shape),
                    target_key,
                    result.provenance.value,
                    result.median_ms,
                    json.dumps(result.to_dict()),
                    json.dumps(dict(extra or {})),
                    result.created_at,
                ),
            )

    def all_results(
        self,
        target_key: str | None = None,
        *,
        provenance: Provenance | str | Iterable[Provenance | str] | None = None,
    ) -> list[CachedEntry]:
        """Every stored (arch_hash, input_shape, result, extra), for one target or all."""
        kinds = _provenances(provenance)
        query = (
            "SELECT arch_hash, input_shape, result_json, extra_json FROM latency "
            f"WHERE provenance IN ({','.join('?' * len(kinds))})"
        )
        parameters: list[str] = list(kinds)
        if target_key is not None:
            query += " AND target_key=?"
            parameters.append(target_key)
        with self._connect() as connection:
            rows = connection.execute(query + " ORDER BY created_at, arch_hash", parameters)
            return [
                (
                    arch_hash,
                    tuple(int(value) for value in shape.split("x")),
                    LatencyResult.from_dict(json.loads(result_json)),
                    json.loads(extra_json),
                )
                for arch_hash, shape, result_json, extra_json in rows.fetchall()
            ]

    def target_keys(
        self, *, provenance: Provenance | str | Iterable[Provenance | str] | None = None
    ) -> dict[str, int]:
        """How many results each target key holds (measurements unless `provenance` says)."""
        kinds = _provenances(provenance)
        with self._connect() as connection:
            rows = connection.execute(
                "SELECT target_key, COUNT(*) FROM latency "
                f"WHERE provenance IN ({','.join('?' * len(kinds))}) "
                "GROUP BY target_key ORDER BY target_key",
                kinds,
            )
            return dict(rows.fetchall())

    def record_config(self, config: JetSegConfig) -> str:
        """Remember `config` under its arch_hash (a newer record replaces the older); the hash.

        Calibration reads the configs back (:meth:`configs`) to recompute the layer costs of
        the networks measured.
        """
        from jetseg.config import arch_hash, dump_config

        digest = arch_hash(config)
        with self._connect() as connection:
            connection.execute(
                "INSERT OR REPLACE INTO jetseg_configs VALUES (?, ?, ?)",
                (digest, dump_config(config), _utc_now()),
            )
        return digest

    def configs(self) -> dict[str, str]:
        """Every recorded config as YAML, by arch_hash."""
        with self._connect() as connection:
            return dict(connection.execute("SELECT arch_hash, config_yaml FROM jetseg_configs"))

    def __len__(self) -> int:
        with self._connect() as connection:
            return connection.execute("SELECT COUNT(*) FROM latency").fetchone()[0]


class CachedProvider(LatencyProvider):
    """Wraps any provider so that each network is measured once per target.

    ``measure(onnx_model, input_shape, config=config)`` looks the result up under
    (arch_hash(config), input_shape, provider.target_fingerprint_key()) and the wrapped
    provider's own provenance (so a cached estimate never answers for a measuring provider),
    measures on a miss and stores the result with the config (in the entry's extra and through
    :meth:`LatencyCache.record_config`, which calibration reads). A hit comes back flagged
    ``"from-cache"``. Without a config the cache is bypassed. With ``refresh`` every call
    measures again and replaces what was stored. Within one process, concurrent calls for the
    same key measure once; the others wait.
    """

    def __init__(
        self, provider: LatencyProvider, cache: LatencyCache, *, refresh: bool = False
    ) -> None:
        self.provider = provider
        self.cache = cache
        self.refresh = refresh
        self.kind = provider.kind
        self.hits = 0
        self.misses = 0
        self._key_locks: dict[tuple[str, str, str], threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def fingerprint(self) -> dict[str, Any]:
        return self.provider.fingerprint()

    def target_fingerprint_key(self) -> str:
        return self.provider.target_fingerprint_key()

    def measure(
        self,
        onnx_model: bytes | str | Path,
        input_shape: tuple[int, ...],
        *,
        config: JetSegConfig | None = None,
    ) -> LatencyResult:
        """The cached result for `config` on this target, else a fresh (stored) one."""
        if config is None:
            return self.provider.measure(onnx_model, input_shape)
        from jetseg.config import arch_hash, dump_config

        digest = arch_hash(config)
        target_key = self.provider.target_fingerprint_key()
        key = (digest, _shape_text(input_shape), target_key)
        with self._locks_guard:
            lock = self._key_locks.setdefault(key, threading.Lock())
        with lock:
            cached = None
            if not self.refresh:
                cached = self.cache.get(digest, input_shape, target_key, provenance=self.kind)
            if cached is not None:
                with self._locks_guard:
                    self.hits += 1
                result = cached.with_flags(FROM_CACHE_FLAG)
            else:
                result = self.provider.measure(onnx_model, input_shape, config=config)
                with self._locks_guard:
                    self.misses += 1
                extra = {"config_yaml": dump_config(config), "name": config.name}
                self.cache.put(digest, input_shape, target_key, result, extra=extra)
            # Recorded on hits too: an entry stored by another tool may lack its config.
            self.cache.record_config(config)
            return result

    def close(self) -> None:
        self.provider.close()
