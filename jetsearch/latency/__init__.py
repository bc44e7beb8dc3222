"""Latency of JetSeg networks on their target: measured here, on boards, cached or estimated.

Every source answers through :class:`LatencyProvider` with a :class:`LatencyResult` that keeps
the raw samples, their spread, the device fingerprint and where the number came from.
"""

from __future__ import annotations

from jetsearch.latency._onnx_input import onnx_sha256
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
    "PROFILES",
    "CachedProvider",
    "Calibration",
    "DeviceProfile",
    "EstimateProvider",
    "InvalidModelError",
    "LatencyCache",
    "LatencyError",
    "LatencyProvider",
    "LatencyResult",
    "LocalProvider",
    "Provenance",
    "ProviderFallbackError",
    "RemotePool",
    "calibrate",
    "fingerprint_key",
    "get_profile",
    "onnx_sha256",
    "run_worker",
    "worker_path",
]
