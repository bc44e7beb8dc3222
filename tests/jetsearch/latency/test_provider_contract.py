"""The contract every LatencyProvider passes (base.LatencyProvider's docstring, checked).

Written against the interface only and parametrized over the providers, as Optuna's storage
tests are: adding a provider means adding one entry to `PROVIDERS` (and its recipe). Every call
passes ``config=CONFIG``, the network the suite says each model was built from: the measuring
providers time the model itself, the cache keys on the config, the estimate estimates it.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from latency_cases import (
    RUNS,
    SHAPE,
    WARMUP_S,
    WorkerProcess,
    build_provider,
    conv_relu_resize_model,
)

from jetsearch.latency import (
    InvalidModelError,
    LatencyError,
    LatencyProvider,
    LatencyResult,
)
from jetseg.config import load_config

PROVIDERS = ["local", "remote", "cached-local", "cached-remote", "estimate"]
# The contract allows any spread; max_cv is set high so the suite does not re-measure.
LOCAL_SETTINGS = {"warmup_s": WARMUP_S, "min_runs": RUNS, "max_runs": RUNS, "max_cv": 100.0}
CONFIG = load_config("nano")

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[2]
# A child process builds a provider from the same recipe and prints its target key.
KEY_CHILD = (
    "import json, sys\n"
    "from latency_cases import build_provider\n"
    "print(build_provider(json.loads(sys.argv[1])).target_fingerprint_key())\n"
)


def recipe(name: str, worker: WorkerProcess, cache_dir: Path, **kwargs: Any) -> dict[str, Any]:
    """The JSON-safe recipe (latency_cases.build_provider) of provider `name`, with `kwargs`."""
    base = name.removeprefix("cached-")
    if base == "local":
        built = {"class": "local", "kwargs": {**LOCAL_SETTINGS, **kwargs}}
    elif base == "remote":
        settings = {"warmup_s": WARMUP_S, "runs": RUNS, "max_cv": 100.0}
        target = {"urls": [worker.url], "token": worker.token, "target": "agx"}
        built = {"class": "remote", "kwargs": {**target, **settings, **kwargs}}
    else:
        built = {"class": "estimate", "kwargs": {"profile": "agx", **kwargs}}
    if name.startswith("cached-"):
        built["cache"] = str(cache_dir / "cache.sqlite")
    return built


@pytest.fixture(params=PROVIDERS)
def name(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def provider(name: str, shared_worker: WorkerProcess, tmp_path: Path) -> Iterator[LatencyProvider]:
    with build_provider(recipe(name, shared_worker, tmp_path)) as built:
        yield built


def expected_runs(provider: LatencyProvider) -> int:
    """Timed runs a result holds: the suite's protocol for measurements, none for estimates."""
    return RUNS if provider.kind.is_measurement else 0


def test_result_holds_the_contract(provider: LatencyProvider) -> None:
    model = conv_relu_resize_model(1)
    result = provider.measure(model, SHAPE, config=CONFIG)

    assert isinstance(result, LatencyResult)
    assert result.provenance is provider.kind
    assert result.is_estimate is not provider.kind.is_measurement
    assert result.input_shape == SHAPE
    assert result.timed_runs == expected_runs(provider)
    if provider.kind.is_measurement:
        assert len(result.samples_ms) == RUNS
        assert result.warmup_runs >= 1
    else:
        assert len(result.samples_ms) == 1 and result.warmup_runs == 0
    assert all(math.isfinite(value) and value > 0 for value in result.samples_ms)
    assert min(result.samples_ms) <= result.median_ms <= result.p90_ms <= max(result.samples_ms)
    assert result.cv >= 0
    assert result.fingerprint and json.dumps(result.fingerprint)
    datetime.fromisoformat(result.created_at)
    assert LatencyResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result


def test_dynamic_axes_take_the_requested_shape(provider: LatencyProvider) -> None:
    model = conv_relu_resize_model(2)
    small = provider.measure(model, (1, 3, 8, 12), config=CONFIG)
    large = provider.measure(model, (2, 3, 24, 16), config=CONFIG)
    assert small.input_shape == (1, 3, 8, 12)
    assert large.input_shape == (2, 3, 24, 16)


def test_model_as_path_is_accepted(provider: LatencyProvider, tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(conv_relu_resize_model(3))
    assert provider.measure(path, SHAPE, config=CONFIG).timed_runs == expected_runs(provider)
    assert provider.measure(str(path), SHAPE, config=CONFIG).input_shape == SHAPE


@pytest.mark.parametrize(
    "garbage",
    [b"", b"this is not an ONNX model", bytes(range(256)) * 4],
    ids=["empty", "text", "binary"],
)
def test_garbage_model_raises_latency_error(provider: LatencyProvider, garbage: bytes) -> None:
    with pytest.raises(LatencyError, match="ONNX"):
        provider.measure(garbage, SHAPE, config=CONFIG)


def test_missing_file_raises_latency_error(provider: LatencyProvider, tmp_path: Path) -> None:
    with pytest.raises(LatencyError, match="does not exist"):
        provider.measure(tmp_path / "missing.onnx", SHAPE, config=CONFIG)


def test_shape_that_does_not_fit_the_model_is_invalid(provider: LatencyProvider) -> None:
    fixed = conv_relu_resize_model(4, height=16, width=16)
    with pytest.raises(InvalidModelError, match="fixed size 16 on axis 2"):
        provider.measure(fixed, (1, 3, 32, 16), config=CONFIG)


def other_setups(
    name: str, worker_factory: Callable[..., WorkerProcess]
) -> dict[str, tuple[WorkerProcess | None, dict[str, Any]]]:
    """Setups that differ from the suite's in one thing each, by what differs.

    Each is (the worker to use, or None for the shared one; recipe overrides). The local
    provider differs in threads, runtime (execution provider) and precision (fp16 needs a GPU
    provider; constructing one runs nothing); a worker in its threads (a CPU worker offers
    fp32 only); an estimate in precision and device (it has no threads or runtime).
    """
    base = name.removeprefix("cached-")
    if base == "local":
        return {
            "thread count": (None, {"threads": 1}),
            "runtime": (None, {"execution_provider": "cuda"}),
            "precision": (None, {"execution_provider": "cuda", "precision": "fp16"}),
        }
    if base == "remote":
        # The shared worker runs os.cpu_count() threads (its default); one more differs anywhere.
        threads = str((os.cpu_count() or 1) + 1)
        return {"thread count": (worker_factory("--threads", threads), {})}
    return {"precision": (None, {"precision": "fp32"}), "device": (None, {"profile": "agx-orin"})}


@pytest.mark.slow
def test_target_key_is_the_setup_across_processes(
    name: str,
    provider: LatencyProvider,
    shared_worker: WorkerProcess,
    worker_factory: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    fingerprint = provider.fingerprint()
    assert fingerprint and json.dumps(fingerprint)
    key = provider.target_fingerprint_key()
    assert isinstance(key, str) and 0 < len(key) <= 80
    assert key.isascii() and " " not in key
    assert key == provider.target_fingerprint_key()

    # The same setup in another process (another instance, another interpreter): the same key.
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(REPO_ROOT), str(HERE), os.environ.get("PYTHONPATH")])
        ),
    }
    same = recipe(name, shared_worker, tmp_path)
    child = subprocess.run(
        [sys.executable, "-c", KEY_CHILD, json.dumps(same)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert child.returncode == 0, child.stderr
    assert child.stdout.strip() == key

    # Another precision, thread count or runtime: another key, each different from the others.
    keys = {"the suite's setup": key}
    for what, (worker, overrides) in other_setups(name, worker_factory).items():
        with build_provider(recipe(name, worker or shared_worker, tmp_path, **overrides)) as other:
            keys[what] = other.target_fingerprint_key()
    assert len(set(keys.values())) == len(keys), keys
