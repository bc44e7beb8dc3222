"""LocalProvider: onnxruntime here, one child process per measurement, honest failures."""

from __future__ import annotations

import time

import onnxruntime
import pytest
from latency_cases import SHAPE, WARMUP_S, conv_relu_resize_model, runtime_failing_model

from jetsearch.latency import (
    InvalidModelError,
    LatencyError,
    LocalProvider,
    Provenance,
    ProviderFallbackError,
)
from jetsearch.latency.base import HIGH_VARIANCE_FLAG


def fast(**kwargs) -> LocalProvider:
    settings = dict(warmup_s=WARMUP_S, min_runs=5, max_runs=5, max_cv=100.0)
    settings.update(kwargs)
    return LocalProvider(**settings)


def test_fingerprint_describes_this_machine_and_runtime() -> None:
    provider = fast(threads=1)
    result = provider.measure(conv_relu_resize_model(0), SHAPE)
    fingerprint = result.fingerprint
    assert result.provenance is Provenance.MEASURED_LOCAL
    assert fingerprint["runtime"] == "onnxruntime"
    assert fingerprint["runtime_version"] == onnxruntime.__version__
    assert fingerprint["execution_provider"] == "CPUExecutionProvider"
    assert fingerprint["providers_used"] == ["CPUExecutionProvider"]
    assert fingerprint["threads"] == 1 and fingerprint["inter_op_threads"] == 1
    assert fingerprint["precision"] == "fp32"
    assert fingerprint["cpu_model"] and fingerprint["cpu_model"] != "unknown"
    assert fingerprint["input_name"] == "image"


def test_run_counts_follow_min_max_and_target() -> None:
    model = conv_relu_resize_model(0)
    # target_s long: stops at max_runs
    assert fast(min_runs=3, max_runs=7, target_s=60.0).measure(model, SHAPE).timed_runs == 7
    # target_s zero: stops at min_runs
    assert fast(min_runs=4, max_runs=50, target_s=0.0).measure(model, SHAPE).timed_runs == 4


def test_time_based_warmup_counts_its_runs() -> None:
    model = conv_relu_resize_model(0)
    short = fast(warmup_s=0.0).measure(model, SHAPE)
    longer = fast(warmup_s=0.3).measure(model, SHAPE)
    assert short.warmup_runs == 1  # the first run is always discarded
    assert longer.warmup_runs > short.warmup_runs


def test_target_key_depends_on_setup_not_instance() -> None:
    assert fast().target_fingerprint_key() == fast(warmup_s=0.5).target_fingerprint_key()
    assert fast(threads=1).target_fingerprint_key() != fast(threads=2).target_fingerprint_key()


def test_unavailable_gpu_provider_is_a_fallback_error_not_a_cpu_number() -> None:
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA; the fallback cannot be provoked here")
    provider = fast(execution_provider="cuda")
    with pytest.raises(ProviderFallbackError, match="CUDAExecutionProvider was requested"):
        provider.measure(conv_relu_resize_model(0), SHAPE)


def test_fp16_on_cpu_is_refused_up_front() -> None:
    with pytest.raises(ValueError, match="fp16"):
        LocalProvider(execution_provider="cpu", precision="fp16")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"execution_provider": "npu"}, "execution_provider must be one of"),
        ({"precision": "int8"}, "precision must be one of"),
        ({"threads": 0}, "threads must be >= 1"),
        ({"min_runs": 10, "max_runs": 5}, "min_runs <= max_runs"),
        ({"timeout_s": 0}, "timeout_s > 0"),
    ],
)
def test_bad_arguments_say_what_is_wrong(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        LocalProvider(**kwargs)


def test_timeout_kills_the_child_and_raises() -> None:
    provider = fast(warmup_s=30.0, timeout_s=1.0, retries=0)
    start = time.monotonic()
    with pytest.raises(LatencyError, match="timeout"):
        provider.measure(conv_relu_resize_model(0), SHAPE)
    assert time.monotonic() - start < 10


def test_model_failing_at_run_time_is_a_latency_error() -> None:
    with pytest.raises(LatencyError, match="failed to run") as caught:
        fast().measure(runtime_failing_model(), SHAPE)
    assert not isinstance(caught.value, InvalidModelError)


def test_high_variance_is_remeasured_then_flagged() -> None:
    provider = fast(max_cv=0.0, retries=2)
    result = provider.measure(conv_relu_resize_model(0), SHAPE)
    assert provider.measurement_count == 3
    assert HIGH_VARIANCE_FLAG in result.flags


def test_steady_measurement_is_not_repeated() -> None:
    provider = fast(max_cv=100.0, retries=2)
    result = provider.measure(conv_relu_resize_model(0), SHAPE)
    assert provider.measurement_count == 1
    assert HIGH_VARIANCE_FLAG not in result.flags
