"""Latency measured on boards: a thread-safe client pool over jetsearch workers (worker.py).

Like TVM's RPC tracker, the pool hands each measurement to one free worker of the target and
retries elsewhere when a worker dies; unlike a plain load balancer it first checks that every
worker is the device it claims (declared target, fingerprint), because a number from the wrong
board is worse than none.
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jetsearch.latency import worker
from jetsearch.latency._onnx_input import inspect_model, read_onnx_bytes, validate_input_shape
from jetsearch.latency.base import (
    InvalidModelError,
    LatencyError,
    LatencyProvider,
    LatencyResult,
    Provenance,
    fingerprint_key,
    measure_until_stable,
)

if TYPE_CHECKING:
    from jetseg.config import JetSegConfig

# Fingerprint entries that must agree across the workers of one pool (and key the cache).
STABLE_FINGERPRINT_KEYS = (
    "target",
    "board_model",
    "l4t_release",
    "jetpack",
    "power_mode",
    "clocks_locked",
    "cpu_model",
    "backend",
    "runtime",
    "runtime_version",
    "execution_provider",
    "threads",
)

# Answers that mean "this request is wrong", not "this worker is broken": never retried.
_REQUEST_ERROR_STATUSES = (400, 404, 405, 411, 413, 415)
# A busy worker (503 with Retry-After: its queue or upload budget is full) is asked again
# this many times, each after the wait it names (at most _BUSY_MAX_WAIT_S).
_BUSY_RETRIES = 5
_BUSY_MAX_WAIT_S = 60.0


def _retry_after_s(error: urllib.error.HTTPError) -> float | None:
    """The wait a 503 asks for, or None when it names none (the worker cannot measure)."""
    if error.code != 503:
        return None
    try:
        seconds = float(error.headers.get("Retry-After", ""))
    except (TypeError, ValueError):
        return None
    return min(max(seconds, 0.0), _BUSY_MAX_WAIT_S)


def read_token_file(path: str | Path) -> str:
    """The workers' shared token from ``path``; a missing or empty file is an error."""
    token_file = Path(path).expanduser()
    if not token_file.is_file():
        raise FileNotFoundError(f"token file {token_file} does not exist")
    token = token_file.read_text().strip()
    if not token:
        raise ValueError(f"token file {token_file} is empty")
    return token


class _WorkerUnavailable(Exception):
    """The worker could not measure this time; `down` when it did not answer at all."""

    def __init__(self, message: str, *, down: bool = True) -> None:
        super().__init__(message)
        self.down = down


@dataclass
class WorkerStatus:
    """What the pool knows about one worker."""

    url: str
    info: dict[str, Any] | None = None
    busy: bool = False
    down_until: float = 0.0
    refused: str | None = None
    last_error: str | None = None
    measurements: int = 0

    @property
    def usable(self) -> bool:
        return self.refused is None and self.info is not None


class RemotePool(LatencyProvider):
    """Measures on a pool of board workers that all serve one target.

    Args:
        urls: worker base URLs, e.g. ``["http://agx-1:8765", "http://agx-2:8765"]``.
        token: the shared token of the workers (``Authorization: Bearer``).
        target: the target name the workers must declare (``--target`` of worker.py).
        expected_fingerprint: optional fingerprint entries a worker must match exactly, e.g.
            ``{"board_model": "NVIDIA Jetson AGX Orin Developer Kit", "power_mode": "MAXN (0)"}``.
        timeout_s: socket timeout of one request; keep it above the workers' ``--timeout``.
        retries: how many other workers a measurement may move to after one fails.
        precision: "fp16" / "fp32", or None for each worker's default.
        warmup_s, runs: the measurement protocol sent to the workers.
        max_cv, variance_retries: re-measure a result whose cv exceeds `max_cv` (flag it
            "high-variance" if it stays above).
        recheck_s: how long a worker that failed stays down before /health is asked again.

    Workers are checked at construction (/info): a worker declaring another target, failing
    `expected_fingerprint`, or whose stable fingerprint differs from the first accepted one is
    refused for good (see :attr:`workers` for the reasons); if none is usable, LatencyError.
    Thread-safe: each worker runs one measurement of this pool at a time and a call waits for a
    free worker. A measurement whose worker dies, refuses the connection or times out moves to
    another worker; a failed measurement is never returned as a number, and when every worker
    failed the LatencyError lists each worker's reason.
    """

    kind = Provenance.MEASURED_REMOTE

    def __init__(
        self,
        urls: Sequence[str],
        token: str,
        target: str,
        expected_fingerprint: Mapping[str, Any] | None = None,
        timeout_s: float = 300.0,
        retries: int = 3,
        *,
        precision: str | None = None,
        warmup_s: float = 1.0,
        runs: int = 100,
        max_cv: float = 0.10,
        variance_retries: int = 1,
        recheck_s: float = 30.0,
        connect_timeout_s: float = 10.0,
    ) -> None:
        if isinstance(urls, str) or not urls:
            raise ValueError(f"urls must be a non-empty list of worker URLs, got {urls!r}")
        normalised = [url.rstrip("/") for url in urls]
        duplicates = sorted({url for url in normalised if normalised.count(url) > 1})
        if duplicates:
            raise ValueError(f"worker URLs listed twice: {duplicates}")
        for url in normalised:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"worker URL must start with http:// or https://, got {url!r}")
        if not token or not token.strip():
            raise ValueError("token must be the workers' non-empty shared token")
        if precision not in (None, *worker.PRECISIONS):
            raise ValueError(
                f"precision must be None or one of {worker.PRECISIONS}, got {precision!r}"
            )
        if not worker.WARMUP_S_LIMITS[0] <= warmup_s <= worker.WARMUP_S_LIMITS[1]:
            raise ValueError(f"warmup_s must be within {worker.WARMUP_S_LIMITS}, got {warmup_s}")
        if not worker.RUNS_LIMITS[0] <= runs <= worker.RUNS_LIMITS[1]:
            raise ValueError(f"runs must be within {worker.RUNS_LIMITS}, got {runs}")
        if timeout_s <= 0 or retries < 0 or recheck_s < 0 or variance_retries < 0:
            raise ValueError(
                "timeout_s must be > 0 and retries, recheck_s, variance_retries >= 0, got "
                f"{timeout_s}, {retries}, {recheck_s}, {variance_retries}"
            )
        self.token = token.strip()
        self.target = target
        self.expected_fingerprint = dict(expected_fingerprint or {})
        self.timeout_s = timeout_s
        self.retries = retries
        self.precision = precision
        self.warmup_s = warmup_s
        self.runs = runs
        self.max_cv = max_cv
        self.variance_retries = variance_retries
        self.recheck_s = recheck_s
        self.connect_timeout_s = connect_timeout_s
        self.measurement_count = 0
        self._workers = [WorkerStatus(url) for url in normalised]
        # The first accepted worker's /info: every later worker must match its stable keys.
        self._reference_info: dict[str, Any] | None = None
        self._cond = threading.Condition()
        self._closed = False

        with ThreadPoolExecutor(max_workers=min(8, len(self._workers))) as executor:
            fetched = list(executor.map(self._fetch_info, self._workers))
        for status, (info, error) in zip(self._workers, fetched, strict=True):
            self._admit(status, info, error)
        if not any(status.usable for status in self._workers):
            raise LatencyError(
                f"no usable worker for target {target!r}: {self._reasons(self._workers)}"
            )

    # -- inspection ---------------------------------------------------------------------------

    @property
    def workers(self) -> list[WorkerStatus]:
        """A snapshot of every worker's state (refused and down ones with their reasons)."""
        with self._cond:
            return [WorkerStatus(**vars(status)) for status in self._workers]

    @property
    def effective_precision(self) -> str:
        """The precision measured: the pool's, else the workers' default."""
        if self.precision is not None:
            return self.precision
        return (self._reference_info or {}).get("default_precision", "fp32")

    def fingerprint(self) -> dict[str, Any]:
        if self._reference_info is None:
            raise LatencyError(f"no worker of target {self.target!r} has been accepted")
        fingerprint = dict(self._reference_info.get("fingerprint") or {})
        fingerprint["provider"] = "remote"
        fingerprint["precision"] = self.effective_precision
        return fingerprint

    def target_fingerprint_key(self) -> str:
        label = f"remote-{self.target}-{self.effective_precision}"
        keys = (*STABLE_FINGERPRINT_KEYS, "precision")
        return fingerprint_key(label, self.fingerprint(), keys)

    # -- worker admission ---------------------------------------------------------------------

    def _request(
        self, url: str, path: str, body: bytes | None = None, timeout: float | None = None
    ) -> dict[str, Any]:
        """JSON answer of one request; HTTPError for error statuses, _WorkerUnavailable when
        the worker did not answer at all. A 503 with Retry-After (the worker is busy) is sent
        again after the wait it names, at most _BUSY_RETRIES times."""
        headers = {"Authorization": f"Bearer {self.token}"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(
            url + path, data=body, headers=headers, method="POST" if body is not None else "GET"
        )
        busy_answers = 0
        while True:
            try:
                with urllib.request.urlopen(
                    request, timeout=timeout or self.connect_timeout_s
                ) as answer:
                    payload = answer.read()
                break
            except urllib.error.HTTPError as error:
                wait_s = _retry_after_s(error)
                if wait_s is None or busy_answers >= _BUSY_RETRIES:
                    raise
                error.close()
                busy_answers += 1
                time.sleep(wait_s)
            except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
                reason = getattr(error, "reason", error)
                timed_out = isinstance(reason, socket.timeout | TimeoutError)
                kind = "timed out" if timed_out else "failed"
                raise _WorkerUnavailable(f"{path} {kind}: {reason}") from None
        try:
            return json.loads(payload)
        except ValueError:
            raise _WorkerUnavailable(f"{path} answered something that is not JSON") from None

    @staticmethod
    def _http_error_message(error: urllib.error.HTTPError) -> tuple[str, str]:
        try:
            payload = json.loads(error.read() or b"{}")
        except (ValueError, OSError):
            payload = {}
        kind = (
            payload.get("error_kind", "http-error") if isinstance(payload, dict) else "http-error"
        )
        message = payload.get("error", error.reason) if isinstance(payload, dict) else error.reason
        return kind, f"HTTP {error.code} ({kind}): {message}"

    def _fetch_info(self, status: WorkerStatus) -> tuple[dict[str, Any] | None, str | None]:
        try:
            health = self._request(status.url, "/health")
            if health.get("status") != "ok":
                return None, f"/health says {health!r}"
            return self._request(status.url, "/info"), None
        except urllib.error.HTTPError as error:
            if error.code == 401:
                return None, "refused: the worker rejected the token"
            return None, self._http_error_message(error)[1]
        except _WorkerUnavailable as error:
            return None, str(error)

    def _admit(self, status: WorkerStatus, info: dict[str, Any] | None, error: str | None) -> bool:
        """Accept a worker whose /info matches the target, or mark it down / refused."""
        with self._cond:
            if info is None:
                status.info = None
                status.last_error = error
                if error and error.startswith("refused:"):
                    status.refused = error
                else:
                    status.down_until = time.monotonic() + self.recheck_s
                return False
            reason = self._mismatch(info)
            if reason is not None:
                status.refused = f"refused: {reason}"
                status.info = None
                return False
            if self._reference_info is None:
                self._reference_info = info
            status.info = info
            status.down_until = 0.0
            status.last_error = None
            self._cond.notify_all()
            return True

    def _mismatch(self, info: Mapping[str, Any]) -> str | None:
        """Why a worker's /info disqualifies it, or None. Called with the lock held."""
        declared = info.get("target")
        if declared != self.target:
            return f"worker declares target {declared!r}, this pool measures {self.target!r}"
        if info.get("backend") is None:
            return f"worker has no timing backend: {info.get('backend_unavailable_reason')}"
        if self.precision is not None and self.precision not in info.get("precisions", []):
            return f"worker cannot measure {self.precision} (it offers {info.get('precisions')})"
        fingerprint = dict(info.get("fingerprint") or {})
        differences = [
            f"{key}={fingerprint.get(key)!r} (expected {value!r})"
            for key, value in self.expected_fingerprint.items()
            if fingerprint.get(key) != value
        ]
        if differences:
            return "fingerprint does not match: " + ", ".join(differences)
        if self._reference_info is None:
            return None
        reference = self._reference_info.get("fingerprint") or {}
        differences = [
            f"{key}={fingerprint.get(key)!r} (the pool's other workers have {reference.get(key)!r})"
            for key in STABLE_FINGERPRINT_KEYS
            if fingerprint.get(key) != reference.get(key)
        ]
        if differences:
            return "a different setup from the pool's other workers: " + ", ".join(differences)
        return None

    # -- dispatch -----------------------------------------------------------------------------

    def _acquire(self, excluded: set[str]) -> tuple[WorkerStatus, bool] | None:
        """A free worker (and whether it must be re-checked first), or None if none is left."""
        with self._cond:
            while True:
                if self._closed:
                    raise LatencyError("the pool is closed")
                now = time.monotonic()
                candidates = [
                    status
                    for status in self._workers
                    if status.refused is None and status.url not in excluded
                ]
                if not candidates:
                    return None
                # A down worker due for its re-check goes first, so a board that is back
                # rejoins at once; a failed re-check costs one refused connection.
                for status in candidates:
                    if not status.busy and status.info is None and status.down_until <= now:
                        status.busy = True
                        return status, True
                for status in candidates:
                    if not status.busy and status.info is not None:
                        status.busy = True
                        return status, False
                waiting_for = [status for status in candidates if status.busy]
                if not waiting_for:
                    # Every candidate is down and not due for a re-check: fail now, not later.
                    return None
                self._cond.wait(timeout=1.0)

    def _release(self, status: WorkerStatus) -> None:
        with self._cond:
            status.busy = False
            self._cond.notify_all()

    def _mark_down(self, status: WorkerStatus, reason: str) -> None:
        with self._cond:
            status.info = None
            status.last_error = reason
            status.down_until = time.monotonic() + self.recheck_s

    @staticmethod
    def _reasons(statuses: Sequence[WorkerStatus]) -> str:
        return "; ".join(
            f"{status.url}: {status.refused or status.last_error or 'unknown'}"
            for status in statuses
        )

    def measure(
        self,
        onnx_model: bytes | str | Path,
        input_shape: tuple[int, ...],
        *,
        config: JetSegConfig | None = None,
    ) -> LatencyResult:
        """Measure on a free worker (`config` is not needed); see the class docstring."""
        model = read_onnx_bytes(onnx_model)
        shape = validate_input_shape(input_shape)
        inspect_model(model, shape)
        body = {
            "onnx_b64": base64.b64encode(model).decode("ascii"),
            "input_shape": list(shape),
            "warmup_s": self.warmup_s,
            "runs": self.runs,
        }
        if self.precision is not None:
            body["precision"] = self.precision
        payload = json.dumps(body).encode("utf-8")
        return measure_until_stable(
            lambda: self._dispatch(payload, shape),
            max_cv=self.max_cv,
            retries=self.variance_retries,
        )

    def _dispatch(self, payload: bytes, shape: tuple[int, ...]) -> LatencyResult:
        excluded: set[str] = set()
        failures: list[str] = []
        attempts = 0
        while True:
            acquired = self._acquire(excluded)
            if acquired is None:
                others = [
                    status
                    for status in self.workers
                    if status.url not in excluded and (status.refused or status.last_error)
                ]
                details = "; ".join(failures + ([self._reasons(others)] if others else []))
                raise LatencyError(
                    f"no worker of target {self.target!r} could measure this model: "
                    f"{details or 'no usable worker'}"
                )
            status, needs_check = acquired
            try:
                if needs_check:
                    info, error = self._fetch_info(status)
                    if not self._admit(status, info, error):
                        excluded.add(status.url)
                        failures.append(f"{status.url}: {status.refused or error}")
                        continue
                limit = (status.info or {}).get("limits", {}).get("max_upload_bytes")
                if limit is not None and len(payload) > limit:
                    raise LatencyError(
                        f"the request is {len(payload)} bytes, over {status.url}'s upload limit "
                        f"of {limit} bytes (worker --max-upload-mb)"
                    )
                attempts += 1
                answer = self._post_measure(status, payload)
            except _WorkerUnavailable as error:
                if error.down:
                    self._mark_down(status, str(error))
                excluded.add(status.url)
                failures.append(f"{status.url}: {error}")
                if attempts > self.retries:
                    raise LatencyError(
                        f"measurement failed on {attempts} workers: {'; '.join(failures)}"
                    ) from None
                continue
            finally:
                self._release(status)
            return self._to_result(status, answer, shape)

    def _post_measure(self, status: WorkerStatus, payload: bytes) -> dict[str, Any]:
        try:
            answer = self._request(status.url, "/measure", payload, timeout=self.timeout_s)
        except urllib.error.HTTPError as error:
            kind, message = self._http_error_message(error)
            if error.code in _REQUEST_ERROR_STATUSES:
                if kind in ("invalid-model", "invalid-input"):
                    raise InvalidModelError(f"{status.url} rejected the model: {message}") from None
                raise LatencyError(f"{status.url} rejected the request: {message}") from None
            if error.code == 500 and kind == "measurement-failed":
                # The model itself failed to run; every board of the target would say the same.
                raise LatencyError(f"{status.url}: the model failed to run: {message}") from None
            if error.code == 503 and kind == "busy":
                # Still busy after the back-off (other clients share it): try another worker.
                raise _WorkerUnavailable(message, down=False) from None
            if error.code in (401, 503):
                with self._cond:
                    status.refused = f"refused: {message}"
            # A timeout (504) or a crashed child (500): the worker lives, try another one.
            raise _WorkerUnavailable(message, down=False) from None
        samples = answer.get("samples_ms")
        if not isinstance(samples, list) or not samples:
            raise _WorkerUnavailable("/measure answered without samples")
        with self._cond:
            status.measurements += 1
            self.measurement_count += 1
        return answer

    def _to_result(
        self, status: WorkerStatus, answer: Mapping[str, Any], shape: tuple[int, ...]
    ) -> LatencyResult:
        fingerprint = dict(answer.get("fingerprint") or {})
        fingerprint.update(
            provider="remote",
            worker_url=status.url,
            precision=answer.get("precision"),
            metric=answer.get("metric"),
            temps_before=answer.get("temps_before"),
            temps_after=answer.get("temps_after"),
            started_at=answer.get("started_at"),
            finished_at=answer.get("finished_at"),
        )
        if answer.get("engine_layer_precisions") is not None:
            fingerprint["engine_layer_precisions"] = answer["engine_layer_precisions"]
        try:
            return LatencyResult.from_samples(
                answer["samples_ms"],
                warmup_runs=int(answer.get("warmup_runs") or 0),
                provenance=self.kind,
                fingerprint=fingerprint,
                input_shape=shape,
                flags=answer.get("flags") or (),
            )
        except (TypeError, ValueError) as error:
            raise LatencyError(f"{status.url} returned unusable samples: {error}") from None

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
