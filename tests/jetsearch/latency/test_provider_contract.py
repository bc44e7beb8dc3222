"""The contract every LatencyProvider passes (base.LatencyProvider's docstring, checked).

Written against the interface only and parametrized over the providers, as Optuna's storage
tests are: adding a provider means adding one entry to `PROVIDERS`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from latency_cases import RUNS, SHAPE, WARMUP_S, WorkerProcess, conv_relu_resize_model

from jetsearch.latency import (
    CachedProvider,
    InvalidModelError,
    LatencyCache,
    LatencyError,
    LatencyProvider,
    LatencyResult,
    LocalProvider,
    RemotePool,
    onnx_sha256,
)

PROVIDERS = ["local", "remote", "cached-local", "cached-remote"]
# The contract allows any spread; max_cv is set high so the suite does not re-measure.
LOCAL_SETTINGS = {"warmup_s": WARMUP_S, "min_runs": RUNS, "max_runs": RUNS, "max_cv": 100.0}


@pytest.fixture(params=PROVIDERS)
def provider(
    request: pytest.FixtureRequest, shared_worker: WorkerProcess, tmp_path: Path
) -> Iterator[LatencyProvider]:
    name = request.param
    if name.endswith("local"):
        inner: LatencyProvider = LocalProvider(**LOCAL_SETTINGS)
    else:
        inner = RemotePool(
            [shared_worker.url],
            shared_worker.token,
            "agx",
            warmup_s=WARMUP_S,
            runs=RUNS,
            max_cv=100.0,
        )
    provider = inner
    if name.startswith("cached"):
        # arch_hash_fn: the cache is used on every call, as when the study passes arch_hash.
        provider = CachedProvider(inner, LatencyCache(tmp_path / "cache.sqlite"), onnx_sha256)
    with provider:
        yield provider


def test_result_holds_the_contract(provider: LatencyProvider) -> None:
    model = conv_relu_resize_model(1)
    result = provider.measure(model, SHAPE)

    assert isinstance(result, LatencyResult)
    assert result.provenance is provider.kind
    assert not result.is_estimate
    assert result.input_shape == SHAPE
    assert len(result.samples_ms) == result.timed_runs == RUNS
    assert all(math.isfinite(value) and value > 0 for value in result.samples_ms)
    assert min(result.samples_ms) <= result.median_ms <= result.p90_ms <= max(result.samples_ms)
    assert result.cv >= 0
    assert result.warmup_runs >= 1
    assert result.fingerprint and json.dumps(result.fingerprint)
    datetime.fromisoformat(result.created_at)
    assert LatencyResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result


def test_dynamic_axes_take_the_requested_shape(provider: LatencyProvider) -> None:
    model = conv_relu_resize_model(2)
    small = provider.measure(model, (1, 3, 8, 12))
    large = provider.measure(model, (2, 3, 24, 16))
    assert small.input_shape == (1, 3, 8, 12)
    assert large.input_shape == (2, 3, 24, 16)


def test_model_as_path_is_accepted(provider: LatencyProvider, tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(conv_relu_resize_model(3))
    assert provider.measure(path, SHAPE).timed_runs == RUNS
    assert provider.measure(str(path), SHAPE).input_shape == SHAPE


@pytest.mark.parametrize(
    "garbage",
    [b"", b"this is not an ONNX model", bytes(range(256)) * 4],
    ids=["empty", "text", "binary"],
)
def test_garbage_model_raises_latency_error(provider: LatencyProvider, garbage: bytes) -> None:
    with pytest.raises(LatencyError, match="ONNX"):
        provider.measure(garbage, SHAPE)


def test_missing_file_raises_latency_error(provider: LatencyProvider, tmp_path: Path) -> None:
    with pytest.raises(LatencyError, match="does not exist"):
        provider.measure(tmp_path / "missing.onnx", SHAPE)


def test_shape_that_does_not_fit_the_model_is_invalid(provider: LatencyProvider) -> None:
    fixed = conv_relu_resize_model(4, height=16, width=16)
    with pytest.raises(InvalidModelError, match="fixed size 16 on axis 2"):
        provider.measure(fixed, (1, 3, 32, 16))


def test_fingerprint_and_target_key(provider: LatencyProvider) -> None:
    fingerprint = provider.fingerprint()
    assert fingerprint and json.dumps(fingerprint)
    key = provider.target_fingerprint_key()
    assert isinstance(key, str) and 0 < len(key) <= 80
    assert key == provider.target_fingerprint_key()
    assert key.isascii() and " " not in key
