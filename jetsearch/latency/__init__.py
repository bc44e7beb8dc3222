"""Latency of JetSeg networks on their target: measured here, on boards, cached or estimated.

Every source answers through :class:`LatencyProvider` with a :class:`LatencyResult` that keeps
the raw samples, their spread, the device fingerprint and where the number came from;
:func:`make_provider` builds any of them from a :class:`ProviderSpec`, and :class:`LatencyChain`
holds a study's providers in order of preference.
"""

from __future__ import annotations

from jetsearch.latency.base import (
    InvalidModelError,
    LatencyError,
    LatencyProvider,
    LatencyResult,
    Provenance,
    ProviderFallbackError,
    fingerprint_key,
)
from jetsearch.latency.cache import CachedProvider, LatencyCache
from jetsearch.latency.chain import (
    PRECISION_FALLBACK_FLAG,
    FlaggedProvider,
    LatencyChain,
    MeasurementSettings,
    ProviderSetupError,
    ProviderSpec,
    make_provider,
    resolve_precision,
)
from jetsearch.latency.estimate import (
    PROFILES,
    Calibration,
    DeviceProfile,
    EstimateProvider,
    calibrate,
    get_profile,
)
from jetsearch.latency.local import LocalProvider
from jetsearch.latency.remote import RemotePool
from jetsearch.latency.worker import run_worker, worker_path

__all__ = [
    "PRECISION_FALLBACK_FLAG",
    "PROFILES",
    "CachedProvider",
    "Calibration",
    "DeviceProfile",
    "EstimateProvider",
    "FlaggedProvider",
    "InvalidModelError",
    "LatencyCache",
    "LatencyChain",
    "LatencyError",
    "LatencyProvider",
    "LatencyResult",
    "LocalProvider",
    "MeasurementSettings",
    "Provenance",
    "ProviderFallbackError",
    "ProviderSetupError",
    "ProviderSpec",
    "RemotePool",
    "calibrate",
    "fingerprint_key",
    "get_profile",
    "make_provider",
    "resolve_precision",
    "run_worker",
    "worker_path",
]
