"""The latency provider contract and the result every provider returns.

A study asks "how fast is this network on the target?" many times, and the answer may come from
very different places: onnxruntime on this machine, a worker on a Jetson board across the
network, a SQLite cache of earlier answers, or an analytical estimate. They all answer with a
:class:`LatencyResult` through one interface, :class:`LatencyProvider`, and all of them pass one
shared contract test suite (tests/jetsearch/latency/test_provider_contract.py).
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from jetseg.config import JetSegConfig

HIGH_VARIANCE_FLAG = "high-variance"
FROM_CACHE_FLAG = "from-cache"


class LatencyError(RuntimeError):
    """A measurement that failed. A failure is never turned into a number."""


class ProviderFallbackError(LatencyError):
    """A GPU execution provider was requested but the runtime would have run elsewhere (CPU)."""


class InvalidModelError(LatencyError):
    """The model cannot be measured at all (not ONNX, wrong input, shape it cannot take).

    Retrying on another device will not help, so pools do not retry it.
    """


class Provenance(str, Enum):
    """Where a latency number came from; stored with every result and every trial."""

    MEASURED_LOCAL = "measured-local"
    MEASURED_REMOTE = "measured-remote"
    ESTIMATED = "estimated"

    @property
    def is_measurement(self) -> bool:
        return self is not Provenance.ESTIMATED


MEASURED = (Provenance.MEASURED_LOCAL, Provenance.MEASURED_REMOTE)


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def percentile(sorted_samples: Sequence[float], fraction: float) -> float:
    """Linear-interpolation percentile (numpy's default method) of already sorted samples."""
    if not sorted_samples:
        raise ValueError("percentile of no samples")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be within [0, 1], got {fraction}")
    rank = fraction * (len(sorted_samples) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(sorted_samples) - 1)
    weight = rank - low
    return sorted_samples[low] * (1.0 - weight) + sorted_samples[high] * weight


@dataclass(frozen=True)
class LatencyResult:
    """One latency answer: the raw samples, their summary, how and where they were taken.

    ``samples_ms`` are the timed runs in milliseconds (warm-up runs excluded); an estimate holds
    its single value. ``median_ms`` and ``p90_ms`` summarise them (p90 by linear
    interpolation), ``cv`` is the coefficient of variation (population standard deviation over
    mean). ``warmup_runs`` and ``timed_runs`` count the discarded and the timed runs (both 0 for
    an estimate). ``fingerprint`` describes the device and runtime (board or CPU, power mode,
    clocks, runtime and version, execution provider, precision, threads, OS, python, ...).
    ``flags`` mark anything a reader must know, e.g. ``"high-variance"``. Build one with
    :meth:`from_samples`; store it with :meth:`to_dict` / :meth:`from_dict`.
    """

    samples_ms: tuple[float, ...]
    median_ms: float
    p90_ms: float
    cv: float
    warmup_runs: int
    timed_runs: int
    provenance: Provenance
    fingerprint: dict[str, Any]
    input_shape: tuple[int, ...]
    flags: tuple[str, ...] = ()
    created_at: str = field(default_factory=_utc_now)

    @classmethod
    def from_samples(
        cls,
        samples: Iterable[float],
        *,
        warmup_runs: int,
        provenance: Provenance | str,
        fingerprint: Mapping[str, Any],
        input_shape: Sequence[int],
        flags: Iterable[str] = (),
    ) -> LatencyResult:
        """Summarise raw samples (ms) into a result; rejects empty, non-finite or <= 0 samples."""
        values = tuple(float(value) for value in samples)
        provenance = Provenance(provenance)
        if not values:
            raise ValueError("a latency result needs at least one sample")
        bad = [value for value in values if not math.isfinite(value) or value <= 0.0]
        if bad:
            raise ValueError(f"latency samples must be positive and finite, got {bad[:5]}")
        if provenance is Provenance.ESTIMATED and len(values) != 1:
            raise ValueError(f"an estimate holds exactly one value, got {len(values)}")
        if warmup_runs < 0:
            raise ValueError(f"warmup_runs must be >= 0, got {warmup_runs}")
        ordered = sorted(values)
        mean = statistics.fmean(values)
        return cls(
            samples_ms=values,
            median_ms=float(statistics.median(ordered)),
            p90_ms=float(percentile(ordered, 0.9)),
            cv=float(statistics.pstdev(values) / mean),
            warmup_runs=int(warmup_runs),
            timed_runs=0 if provenance is Provenance.ESTIMATED else len(values),
            provenance=provenance,
            fingerprint=dict(fingerprint),
            input_shape=tuple(int(value) for value in input_shape),
            flags=tuple(dict.fromkeys(flags)),
        )

    @property
    def is_estimate(self) -> bool:
        return self.provenance is Provenance.ESTIMATED

    def with_flags(self, *flags: str) -> LatencyResult:
        """A copy with `flags` added (each once, order kept)."""
        return replace(self, flags=tuple(dict.fromkeys(self.flags + flags)))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict; :meth:`from_dict` turns it back into an equal result."""
        return {
            "samples_ms": list(self.samples_ms),
            "median_ms": self.median_ms,
            "p90_ms": self.p90_ms,
            "cv": self.cv,
            "warmup_runs": self.warmup_runs,
            "timed_runs": self.timed_runs,
            "provenance": self.provenance.value,
            "fingerprint": json.loads(json.dumps(self.fingerprint, default=str)),
            "input_shape": list(self.input_shape),
            "flags": list(self.flags),
            "created_at": self.created_at,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LatencyResult:
        """Rebuild a result from :meth:`to_dict` output; errors name the missing or bad key."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a latency result must be a mapping, got {type(data).__name__}")
        expected = {item.name for item in cls.__dataclass_fields__.values()}
        missing = sorted(expected - set(data))
        if missing:
            raise ValueError(f"latency result is missing keys {missing}")
        unknown = sorted(set(data) - expected)
        if unknown:
            raise ValueError(
                f"latency result has unknown keys {unknown}; expected {sorted(expected)}"
            )
        try:
            provenance = Provenance(data["provenance"])
        except ValueError:
            allowed = [item.value for item in Provenance]
            raise ValueError(
                f"latency result key 'provenance' must be one of {allowed}, "
                f"got {data['provenance']!r}"
            ) from None
        if not isinstance(data["fingerprint"], Mapping):
            raise ValueError("latency result key 'fingerprint' must be a mapping")
        return cls(
            samples_ms=tuple(float(value) for value in data["samples_ms"]),
            median_ms=float(data["median_ms"]),
            p90_ms=float(data["p90_ms"]),
            cv=float(data["cv"]),
            warmup_runs=int(data["warmup_runs"]),
            timed_runs=int(data["timed_runs"]),
            provenance=provenance,
            fingerprint=dict(data["fingerprint"]),
            input_shape=tuple(int(value) for value in data["input_shape"]),
            flags=tuple(str(flag) for flag in data["flags"]),
            created_at=str(data["created_at"]),
        )


def fingerprint_device(fingerprint: Mapping[str, Any]) -> str:
    """The device a fingerprint names: the board, else the GPU, the device, the CPU, the target."""
    for key in ("board_model", "gpu_model", "device", "cpu_model", "target"):
        if fingerprint.get(key):
            return str(fingerprint[key])
    return "unknown device"


def fingerprint_key(label: str, fingerprint: Mapping[str, Any], keys: Iterable[str]) -> str:
    """A short stable key: `label` plus a digest of the fingerprint's `keys` (missing -> None).

    Only the listed keys count, so volatile entries (hostname, temperatures, time) never split
    the cache.
    """
    stable = {key: fingerprint.get(key) for key in sorted(set(keys))}
    digest = hashlib.sha256(json.dumps(stable, sort_keys=True, default=str).encode()).hexdigest()
    safe_label = "".join(char if char.isalnum() or char in "-_." else "-" for char in label)
    return f"{safe_label}-{digest[:16]}"


def measure_until_stable(
    measure_once: Callable[[], LatencyResult], *, max_cv: float, retries: int
) -> LatencyResult:
    """Repeat a measurement while its cv exceeds `max_cv` (up to `retries` more times).

    Keeps the result with the lowest cv; if even that one is above `max_cv` it comes back
    flagged ``"high-variance"`` rather than silently accepted.
    """
    best = measure_once()
    for _ in range(retries):
        if best.cv <= max_cv:
            break
        candidate = measure_once()
        if candidate.cv < best.cv:
            best = candidate
    if best.cv > max_cv:
        best = best.with_flags(HIGH_VARIANCE_FLAG)
    return best


class LatencyProvider(ABC):
    """Base class of everything that answers "how many milliseconds does this network take?".

    Contract (the shared suite in tests/jetsearch/latency/test_provider_contract.py checks it):

    * ``measure(onnx_model, input_shape, *, config=None)`` is the one call every provider
      answers. It takes the ONNX model as bytes or as a path (``str`` or
      :class:`~pathlib.Path`), the input shape ``(B, C, H, W)`` and, by keyword, the
      :class:`~jetseg.config.JetSegConfig` the model was built from. The model has one float
      input (usually named ``"image"``); providers read its name from the graph, and dynamic
      axes are given their sizes by ``input_shape``. Measuring providers time the model and
      need no config; the cache keys its entries on the config's ``arch_hash`` (and is
      bypassed without one); an estimate needs the config (it estimates the network's layers)
      and raises :class:`LatencyError` without it. It returns a :class:`LatencyResult` whose
      ``provenance`` equals the provider's ``kind``, whose ``input_shape`` echoes the request,
      with positive finite samples, ``median_ms <= p90_ms``, ``timed_runs == len(samples_ms)``
      for measurements, and a non-empty ``fingerprint``.
    * A measurement that fails raises :class:`LatencyError` (never returns a made-up number):
      :class:`InvalidModelError` when the bytes are not a usable ONNX model or the shape does
      not fit it, :class:`ProviderFallbackError` when a requested GPU execution provider is not
      what would actually run. Bad arguments at construction raise ``ValueError``.
    * ``fingerprint()`` describes the device and runtime the numbers come from (JSON-safe).
    * ``target_fingerprint_key()`` is a short string, equal for every provider that measures on
      the same device + runtime + precision setup (stable across processes and hosts), and
      different otherwise. The latency cache keys results on it; volatile facts (hostname,
      temperatures) do not enter it.
    * ``close()`` releases whatever the provider holds; providers are context managers.
    * Providers may be called from several threads at once; each documents how it serialises.
    """

    kind: ClassVar[Provenance]

    @abstractmethod
    def measure(
        self,
        onnx_model: bytes | str | Path,
        input_shape: tuple[int, ...],
        *,
        config: JetSegConfig | None = None,
    ) -> LatencyResult:
        """The latency of `onnx_model` (built from `config`) at `input_shape`."""

    @abstractmethod
    def fingerprint(self) -> dict[str, Any]:
        """The device and runtime description attached to every result."""

    @abstractmethod
    def target_fingerprint_key(self) -> str:
        """A short stable key naming device + runtime + precision, for the cache."""

    def close(self) -> None:  # noqa: B027 - most providers hold nothing to release
        """Release resources; the default holds none."""

    def __enter__(self) -> LatencyProvider:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
